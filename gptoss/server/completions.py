"""``POST /v1/completions``: the legacy Completions API, as vLLM, llama.cpp and Ollama serve it.

Raw text continuation: the prompt (text, token ids, or a list of either) goes to the engine as it is, with
no Harmony rendering, and the tokens that follow come back as text. ``echo`` puts the prompt in front of
the text, and with ``logprobs`` (0-5) the prompt's own log-probabilities in front of the answer's (the
first prompt token has none: ``None``): what lm-evaluation-harness's loglikelihood tasks read. Generation
ends at ``max_tokens``, a ``stop`` string, or one of the model's end tokens (``<|return|>``, ``<|call|>``,
``<|endoftext|>``, left out of the text). Requests run on the same async engine as Chat and Responses,
batched with them.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from openai.types import Completion, CompletionChoice
from openai.types.completion_choice import Logprobs
from openai.types.completion_usage import CompletionUsage, PromptTokensDetails
from starlette.concurrency import run_in_threadpool

from gptoss.engine.sampling import SamplingParams, TokenLogprobs, offset_seed
from gptoss.server.errors import APIError
from gptoss.server.generation import StopStrings, cancel_on_disconnect, stream_error
from gptoss.server.guarding import check_inputs, hidden_reasoning
from gptoss.server.schemas import CompletionRequest
from gptoss.server.state import cache_salt

MAX_CHOICES = 128  # prompts x n in one request


@dataclass
class _Prompt:
    index: int
    ids: list[int]
    text: str
    offsets: list[int]  # each token's first character in ``text``


@dataclass
class _Choice:
    index: int
    prompt: _Prompt
    stops: StopStrings
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    raw: str = ""  # everything generated (before a stop string cut it)
    text: str = ""  # what is released: the answer up to a stop string
    tokens: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # each token's first character in ``raw``
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    finish_reason: str | None = None
    sent_tokens: int = 0  # tokens whose log-probabilities went out (streaming)
    prompt_sent: bool = False  # the prompt's log-probabilities went out (echo)
    cached_tokens: int = 0  # prompt tokens found in the prefix cache

    @property
    def kept_tokens(self) -> int:
        """Tokens that belong to the answer: all, or those starting before the stop string's cut."""
        if not self.stops.hit:
            return len(self.tokens)
        return sum(1 for o in self.offsets if o < len(self.text))


def _offsets(tok, ids: list[int]) -> tuple[str, list[int]]:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text, offsets = "", []
    for i, t in enumerate(ids):
        offsets.append(len(text))
        text += decoder.decode(tok.token_bytes(t), final=i == len(ids) - 1)
    return text, offsets


def _prompts(state, body: CompletionRequest) -> list[str | list[int]]:
    p = body.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise APIError(400, "prompt: empty; expected text, token ids, or a list of either", param="prompt")
    if isinstance(p[0], int):
        return [p]
    return list(p)


def _tokenize(state, prompts: list[str | list[int]]) -> list[_Prompt]:
    tok = state.tokenizer
    vocab = state.llm.model.config.vocab_size
    out = []
    for i, p in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(p, str):
            ids = tok.encode(p)
            text, offsets = p, _offsets(tok, ids)[1]
        else:
            bad = next((j for j, t in enumerate(p) if not 0 <= t < vocab), None)
            if bad is not None:
                raise APIError(
                    400, f"{where}[{bad}]: token id {p[bad]} is outside the vocabulary [0, {vocab})", param="prompt"
                )
            ids = list(p)
            text, offsets = _offsets(tok, ids)
        if not ids:
            raise APIError(400, f"{where}: empty; at least one token is needed", param="prompt")
        out.append(_Prompt(i, ids, text, offsets))
    return out


def _entries(tok, tokens: list[int], logprobs: list[TokenLogprobs | None], offsets: list[int], shift: int):
    return [(t, lp, o + shift) for t, lp, o in zip(tokens, logprobs, offsets)]


def _legacy_logprobs(tok, entries) -> Logprobs:
    """The legacy shape: parallel lists of token strings, their log-probabilities (None where there is none:
    the first prompt token), dicts of the most likely tokens (the chosen one included) and text offsets."""
    tokens, values, tops, offsets = [], [], [], []
    for token, lp, offset in entries:
        tokens.append(tok.decode([token]))
        offsets.append(offset)
        if lp is None:
            values.append(None)
            tops.append(None)
            continue
        values.append(lp.logprob)
        top = {tok.decode([t]): v for t, v in lp.top}
        top.setdefault(tok.decode([token]), lp.logprob)
        tops.append(top)
    # (constructed: the SDK's type says float where the legacy API sends None for the first prompt token)
    return Logprobs.model_construct(tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets)


