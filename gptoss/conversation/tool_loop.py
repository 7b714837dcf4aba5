"""The model -> tool -> model loop.

An assistant turn that ends with ``<|call|>`` on a message addressed to a tool (``to=python``,
``to=browser.search``, ``to=functions.NAME``) is answered by running that tool; its messages (author =
the recipient, ``to=assistant``, on the call's channel, as the reference tools write them) are appended
and generation continues, until the model answers (``<|return|>``), stops for another reason, calls a
function this process cannot run (an API returns it to the client), or the number of calls reaches
``max_tool_calls``.

Everything that happens is reported as events, so a terminal (``gptoss chat``) and an HTTP server (the
Responses API's ``web_search_call`` / ``code_interpreter_call`` items) can show the same loop:

- :class:`TextDelta`: generated text (``recipient`` set while the model writes a tool call),
- :class:`ToolCallStarted`: a call is about to run (its code, its search query...),
- :class:`ToolCallFinished`: its result (output text, the tool messages, metadata, status),
- :class:`FunctionCallRequested`: a call to a declared function that runs elsewhere,
- :class:`LoopFinished`: the end, with the reason.

The loop itself is written once, without I/O (``ToolLoop._steps``): it asks its driver to generate a turn
or to run a call and decides what follows from the answers. Three drivers run it:

- ``ToolLoop.stream(session, text)``: a :class:`~gptoss.conversation.ChatSession`, synchronously (the
  CLI): generation in the calling thread, tool calls on a private event loop;
- ``ToolLoop.astream(session, text)``: the same from asyncio, generation in a worker thread;
- ``ToolLoop.arun(history, generate_turn, ...)``: a conversation whose turns the caller generates itself
  (the Responses API: its own prompt, grammar and engine), with hooks for which calls run here and for
  the messages that answer a call (see docs/tools.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from gptoss.conversation.session import ChatSession, TurnDelta, TurnResult
from gptoss.harmony import Message, Role
from gptoss.tokenizer import Tokenizer
from gptoss.tools.base import Toolbox, ToolCall, ToolResult, tool_message

TextDelta = TurnDelta


@dataclass
class ToolCallStarted:
    call_id: str
    recipient: str  # python | browser.search | browser.open | browser.find | functions.NAME
    kind: str  # code_interpreter | web_search | function | unknown
    arguments: str  # the message's text: the code, or the JSON arguments
    details: dict[str, Any] = field(default_factory=dict)  # tool-specific: {"code": ...} or {"action": {...}}
    message: Message | None = None


@dataclass
class ToolCallFinished:
    call_id: str
    recipient: str
    kind: str
    output: str
    status: str  # completed | failed | incomplete
    messages: list[Message]
    metadata: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class FunctionCallRequested:
    call_id: str
    name: str  # without "functions."
    arguments: str
    message: Message


@dataclass
class LoopFinished:
    reason: str  # stop | length | interrupted | function_call | max_tool_calls | error
    tool_calls: int
    messages: list[Message]  # everything added to the conversation during this loop


LoopEvent = TurnDelta | ToolCallStarted | ToolCallFinished | FunctionCallRequested | LoopFinished


@dataclass
class _GenerateTurn:
    calls: int  # tool calls run so far


@dataclass
class _RunCall:
    started: ToolCallStarted
    call: ToolCall


_Step = _GenerateTurn | _RunCall


def kind_of(recipient: str) -> str:
    if recipient == "python" or recipient.startswith("python."):
        return "code_interpreter"
    if recipient.startswith("browser."):
        return "web_search"
    if recipient.startswith("functions."):
        return "function"
    return "unknown"


class ToolLoop:
    def __init__(self, toolbox: Toolbox, max_tool_calls: int = 16):
        if max_tool_calls < 0:
            raise ValueError(f"max_tool_calls: expected a number >= 0, found {max_tool_calls}")
        self.toolbox = toolbox
        self.max_tool_calls = max_tool_calls
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def call_in(messages: list[Message], finish_reason: str | None, stop_token: int | None = None) -> ToolCall | None:
        """The tool call that ended a turn: its last message, when it has a recipient other than the
        user (``assistant``/``all``) and the turn stopped on ``<|call|>`` (or on a stop token anyway)."""
        if finish_reason != "stop" or not messages:
            return None
        if stop_token is not None and stop_token != Tokenizer.CALL:
            return None
        last = messages[-1]
        if (
            last.author.role is not Role.ASSISTANT
            or not last.recipient
            or last.recipient in ("assistant", "all", "user")
        ):
            return None
        return ToolCall(last)

    def runs_here(self, call: ToolCall) -> bool:
        """False for a declared function without an implementation (the API client runs it)."""
        tool = self.toolbox.find(call.recipient)
        if tool is None:
            return True  # answered with an error message
        executable = getattr(tool, "executable", None)
        return executable is None or executable(call.recipient)

    def _started(self, call: ToolCall) -> ToolCallStarted:
        tool = self.toolbox.find(call.recipient)
        details = tool.describe_call(call) if tool is not None else {}
        return ToolCallStarted(call.call_id, call.recipient, kind_of(call.recipient), call.text, details, call.message)

    async def _run(self, started: ToolCallStarted, call: ToolCall) -> ToolCallFinished:
        """Run one call; the :class:`ToolCallFinished` whose ``messages`` answer it."""
        t0 = time.monotonic()
        try:
            result = await self.toolbox.run(call)
        except Exception as exc:  # noqa: BLE001 - a broken tool must not end the conversation
            result = ToolResult(
                [tool_message(call.recipient, f"Error: the tool failed: {type(exc).__name__}: {exc}", call.channel)],
                status="failed",
            )
        meta = dict(started.details)
        meta.update(result.metadata)
        return ToolCallFinished(
            call.call_id,
            call.recipient,
            started.kind,
            result.output,
            result.status,
            result.messages,
            meta,
            time.monotonic() - t0,
        )

    # ------------------------------------------------------------------ the loop, once
    def _steps(
        self, history: list[Message], user_text: str | None, runs_here: Callable[[ToolCall], bool]
    ) -> Generator[_Step | LoopEvent, Any, None]:
        """The loop without I/O: yields :class:`_GenerateTurn` (the driver generates the turn, adds its
        messages to ``history`` and sends back its :class:`TurnResult`, or None when there is none),
        :class:`_RunCall` (the driver runs the call and sends back its :class:`ToolCallFinished`) and the
        events the driver passes on. Tool messages join ``history`` here; closed during a call (Ctrl-C, a
        cancelled task), the call is answered with an "interrupted" message."""
        start = len(history)
        if user_text is not None:
            history.append(Message.from_role_and_content(Role.USER, user_text))
        calls = 0
        while True:
            turn = yield _GenerateTurn(calls)
            call = self.call_in(turn.messages, turn.finish_reason, turn.stop_token) if turn is not None else None
            if call is None:
                yield LoopFinished("error" if turn is None else turn.finish_reason or "stop", calls, history[start:])
                return
            if not runs_here(call):
                yield FunctionCallRequested(call.call_id, call.function or "", call.text, call.message)
                yield LoopFinished("function_call", calls, history[start:])
                return
            if calls >= self.max_tool_calls:
                history.append(self._limit_message(call))
                yield LoopFinished("max_tool_calls", calls, history[start:])
                return
            calls += 1
            started = self._started(call)
            finished = None
            try:
                yield started
                finished = yield _RunCall(started, call)
            finally:  # keep the conversation well formed
                history.extend([self._interrupted_message(call)] if finished is None else finished.messages)
            yield finished

    def _limit_message(self, call: ToolCall) -> Message:
        return tool_message(
            call.recipient,
            f"Error: the limit of {self.max_tool_calls} tool calls in one turn was reached; this call was not run.",
            call.channel,
        )

    @staticmethod
    def _interrupted_message(call: ToolCall) -> Message:
        return tool_message(call.recipient, "Error: the call was interrupted before it finished.", call.channel)

    # ------------------------------------------------------------------ drivers
    def stream(self, session: ChatSession, user_text: str | None = None) -> Iterator[LoopEvent]:
        """Add ``user_text`` (if any) and run the loop for synchronous callers (the CLI): generation runs in
        this thread (Ctrl-C stops it as usual), tool calls on a private event loop. Ctrl-C during a tool call
        cancels it."""
        steps = self._steps(session.history, user_text, self.runs_here)
        try:
            step = _send(steps, None)
            while step is not None:
                reply = None
                if isinstance(step, _GenerateTurn):
                    yield from session.continue_turn()
                    reply = session.last
                elif isinstance(step, _RunCall):
                    reply = self.run_sync(self._run(step.started, step.call))
                else:
                    yield step
                step = _send(steps, reply)
        finally:
            steps.close()

    async def astream(self, session: ChatSession, user_text: str | None = None) -> AsyncIterator[LoopEvent]:
        """:meth:`stream` from asyncio: generation runs in a worker thread."""

        async def generate_turn(calls: int) -> AsyncIterator[TurnDelta | TurnResult | None]:
            async for delta in _athread_iter(session.continue_turn()):
                yield delta
            yield session.last

        async for event in self.arun(session.history, generate_turn, user_text):
            yield event

    async def arun(
        self,
        history: list[Message],
        generate_turn: Callable[[int], AsyncIterator[Any]],
        user_text: str | None = None,
        *,
        runs_here: Callable[[ToolCall], bool] | None = None,
        after_call: Callable[[ToolCall, ToolCallFinished], Awaitable[list[Message]]] | None = None,
    ) -> AsyncIterator[Any]:
        """The loop over a conversation of its caller's. ``generate_turn(calls)`` (after ``calls`` tool calls)
        generates one assistant turn: it adds the turn's messages to ``history``, yields what it streams
        (passed on) and, last, the turn's :class:`TurnResult` (None: no turn). ``runs_here(call)`` tells
        which calls run here (default :meth:`runs_here`); ``after_call(call, finished)`` gives the messages
        that answer a call in place of the tool's (the Responses API's guard). Yields the loop's events
        between what ``generate_turn`` streams."""
        steps = self._steps(history, user_text, runs_here or self.runs_here)
        try:
            step = _send(steps, None)
            while step is not None:
                reply = None
                if isinstance(step, _GenerateTurn):
                    async for item in generate_turn(step.calls):
                        if item is None or isinstance(item, TurnResult):
                            reply = item
                        else:
                            yield item
                elif isinstance(step, _RunCall):
                    reply = await self._run(step.started, step.call)
                    if after_call is not None:
                        reply = replace(reply, messages=await after_call(step.call, reply))
                else:
                    yield step
                step = _send(steps, reply)
        finally:
            steps.close()

    # ------------------------------------------------------------------ the synchronous driver's event loop
    def _loop(self) -> asyncio.AbstractEventLoop:
        """A private event loop in a daemon thread: tools keep their asyncio resources (a kernel client)
        on one loop for the whole conversation."""
        if self._sync_loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="gptoss-tools", daemon=True)
            thread.start()
            self._sync_loop, self._sync_thread = loop, thread
        return self._sync_loop

    def run_sync(self, coro):
        """Run a coroutine on the private loop and wait for it; Ctrl-C cancels it."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop())
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            try:
                future.result(timeout=30)
            except BaseException:  # noqa: BLE001, S110 - cancelled, or failed while cancelling
                pass
            raise

    def close(self) -> None:
        """Close the tools (kernels, containers) and the private loop."""
        if self._sync_loop is not None:
            try:
                self.run_sync(self.toolbox.aclose())
            finally:
                self._sync_loop.call_soon_threadsafe(self._sync_loop.stop)
                if self._sync_thread is not None:
                    self._sync_thread.join(timeout=10)
                self._sync_loop = None
        else:
            self.toolbox.close()


def _send(steps: Generator, reply: Any) -> Any:
    """The core's next step after ``reply``; None once it ended."""
    try:
        return steps.send(reply)
    except StopIteration:
        return None


async def _athread_iter(gen: Iterator[Any]) -> AsyncIterator[Any]:
    """Iterate a blocking generator in a worker thread; closing this closes it (in that thread)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in gen:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            gen.close()
            loop.call_soon_threadsafe(queue.put_nowait, done)

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        await asyncio.shield(worker)
