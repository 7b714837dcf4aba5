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

``ToolLoop.stream(session, text)`` drives a :class:`~gptoss.conversation.ChatSession` synchronously (the
CLI); ``ToolLoop.astream`` does the same from asyncio. A server with its own generation uses the pieces:
``ToolLoop.call_in(messages, finish_reason)`` finds the call ending a turn and ``ToolLoop.run_call(call)``
runs it, yielding the started / finished events (see docs/tools.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from gptoss.conversation.session import ChatSession, TurnDelta
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
        if last.author.role is not Role.ASSISTANT or not last.recipient or last.recipient in ("assistant", "all", "user"):
            return None
        return ToolCall(last)

    def runs_here(self, call: ToolCall) -> bool:
        """False for a declared function without an implementation (the API client runs it)."""
        tool = self.toolbox.find(call.recipient)
        if tool is None:
            return True  # answered with an error message
        executable = getattr(tool, "executable", None)
        return executable is None or executable(call.recipient)

    async def run_call(self, call: ToolCall) -> AsyncIterator[ToolCallStarted | ToolCallFinished]:
        """Run one call: yields :class:`ToolCallStarted`, then :class:`ToolCallFinished` whose ``messages``
        the caller appends to the conversation."""
        tool = self.toolbox.find(call.recipient)
        kind = kind_of(call.recipient)
        details = tool.describe_call(call) if tool is not None else {}
        yield ToolCallStarted(call.call_id, call.recipient, kind, call.text, details, call.message)
        t0 = time.monotonic()
        try:
            result = await self.toolbox.run(call)
        except Exception as exc:  # noqa: BLE001 - a broken tool must not end the conversation
            result = ToolResult([tool_message(call.recipient, f"Error: the tool failed: {type(exc).__name__}: {exc}",
                                              call.channel)], status="failed")
        meta = dict(details)
        meta.update(result.metadata)
        yield ToolCallFinished(call.call_id, call.recipient, kind, result.output, result.status, result.messages, meta,
                               time.monotonic() - t0)

    # ------------------------------------------------------------------ over a ChatSession, async
    async def astream(self, session: ChatSession, user_text: str | None = None) -> AsyncIterator[LoopEvent]:
        """Add ``user_text`` (if any) and run the loop. Generation runs in a worker thread."""
        start = len(session.history)
        if user_text is not None:
            session.history.append(Message.from_role_and_content(Role.USER, user_text))
        calls = 0
        while True:
            async for delta in _athread_iter(session.continue_turn()):
                yield delta
            ending, call = self._after_turn(session, calls, start)
            if call is None:
                for event in ending:
                    yield event
                return
            calls += 1
            done = False
            try:
                async for event in self.run_call(call):
                    if isinstance(event, ToolCallFinished):
                        session.history.extend(event.messages)
                        done = True
                    yield event
            finally:
                if not done:  # cancelled: keep the conversation well formed
                    session.history.append(self._interrupted_message(call))

    def _after_turn(self, session: ChatSession, calls: int, start: int) -> tuple[list[LoopEvent], ToolCall | None]:
        """What follows a finished turn: the call to run here next, or the events that end the loop (no
        call, a developer function for the caller to run, or the bound on tool calls reached)."""
        reason, call = self._next(session, calls)
        if call is None:
            return [LoopFinished(reason, calls, session.history[start:])], None
        if not self.runs_here(call):
            return [FunctionCallRequested(call.call_id, call.function or "", call.text, call.message),
                    LoopFinished("function_call", calls, session.history[start:])], None
        if calls >= self.max_tool_calls:
            session.history.append(self._limit_message(call))
            return [LoopFinished("max_tool_calls", calls, session.history[start:])], None
        return [], call

    def _next(self, session: ChatSession, calls: int) -> tuple[str, ToolCall | None]:
        last = session.last
        if last is None:
            return "error", None
        call = self.call_in(last.messages, last.finish_reason, last.stop_token)
        return (last.finish_reason or "stop"), call

    def _limit_message(self, call: ToolCall) -> Message:
        return tool_message(call.recipient, f"Error: the limit of {self.max_tool_calls} tool calls in one turn was "
                            "reached; this call was not run.", call.channel)

    @staticmethod
    def _interrupted_message(call: ToolCall) -> Message:
        return tool_message(call.recipient, "Error: the call was interrupted before it finished.", call.channel)

    # ------------------------------------------------------------------ over a ChatSession, synchronous
    def stream(self, session: ChatSession, user_text: str | None = None) -> Iterator[LoopEvent]:
        """The same loop for synchronous callers (the CLI): generation runs in this thread (Ctrl-C stops
        it as usual), tool calls on a private event loop. Ctrl-C during a tool call cancels it."""
        start = len(session.history)
        if user_text is not None:
            session.history.append(Message.from_role_and_content(Role.USER, user_text))
        calls = 0
        while True:
            yield from session.continue_turn()
            ending, call = self._after_turn(session, calls, start)
            if call is None:
                for event in ending:
                    yield event
                return
            calls += 1
            done = False
            try:
                for event in self._sync_events(self.run_call(call)):
                    if isinstance(event, ToolCallFinished):
                        session.history.extend(event.messages)
                        done = True
                    yield event
            finally:
                if not done:  # Ctrl-C: keep the conversation well formed
                    session.history.append(self._interrupted_message(call))

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

    def _sync_events(self, agen) -> Iterator[Any]:
        while True:
            try:
                event = self.run_sync(agen.__anext__())
            except StopAsyncIteration:
                return
            yield event

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
