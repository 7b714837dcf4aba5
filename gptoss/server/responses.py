"""``POST /v1/responses``, ``GET /v1/responses/{id}``, ``DELETE /v1/responses/{id}``: the Responses API.

Request items become a Harmony conversation (conversation/openai_responses.py), each assistant turn runs
on the engine under the turn grammar, and :class:`TurnItems` cuts what the model emits into output
items. The turns follow each other in the tool loop (:meth:`~gptoss.conversation.tool_loop.ToolLoop.arun`,
which this route drives with its own turns): when the model calls a built-in tool (``web_search`` ->
browser, ``code_interpreter`` -> python, an MCP server's tool), the tool's answer joins the conversation
and the next turn follows, in the same response. One generator of SDK-typed events serves both modes: a
stream sends each event as Server-Sent Events (``event: <type>`` / ``data: <json>``), a plain request
keeps only the final Response. Responses with ``store`` (the default) are saved in SQLite with their
input and output items, so ``previous_response_id`` continues them, also after a restart.

Event order: response.created, response.in_progress, then for each output item:

- reasoning: output_item.added, content_part.added, reasoning_text.delta..., reasoning_text.done,
  content_part.done, output_item.done
- message: output_item.added, content_part.added, output_text.delta..., output_text.done,
  content_part.done, output_item.done
- function_call: output_item.added, function_call_arguments.delta..., function_call_arguments.done,
  output_item.done
- code_interpreter_call: output_item.added, code_interpreter_call.in_progress,
  code_interpreter_call_code.delta..., code_interpreter_call_code.done, code_interpreter_call.interpreting,
  (the code runs) code_interpreter_call.completed, output_item.done
- web_search_call: output_item.added, web_search_call.in_progress, web_search_call.searching, (the
  browser runs) web_search_call.completed, output_item.done

and finally response.completed (response.incomplete when max_output_tokens cut the turn, response.failed
on an error). Every event carries a sequence_number, counting from 0.

Built-in tools come from ``ServerConfig.toolbox`` (a :class:`~gptoss.tools.Toolbox` whose tools are
templates: each response gets fresh ones through ``new_conversation()``); without one, requests for
them are a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

from fastapi import Request
from fastapi.responses import StreamingResponse
from openai.types.responses import (
    Response,
    ResponseCodeInterpreterCallCodeDeltaEvent,
    ResponseCodeInterpreterCallCodeDoneEvent,
    ResponseCodeInterpreterCallCompletedEvent,
    ResponseCodeInterpreterCallInProgressEvent,
    ResponseCodeInterpreterCallInterpretingEvent,
    ResponseCodeInterpreterToolCall,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseError,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseFunctionWebSearch,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseMcpCallArgumentsDeltaEvent,
    ResponseMcpCallArgumentsDoneEvent,
    ResponseMcpCallCompletedEvent,
    ResponseMcpCallFailedEvent,
    ResponseMcpCallInProgressEvent,
    ResponseMcpListToolsCompletedEvent,
    ResponseMcpListToolsInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseOutputTextAnnotationAddedEvent,
    ResponseReasoningItem,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
    ResponseWebSearchCallCompletedEvent,
    ResponseWebSearchCallInProgressEvent,
    ResponseWebSearchCallSearchingEvent,
)
from openai.types.responses.response_content_part_added_event import PartReasoningText
from openai.types.responses.response_content_part_done_event import PartReasoningText as DonePartReasoningText
from openai.types.responses.response_output_item import McpCall, McpListTools, McpListToolsTool
from openai.types.responses.response_output_text import AnnotationURLCitation
from openai.types.responses.response_reasoning_item import Content as ReasoningContent
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from gptoss.conversation.openai_chat import ConversationError, ServerPersona, function_tools
from gptoss.conversation.openai_responses import (
    HARMONY_KEY,
    HOSTED_TOOLS,
    ItemEvent,
    McpRequest,
    OutputItem,
    TurnItems,
    mcp_requests,
    namespaces,
    normalize_input,
    responses_grammar,
    responses_prompt,
    split_tools,
    text_format,
)
from gptoss.conversation.session import TurnResult
from gptoss.conversation.tool_loop import LoopFinished, ToolCallFinished, ToolCallStarted, ToolLoop
from gptoss.conversation.turn import TurnPrompt
from gptoss.engine.guided import GrammarConstraint
from gptoss.engine.sampling import SamplingParams, offset_seed
from gptoss.harmony import Message, stop_tokens_for_assistant_actions
from gptoss.server.errors import APIError
from gptoss.server.generation import cancel_on_disconnect, dump, dump_json, observe, run_completion
from gptoss.server.guarding import guard_response_events, guard_tool_messages, hidden_reasoning
from gptoss.server.schemas import ResponsesRequest
from gptoss.server.state import cache_salt, key_owner, message_texts
from gptoss.server.store import ResponseStore
from gptoss.tools.base import Toolbox, ToolCall

log = logging.getLogger("gptoss.server")
DEFAULT_MAX_TOOL_CALLS = 16


def register(app, state) -> None:
    store = ResponseStore(state.config.store_path, ttl=state.config.store_ttl)
    state.response_store = store
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_):
        async with inner(app_) as value:
            templates = getattr(state.config, "toolbox", None)
            if templates is not None:  # what the sandboxes of a server that crashed left (folders, mounts, cgroups)
                removed = await run_in_threadpool(templates.sweep_stale)
                if removed:
                    log.info("removed %d things left by the tools of an earlier server that died", len(removed))
            try:
                yield value
            finally:
                await _closing.wait(timeout=60)
        store.close()

    app.router.lifespan_context = lifespan

    @app.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request):
        texts = [body.input] if isinstance(body.input, str) else list(message_texts(body.input))
        state.check_text_size(texts + [body.instructions or ""], "input")
        owner = key_owner(request)
        mcp = await _offer_mcp(state, body)  # listed from the servers before the prompt is rendered
        turn = await run_in_threadpool(
            _prepare, state, store, body, owner, mcp
        )  # rendering and tokenizing: off the loop
        turn.cache_salt = cache_salt(request, state.config)
        if body.store:
            store.claim(turn.id, owner)
        events = _recorded(store, turn, guard_response_events(state, store, turn, _events(state, store, turn)))
        if body.stream:
            return StreamingResponse(
                _sse(state, events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
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
            raise APIError(
                500, final.response.error.message if final.response.error else "generation failed", type="server_error"
            )
        state.metrics.requests.labels("responses", "ok").inc()
        return dump(final.response)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request, stream: bool = False, starting_after: int | None = None):
        stored = _stored(store, response_id, owner=key_owner(request))
        if not stream:
            return stored.response
        events = store.events(response_id)
        if events is None:
            raise APIError(
                400,
                f"stream: response {response_id!r} was stored without its events; retrieve it without stream=true",
                param="stream",
            )
        if starting_after is not None and not -1 <= starting_after < len(events):
            raise APIError(
                400,
                f"starting_after: expected a sequence number from -1 to {len(events) - 1} "
                f"(the response streamed {len(events)} events), found {starting_after}",
                param="starting_after",
            )
        first = 0 if starting_after is None else starting_after + 1

        async def replay():
            for ev in events[first:]:
                yield f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n"

        return StreamingResponse(replay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/responses/{response_id}/input_items")
    async def input_items(
        response_id: str,
        request: Request,
        after: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
    ):
        if not 1 <= limit <= 100:
            raise APIError(400, f"limit: expected 1 to 100, found {limit}", param="limit")
        stored = _stored(store, response_id, owner=key_owner(request))
        items = [_listed_item(item, f"{response_id}:{k}") for k, item in enumerate(stored.input_items)]
        if hidden_reasoning(state):  # earlier turns' reasoning stays as hidden as their responses
            items = [
                {k: v for k, v in i.items() if k != "content"} if i.get("type") == "reasoning" else i for i in items
            ]
        if order == "desc":
            items.reverse()
        if after is not None:
            at = next((k for k, item in enumerate(items) if item["id"] == after), None)
            if at is None:
                raise APIError(400, f"after: {after!r} is not an input item of response {response_id!r}", param="after")
            items = items[at + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, request: Request):
        owner = key_owner(request)
        _stored(store, response_id, owner=owner)
        store.delete(response_id, owner)
        return {"id": response_id, "object": "response.deleted", "deleted": True}


def _listed_item(item: dict[str, Any], fallback_id: str) -> dict[str, Any]:
    """A stored input item as ``input_items`` lists it: the SDK's ResponseItem shape, with an id (items sent
    without one get ``RESPONSE_ID:INDEX``, stable across calls)."""
    out = {k: v for k, v in item.items() if k != HARMONY_KEY}
    out.setdefault("id", fallback_id)
    if out.get("type") == "message":
        content = out.get("content")
        if isinstance(content, str):
            kind = "output_text" if out.get("role") == "assistant" else "input_text"
            out["content"] = [{"type": kind, "text": content} | ({"annotations": []} if kind == "output_text" else {})]
        out.setdefault("status", "completed")
    elif out.get("type") in ("function_call", "function_call_output"):
        out.setdefault("status", "completed")
    return out


def _forces(tool_choice: Any, builtin: str) -> bool:
    return isinstance(tool_choice, dict) and HOSTED_TOOLS.get(tool_choice.get("type")) == builtin


def _stored(store: ResponseStore, response_id: str, param: str | None = None, owner: str | None = None):
    """A stored response ``owner`` may see (another key's is as absent as a missing one)."""
    stored = store.get(response_id, owner)
    if stored is None:
        raise APIError(
            404,
            f"no stored response with id {response_id!r} (responses created with store=false are not kept)",
            type="not_found_error",
            param=param,
            code="response_not_found",
        )
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
    tools: list[dict[str, Any]]  # as echoed in the Response
    prompt: TurnPrompt
    functions: dict[str, dict | None]
    builtins: list[str]  # "browser", "python"
    toolbox: Toolbox | None  # the server's templates for the built-in tools
    max_tokens: int | None  # max_output_tokens over all turns of the response
    persona: ServerPersona
    seq: itertools.count = field(default_factory=itertools.count)
    live_tools: Any = None  # this response's own built-in tools while it runs (the browser's pages: citations)
    namespaces: set[str] = field(default_factory=set)  # of namespace tools: their functions are NAMESPACE.NAME
    cache_salt: str | None = None  # whose cached prefixes it may reuse (see app.cache_salt)
    mcp: list[Any] = field(default_factory=list)  # gptoss.tools.mcp.McpTool: the MCP servers offered, their tools

    def namespace_tools(self) -> dict[str, dict | None]:
        from gptoss.harmony.grammar import closed_schema

        return {r: closed_schema(s) for tool in self.mcp for r, s in tool.recipients().items()}

    @property
    def tool_choice(self) -> Any:
        choice = self.body.tool_choice if self.body.tool_choice is not None else "auto"
        if isinstance(choice, dict) and choice.get("type") in ("web_search", "web_search_2025_08_26", "browser_search"):
            return {"type": "web_search_preview"}  # how the SDK's ToolChoiceTypes spells a forced web search
        return choice

    @property
    def container_id(self) -> str:
        return "cntr_" + self.id.removeprefix("resp_")

    def response(
        self,
        status: str,
        output: list[BaseModel],
        usage: ResponseUsage | None = None,
        incomplete: str | None = None,
        error: str | None = None,
    ) -> Response:
        b = self.body
        return Response(
            id=self.id,
            object="response",
            created_at=self.created,
            model=b.model,
            status=status,
            output=output,
            usage=usage,
            instructions=b.instructions,
            tools=self.tools,
            tool_choice=self.tool_choice,
            parallel_tool_calls=b.parallel_tool_calls,
            temperature=b.temperature,
            top_p=b.top_p,
            max_output_tokens=b.max_output_tokens,
            max_tool_calls=b.max_tool_calls,
            previous_response_id=b.previous_response_id,
            reasoning={"effort": self.effort},
            text=b.text or {"format": {"type": "text"}},
            metadata=b.metadata,
            store=b.store,
            incomplete_details={"reason": incomplete} if incomplete else None,
            error=ResponseError(code="server_error", message=error) if error else None,
            completed_at=int(time.time()) if status == "completed" else None,
        )

    @property
    def max_tool_calls(self) -> int:
        return self.body.max_tool_calls if self.body.max_tool_calls is not None else DEFAULT_MAX_TOOL_CALLS

    def grammar(self, calls: int) -> str:
        """The Lark grammar of the assistant turn after ``calls`` built-in tool calls ran."""
        builtins = self.builtins if calls < self.max_tool_calls else []
        g = responses_grammar(
            self.persona,
            self.functions,
            builtins,
            self.body.tool_choice,
            text_format(self.body.text),
            first_turn=calls == 0,
            namespace_tools=self.namespace_tools() if calls < self.max_tool_calls else None,
        )
        try:
            return g.lark()
        except ValueError as exc:
            raise ConversationError(str(exc), "tool_choice") from None


def _effort(body: ResponsesRequest) -> str | None:
    """``reasoning.effort``, or the top-level ``reasoning_effort`` (how Chat Completions and the reference
    gpt-oss server spell it); both given and different is a 400 rather than a silent choice."""
    nested = body.reasoning.effort if body.reasoning else None
    if nested and body.reasoning_effort and nested != body.reasoning_effort:
        raise APIError(
            400,
            f"reasoning_effort: {body.reasoning_effort!r} disagrees with reasoning.effort {nested!r}; send one of them",
            param="reasoning_effort",
        )
    return nested or body.reasoning_effort


async def _offer_mcp(state, body: ResponsesRequest) -> list[Any]:
    """The ``mcp`` tools of a request as :class:`~gptoss.tools.mcp.McpTool` s: each must name a server the
    operator declared (``--mcp NAME=URL``; a ``server_url`` other than the declared one is refused, so no
    client can make this server connect anywhere), its tools listed from it and filtered by ``allowed_tools``."""
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    if not any(t.get("type") == "mcp" for t in tools):
        return []
    state.check_model(body.model)  # before any server is reached
    try:
        wanted: list[McpRequest] = mcp_requests(tools)
    except ConversationError as exc:
        raise APIError(400, str(exc), param=exc.param) from None
    if not wanted:
        return []
    from gptoss.tools.mcp import McpError, McpTool, list_mcp_tools

    declared = getattr(state.config, "mcp_servers", {}) or {}
    offered = []
    for req in wanted:
        where = f"tools[{req.index}]"
        url = declared.get(req.server_label)
        if url is None:
            names = ", ".join(sorted(declared)) or "none"
            raise APIError(
                400,
                f"{where}.server_label: {req.server_label!r} is not an MCP server this server trusts "
                f"(declared with gptoss serve --mcp NAME=URL: {names})",
                param=f"{where}.server_label",
                code="unsupported_tool",
            )
        if req.server_url is not None and req.server_url.rstrip("/") != url.rstrip("/"):
            raise APIError(
                400,
                f"{where}.server_url: only the URL the operator declared for {req.server_label!r} "
                "may be used; leave server_url out",
                param=f"{where}.server_url",
                code="unsupported_tool",
            )
        try:
            listed = await list_mcp_tools(req.server_label, url)
        except McpError as exc:
            raise APIError(502, str(exc), type="server_error", param=f"{where}.server_label") from None
        if req.allowed_tools is not None:
            listed = [t for t in listed if t.name in set(req.allowed_tools)]
        offered.append(McpTool(req.server_label, url, listed))
    return offered


def _prepare(
    state, store: ResponseStore, body: ResponsesRequest, owner: str | None = None, mcp: list[Any] = ()
) -> _Turn:
    state.check_model(body.model)
    tok = state.tokenizer
    persona = state.config.persona
    new_items = normalize_input(body.input)
    previous: list[dict[str, Any]] = []
    if body.previous_response_id:
        stored = _stored(store, body.previous_response_id, "previous_response_id", owner)
        previous = stored.input_items + stored.output_items
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    functions, builtins = split_tools(tools)
    templates: Toolbox | None = getattr(state.config, "toolbox", None)
    for name in list(builtins):
        if templates is None or templates.get(name) is None:
            i = next(i for i, t in enumerate(tools) if HOSTED_TOOLS.get(t.get("type")) == name)
            if name == "browser" and not _forces(body.tool_choice, "browser"):
                # Searching is the model's choice, and answering without it is a valid answer: clients that
                # always declare web_search (Codex) keep working on a server without a browser.
                log.warning(
                    "tools[%d]: %s is ignored: this server has no browser tool (--tools browser)",
                    i,
                    tools[i].get("type"),
                )
                builtins.remove(name)
                continue
            kind = tools[i].get("type")
            raise APIError(
                400,
                f"tools[{i}].type: this server has no {name} tool for {kind} (start the server "
                f"with the {name} tool enabled)",
                param=f"tools[{i}].type",
                code="unsupported_tool",
            )
    effort = _effort(body) or persona.default_effort
    items = previous + new_items
    prompt = responses_prompt(
        persona,
        items,
        body.instructions,
        functions,
        effort,
        first_new=len(previous),
        builtin_tools=builtins,
        response_format=text_format(body.text),
        namespaces=[t.namespace() for t in mcp],
    )
    echo = [t if t.get("type") != "code_interpreter" else {"container": {"type": "auto"}} | t for t in tools]
    # browser_search (the reference server's name) is echoed as the SDK's own type for the same tool
    echo = [t if t.get("type") != "browser_search" else {"type": "web_search"} for t in echo]
    turn = _Turn(
        body=body,
        id="resp_" + secrets.token_hex(24),
        created=int(time.time()),
        effort=effort,
        items=items,
        tools=echo,
        prompt=prompt,
        functions=function_tools(functions),
        builtins=builtins,
        toolbox=templates if builtins else None,
        max_tokens=body.max_output_tokens,
        persona=persona,
        namespaces=namespaces(tools),
        mcp=list(mcp),
    )
    turn.grammar(0)  # a bad tool_choice or text.format is a 400 before anything runs
    try:
        turn.response("in_progress", [])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[:1])
        raise APIError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None) from None
    prompt_ids, _ = prompt.tokens(tok)
    try:
        state.check_length(len(prompt_ids), body.max_output_tokens, "max_output_tokens")
    except APIError as exc:
        if exc.param == "messages":
            exc.param = "input"
        raise
    return turn


