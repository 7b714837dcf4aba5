"""Where the guard model runs: on gptoss's own engine (the served model, or another checkpoint such as
gpt-oss-safeguard-20b), or behind any OpenAI-compatible endpoint. Both answer ``classify(policy, content)``
with the guard's raw answer; :mod:`gptoss.guard.verdict` reads it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from gptoss.errors import GptossError
from gptoss.guard.policy import Policy
from gptoss.guard.verdict import RATIONALE_MAX_CHARS, guard_messages, verdict_grammar, verdict_schema

INLINE_CHARS = 32 * 1024  # content this short is tokenized on the event loop; longer content on a thread
GUARD_CACHE_SALT = "gptoss.guard"  # the guard's checks reuse each other's cached prefixes, nobody else's


@dataclass
class GuardReply:
    text: str  # the final answer (the verdict's JSON)
    reasoning: str = ""
    tokens: int = 0
    finish_reason: str | None = None


class GuardBackend(Protocol):
    async def classify(self, policy: Policy, content: str) -> GuardReply: ...

    async def aclose(self) -> None: ...


class LocalGuard:
    """The guard model on an :class:`~gptoss.engine.async_engine.AsyncEngine` (the server's own, so guard
    checks share its batches, or one loaded for ``--guard-model``), decoded under the verdict grammar."""

    def __init__(
        self,
        engine,
        tokenizer,
        effort: str = "low",
        reasoning_max_tokens: int = 256,
        rationale_max: int = RATIONALE_MAX_CHARS,
        max_model_len: int | None = None,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.effort = effort
        self.reasoning_max_tokens = reasoning_max_tokens
        self.rationale_max = rationale_max
        self.max_model_len = max_model_len

    def max_tokens(self, policy: Policy) -> int:
        """A bound no grammatical turn exceeds: reasoning budget, headers, and the JSON's longest form."""
        longest_category = max([len(c) for c in policy.categories] + [64])
        return self.reasoning_max_tokens + 2 * (self.rationale_max + longest_category) + 64

    def prompt_ids(self, policy: Policy, content: str) -> tuple[list[int], int]:
        from gptoss.conversation.openai_chat import ServerPersona, chat_prompt

        persona = ServerPersona(default_effort=self.effort)
        prompt = chat_prompt(persona, guard_messages(policy, content), None, self.effort)
        return prompt.tokens(self.tokenizer)

    async def classify(self, policy: Policy, content: str) -> GuardReply:
        from gptoss.conversation.turn import TurnDecoder
        from gptoss.engine.guided import GrammarConstraint
        from gptoss.engine.sampling import SamplingParams
        from gptoss.harmony import stop_tokens_for_assistant_actions

        tok = self.tokenizer
        if len(content) <= INLINE_CHARS:
            ids, _ = self.prompt_ids(policy, content)
        else:  # megabytes of content to check must not stall the server's event loop
            ids, _ = await asyncio.to_thread(self.prompt_ids, policy, content)
        max_tokens = self.max_tokens(policy)
        if self.max_model_len is not None and len(ids) + max_tokens > self.max_model_len:
            raise GptossError(
                f"the content to check ({len(ids)} prompt tokens with the policy) does not fit the guard "
                f"model's context of {self.max_model_len} tokens"
            )
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            stop_token_ids=stop_tokens_for_assistant_actions(tok),
            logits_processors=[
                GrammarConstraint(tok, verdict_grammar(policy, self.reasoning_max_tokens, self.rationale_max))
            ],
        )
        decoder = TurnDecoder(tok)
        tokens, finish = 0, None
        # Checks share cached prefixes (the policy) among themselves only, never with the requests they check.
        async for event in self.engine.generate(ids, params, GUARD_CACHE_SALT):
            tokens += 1
            decoder.feed(event.token)
            finish = event.finish_reason
        decoder.finish()
        return GuardReply(decoder.content, decoder.reasoning, tokens, finish)

    async def aclose(self) -> None:
        pass


class EndpointGuard:
    """The guard model behind an OpenAI-compatible Chat Completions endpoint (``--guard-base-url``); the
    verdict's schema goes as a strict ``json_schema`` response format."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        api_key: str | None = None,
        effort: str | None = "low",
        timeout: float = 60.0,
        max_tokens: int | None = None,
    ):
        import openai

        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=1)
        self.base_url = base_url
        self.model = model
        self.effort = effort
        self.max_tokens = max_tokens

    async def _model(self) -> str:
        if self.model is None:
            listed = [m.id async for m in self.client.models.list()]
            if len(listed) != 1:
                raise GptossError(
                    f"--guard-model is required: {self.base_url} serves {', '.join(listed[:8]) or 'no model'}"
                )
            self.model = listed[0]
        return self.model

    async def classify(self, policy: Policy, content: str) -> GuardReply:
        kwargs = {
            "temperature": 0.0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": verdict_schema(policy), "strict": True},
            },
        }
        if self.effort:
            kwargs["reasoning_effort"] = self.effort
        if self.max_tokens:
            kwargs["max_tokens"] = self.max_tokens
        resp = await self.client.chat.completions.create(
            model=await self._model(), messages=guard_messages(policy, content), **kwargs
        )
        if not resp.choices:
            raise GptossError(f"{self.base_url}: the guard returned no choices")
        choice = resp.choices[0]
        extra = getattr(choice.message, "model_extra", None) or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
        tokens = resp.usage.completion_tokens if resp.usage else 0
        return GuardReply(
            choice.message.content or "",
            reasoning if isinstance(reasoning, str) else "",
            tokens or 0,
            choice.finish_reason,
        )

    async def aclose(self) -> None:
        await self.client.close()
