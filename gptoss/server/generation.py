"""Running one completion (one choice) on the async engine and collecting what the HTTP layers need:
deltas, token log-probabilities, stop strings, timing for metrics."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from gptoss.conversation.turn import Delta, GrowingText, TurnDecoder
from gptoss.engine.async_engine import AsyncEngine
from gptoss.engine.sampling import SamplingParams, TokenLogprobs
from gptoss.tokenizer import Tokenizer


def dump(obj) -> dict:
    """An SDK object as the JSON the OpenAI API sends: fields under their wire names (``schema``, not the
    Python attribute ``schema_``), unset optional fields left out."""
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)


def stream_error(exc: BaseException) -> str:
    """The SSE frame that reports, inside a stream already under way, what went wrong (the server keeps serving)."""
    return (
        f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
    )


def dump_json(obj) -> str:
    return obj.model_dump_json(by_alias=True, exclude_none=True)


class StopStrings:
    """Ends the answer at the first stop string; holds back text that might be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.hit = self.pending[:cut], "", True
            return out
        if self.keep == 0:
            out, self.pending = self.pending, ""
            return out
        out = self.pending[: -self.keep] if len(self.pending) > self.keep else ""
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Completion:
    """The state of one choice as it is generated."""

    index: int
    decoder: TurnDecoder
    stops: StopStrings
    _content: GrowingText = field(default_factory=GrowingText, repr=False)  # answer text after stop strings
    tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the engine found in its prefix cache
    finish_reason: str | None = None
    content_logprobs: list[tuple[int, TokenLogprobs]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    last_token_at: float | None = None

    @property
    def content(self) -> str:
        return str(self._content)

    @property
    def tool_calls(self):
        return self.decoder.tool_calls

    def api_finish_reason(self) -> str:
        if self.finish_reason == "length":
            return "length"
        if self.decoder.tool_calls and not self.stops.hit:
            return "tool_calls"
        return "stop"


async def run_completion(
    engine: AsyncEngine,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    cache_salt: str | None,
    params: SamplingParams,
    index: int = 0,
    stop: list[str] | None = None,
) -> AsyncIterator[tuple[Completion, list[Delta]]]:
    """Yields ``(completion, deltas)`` after each generated token; stop strings end the answer early.
    ``cache_salt``: the request reuses cached prefixes only of requests with the same salt."""
    comp = Completion(index, TurnDecoder(tokenizer), StopStrings(stop or []))
    request_id = engine.submit(prompt_ids, params, cache_salt)
    stream = engine.stream(request_id)
    try:
        async for event in stream:
            now = time.monotonic()
            comp.first_token_at = comp.first_token_at or now
            comp.last_token_at = now
            comp.tokens += 1
            comp.cached_tokens = event.cached_tokens
            deltas = _filter(comp, comp.decoder.feed(event.token), event.logprobs)
            if event.finish_reason is not None:
                comp.finish_reason = event.finish_reason
                deltas += _filter(comp, comp.decoder.finish(), None)
                deltas += _flush(comp)
            elif comp.stops.hit:
                comp.finish_reason = "stop"
                deltas += _flush(comp)
            yield comp, deltas
            if comp.finish_reason is not None:
                return
    finally:
        await stream.aclose()  # aborts the request if it is still running (stop string, disconnect)


def _filter(comp: Completion, deltas: list[Delta], logprobs: TokenLogprobs | None) -> list[Delta]:
    out = []
    for d in deltas:
        if d.kind == "content":
            if comp.stops.hit:
                continue
            text = comp.stops.feed(d.text)
            if d.token is not None and logprobs is not None:
                comp.content_logprobs.append((d.token, logprobs))
            if text:
                comp._content.append(text)
                out.append(Delta("content", text, token=d.token))
        else:
            out.append(d)
    return out


def _flush(comp: Completion) -> list[Delta]:
    rest = comp.stops.flush() if not comp.stops.hit else ""
    if rest:
        comp._content.append(rest)
        return [Delta("content", rest)]
    return []


def observe(metrics, comp: Completion) -> None:
    """Record a finished completion's tokens, time to first token and time per output token."""
    metrics.tokens.inc(comp.tokens)
    if comp.first_token_at is not None:
        metrics.ttft.observe(comp.first_token_at - comp.started)
        if comp.tokens > 1 and comp.last_token_at is not None:
            metrics.tpot.observe((comp.last_token_at - comp.first_token_at) / (comp.tokens - 1))


async def cancel_on_disconnect(request, tasks: list[asyncio.Task], poll: float = 0.25) -> None:
    """Cancel ``tasks`` if the HTTP client goes away before they finish (non-streaming requests)."""
    while not all(t.done() for t in tasks):
        if await request.is_disconnected():
            for t in tasks:
                t.cancel()
            return
        await asyncio.sleep(poll)
