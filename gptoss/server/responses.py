"""``POST /v1/responses``, ``GET /v1/responses/{id}``, ``DELETE /v1/responses/{id}``: the Responses API.

Request items become a Harmony turn (conversation/openai_responses.py), the turn runs on the engine
under the turn grammar, and :class:`TurnItems` cuts what the model emits into output items. One
generator of SDK-typed events serves both modes: a stream sends each event as Server-Sent Events
(``event: <type>`` / ``data: <json>``), a plain request keeps only the final Response. Responses with
``store`` (the default) are saved in SQLite with their input and output items, so
``previous_response_id`` continues them, also after a restart.

Event order: response.created, response.in_progress, then for each output item output_item.added,
[content_part.added], its deltas (reasoning_text.delta / output_text.delta /
function_call_arguments.delta), their done event, [content_part.done], output_item.done; finally
response.completed (response.incomplete when max_output_tokens cut the turn, response.failed on an
error). Every event carries a sequence_number, counting from 0.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseError,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response_content_part_added_event import PartReasoningText
from openai.types.responses.response_content_part_done_event import PartReasoningText as DonePartReasoningText
from openai.types.responses.response_reasoning_item import Content as ReasoningContent
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel

from gptoss.conversation.openai_chat import ConversationError, function_tools, turn_grammar
from gptoss.conversation.openai_responses import (
    ItemEvent,
    OutputItem,
    TurnItems,
    function_tool_dicts,
    normalize_input,
    responses_prompt,
    text_format,
)
from gptoss.engine.guided import GrammarConstraint
from gptoss.engine.sampling import SamplingParams
from gptoss.harmony import stop_tokens_for_assistant_actions
from gptoss.server.errors import APIError
from gptoss.server.generation import Completion, cancel_on_disconnect, run_completion
from gptoss.server.schemas import ResponsesRequest
from gptoss.server.store import ResponseStore

log = logging.getLogger("gptoss.server")


def register(app, state) -> None:
    store = ResponseStore(state.config.store_path)
    state.response_store = store

    @app.on_event("shutdown")
    async def _close_store():
        store.close()

    @app.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request):
        turn = _prepare(state, store, body)
        events = _events(state, store, turn)
        if body.stream:
            return StreamingResponse(_sse(state, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        task = asyncio.ensure_future(_last(events))
        watcher = asyncio.ensure_future(cancel_on_disconnect(request, [task]))
        try:
            final = await task
        except asyncio.CancelledError:
            state.metrics.requests.labels("responses", "disconnected").inc()
            raise
        finally:
            watcher.cancel()
        if isinstance(final, ResponseFailedEvent):
            raise APIError(500, final.response.error.message if final.response.error else "generation failed",
                           type="server_error")
        state.metrics.requests.labels("responses", "ok").inc()
        return final.response.model_dump(exclude_none=True)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str):
        return _stored(store, response_id).response

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str):
        _stored(store, response_id)
        store.delete(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}


def _stored(store: ResponseStore, response_id: str, param: str | None = None):
    stored = store.get(response_id)
    if stored is None:
        raise APIError(404, f"no stored response with id {response_id!r} (responses created with store=false are "
                            "not kept)", type="not_found_error", param=param, code="response_not_found")
    return stored


# ---------------------------------------------------------------------------------------------- request
@dataclass
class _Turn:
    """Everything about one request that the generation needs."""

    body: ResponsesRequest
    id: str
    created: int
    effort: str
    items: list[dict[str, Any]]  # the resolved input: earlier turns first
    tools: list[dict[str, Any]]
    prompt_ids: list[int]
    prefix_len: int
    params: SamplingParams
    seq: itertools.count = field(default_factory=itertools.count)

    def response(self, status: str, output: list[BaseModel], usage: ResponseUsage | None = None,
                 incomplete: str | None = None, error: str | None = None) -> Response:
        b = self.body
        return Response(
            id=self.id, object="response", created_at=self.created, model=b.model, status=status,
            output=output, usage=usage, instructions=b.instructions, tools=self.tools,
            tool_choice=b.tool_choice if b.tool_choice is not None else "auto", parallel_tool_calls=False,
            temperature=b.temperature, top_p=b.top_p, max_output_tokens=b.max_output_tokens,
            previous_response_id=b.previous_response_id, reasoning={"effort": self.effort},
            text=b.text or {"format": {"type": "text"}}, metadata=b.metadata, store=b.store,
            incomplete_details={"reason": incomplete} if incomplete else None,
            error=ResponseError(code="server_error", message=error) if error else None,
            completed_at=int(time.time()) if status == "completed" else None,
        )


def _prepare(state, store: ResponseStore, body: ResponsesRequest) -> _Turn:
    state.check_model(body.model)
    tok = state.tokenizer
    persona = state.config.persona
    new_items = normalize_input(body.input)
    previous: list[dict[str, Any]] = []
    if body.previous_response_id:
        stored = _stored(store, body.previous_response_id, "previous_response_id")
        previous = stored.input_items + stored.output_items
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    functions, hosted = function_tool_dicts(tools)
    if hosted:
        i = next(i for i, t in enumerate(tools) if t.get("type") != "function")
        raise APIError(400, f"tools[{i}].type: {hosted[0]!r} tools are not supported by this server; expected "
                            "'function'", param=f"tools[{i}].type", code="unsupported_tool")
    if isinstance(body.tool_choice, dict) and body.tool_choice.get("type") not in ("function", None):
        raise APIError(400, f"tool_choice: {body.tool_choice.get('type')!r} is not supported; expected auto, none, "
                            "required or {\"type\": \"function\", \"name\": ...}", param="tool_choice")
    grammar = turn_grammar(persona, function_tools(functions), body.tool_choice, text_format(body.text))
    effort = (body.reasoning.effort if body.reasoning else None) or persona.default_effort
    items = previous + new_items
    prompt = responses_prompt(persona, items, body.instructions, functions, effort, first_new=len(previous))
    prompt_ids, prefix_len = prompt.tokens(tok)
    try:
        max_tokens = state.check_length(len(prompt_ids), body.max_output_tokens, "max_output_tokens")
    except APIError as exc:
        if exc.param == "messages":
            exc.param = "input"
        raise
    try:
        lark = grammar.lark()
    except ValueError as exc:
        raise ConversationError(str(exc), "tool_choice") from None
    params = SamplingParams(
        temperature=body.temperature, top_p=body.top_p, max_tokens=max_tokens, seed=body.seed,
        stop_token_ids=stop_tokens_for_assistant_actions(tok), logits_processors=[GrammarConstraint(tok, lark)],
    )
    # Arguments always follow the schema (the grammar enforces it): every function tool is strict.
    echo_tools = [{"type": "function", "name": t["name"], "description": t.get("description"),
                   "parameters": t.get("parameters"), "strict": True} for t in tools]
    return _Turn(body=body, id="resp_" + secrets.token_hex(24), created=int(time.time()), effort=effort,
                 items=items, tools=echo_tools, prompt_ids=prompt_ids, prefix_len=prefix_len, params=params)


# ---------------------------------------------------------------------------------------------- generation
async def _events(state, store: ResponseStore, turn: _Turn) -> AsyncIterator[BaseModel]:
    """The SDK-typed events of one response, ending with completed / incomplete / failed."""
    seq = turn.seq
    yield ResponseCreatedEvent(type="response.created", sequence_number=next(seq),
                               response=turn.response("in_progress", []))
    yield ResponseInProgressEvent(type="response.in_progress", sequence_number=next(seq),
                                  response=turn.response("in_progress", []))
    state.metrics.prompt_tokens.inc(len(turn.prompt_ids))
    items = TurnItems()
    comp: Completion | None = None
    try:
        run = run_completion(state.engine, state.tokenizer, turn.prompt_ids, turn.prefix_len, turn.params)
        async for comp, _ in run:
            for ev in items.update(comp.decoder.parser):
                for out in _item_events(ev, seq):
                    yield out
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # report what went wrong in the response; the server keeps serving
        log.exception("response %s failed", turn.id)
        failed = turn.response("failed", [_sdk_item(i, None if i.done else "incomplete") for i in items.items], error=f"generation failed: {exc}")
        _save(store, turn, failed, items)
        state.metrics.requests.labels("responses", "failed").inc()
        yield ResponseFailedEvent(type="response.failed", sequence_number=next(seq), response=failed)
        return
    assert comp is not None
    _observe(state, comp)
    truncated = comp.finish_reason == "length"
    output = [_sdk_item(i) for i in items.items]
    final = turn.response("incomplete" if truncated else "completed", output,
                          _usage(len(turn.prompt_ids), comp.tokens, comp.decoder.reasoning_tokens),
                          incomplete="max_output_tokens" if truncated else None)
    _save(store, turn, final, items)
    if truncated:
        yield ResponseIncompleteEvent(type="response.incomplete", sequence_number=next(seq), response=final)
    else:
        yield ResponseCompletedEvent(type="response.completed", sequence_number=next(seq), response=final)


def _save(store: ResponseStore, turn: _Turn, response: Response, items: TurnItems) -> None:
    if turn.body.store:
        store.put(turn.id, response.model_dump(exclude_none=True), turn.items,
                  [_sdk_item(i).model_dump(exclude_none=True) for i in items.items])


async def _last(events: AsyncIterator[BaseModel]) -> BaseModel:
    last = None
    async for last in events:
        pass
    return last


async def _sse(state, events: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for ev in events:
            yield f"event: {ev.type}\ndata: {ev.model_dump_json(exclude_none=True)}\n\n"
            if ev.type in ("response.completed", "response.incomplete"):
                state.metrics.requests.labels("responses", "ok").inc()
    except asyncio.CancelledError:
        state.metrics.requests.labels("responses", "disconnected").inc()
        raise


def _observe(state, c: Completion) -> None:
    state.metrics.tokens.inc(c.tokens)
    if c.first_token_at is not None:
        state.metrics.ttft.observe(c.first_token_at - c.started)
        if c.tokens > 1 and c.last_token_at is not None:
            state.metrics.tpot.observe((c.last_token_at - c.first_token_at) / (c.tokens - 1))


def _usage(prompt: int, output: int, reasoning: int) -> ResponseUsage:
    return ResponseUsage(input_tokens=prompt, output_tokens=output, total_tokens=prompt + output,
                         input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                         output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning))


# ---------------------------------------------------------------------------------------------- items
def _sdk_item(item: OutputItem, status: str | None = None) -> BaseModel:
    """An output item as the SDK type: ``in_progress`` until done, then ``completed``, or ``incomplete``
    when the end of generation (max_output_tokens) cut it off."""
    status = status or ("in_progress" if not item.done else "completed" if item.complete else "incomplete")
    if item.kind == "reasoning":
        content = [ReasoningContent(type="reasoning_text", text=item.text)] if item.done else []
        return ResponseReasoningItem(id=item.id, type="reasoning", summary=[], content=content, status=status)
    if item.kind == "function_call":
        return ResponseFunctionToolCall(id=item.id, type="function_call", call_id=item.call_id, name=item.name,
                                        arguments=item.text if item.done else "", status=status)
    content = [ResponseOutputText(type="output_text", text=item.text, annotations=[])] if item.done else []
    return ResponseOutputMessage(id=item.id, type="message", role="assistant", status=status, content=content,
                                 phase=item.phase)


def _item_events(ev: ItemEvent, seq: itertools.count) -> list[BaseModel]:
    item = ev.item
    at = {"item_id": item.id, "output_index": item.index}
    if ev.kind == "added":
        out: list[BaseModel] = [ResponseOutputItemAddedEvent(type="response.output_item.added", output_index=item.index,
                                                             item=_sdk_item(item), sequence_number=next(seq))]
        if item.kind == "reasoning":
            out.append(ResponseContentPartAddedEvent(type="response.content_part.added", content_index=0, **at,
                                                     part=PartReasoningText(type="reasoning_text", text=""),
                                                     sequence_number=next(seq)))
        elif item.kind == "message":
            out.append(ResponseContentPartAddedEvent(type="response.content_part.added", content_index=0, **at,
                                                     part=ResponseOutputText(type="output_text", text="", annotations=[]),
                                                     sequence_number=next(seq)))
        return out
    if ev.kind == "delta":
        if item.kind == "reasoning":
            return [ResponseReasoningTextDeltaEvent(type="response.reasoning_text.delta", content_index=0, **at,
                                                    delta=ev.text, sequence_number=next(seq))]
        if item.kind == "function_call":
            return [ResponseFunctionCallArgumentsDeltaEvent(type="response.function_call_arguments.delta", **at,
                                                            delta=ev.text, sequence_number=next(seq))]
        return [ResponseTextDeltaEvent(type="response.output_text.delta", content_index=0, **at, delta=ev.text,
                                       logprobs=[], sequence_number=next(seq))]
    # done
    done = _sdk_item(item)
    out = []
    if item.kind == "reasoning":
        out.append(ResponseReasoningTextDoneEvent(type="response.reasoning_text.done", content_index=0, **at,
                                                  text=item.text, sequence_number=next(seq)))
        out.append(ResponseContentPartDoneEvent(type="response.content_part.done", content_index=0, **at,
                                                part=DonePartReasoningText(type="reasoning_text", text=item.text),
                                                sequence_number=next(seq)))
    elif item.kind == "function_call":
        out.append(ResponseFunctionCallArgumentsDoneEvent(type="response.function_call_arguments.done", **at,
                                                          name=item.name, arguments=item.text,
                                                          sequence_number=next(seq)))
    else:
        out.append(ResponseTextDoneEvent(type="response.output_text.done", content_index=0, **at, text=item.text,
                                         logprobs=[], sequence_number=next(seq)))
        out.append(ResponseContentPartDoneEvent(type="response.content_part.done", content_index=0, **at,
                                                part=ResponseOutputText(type="output_text", text=item.text,
                                                                        annotations=[]),
                                                sequence_number=next(seq)))
    out.append(ResponseOutputItemDoneEvent(type="response.output_item.done", output_index=item.index, item=done,
                                           sequence_number=next(seq)))
    return out
