"""``POST /v1/chat/completions``: OpenAI request in, Harmony turn on the engine, SDK-typed response out."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage, ChatCompletionTokenLogprob
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta, ChoiceDeltaToolCall, ChoiceDeltaToolCallFunction
from openai.types.chat.chat_completion_message_function_tool_call import ChatCompletionMessageFunctionToolCall, Function
from openai.types.chat.chat_completion_token_logprob import TopLogprob
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails
from starlette.concurrency import run_in_threadpool

from gptoss.conversation.openai_chat import chat_prompt, function_tools, turn_grammar
from gptoss.engine.guided import GrammarConstraint
from gptoss.engine.sampling import SamplingParams, offset_seed
from gptoss.harmony import stop_tokens_for_assistant_actions
from gptoss.server.errors import APIError
from gptoss.server.generation import (
    Completion,
    cancel_on_disconnect,
    dump,
    dump_json,
    observe,
    run_completion,
    stream_error,
)
from gptoss.server.guarding import ChatGuard, chat_blocked
from gptoss.server.schemas import ChatCompletionRequest
from gptoss.server.state import cache_salt, message_texts


async def _prepare(state, body: ChatCompletionRequest):
    """Render and tokenize the prompt, off the event loop when it is big (a big prompt must not stall other
    requests), after a size check that needs no tokenizing. Returns (grammar, ids, shared prefix, characters)."""
    chars = state.check_text_size(message_texts(body.messages), "messages")
    return (*await state.off_loop(chars, _render, state, body), chars)


def _render(state, body: ChatCompletionRequest):
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    functions = function_tools(tools)
    grammar = turn_grammar(state.config.persona, functions, body.tool_choice, body.response_format)
    prompt = chat_prompt(state.config.persona, messages, tools, body.reasoning_effort, body.response_format)
    prompt_ids, prefix_len = prompt.tokens(state.tokenizer)
    return grammar, prompt_ids, prefix_len


def register(app, state) -> None:
    tok = state.tokenizer

    @app.post("/tokenize")
    async def tokenize(body: ChatCompletionRequest):
        """The Harmony prompt a chat request renders to (to check formatting; nothing is generated)."""
        state.check_model(body.model)
        _, prompt_ids, prefix_len, chars = await _prepare(state, body)

        def answer() -> bytes:  # decoding and encoding a big prompt's answer take as long as tokenizing it
            return json.dumps(
                {
                    "tokens": prompt_ids,
                    "count": len(prompt_ids),
                    "prompt": tok.decode(prompt_ids),
                    "shared_prefix_tokens": prefix_len,
                    "max_model_len": state.max_model_len,
                },
                separators=(",", ":"),
            ).encode()

        return Response(await state.off_loop(chars, answer), media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        state.check_model(body.model)
        grammar, prompt_ids, _, _ = await _prepare(state, body)
        requested = body.max_completion_tokens or body.max_tokens
        max_tokens = state.check_length(
            len(prompt_ids), requested, "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        )
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"stop: at most 4 stop sequences, found {len(stops)}", param="stop")
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs: requires logprobs to be true", param="top_logprobs")
        logit_bias = parse_logit_bias(body.logit_bias, tok.vocab_size)
        # Compiling the turn grammar (large tool schemas: seconds) runs off the event loop, like tokenizing.
        lark = await run_in_threadpool(grammar.lark)
        constraints = await run_in_threadpool(lambda: [GrammarConstraint(tok, lark) for _ in range(body.n)])

        def params(i: int) -> SamplingParams:
            return SamplingParams(
                temperature=body.temperature,
                top_p=body.top_p,
                max_tokens=max_tokens,
                seed=offset_seed(body.seed, i),
                stop_token_ids=stop_tokens_for_assistant_actions(tok),
                logprobs=(body.top_logprobs or 0) if body.logprobs else None,
                logits_processors=[constraints[i]],
                logit_bias=logit_bias,
                lora=state.lora_of(body.model),
            )

        rid = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        state.metrics.prompt_tokens.inc(len(prompt_ids))
        guard = ChatGuard(state, rid, [m.model_dump(exclude_none=True) for m in body.messages], body.n)
        decision = await guard.input_decision()
        if decision is not None and decision.blocked:  # nothing is generated
            state.metrics.requests.labels("chat", "content_filter").inc()
            answer = chat_blocked(
                rid,
                created,
                body.model,
                body.n,
                len(prompt_ids),
                decision,
                bool(body.stream),
                bool(body.stream_options and body.stream_options.include_usage),
            )
            if body.stream:
                return StreamingResponse(answer, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            return answer
        salt = cache_salt(request, state.config)
        runs = [run_completion(state.engine, tok, prompt_ids, salt, params(i), i, stops) for i in range(body.n)]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(state, rid, created, body, runs, len(prompt_ids), include_usage, guard),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        tasks = [asyncio.ensure_future(_drain(run)) for run in runs]
        watcher = asyncio.ensure_future(cancel_on_disconnect(request, tasks))
        try:
            comps = await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            state.metrics.requests.labels("chat", "disconnected").inc()
            raise
        finally:
            watcher.cancel()
        for c in comps:
            observe(state.metrics, c)
        state.metrics.requests.labels("chat", "ok").inc()
        completion_tokens = sum(c.tokens for c in comps)
        choices = [_choice(tok, c, body.logprobs) for c in comps]
        await guard.check_choices(comps, choices)
        out = dump(
            ChatCompletion(
                id=rid,
                object="chat.completion",
                created=created,
                model=body.model,
                choices=choices,
                usage=_usage(
                    len(prompt_ids),
                    completion_tokens,
                    sum(c.decoder.reasoning_tokens for c in comps),
                    comps[0].cached_tokens,
                ),
            )
        )
        for choice in out["choices"]:
            choice["message"].setdefault("content", None)  # a tool-call message says content: null, as OpenAI's do
        return out


def parse_logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """``logit_bias`` as OpenAI takes it: at most 300 token ids (in the vocabulary) each with a bias in
    [-100, 100], added to that token's logit (the turn grammar still decides what may be sampled)."""
    from gptoss.engine.sampling import LOGIT_BIAS_LIMIT, LOGIT_BIAS_MAX_ENTRIES

    if not bias:
        return {}
    if len(bias) > LOGIT_BIAS_MAX_ENTRIES:
        raise APIError(
            400, f"logit_bias: at most {LOGIT_BIAS_MAX_ENTRIES} entries, found {len(bias)}", param="logit_bias"
        )
    out = {}
    for key, value in bias.items():
        token = key.strip()
        if not (token.isascii() and token.isdigit()) or int(token) >= vocab_size:
            raise APIError(
                400,
                f"logit_bias: the key {key!r} is not a token id (an integer from 0 to {vocab_size - 1})",
                param="logit_bias",
            )
        if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
            raise APIError(
                400,
                f"logit_bias: the bias of token {token} should be in [-100, 100], found {value}",
                param="logit_bias",
            )
        out[int(token)] = float(value)
    return out


