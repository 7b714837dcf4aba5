"""Wiring the policy guard (gptoss/guard/) and the reasoning exposure into the HTTP shapes.

Chat Completions: the newest user message (and, with ``check_tools``, the tool results after the last
assistant turn) is checked before anything is generated; a block answers at once with
``finish_reason: "content_filter"`` and a ``refusal``, no token generated. Answers are checked before
release: whole in a plain request, in checked pieces (or at the end) in a stream, where a block drops what
was held, stops the generation and ends the choice with ``content_filter``.

Responses: the same input check (a block is a ``response.incomplete`` with reason ``content_filter`` and
a refusal message); the output is checked once, at the end (the events are held until then, whatever
``--guard-stream`` says), because a Responses stream interleaves items that cannot be recalled. With
``check_tools``, built-in tool results (browser pages, Python output) are checked before the model reads
them; a blocked one is replaced by a notice, so a prompt injection in a fetched page never reaches the
model, and the response goes on.

``--reasoning hidden`` removes the analysis channel from what clients see (``reasoning_content`` in Chat,
the reasoning text of reasoning items in Responses); stored responses keep it for ``previous_response_id``.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, AsyncIterator

from gptoss.conversation.openai_chat import text_of
from gptoss.guard.guard import Decision
from gptoss.guard.stream import OutputGate, compose_output
from gptoss.harmony.messages import TextContent

REASONING_MODES = ("visible", "hidden")


def _guard(state):
    return getattr(state, "guard", None)


def hidden_reasoning(state) -> bool:
    return getattr(state.config, "reasoning", "visible") == "hidden"


# ----------------------------------------------------------------------------------------- Chat Completions


def chat_inputs(messages: list[dict]) -> tuple[str, list[str]]:
    """(the newest user message's text, the tool results after the last assistant message)."""
    user, tools = "", []
    for i, m in enumerate(messages):
        if m.get("role") == "user":
            user = text_of(m.get("content"), f"messages[{i}].content")
        elif m.get("role") == "assistant":
            tools = []
        elif m.get("role") == "tool":
            tools.append(text_of(m.get("content"), f"messages[{i}].content"))
    return user, tools


async def check_inputs(state, request_id: str, endpoint: str, user: str, tools: list[str]) -> Decision | None:
    """The first blocking (or else the last) input decision; None when there is no guard or nothing to check."""
    guard = _guard(state)
    if guard is None:
        return None
    decision = None
    checks = ([("input", user)] if guard.settings.check_input and user else []) + (
        [("tool", t) for t in tools] if guard.settings.check_tools else []
    )
    for stage, text in checks:
        decision = await guard.check(text, stage, request_id, endpoint)
        if decision.blocked:
            break
    return decision


class ChatGuard:
    """One chat request's view of the guard and of the reasoning exposure."""

    def __init__(self, state, request_id: str, messages: list[dict], n: int):
        self.state = state
        self.request_id = request_id
        self.user, self.tools = chat_inputs(messages)
        self.hide = hidden_reasoning(state)
        guard = _guard(state)
        self.gates: list[OutputGate | None] = [None] * n
        if guard is not None and guard.settings.check_output:
            kinds = ("content", "reasoning") if guard.settings.check_reasoning else ("content",)
            self.gates = [OutputGate(guard, request_id, "chat", self.user, kinds) for _ in range(n)]

    async def input_decision(self) -> Decision | None:
        return await check_inputs(self.state, self.request_id, "chat", self.user, self.tools)

    def visible(self, deltas: list) -> list:
        return [d for d in deltas if d.kind != "reasoning"] if self.hide else deltas

    async def release(self, index: int, deltas: list) -> tuple[list, bool]:
        """(deltas to send now, blocked) for choice ``index``."""
        gate = self.gates[index]
        if gate is None:
            return self.visible(deltas), False
        out = await gate.feed(deltas)
        return self.visible(out), gate.blocked

    async def finish(self, index: int) -> tuple[list, Decision | None]:
        gate = self.gates[index]
        if gate is None:
            return [], None
        out = await gate.finish()
        return self.visible(out), gate.decision if gate.blocked else None

    def refusal(self, index: int) -> str:
        gate = self.gates[index]
        return gate.decision.refusal() if gate is not None and gate.decision is not None else ""

    async def check_choices(self, comps, choices) -> None:
        """A plain (non-streamed) request: check each answer; a block empties it and sets content_filter."""
        guard = _guard(self.state)
        for comp, choice in zip(comps, choices):
            if guard is not None and guard.settings.check_output:
                checks = [("output", comp.content)] if comp.content else []
                if guard.settings.check_reasoning and comp.decoder.reasoning:
                    checks.append(("reasoning", comp.decoder.reasoning))
                for stage, text in checks:
                    decision = await guard.check(compose_output(self.user, text), stage, self.request_id, "chat")
                    if decision.blocked:
                        choice.finish_reason = "content_filter"
                        choice.message.content = None
                        choice.message.tool_calls = None
                        choice.message.refusal = decision.refusal()
                        choice.logprobs = None
                        _drop_reasoning(choice.message)
                        break
            if self.hide:
                _drop_reasoning(choice.message)


def _drop_reasoning(message) -> None:
    extra = getattr(message, "__pydantic_extra__", None)
    for name in ("reasoning_content", "reasoning"):  # the two names clients read the analysis channel under
        if extra is not None:
            extra.pop(name, None)
        if name in type(message).model_fields:
            setattr(message, name, None)


def chat_blocked(
    rid: str,
    created: int,
    model: str,
    n: int,
    prompt_tokens: int,
    decision: Decision,
    stream: bool,
    include_usage: bool,
):
    """The answer to a chat request whose input was blocked: no token generated."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice
    from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
    from openai.types.chat.chat_completion_chunk import ChoiceDelta
    from openai.types.completion_usage import CompletionUsage

    usage = CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens)
    refusal = decision.refusal()
    if not stream:
        return ChatCompletion(
            id=rid,
            object="chat.completion",
            created=created,
            model=model,
            usage=usage,
            choices=[
                Choice(
                    index=i,
                    finish_reason="content_filter",
                    message=ChatCompletionMessage(role="assistant", content=None, refusal=refusal),
                )
                for i in range(n)
            ],
        ).model_dump(mode="json", by_alias=True, exclude_none=True)

    def chunk(choices, usage=None) -> str:
        c = ChatCompletionChunk(
            id=rid, object="chat.completion.chunk", created=created, model=model, choices=choices, usage=usage
        )
        return f"data: {c.model_dump_json(by_alias=True, exclude_none=True)}\n\n"

    async def events():
        for i in range(n):
            yield chunk([ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", refusal=refusal))])
            yield chunk([ChunkChoice(index=i, delta=ChoiceDelta(), finish_reason="content_filter")])
        if include_usage:
            yield chunk([], usage)
        yield "data: [DONE]\n\n"

    return events()


# ------------------------------------------------------------------------------------------------ Responses


def responses_inputs(items: list[dict[str, Any]]) -> tuple[str, list[str]]:
    user, tools = "", []
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "message" and item.get("role") == "user":
            user = text_of(item.get("content"), f"input[{i}].content", ("input_text", "text", "output_text"))
            tools = []
        elif kind == "function_call_output":
            out = item.get("output")
            tools.append(
                out
                if isinstance(out, str)
                else text_of(out, f"input[{i}].output", ("input_text", "text", "output_text"))
            )
    return user, tools


async def guard_response_events(state, store, turn, events: AsyncIterator) -> AsyncIterator:
    """The events of one response, after the input check, with the output held for its check and the
    reasoning hidden when the server hides it. Sequence numbers are renumbered to stay contiguous."""
    from openai.types.responses import (
        ResponseCreatedEvent,
        ResponseIncompleteEvent,
        ResponseInProgressEvent,
        ResponseOutputItemAddedEvent,
        ResponseOutputItemDoneEvent,
        ResponseOutputMessage,
        ResponseOutputRefusal,
    )

    guard = _guard(state)
    hide = hidden_reasoning(state)
    if guard is None and not hide:
        async for ev in events:
            yield ev
        return
    seq = itertools.count()
    new_items = turn.items[len(turn.items) - _new_count(turn) :]
    user, tools = responses_inputs(new_items)
    decision = await check_inputs(state, turn.id, "responses", user, tools)

    def blocked(decision: Decision) -> list:
        refusal = ResponseOutputMessage(
            id="msg_" + turn.id.removeprefix("resp_")[:24],
            type="message",
            role="assistant",
            status="completed",
            content=[ResponseOutputRefusal(type="refusal", refusal=decision.refusal())],
        )
        final = turn.response("incomplete", [refusal], incomplete="content_filter")
        if turn.body.store:
            store.put(
                turn.id,
                final.model_dump(mode="json", by_alias=True, exclude_none=True),
                turn.items,
                [refusal.model_dump(mode="json", by_alias=True, exclude_none=True)],
            )
        return [
            ResponseOutputItemAddedEvent(
                type="response.output_item.added", output_index=0, item=refusal, sequence_number=0
            ),
            ResponseOutputItemDoneEvent(
                type="response.output_item.done", output_index=0, item=refusal, sequence_number=0
            ),
            ResponseIncompleteEvent(type="response.incomplete", response=final, sequence_number=0),
        ]

    if decision is not None and decision.blocked:
        await events.aclose()
        for ev in [
            ResponseCreatedEvent(type="response.created", sequence_number=0, response=turn.response("in_progress", [])),
            ResponseInProgressEvent(
                type="response.in_progress", sequence_number=0, response=turn.response("in_progress", [])
            ),
        ] + blocked(decision):
            yield ev.model_copy(update={"sequence_number": next(seq)})
        return
    hold = guard is not None and guard.settings.check_output
    held: list = []
    end = None  # the terminal event: completed, incomplete or failed
    settled = not hold  # the stored copy holds only what the guard passed (or what needs no check)
    hidden_stored = not hide
    reasoning_items: set[int] = set()
    try:
        async for ev in events:
            ev = _hide_reasoning(ev, reasoning_items) if hide else ev
            if ev is None:
                continue
            if ev.type in TERMINAL_EVENTS:
                end = ev
                if hide and turn.body.store:  # what GET returns hides the reasoning too, also of a failure
                    _store_response(store, turn, ev.response)
                    hidden_stored = True
            if hold and ev.type not in ("response.created", "response.in_progress"):
                held.append(ev)
                continue
            yield ev.model_copy(update={"sequence_number": next(seq)})
        if hold:
            # The release is decided on every end, a failure included: held text the guard did not pass is
            # never released (the failed response carries the partial answer; it is checked like a final one).
            if end is None:
                held = []
            else:
                answer, reasoning = _response_texts(end.response)
                checks = [("output", answer)] + (
                    [("reasoning", reasoning)] if guard.settings.check_reasoning and reasoning else []
                )
                for stage, text in checks:
                    decision = await guard.check(compose_output(user, text), stage, turn.id, "responses")
                    if decision.blocked:
                        held = blocked(decision)  # stores the refusal in place of the answer
                        break
                settled = True
        for ev in held:
            yield ev.model_copy(update={"sequence_number": next(seq)})
    finally:
        # An error, a cancellation (the client went away) or a guard check cut short: the stored copy may
        # hold an answer the guard never passed, or reasoning the server hides. Neither may stay readable.
        if turn.body.store and not settled:
            _withhold_stored(store, turn)
        elif turn.body.store and not hidden_stored:
            _hide_stored_reasoning(store, turn)


TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


def _store_response(store, turn, response) -> None:
    stored = store.get(turn.id)
    if stored is not None:
        store.put(
            turn.id,
            response.model_dump(mode="json", by_alias=True, exclude_none=True),
            stored.input_items,
            stored.output_items,
        )


def _withhold_stored(store, turn) -> None:
    """Replace a stored response whose output the guard did not check by a failed one without output."""
    stored = store.get(turn.id)
    if stored is None:
        return
    response = dict(stored.response)
    response.update(
        status="failed",
        output=[],
        incomplete_details=None,
        completed_at=None,
        error={"code": "server_error", "message": "the response ended before the guard checked its output"},
    )
    store.put(turn.id, response, stored.input_items, [])


def _hide_stored_reasoning(store, turn) -> None:
    """The stored copy as a client may read it under ``--reasoning hidden`` (its items for
    ``previous_response_id`` keep the reasoning, as for every stored response)."""
    stored = store.get(turn.id)
    if stored is None:
        return
    response = dict(stored.response)
    response["output"] = [
        {k: v for k, v in i.items() if k != "content"} if i.get("type") == "reasoning" else i
        for i in response.get("output") or []
    ]
    store.put(turn.id, response, stored.input_items, stored.output_items)


async def guard_tool_messages(state, request_id: str, messages: list) -> list:
    """Built-in tool results (browser pages, Python output) of the Responses tool loop, checked before the
    model reads them (``--guard-checks tools``): a blocked one is replaced by a notice, so an injection
    in a fetched page never reaches the model; the response goes on."""
    guard = _guard(state)
    if guard is None or not guard.settings.check_tools:
        return messages
    out = []
    for m in messages:
        text = m.text if isinstance(getattr(m, "text", None), str) else ""
        decision = await guard.check(text, "tool", request_id, "responses") if text else None
        if decision is not None and decision.blocked:
            notice = f"[The tool's output was withheld: {decision.refusal()}]"
            m = dataclasses.replace(m, content=[TextContent(notice)])
        out.append(m)
    return out


def _new_count(turn) -> int:
    from gptoss.conversation.openai_responses import normalize_input

    return len(normalize_input(turn.body.input))


def _response_texts(response) -> tuple[str, str]:
    answer, reasoning = [], []
    for item in response.output or []:
        if item.type == "message":
            answer += [p.text for p in item.content if getattr(p, "type", "") == "output_text"]
        elif item.type == "reasoning":
            reasoning += [c.text for c in (item.content or [])]
    return "\n".join(answer), "\n".join(reasoning)


def _hide_reasoning(ev, reasoning_items: set[int]):
    """``ev`` with the reasoning text removed (None: drop the event)."""
    t = ev.type
    if t == "response.output_item.added" and ev.item.type == "reasoning":
        reasoning_items.add(ev.output_index)
    if t.startswith("response.reasoning_text.") or (
        t.startswith("response.content_part.") and ev.output_index in reasoning_items
    ):
        return None
    if t in ("response.output_item.added", "response.output_item.done") and ev.item.type == "reasoning":
        return ev.model_copy(update={"item": ev.item.model_copy(update={"content": None})})
    if t in ("response.completed", "response.incomplete", "response.failed"):
        output = [i.model_copy(update={"content": None}) if i.type == "reasoning" else i for i in ev.response.output]
        return ev.model_copy(update={"response": ev.response.model_copy(update={"output": output})})
    return ev
