"""The engine behind a server: one background thread runs ``LLMEngine.step()`` while asyncio code submits
requests and reads their tokens. Requests join and leave the running batch between steps; a request
whose consumer goes away (client disconnect) is aborted and its cache slot freed."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from gptoss.engine.distributed import RankFailed
from gptoss.engine.llm import LLMEngine
from gptoss.engine.sampling import SamplingParams, TokenLogprobs
from gptoss.errors import GptossError

log = logging.getLogger("gptoss.engine")


class QueueFull(GptossError):
    """More requests are waiting than the server accepts; retry later."""


class GenerationFailed(GptossError):
    """The engine could not finish this request (its processing raised); other requests are unaffected."""


class EngineStopped(GptossError):
    """The engine cannot run any request (a tensor parallel rank is gone); the server is going down."""


def _failed(exc: BaseException) -> GenerationFailed:
    failed = GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}")
    failed.__cause__ = exc
    return failed


@dataclass
class EngineEvent:
    token: int
    logprobs: TokenLogprobs | None
    finish_reason: str | None
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # on the first event, when the request asked for them
    cached_tokens: int = 0  # prompt tokens this request found in the prefix cache


@dataclass
class EngineStats:
    waiting: int = 0
    running: int = 0
    tokens_generated: int = 0
    steps: int = 0
    prefix_hits: int = 0  # requests that reused a cached prefix
    prompt_tokens: int = 0  # prompt tokens admitted
    cached_tokens: int = 0  # of which found in the prefix cache
    recent_tokens: list[tuple[float, int]] = field(default_factory=list)

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in self.recent_tokens if now - t <= window]
        return sum(n for _, n in recent) / window


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_queue: int = 256):
        self.engine = engine
        self.max_queue = max_queue
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._submissions: list[tuple] = []
        self._aborts: list[str] = []
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._stop = False
        self._error: BaseException | None = None
        # Called (from the engine thread) once, when the engine stops for good: a tensor parallel rank died,
        # hung past the collective timeout or failed; every request has been failed before.
        self.on_fatal = None
        self._thread = threading.Thread(target=self._run, name="gptoss-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ asyncio side
    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._submissions) + len(self.engine.scheduler.waiting)

    def submit(self, prompt_ids: list[int], params: SamplingParams, cache_salt: str | bytes | None = None) -> str:
        """Queue a request; returns its id. Raises QueueFull when too many are waiting. ``cache_salt``: the
        request reuses only cached prefixes of requests with the same salt."""
        if self._error is not None:
            raise EngineStopped(f"the engine stopped: {self._error}")
        request_id = f"r{next(self._ids)}"
        loop = asyncio.get_running_loop()
        with self._lock:
            if len(self._submissions) + len(self.engine.scheduler.waiting) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting")
            self._queues[request_id] = (loop, asyncio.Queue())
            self._submissions.append((request_id, prompt_ids, params, cache_salt))
        self._wake.set()
        return request_id

    async def stream(self, request_id: str) -> AsyncIterator[EngineEvent]:
        """Tokens of a submitted request. Leaving early (break, cancellation) aborts the request."""
        _, queue = self._queues[request_id]
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine already dropped it
                    if isinstance(item, (GenerationFailed, EngineStopped)):  # kept as they are: 500 / 503
                        raise item
                    if isinstance(item, GptossError):  # a bad request, found when the engine took it
                        raise GptossError(str(item)) from item
                    raise _failed(item)
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            with self._lock:
                self._queues.pop(request_id, None)
                if not finished:
                    self._aborts.append(request_id)
            self._wake.set()

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, cache_salt: str | bytes | None = None
    ) -> AsyncIterator[EngineEvent]:
        request_id = self.submit(prompt_ids, params, cache_salt)
        async for event in self.stream(request_id):
            yield event

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ engine thread
    def _deliver(self, request_id: str, item) -> None:
        target = self._queues.get(request_id)
        if target is not None:
            loop, queue = target
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed
                pass

    @property
    def error(self) -> str | None:
        """Why the engine stopped for good (one line naming the rank), or None while it runs."""
        return None if self._error is None else str(self._error)

    def _die(self, exc: BaseException) -> None:
        """A tensor parallel rank is gone: fail every request, then tell the server (``on_fatal``)."""
        log.error("%s", exc)
        engine = self.engine
        with self._lock:
            self._error = exc
            submissions, self._submissions = self._submissions, []
            stopped = [request_id for request_id, *_ in submissions]
            stopped += [seq.request_id for seq in list(engine.scheduler.running) + list(engine.scheduler.waiting)]
            for request_id in stopped:  # queued or running alike: the service is going down (503)
                self._deliver(request_id, EngineStopped(f"the engine stopped: {exc}"))
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def _run(self) -> None:
        try:
            self._loop()
        except RankFailed as exc:
            self._die(exc)

    def _loop(self) -> None:
        engine = self.engine
        channel = getattr(engine.runner, "channel", None)
        while not self._stop:
            if channel is not None:
                channel.check()  # a rank found gone while idle (heartbeat) or exited
            with self._lock:
                submissions, self._submissions = self._submissions, []
                aborts, self._aborts = self._aborts, []
            for request_id in aborts:
                engine.abort(request_id)
            for request_id, prompt_ids, params, cache_salt in submissions:
                try:
                    engine.add_request(prompt_ids, params, request_id=request_id, cache_salt=cache_salt)
                except Exception as exc:  # this request only
                    with self._lock:
                        self._deliver(request_id, exc)
            self.stats.waiting = len(engine.scheduler.waiting)
            self.stats.running = len(engine.scheduler.running)
            if not engine.has_work:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                produced = engine.step()
            except RankFailed:
                raise
            except Exception as exc:  # outside any one request (the step isolates those): fail the batch, keep serving
                log.exception("engine step failed; failing the running and waiting requests")
                for seq in list(engine.scheduler.running) + list(engine.scheduler.waiting):
                    with self._lock:
                        self._deliver(seq.request_id, _failed(exc))
                    engine.abort(seq.request_id)
                continue
            failed, engine.failures = engine.failures, []
            for seq in failed:  # a request whose own processing raised fails alone
                with self._lock:
                    self._deliver(seq.request_id, _failed(seq.error))
            now = time.monotonic()
            self.stats.steps += 1
            self.stats.tokens_generated += len(produced)
            self.stats.recent_tokens.append((now, len(produced)))
            if len(self.stats.recent_tokens) > 4096:
                del self.stats.recent_tokens[:2048]
            self.stats.waiting = len(engine.scheduler.waiting)
            self.stats.running = len(engine.scheduler.running)
            self.stats.prefix_hits = engine.prefix_hits
            self.stats.prompt_tokens = engine.prompt_tokens
            self.stats.cached_tokens = engine.cached_tokens
            with self._lock:
                for seq, token in produced:
                    prompt_lp = seq.prompt_logprobs if len(seq.output_ids) == 1 else None
                    self._deliver(
                        seq.request_id,
                        EngineEvent(token, seq.logprobs[-1], seq.finish_reason, prompt_lp, seq.cached_tokens or 0),
                    )