async def _drain(run) -> Completion:
    last = None
    async for comp, _ in run:
        last = comp
    return last


def _usage(prompt: int, completion: int, reasoning: int, cached: int = 0) -> CompletionUsage:
    """``cached``: prompt tokens the first choice found in the prefix cache (the prompt is counted once)."""
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def _token_logprobs(tok, entries) -> list[ChatCompletionTokenLogprob]:
    out = []
    for token, lp in entries:
        out.append(
            ChatCompletionTokenLogprob(
                token=tok.decode([token]),
                logprob=lp.logprob,
                bytes=list(tok.token_bytes(token)),
                top_logprobs=[
                    TopLogprob(token=tok.decode([t]), logprob=v, bytes=list(tok.token_bytes(t))) for t, v in lp.top
                ],
            )
        )
    return out


def _tool_calls(c: Completion) -> list[ChatCompletionMessageFunctionToolCall] | None:
    calls = [t for t in c.tool_calls if not t.builtin]
    if not calls:
        return None
    return [
        ChatCompletionMessageFunctionToolCall(
            id=t.call_id, type="function", function=Function(name=t.name, arguments=t.arguments)
        )
        for t in calls
    ]


def _choice(tok, c: Completion, logprobs: bool) -> Choice:
    message = ChatCompletionMessage(
        role="assistant",
        content=c.content if (c.content or not c.tool_calls) else None,
        tool_calls=_tool_calls(c),
        reasoning_content=c.decoder.reasoning or None,
        reasoning=c.decoder.reasoning or None,
    )  # the name Ollama, vLLM and gpt-oss's own clients read
    lp = ChoiceLogprobs(content=_token_logprobs(tok, c.content_logprobs)) if logprobs else None
    return Choice(index=c.index, finish_reason=c.api_finish_reason(), message=message, logprobs=lp)