def _new_entries(tok, c: _Choice, echo: bool, final: bool) -> list:
    """The log-probability entries not yet sent for choice ``c``: with echo, the prompt's first; then the
    answer's tokens whose text is released (all that are kept, at the end)."""
    entries = []
    if echo and not c.prompt_sent and c.prompt_logprobs is not None:
        entries += _entries(tok, c.prompt.ids, c.prompt_logprobs, c.prompt.offsets, 0)
        c.prompt_sent = True
    upto = c.kept_tokens if (final or c.stops.hit) else sum(1 for o in c.offsets if o < len(c.text))
    shift = len(c.prompt.text) if echo else 0
    if upto > c.sent_tokens:
        entries += _entries(
            tok,
            c.tokens[c.sent_tokens : upto],
            c.logprobs[c.sent_tokens : upto],
            c.offsets[c.sent_tokens : upto],
            shift,
        )
        c.sent_tokens = upto
    return entries


async def _run(state, c: _Choice, params: SamplingParams, score_only: bool, salt: str | None) -> AsyncIterator[str]:
    """Generates choice ``c``; yields each piece of released text. ``salt``: whose cached prefixes it reuses."""
    tok = state.tokenizer
    request_id = state.engine.submit(c.prompt.ids, params, salt)
    stream = state.engine.stream(request_id)
    try:
        async for ev in stream:
            c.cached_tokens = max(c.cached_tokens, ev.cached_tokens)
            if ev.prompt_logprobs is not None:
                c.prompt_logprobs = ev.prompt_logprobs
            if score_only:  # max_tokens 0: the prompt's log-probabilities only
                c.finish_reason = "length"
                yield ""
                return
            done = ev.finish_reason is not None
            if ev.finish_reason == "stop":  # an end token: not part of the text
                piece = c.decoder.decode(b"", final=True)
            else:
                c.offsets.append(len(c.raw))
                c.tokens.append(ev.token)
                c.logprobs.append(ev.logprobs)
                piece = c.decoder.decode(tok.token_bytes(ev.token), final=done)
            c.raw += piece
            out = c.stops.feed(piece) if not c.stops.hit else ""
            if c.stops.hit:
                c.finish_reason = "stop"
            elif done:
                out += c.stops.flush()
                c.finish_reason = "stop" if ev.finish_reason == "stop" else "length"
            c.text += out
            yield out
            if c.finish_reason is not None:
                return
    finally:
        await stream.aclose()  # aborts the request if it is still running (stop string, disconnect)


def _usage(prompts: list[_Prompt], choices: list[_Choice]) -> CompletionUsage:
    p = sum(len(x.ids) for x in prompts)
    c = sum(x.kept_tokens for x in choices)
    firsts = {}  # each prompt is counted once: what its first choice found cached
    for x in choices:
        firsts.setdefault(x.prompt.index, x.cached_tokens)
    return CompletionUsage(
        prompt_tokens=p,
        completion_tokens=c,
        total_tokens=p + c,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(firsts.values())),
    )