# ---------------------------------------------------------------------------------------------- generation
@dataclass
class _Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # of input_tokens, found in the prefix cache


@dataclass
class _Generation:
    """What the tool loop asks of one response: its turns, generated under the turn grammar within the
    max_output_tokens budget and cut into output items (``items``); which calls run here; and the item of
    a built-in call once it ran."""

    state: Any
    turn: _Turn
    toolbox: Toolbox | None  # this response's built-in tools (None: it has none)
    items: list[OutputItem] = field(default_factory=list)
    totals: _Totals = field(default_factory=_Totals)
    messages: list[Message] = field(default_factory=list)  # the conversation: the prompt, then each turn's

    async def generate_turn(self, calls: int) -> AsyncIterator[BaseModel | TurnResult]:
        state, turn, tok = self.state, self.turn, self.state.tokenizer
        prompt_ids, _ = await run_in_threadpool(TurnPrompt(self.messages, turn.prompt.shared).tokens, tok)
        room = state.max_model_len - len(prompt_ids)
        budget = room if turn.max_tokens is None else min(room, turn.max_tokens - self.totals.output_tokens)
        if budget <= 0:  # the budget went to earlier turns (or the context is full): a turn cut at once
            yield TurnResult([], "length", 0, [])
            return
        # compiling the turn grammar (large tool schemas: seconds) runs off the event loop, like tokenizing
        constraint = await run_in_threadpool(lambda: GrammarConstraint(tok, turn.grammar(calls)))
        params = SamplingParams(
            temperature=turn.body.temperature,
            top_p=turn.body.top_p,
            max_tokens=budget,
            seed=offset_seed(turn.body.seed, calls),
            stop_token_ids=stop_tokens_for_assistant_actions(tok),
            logits_processors=[constraint],
            lora=state.lora_of(turn.body.model),
        )
        state.metrics.prompt_tokens.inc(len(prompt_ids))
        cutter = TurnItems(self.items, mcp_labels={t.label for t in turn.mcp})
        comp = None
        async for comp, _ in run_completion(state.engine, tok, prompt_ids, turn.cache_salt, params):
            for ev in cutter.update(comp.decoder.parser):
                for out in _item_events(ev, turn.seq, turn):
                    yield out
        assert comp is not None
        observe(state.metrics, comp)
        self.totals.input_tokens += len(prompt_ids)
        self.totals.cached_tokens += comp.cached_tokens
        self.totals.output_tokens += comp.tokens
        self.totals.reasoning_tokens += comp.decoder.reasoning_tokens
        self.messages.extend(comp.decoder.messages)
        yield TurnResult(comp.decoder.messages, comp.finish_reason, comp.tokens, [])

    def runs_here(self, call: ToolCall) -> bool:
        """A built-in call written out whole runs here; functions go back to the client."""
        last = self.items[-1] if self.items else None
        return self.toolbox is not None and last is not None and last.builtin and last.complete

    async def after_call(self, call: ToolCall, finished: ToolCallFinished) -> list[Message]:
        """The call's item from its result; the messages the model reads, after --guard-checks tools."""
        last = self.items[-1]
        last.status = finished.status
        last.action = finished.metadata.get("action", last.action)
        last.output, last.error = finished.metadata.get("output"), finished.metadata.get("error")
        answer = await guard_tool_messages(self.state, self.turn.id, finished.messages)
        last.outputs = finished.metadata.get("outputs")
        if answer != finished.messages:  # the client sees what the model reads: the withheld notice, not the result
            last.outputs = [{"type": "logs", "logs": "\n".join(m.text for m in answer if isinstance(m.text, str))}]
        if last.kind == "mcp_call" and last.error is None:  # what the model read (a withheld notice, if so)
            last.output = "\n".join(m.text for m in answer)
        last.harmony = [call.message] + answer
        return answer