async def _stream(state, rid, created, body, runs, prompt_len, include_usage, guard: ChatGuard):
    tok = state.tokenizer
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def chunk(choices, usage=None) -> str:
        c = ChatCompletionChunk(
            id=rid, object="chat.completion.chunk", created=created, model=body.model, choices=choices, usage=usage
        )
        return f"data: {dump_json(c)}\n\n"

    async def pump(run):
        comp = None
        try:
            async for comp, deltas in run:
                await queue.put((comp, deltas))
        finally:
            await queue.put((done, comp))

    tasks = [asyncio.ensure_future(pump(r)) for r in runs]
    finished: list[Completion] = []
    filtered: set[int] = set()  # choices the guard cut
    try:
        for i in range(len(runs)):
            yield chunk([ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""))])
        remaining = len(runs)
        while remaining:
            comp, deltas = await queue.get()
            if comp is done:
                remaining -= 1
                if deltas is not None and deltas.index not in filtered:
                    finished.append(deltas)
                    rest, blocked = await guard.finish(deltas.index)
                    for d in rest:
                        yield chunk([_delta_choice(tok, deltas, d, body.logprobs)])
                    if blocked is not None:
                        yield chunk([ChunkChoice(index=deltas.index, delta=ChoiceDelta(refusal=blocked.refusal()))])
                    reason = "content_filter" if blocked is not None else deltas.api_finish_reason()
                    yield chunk([ChunkChoice(index=deltas.index, delta=ChoiceDelta(), finish_reason=reason)])
                continue
            if comp.index in filtered:
                continue
            released, blocked = await guard.release(comp.index, deltas)
            for d in released:
                yield chunk([_delta_choice(tok, comp, d, body.logprobs)])
            if blocked:  # nothing held is sent; the generation stops
                filtered.add(comp.index)
                finished.append(comp)
                tasks[comp.index].cancel()
                yield chunk([ChunkChoice(index=comp.index, delta=ChoiceDelta(refusal=guard.refusal(comp.index)))])
                yield chunk([ChunkChoice(index=comp.index, delta=ChoiceDelta(), finish_reason="content_filter")])
        for c in finished:
            observe(state.metrics, c)
        state.metrics.requests.labels("chat", "ok").inc()
        if include_usage:
            first = min(finished, key=lambda c: c.index, default=None)
            yield chunk(
                [],
                _usage(
                    prompt_len,
                    sum(c.tokens for c in finished),
                    sum(c.decoder.reasoning_tokens for c in finished),
                    first.cached_tokens if first is not None else 0,
                ),
            )
        yield "data: [DONE]\n\n"
    except asyncio.CancelledError:
        state.metrics.requests.labels("chat", "disconnected").inc()
        raise
    except Exception as exc:  # report, in the stream, what went wrong; the server keeps serving
        yield stream_error(exc)
    finally:
        for t in tasks:
            t.cancel()


def _delta_choice(tok, comp: Completion, d, logprobs: bool) -> ChunkChoice:
    if d.kind == "reasoning":
        delta = ChoiceDelta(reasoning_content=d.text, reasoning=d.text)
    elif d.kind == "content":
        delta = ChoiceDelta(content=d.text)
    elif d.kind == "tool_call":
        delta = ChoiceDelta(
            tool_calls=[
                ChoiceDeltaToolCall(
                    index=d.index,
                    id=d.call_id,
                    type="function",
                    function=ChoiceDeltaToolCallFunction(name=d.name, arguments=""),
                )
            ]
        )
    elif d.kind == "tool_args":
        delta = ChoiceDelta(
            tool_calls=[ChoiceDeltaToolCall(index=d.index, function=ChoiceDeltaToolCallFunction(arguments=d.text))]
        )
    else:
        delta = ChoiceDelta()
    lp = None
    if (
        logprobs
        and d.kind == "content"
        and d.token is not None
        and comp.content_logprobs
        and comp.content_logprobs[-1][0] == d.token
    ):
        lp = ChoiceLogprobs(content=_token_logprobs(tok, [comp.content_logprobs[-1]]))
    return ChunkChoice(index=comp.index, delta=delta, logprobs=lp)