def register(app, state) -> None:
    tok = state.tokenizer
    end_tokens = [tok.RETURN, tok.CALL, tok.ENDOFTEXT]

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        state.check_model(body.model)
        if body.suffix:
            raise APIError(400, "suffix: not supported (gpt-oss has no fill-in-the-middle mode)", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(
                400, f"best_of: only best_of equal to n ({body.n}) is supported, found {body.best_of}", param="best_of"
            )
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens: 0 is only allowed with echo (to score the prompt)", param="max_tokens")
        if hidden_reasoning(state):
            raise APIError(
                400,
                "this server hides the analysis channel (--reasoning hidden); raw completions "
                "would show it: use /v1/chat/completions or /v1/responses",
                param="prompt",
                code="unsupported_endpoint",
            )
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"stop: at most 4 stop sequences, found {len(stops)}", param="stop")
        raw = _prompts(state, body)
        if len(raw) * body.n > MAX_CHOICES:
            raise APIError(
                400, f"prompt: {len(raw)} prompts x n={body.n} is more than {MAX_CHOICES} choices", param="prompt"
            )
        state.check_text_size([p for p in raw if isinstance(p, str)], "prompt")
        prompts = await run_in_threadpool(_tokenize, state, raw)
        score_only = body.max_tokens == 0
        limits = []
        for p in prompts:
            try:
                limits.append(state.check_length(len(p.ids), 1 if score_only else body.max_tokens, "max_tokens"))
            except APIError as exc:
                if exc.param == "messages":
                    exc.param = "prompt"
                raise
        rid = "cmpl-" + secrets.token_hex(12)
        created = int(time.time())
        for p in prompts:
            decision = await check_inputs(state, rid, "completions", p.text, [])
            if decision is not None and decision.blocked:
                raise APIError(
                    400,
                    f"the prompt was blocked by the server's policy: {decision.refusal()}",
                    param="prompt",
                    code="content_filter",
                )
            state.metrics.prompt_tokens.inc(len(p.ids))
        choices = [_Choice(p.index * body.n + i, p, StopStrings(stops)) for p in prompts for i in range(body.n)]

        def params(c: _Choice) -> SamplingParams:
            return SamplingParams(
                temperature=body.temperature,
                top_p=body.top_p,
                max_tokens=limits[c.prompt.index],
                seed=offset_seed(body.seed, c.index),
                stop_token_ids=end_tokens,
                logprobs=body.logprobs,
                prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None,
                lora=state.lora_of(body.model),
            )

        salt = cache_salt(request, state.config)
        runs = [_run(state, c, params(c), score_only, salt) for c in choices]
        guard = getattr(state, "guard", None)
        hold = guard is not None and guard.settings.check_output  # answers are checked whole before release
        if body.stream and not hold:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(state, rid, created, body, prompts, choices, runs, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )

        async def drain(run):
            async for _ in run:
                pass

        tasks = [asyncio.ensure_future(drain(r)) for r in runs]
        watcher = asyncio.ensure_future(cancel_on_disconnect(request, tasks))
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            state.metrics.requests.labels("completions", "disconnected").inc()
            raise
        finally:
            watcher.cancel()
        filtered = set()
        if hold:
            from gptoss.guard.stream import compose_output

            for c in choices:
                if c.text:
                    decision = await guard.check(compose_output(c.prompt.text, c.text), "output", rid, "completions")
                    if decision.blocked:
                        filtered.add(c.index)
        state.metrics.tokens.inc(sum(c.kept_tokens for c in choices))
        state.metrics.requests.labels("completions", "ok").inc()
        out = []
        for c in choices:
            if c.index in filtered:
                out.append(CompletionChoice(index=c.index, text="", finish_reason="content_filter"))
                continue
            lp = _legacy_logprobs(tok, _new_entries(tok, c, body.echo, True)) if body.logprobs is not None else None
            text = (c.prompt.text if body.echo else "") + c.text
            out.append(CompletionChoice(index=c.index, text=text, finish_reason=c.finish_reason, logprobs=lp))
        completion = Completion(
            id=rid,
            object="text_completion",
            created=created,
            model=body.model,
            choices=out,
            usage=_usage(prompts, choices),
        )
        if body.stream:  # held for the guard: sent whole, as one chunk per choice
            return StreamingResponse(
                _replay(completion), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return completion.model_dump(mode="json", by_alias=True, exclude_none=True, warnings=False)


def _chunk(rid, created, model, choices, usage=None) -> str:
    c = Completion.model_construct(
        id=rid, object="text_completion", created=created, model=model, choices=choices, usage=usage
    )
    return f"data: {json.dumps(c.model_dump(mode='json', exclude_none=False, warnings=False))}\n\n"


async def _replay(completion: Completion):
    for choice in completion.choices:
        yield _chunk(completion.id, completion.created, completion.model, [choice])
    yield _chunk(completion.id, completion.created, completion.model, [], completion.usage)
    yield "data: [DONE]\n\n"


async def _stream(state, rid, created, body: CompletionRequest, prompts, choices, runs, include_usage: bool):
    tok = state.tokenizer
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(c: _Choice, run):
        try:
            async for piece in run:
                await queue.put((c, piece))
        except Exception as exc:  # the consumer reports it in the stream
            await queue.put((c, exc))
        finally:
            await queue.put((c, done))

    def choice(c: _Choice, text: str, final: bool) -> CompletionChoice:
        lp = None
        if body.logprobs is not None:
            lp = _legacy_logprobs(tok, _new_entries(tok, c, body.echo, final))
        return CompletionChoice.model_construct(
            index=c.index, text=text, logprobs=lp, finish_reason=c.finish_reason if final else None
        )

    tasks = [asyncio.ensure_future(pump(c, r)) for c, r in zip(choices, runs)]
    echoed: set[int] = set()
    try:
        remaining = len(tasks)
        while remaining:
            c, piece = await queue.get()
            if isinstance(piece, Exception):
                raise piece
            if piece is done:
                remaining -= 1
                if c.finish_reason is not None:
                    yield _chunk(rid, created, body.model, [choice(c, "", True)])
                continue
            if body.echo and c.index not in echoed:
                echoed.add(c.index)
                piece = c.prompt.text + piece
            if piece:
                yield _chunk(rid, created, body.model, [choice(c, piece, False)])
        state.metrics.tokens.inc(sum(c.kept_tokens for c in choices))
        state.metrics.requests.labels("completions", "ok").inc()
        if include_usage:
            yield _chunk(rid, created, body.model, [], _usage(prompts, choices))
        yield "data: [DONE]\n\n"
    except asyncio.CancelledError:
        state.metrics.requests.labels("completions", "disconnected").inc()
        raise
    except Exception as exc:  # report, in the stream, what went wrong; the server keeps serving
        yield stream_error(exc)
    finally:
        for t in tasks:
            t.cancel()