async def _events(state, store: ResponseStore, turn: _Turn) -> AsyncIterator[BaseModel]:
    """The SDK-typed events of one response, ending with completed / incomplete / failed."""
    seq = turn.seq
    yield ResponseCreatedEvent(
        type="response.created", sequence_number=next(seq), response=turn.response("in_progress", [])
    )
    yield ResponseInProgressEvent(
        type="response.in_progress", sequence_number=next(seq), response=turn.response("in_progress", [])
    )
    toolbox = None
    if turn.toolbox is not None or turn.mcp:  # built-in tools: fresh ones for this response
        toolbox = Toolbox(
            [turn.toolbox.get(n).new_conversation() for n in turn.builtins if turn.toolbox is not None]
            + [t.new_conversation() for t in turn.mcp]
        )
        turn.live_tools = toolbox
    gen = _Generation(state, turn, toolbox, messages=list(turn.prompt.messages))
    items = gen.items
    loop = ToolLoop(toolbox if toolbox is not None else Toolbox(), max_tool_calls=turn.max_tool_calls)
    for tool in turn.mcp:  # the tools offered from each MCP server, first in the output (as OpenAI lists them)
        listed = OutputItem(
            "mcp_list_tools", "mcpl_" + secrets.token_hex(16), len(items), name=tool.label, done=True, complete=True
        )
        items.append(listed)
        for out in _mcp_listed_events(listed, seq, turn):
            yield out
    truncated = False  # max_output_tokens (or the context) ended the response before the model did
    try:
        async for ev in loop.arun(gen.messages, gen.generate_turn, runs_here=gen.runs_here, after_call=gen.after_call):
            if isinstance(ev, BaseModel):
                yield ev
            elif isinstance(ev, ToolCallStarted):
                items[-1].action = ev.details.get("action")
            elif isinstance(ev, ToolCallFinished):
                for out in _builtin_done(items[-1], seq, turn):
                    yield out
            elif isinstance(ev, LoopFinished):
                truncated = ev.reason == "length"
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # report what went wrong in the response; the server keeps serving
        log.exception("response %s failed", turn.id)
        failed = turn.response(
            "failed",
            [_sdk_item(i, turn, None if i.done else "incomplete") for i in items],
            error=f"generation failed: {exc}",
        )
        end: BaseModel = ResponseFailedEvent(type="response.failed", sequence_number=next(seq), response=failed)
        _save(store, turn, end, items)
        state.metrics.requests.labels("responses", "failed").inc()
        yield end
        return
    finally:
        if toolbox is not None:
            await _closing.close(toolbox)
    for item in items:  # a built-in call that did not run (the loop stopped): close it
        if item.builtin and item.done and item.complete and item.status is None:
            item.status = "incomplete"
            yield ResponseOutputItemDoneEvent(
                type="response.output_item.done",
                output_index=item.index,
                item=_sdk_item(item, turn),
                sequence_number=next(seq),
            )
    output = [_sdk_item(i, turn) for i in items]
    final = turn.response(
        "incomplete" if truncated else "completed",
        output,
        _usage(gen.totals),
        incomplete="max_output_tokens" if truncated else None,
    )
    if truncated:
        end = ResponseIncompleteEvent(type="response.incomplete", sequence_number=next(seq), response=final)
    else:
        end = ResponseCompletedEvent(type="response.completed", sequence_number=next(seq), response=final)
    _save(store, turn, end, items)
    yield end


