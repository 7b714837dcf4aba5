"""Training examples from Chat Completions-style conversations, rendered exactly as serving renders them.

A JSONL line is one conversation: ``{"messages": [...], "tools": [...]?, "reasoning_effort": "low"?,
"conversation_start_date": "2025-06-28"?}``. Messages are the Chat Completions ones (system / developer /
user / assistant / tool); an assistant message carries its reasoning in ``reasoning_content``,
``reasoning`` or ``thinking`` (the name OpenAI's fine-tuning cookbook data uses), and its tool calls in
``tool_calls``. They become Harmony messages by :func:`gptoss.conversation.openai_chat.chat_prompt` — the
same function the server runs on a request, with the same system message — so a fine-tuned model sees at
training time exactly the tokens it is prompted with when served (reasoning in the ``analysis`` channel,
tool calls to ``functions.NAME`` on ``commentary``; earlier turns' reasoning dropped as Harmony drops it).

What is learned is the last turn: the messages after the last user message (reasoning, tool calls, tool
results, final answer). Its prompt — everything up to that user message — is rendered as the server
renders it (Harmony drops the reasoning of earlier answered turns); the turn itself follows as the model
wrote it. The loss mask covers what the model writes: each assistant message of the turn after its
``<|start|>assistant`` (which the prompt supplies), through its ``<|end|>``, ``<|call|>`` or — for the
final answer — ``<|return|>``, and the ``<|start|>assistant`` between two assistant messages, which the
model samples too; tool results and earlier turns are context only. (To learn several turns of one
conversation, give each its own line.)
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

from gptoss.conversation.openai_chat import ConversationError, ServerPersona, chat_prompt
from gptoss.errors import GptossError
from gptoss.harmony.messages import Message, Role
from gptoss.harmony.render import conversation_has_function_tools, render, visible_messages
from gptoss.tokenizer import Tokenizer

MAX_LINE_BYTES = 16 * 2**20


@dataclass
class Example:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 where the loss applies (TRL's column name)


class DataError(GptossError):
    """A training file or conversation that cannot be rendered."""


def harmony_messages(record: dict, where: str = "conversation", persona: ServerPersona | None = None) -> list[Message]:
    """One conversation record -> its Harmony messages, as the server builds them."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        raise DataError(f"{where}: expected an object with a non-empty 'messages' list")
    messages = []
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict):
            raise DataError(f"{where}.messages[{i}]: expected an object, found {type(m).__name__}")
        if (
            m.get("role") == "assistant"
            and m.get("thinking")
            and not (m.get("reasoning_content") or m.get("reasoning"))
        ):
            m = {**m, "reasoning_content": m["thinking"]}
        messages.append(m)
    if not any(m.get("role") == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message to learn from")
    persona = persona or ServerPersona()
    effort = record.get("reasoning_effort")
    try:
        prompt = chat_prompt(persona, messages, record.get("tools"), effort)
    except (ConversationError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{where}: {exc}") from None
    out = list(prompt.messages)
    date = record.get("conversation_start_date")
    if date is not None:
        try:
            datetime.date.fromisoformat(str(date))
        except ValueError:
            raise DataError(f"{where}.conversation_start_date: expected YYYY-MM-DD, found {date!r}") from None
        content = out[0].content[0].with_conversation_start_date(str(date))
        out[0] = Message.from_role_and_content(Role.SYSTEM, content)
    return out


def render_example(messages: list[Message], tokenizer: Tokenizer) -> Example:
    """Token ids and loss mask of one conversation (see the module's notes)."""
    has_functions = conversation_has_function_tools(messages)
    last_user = max((i for i, m in enumerate(messages) if m.author.role is Role.USER), default=-1)
    prompt, turn = messages[: last_user + 1], messages[last_user + 1 :]
    ids: list[int] = []
    mask: list[int] = []
    for message in visible_messages(prompt):
        tokens = render(message, conversation_has_function_tools=has_functions, tokenizer=tokenizer)
        ids += tokens
        mask += [0] * len(tokens)
    role_len = len(tokenizer.encode("assistant"))
    previous_assistant = False
    for n, message in enumerate(turn):
        tokens = render(message, conversation_has_function_tools=has_functions, tokenizer=tokenizer)
        assistant = message.author.role is Role.ASSISTANT
        if n == len(turn) - 1 and assistant and message.channel == "final":
            tokens[-1] = Tokenizer.RETURN
        if assistant:
            head = 0 if previous_assistant else 1 + role_len  # <|start|>assistant: in the prompt, or sampled
            mask += [0] * head + [1] * (len(tokens) - head)
        else:
            mask += [0] * len(tokens)
        ids += tokens
        previous_assistant = assistant
    if not any(mask):
        raise DataError("the conversation's last turn has no assistant message to learn from")
    return Example(ids, mask)


def read_conversations(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL file (blank lines skipped); a bad line is named by its number."""
    path = Path(path)
    records = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None
    with f:
        for n, line in enumerate(f, start=1):
            if len(line) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{n}: line longer than {MAX_LINE_BYTES} bytes")
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc})") from None
    if not records:
        raise DataError(f"{path}: no conversations in it (one JSON object a line)")
    return records


def build_examples(path: str | os.PathLike, tokenizer: Tokenizer, max_length: int | None = None) -> list[Example]:
    """Every conversation of a JSONL file rendered; one longer than ``max_length`` tokens is refused
    (truncating it would cut the answers the loss is on)."""
    examples = []
    for n, record in enumerate(read_conversations(path), start=1):
        where = f"{path}:{n}"
        try:
            example = render_example(harmony_messages(record, where), tokenizer)
        except DataError as exc:
            raise DataError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
        if max_length is not None and len(example.input_ids) > max_length:
            raise DataError(f"{path}:{n}: {len(example.input_ids)} tokens, more than --max-length {max_length}")
        examples.append(example)
    return examples
