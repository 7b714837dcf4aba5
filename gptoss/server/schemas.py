"""Request bodies, validated. Response bodies are the ``openai`` SDK's own types (see the handlers)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gptoss.harmony import EffortName

# OpenAI's ranges for the sampling parameters; anything outside is a 400 naming the field, before any work.
SEED = Field(default=None, ge=-(2**63), le=2**63 - 1)  # a signed 64-bit integer
PENALTY = Field(default=None, ge=-2.0, le=2.0)


class _Lenient(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers commonly do, so SDK upgrades keep working.
    model_config = ConfigDict(extra="ignore")


class FunctionCallIn(_Lenient):
    name: str
    arguments: str | dict = ""


class ToolCallIn(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class FunctionDef(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[ToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    reasoning_effort: EffortName | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = SEED
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=16)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None  # token id (as a string, as OpenAI sends it) -> bias in [-100, 100]
    frequency_penalty: float | None = PENALTY  # accepted (in range) and not applied
    presence_penalty: float | None = PENALTY  # accepted (in range) and not applied
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ResponseToolIn(BaseModel):
    # Every field is kept: the Response echoes the tools as sent (a namespace's tools, a web_search's filters).
    model_config = ConfigDict(extra="allow")

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ReasoningIn(_Lenient):
    effort: EffortName | None = None
    summary: str | None = None


class ResponsesRequest(_Lenient):
    model: str
    input: str | list[Any]  # items are checked one by one (conversation/openai_responses.py), naming the bad one
    instructions: str | None = None
    reasoning: ReasoningIn | None = None
    reasoning_effort: EffortName | None = None  # as the reference gpt-oss server accepts it
    tools: list[ResponseToolIn] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    max_tool_calls: int | None = Field(default=None, ge=0)  # built-in tool calls run within one response
    parallel_tool_calls: bool = True  # echoed; a gpt-oss turn makes at most one call
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False
    text: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    seed: int | None = SEED
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20
    )  # accepted (in range); log-probabilities are not returned here


class CompletionRequest(_Lenient):
    """The legacy ``POST /v1/completions`` (raw text continuation, as vLLM, llama.cpp and Ollama serve it)."""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default; 0 with echo scores the prompt alone
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = SEED
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: str | None = None  # not supported: a 400 when given
    best_of: int | None = Field(default=None, ge=1)  # only best_of == n (or unset) is supported
    frequency_penalty: float | None = PENALTY  # accepted (in range) and not applied
    presence_penalty: float | None = PENALTY  # accepted (in range) and not applied
    logit_bias: dict[str, float] | None = None  # accepted and not applied
    user: str | None = None