class _Closer:
    """Closes the tools of responses so that a cancellation (a client that went away mid-call) cannot stop it
    half-way and leak a sandbox: each close runs as a task of its own, which the response waits for but
    does not take down when it is cancelled itself; the server waits for the rest when it shuts down."""

    def __init__(self) -> None:
        self.pending: set[asyncio.Task] = set()

    async def close(self, toolbox: Toolbox) -> None:
        task = asyncio.get_running_loop().create_task(self._aclose(toolbox))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        await asyncio.shield(task)  # cancelled here, the close goes on

    @staticmethod
    async def _aclose(toolbox: Toolbox) -> None:
        try:
            await toolbox.aclose()
        except Exception:  # noqa: BLE001 - logged; the server keeps serving
            log.exception("closing a response's tools failed")

    async def wait(self, timeout: float) -> None:
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=timeout)


_closing = _Closer()


async def _recorded(store: ResponseStore, turn: _Turn, events: AsyncIterator[BaseModel]) -> AsyncIterator[BaseModel]:
    """``events`` as the client gets them (after the guard), kept with a stored response once it ends, so
    that ``GET /v1/responses/{id}?stream=true`` replays exactly them."""
    kept: list[dict[str, Any]] = []
    async for ev in events:
        if turn.body.store:
            kept.append(dump(ev))
            if ev.type in ("response.completed", "response.incomplete", "response.failed"):
                store.put_events(turn.id, kept)
        yield ev


