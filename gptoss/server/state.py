"""What every route shares: the server's configuration, its state (engine, tokenizer, metrics, guard, the
worker pool that tokenizes big prompts), who a request is (its API key's digest), and the size checks made
before any tokenizing."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from fastapi import Request

from gptoss.conversation.openai_chat import ServerPersona
from gptoss.engine.async_engine import AsyncEngine
from gptoss.engine.llm import LLM
from gptoss.server.errors import APIError
from gptoss.server.http import BODY_TIMEOUT, HEADER_TIMEOUT
from gptoss.server.metrics import Metrics

if TYPE_CHECKING:
    from gptoss.guard import GuardSettings
    from gptoss.tools import Toolbox


@dataclass
class ServerConfig:
    model_name: str = "gpt-oss"
    aliases: list[str] = field(default_factory=list)
    api_key: str | None = None
    api_keys: list[str] = field(
        default_factory=list
    )  # more keys (--api-keys-file); each sees only its own stored responses
    max_queue: int = 256
    max_body_bytes: int = 4 * 2**20
    header_timeout: float = HEADER_TIMEOUT  # seconds for a request's headers (server/http.py)
    body_timeout: float = BODY_TIMEOUT  # seconds for a request's body once its headers are in
    persona: ServerPersona = field(default_factory=ServerPersona)
    store_path: str | None = None  # SQLite file for stored responses (None: in memory)
    store_ttl: float | None = 30 * 86400  # seconds a stored response is kept (None: forever)
    toolbox: Toolbox | None = None  # templates of the built-in tools (web_search, code_interpreter)
    guard: GuardSettings | None = None  # the policy guard (input/output checks, /v1/moderations)
    reasoning: str = "visible"  # what clients see of the analysis channel: visible | hidden
    # max_tokens beyond what the context leaves: clamped to it (as vLLM and the reference server do), or with
    # strict_max_tokens a 400 (as OpenAI answers).
    strict_max_tokens: bool = False
    # MCP servers the operator trusts (--mcp NAME=URL): a Responses "mcp" tool may name only these
    mcp_servers: dict[str, str] = field(default_factory=dict)
    # Cached prompt prefixes are shared only among requests of one API key (a timing side channel otherwise:
    # docs/security.md); True shares them across keys.
    share_prefix_cache: bool = False
    adapters: list[str] = field(default_factory=list)  # LoRA adapters, each served under its own model name


OPEN_PATHS = frozenset({"/health"})
INLINE_CHARS = 32 * 1024  # text this short is tokenized on the event loop (well under a millisecond)
OWNER_KEY = "gptoss.key_owner"  # in the ASGI scope: a digest of the request's API key ("" without keys)


def key_owner(request: Request) -> str:
    """Who a request is, for what it stores: a digest of its API key ("" when the server has no key)."""
    return request.scope.get(OWNER_KEY, "")


def cache_salt(request: Request, config: ServerConfig) -> str | None:
    """The salt of a request's prefix-cache blocks: its key's digest, unless the operator shares the cache."""
    return None if config.share_prefix_cache else key_owner(request) or None


def read_api_keys(path: str) -> list[str]:
    """API keys from a file, one a line; blank lines and ``#`` comments are skipped."""
    from gptoss.errors import GptossError

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GptossError(f"--api-keys-file {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise GptossError(f"--api-keys-file {path}: no keys in it (one key a line)")
    return keys


def message_texts(messages: Iterable[Any]) -> Iterable[str]:
    """The text of Chat Completions messages or Responses input items that a prompt renders (a lower
    bound of what it tokenizes: content, tool-call arguments, tool outputs)."""
    for m in messages:
        if not isinstance(m, dict):
            m = m.model_dump() if hasattr(m, "model_dump") else {}
        for key in ("content", "output", "arguments"):
            value = m.get(key)
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                yield from (p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
        for call in m.get("tool_calls") or ():
            args = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
            if isinstance(args, str):
                yield args


class ServerState:
    def __init__(self, llm: LLM, config: ServerConfig):
        self.llm = llm
        self.config = config
        self.tokenizer = llm.tokenizer
        self.engine = AsyncEngine(llm.engine, max_queue=config.max_queue)
        self.metrics = Metrics(self.engine.stats)
        self.max_model_len = llm.max_model_len
        self.started = int(time.time())
        # Tokenizing and rendering big prompts (and encoding their answers) runs here, off the event loop, a
        # few at a time: /health and small requests keep being served while megabytes are tokenized.
        self.workers = ThreadPoolExecutor(
            max_workers=max(2, min(4, (os.cpu_count() or 2) // 2)), thread_name_prefix="gptoss-tokenize"
        )
        self.guard = None
        if config.guard is not None:
            from gptoss.guard import Guard

            self.guard = Guard.build(
                config.guard, self.engine, self.tokenizer, self.max_model_len, self.metrics.registry
            )

    def check_model(self, name: str) -> None:
        if name != self.config.model_name and name not in self.config.aliases and name not in self.config.adapters:
            also = (
                f" and the LoRA adapters {', '.join(map(repr, self.config.adapters))}" if self.config.adapters else ""
            )
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.config.model_name!r}{also}",
                param="model",
                code="model_not_found",
                type="not_found_error",
            )

    def lora_of(self, name: str) -> str | None:
        """The LoRA adapter a request's model name selects (None: the base model)."""
        return name if name in self.config.adapters else None

    async def off_loop(self, size: int, fn, *args):
        """``fn(*args)``: inline when ``size`` (characters of text it works on) is small, else on the
        bounded worker pool."""
        if size <= INLINE_CHARS:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.workers, fn, *args)

    def check_text_size(self, texts: Iterable[str], field_name: str) -> int:
        """Before any tokenizing: a prompt whose text cannot fit in the context is a 400. Each token covers
        at most ``max_token_bytes`` bytes (so at most that many characters), which gives a lower bound on
        the tokens of ``texts`` from their length alone."""
        chars = sum(len(t) for t in texts)
        least = -(-chars // self.tokenizer.max_token_bytes)
        if least >= self.max_model_len:
            raise APIError(
                400,
                f"{field_name}: {chars} characters of text are at least {least} tokens; this model's "
                f"maximum context length is {self.max_model_len} tokens. Shorten the {field_name}.",
                param=field_name,
                code="context_length_exceeded",
            )
        return chars

    def check_length(self, prompt_len: int, max_tokens: int | None, field_name: str) -> int:
        """Returns the tokens to generate: ``max_tokens``, or what the context leaves when that is less
        (``strict_max_tokens``: a 400 then). A prompt that leaves no room at all is a 400."""
        room = self.max_model_len - prompt_len
        over = max_tokens is not None and max_tokens > room
        if room <= 0 or (over and self.config.strict_max_tokens):
            wanted = prompt_len + (max_tokens or 0)
            raise APIError(
                400,
                f"this model's maximum context length is {self.max_model_len} tokens; the request needs {wanted} "
                f"({prompt_len} in the prompt, {max_tokens or 0} to generate). "
                f"Shorten the messages or lower {field_name}.",
                param=field_name if room > 0 else "messages",
                code="context_length_exceeded",
            )
        return room if max_tokens is None or over else max_tokens