def _save(store: ResponseStore, turn: _Turn, end: BaseModel, items: list[OutputItem]) -> None:
    """Store the response of ``end`` (the completed / incomplete / failed event) with its items."""
    if not turn.body.store:
        return
    response = end.response
    output = []
    for item in items:
        d = dump(_sdk_item(item, turn))
        if item.harmony:
            d[HARMONY_KEY] = [m.to_dict() for m in item.harmony]
        output.append(d)
    store.put(turn.id, dump(response), turn.items, output)


async def _last(events: AsyncIterator[BaseModel]) -> BaseModel:
    final = None
    async for ev in events:
        final = ev
    return final


async def _sse(state, events: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for ev in events:
            yield f"event: {ev.type}\ndata: {dump_json(ev)}\n\n"
            if ev.type in ("response.completed", "response.incomplete"):
                state.metrics.requests.labels("responses", "ok").inc()
    except asyncio.CancelledError:
        state.metrics.requests.labels("responses", "disconnected").inc()
        raise


def _usage(t: _Totals) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=t.input_tokens,
        output_tokens=t.output_tokens,
        total_tokens=t.input_tokens + t.output_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=t.cached_tokens, cache_write_tokens=0),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=t.reasoning_tokens),
    )


# ---------------------------------------------------------------------------------------------- items
def _status(item: OutputItem) -> str:
    if not item.done:
        return "in_progress"
    if item.builtin:
        if item.status is not None:
            return item.status
        if item.kind == "mcp_call":
            return "calling" if item.complete else "incomplete"
        return (
            "interpreting"
            if item.kind == "code_interpreter_call" and item.complete
            else ("searching" if item.complete else "incomplete")
        )
    return "completed" if item.complete else "incomplete"


def _web_action(item: OutputItem) -> dict[str, Any]:
    action = dict(item.action or {})
    kind = action.get("type") or {"browser.open": "open_page", "browser.find": "find"}.get(item.name or "", "search")
    if kind == "find":
        return {
            "type": "find_in_page",
            "pattern": str(action.get("pattern") or ""),
            "url": str(action.get("url") or ""),
        }
    if kind == "open_page":
        return {"type": "open_page", "url": action.get("url")}
    return {"type": "search", "query": action.get("query")}


def _sdk_item(item: OutputItem, turn: _Turn, status: str | None = None) -> BaseModel:
    """An output item as the SDK type: ``in_progress`` until done, then ``completed``, or ``incomplete``
    when the end of generation (max_output_tokens) cut it off."""
    status = status or _status(item)
    if item.kind == "reasoning":
        content = [ReasoningContent(type="reasoning_text", text=item.text)] if item.done else []
        return ResponseReasoningItem(id=item.id, type="reasoning", summary=[], content=content, status=status)
    if item.kind == "function_call":
        space, _, short = (item.name or "").rpartition(".")
        name, namespace = (short, space) if space in turn.namespaces else (item.name, None)
        return ResponseFunctionToolCall(
            id=item.id,
            type="function_call",
            call_id=item.call_id,
            name=name,
            namespace=namespace,
            arguments=item.text if item.done else "",
            status=status,
        )
    if item.kind == "code_interpreter_call":
        return ResponseCodeInterpreterToolCall(
            id=item.id,
            type="code_interpreter_call",
            code=item.text,
            container_id=turn.container_id,
            outputs=item.outputs,
            status=status,
        )
    if item.kind == "web_search_call":
        return ResponseFunctionWebSearch(id=item.id, type="web_search_call", action=_web_action(item), status=status)
    if item.kind == "mcp_call":
        label, _, name = (item.name or "").partition(".")
        mcp_status = {"completed": "completed", "failed": "failed", "incomplete": "incomplete"}.get(status, status)
        return McpCall(
            id=item.id,
            type="mcp_call",
            server_label=label,
            name=name,
            arguments=item.text if item.done else "",
            output=item.output,
            error=item.error,
            status=mcp_status,
        )
    if item.kind == "mcp_list_tools":
        tool = next(t for t in turn.mcp if t.label == item.name)
        return McpListTools(
            id=item.id,
            type="mcp_list_tools",
            server_label=tool.label,
            tools=[
                McpListToolsTool(
                    name=t.name,
                    description=t.description,
                    input_schema=t.input_schema or {"type": "object"},
                    annotations=t.annotations,
                )
                for t in tool.tools
            ],
        )
    content = [_output_text(item)] if item.done else []
    return ResponseOutputMessage(
        id=item.id, type="message", role="assistant", status=status, content=content, phase=item.phase
    )


def _output_text(item: OutputItem) -> ResponseOutputText:
    return ResponseOutputText(
        type="output_text", text=item.text, annotations=[AnnotationURLCitation(**a) for a in item.annotations]
    )


def _builtin_done(item: OutputItem, seq: itertools.count, turn: _Turn) -> list[BaseModel]:
    """After a built-in call ran: its completed event, then output_item.done."""
    at = {"item_id": item.id, "output_index": item.index}
    if item.kind == "code_interpreter_call":
        first: BaseModel = ResponseCodeInterpreterCallCompletedEvent(
            type="response.code_interpreter_call.completed", **at, sequence_number=next(seq)
        )
    elif item.kind == "mcp_call":
        if item.status == "completed":
            first = ResponseMcpCallCompletedEvent(type="response.mcp_call.completed", **at, sequence_number=next(seq))
        else:
            first = ResponseMcpCallFailedEvent(type="response.mcp_call.failed", **at, sequence_number=next(seq))
    else:
        first = ResponseWebSearchCallCompletedEvent(
            type="response.web_search_call.completed", **at, sequence_number=next(seq)
        )
    return [
        first,
        ResponseOutputItemDoneEvent(
            type="response.output_item.done",
            output_index=item.index,
            item=_sdk_item(item, turn),
            sequence_number=next(seq),
        ),
    ]


def _item_events(ev: ItemEvent, seq: itertools.count, turn: _Turn) -> list[BaseModel]:
    item = ev.item
    at = {"item_id": item.id, "output_index": item.index}
    if ev.kind == "added":
        out: list[BaseModel] = [
            ResponseOutputItemAddedEvent(
                type="response.output_item.added",
                output_index=item.index,
                item=_sdk_item(item, turn),
                sequence_number=next(seq),
            )
        ]
        if item.kind == "reasoning":
            out.append(
                ResponseContentPartAddedEvent(
                    type="response.content_part.added",
                    content_index=0,
                    **at,
                    part=PartReasoningText(type="reasoning_text", text=""),
                    sequence_number=next(seq),
                )
            )
        elif item.kind == "message":
            out.append(
                ResponseContentPartAddedEvent(
                    type="response.content_part.added",
                    content_index=0,
                    **at,
                    part=ResponseOutputText(type="output_text", text="", annotations=[]),
                    sequence_number=next(seq),
                )
            )
        elif item.kind == "code_interpreter_call":
            out.append(
                ResponseCodeInterpreterCallInProgressEvent(
                    type="response.code_interpreter_call.in_progress", **at, sequence_number=next(seq)
                )
            )
        elif item.kind == "web_search_call":
            out.append(
                ResponseWebSearchCallInProgressEvent(
                    type="response.web_search_call.in_progress", **at, sequence_number=next(seq)
                )
            )
        elif item.kind == "mcp_call":
            out.append(
                ResponseMcpCallInProgressEvent(type="response.mcp_call.in_progress", **at, sequence_number=next(seq))
            )
        return out
    if ev.kind == "delta":
        if item.kind == "reasoning":
            return [
                ResponseReasoningTextDeltaEvent(
                    type="response.reasoning_text.delta",
                    content_index=0,
                    **at,
                    delta=ev.text,
                    sequence_number=next(seq),
                )
            ]
        if item.kind == "function_call":
            return [
                ResponseFunctionCallArgumentsDeltaEvent(
                    type="response.function_call_arguments.delta", **at, delta=ev.text, sequence_number=next(seq)
                )
            ]
        if item.kind == "code_interpreter_call":
            return [
                ResponseCodeInterpreterCallCodeDeltaEvent(
                    type="response.code_interpreter_call_code.delta", **at, delta=ev.text, sequence_number=next(seq)
                )
            ]
        if item.kind == "web_search_call":
            return []  # the search arguments are not streamed; the action comes with the item
        if item.kind == "mcp_call":
            return [
                ResponseMcpCallArgumentsDeltaEvent(
                    type="response.mcp_call_arguments.delta", **at, delta=ev.text, sequence_number=next(seq)
                )
            ]
        return [
            ResponseTextDeltaEvent(
                type="response.output_text.delta",
                content_index=0,
                **at,
                delta=ev.text,
                logprobs=[],
                sequence_number=next(seq),
            )
        ]
    # done
    out = []
    if item.kind == "reasoning":
        out.append(
            ResponseReasoningTextDoneEvent(
                type="response.reasoning_text.done", content_index=0, **at, text=item.text, sequence_number=next(seq)
            )
        )
        out.append(
            ResponseContentPartDoneEvent(
                type="response.content_part.done",
                content_index=0,
                **at,
                part=DonePartReasoningText(type="reasoning_text", text=item.text),
                sequence_number=next(seq),
            )
        )
    elif item.kind == "function_call":
        if not item.complete:  # cut off by max_output_tokens: no arguments.done, the item ends incomplete
            return [
                ResponseOutputItemDoneEvent(
                    type="response.output_item.done",
                    output_index=item.index,
                    item=_sdk_item(item, turn),
                    sequence_number=next(seq),
                )
            ]
        out.append(
            ResponseFunctionCallArgumentsDoneEvent(
                type="response.function_call_arguments.done",
                **at,
                name=_sdk_item(item, turn).name,
                arguments=item.text,
                sequence_number=next(seq),
            )
        )
    elif item.kind == "code_interpreter_call":
        out.append(
            ResponseCodeInterpreterCallCodeDoneEvent(
                type="response.code_interpreter_call_code.done", **at, code=item.text, sequence_number=next(seq)
            )
        )
        if item.complete:  # it runs next; completed and output_item.done follow (_builtin_done)
            out.append(
                ResponseCodeInterpreterCallInterpretingEvent(
                    type="response.code_interpreter_call.interpreting", **at, sequence_number=next(seq)
                )
            )
            return out
    elif item.kind == "web_search_call":
        if item.complete:
            return [
                ResponseWebSearchCallSearchingEvent(
                    type="response.web_search_call.searching", **at, sequence_number=next(seq)
                )
            ]
    elif item.kind == "mcp_call":
        if item.complete:  # it runs next; completed (or failed) and output_item.done follow (_builtin_done)
            return [
                ResponseMcpCallArgumentsDoneEvent(
                    type="response.mcp_call_arguments.done", **at, arguments=item.text, sequence_number=next(seq)
                )
            ]
    else:
        # Browser citations in the answer become url_citation annotations over their 【cursor†Lx-Ly】 spans
        # (the text stays as streamed).
        item.annotations = turn.live_tools.annotate(item.text) if turn.live_tools is not None else []
        for i, ann in enumerate(item.annotations):
            out.append(
                ResponseOutputTextAnnotationAddedEvent(
                    type="response.output_text.annotation.added",
                    content_index=0,
                    **at,
                    annotation_index=i,
                    annotation=ann,
                    sequence_number=next(seq),
                )
            )
        out.append(
            ResponseTextDoneEvent(
                type="response.output_text.done",
                content_index=0,
                **at,
                text=item.text,
                logprobs=[],
                sequence_number=next(seq),
            )
        )
        out.append(
            ResponseContentPartDoneEvent(
                type="response.content_part.done",
                content_index=0,
                **at,
                part=_output_text(item),
                sequence_number=next(seq),
            )
        )
    out.append(
        ResponseOutputItemDoneEvent(
            type="response.output_item.done",
            output_index=item.index,
            item=_sdk_item(item, turn),
            sequence_number=next(seq),
        )
    )
    return out


def _mcp_listed_events(item: OutputItem, seq: itertools.count, turn: _Turn) -> list[BaseModel]:
    """An mcp_list_tools item: added, in_progress, completed, done (the listing ran before the response began)."""
    at = {"item_id": item.id, "output_index": item.index}
    sdk = _sdk_item(item, turn)
    return [
        ResponseOutputItemAddedEvent(
            type="response.output_item.added", output_index=item.index, item=sdk, sequence_number=next(seq)
        ),
        ResponseMcpListToolsInProgressEvent(
            type="response.mcp_list_tools.in_progress", **at, sequence_number=next(seq)
        ),
        ResponseMcpListToolsCompletedEvent(type="response.mcp_list_tools.completed", **at, sequence_number=next(seq)),
        ResponseOutputItemDoneEvent(
            type="response.output_item.done", output_index=item.index, item=sdk, sequence_number=next(seq)
        ),
    ]
