"""A multi-turn Harmony chat over an :class:`~gptoss.engine.LLM`.

Each user turn renders the whole conversation for completion (the Harmony system message with the
reasoning effort, the developer instructions, the history under Harmony's rules: earlier analysis is
dropped once a final answer follows), samples until ``<|return|>`` or ``<|call|>``, and parses the
assistant's messages with the forgiving streaming parser, yielding text deltas as they arrive.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Iterator

from gptoss.engine import LLM, SamplingParams
from gptoss.harmony import (
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    Role,
    StreamParser,
    SystemContent,
    render_conversation_for_completion,
    stop_tokens_for_assistant_actions,
)


@dataclass
class ChatSettings:
    reasoning_effort: str = "medium"
    developer: str | None = None
    knowledge_cutoff: str = "2024-06"
    conversation_date: str | None = field(default_factory=lambda: datetime.date.today().isoformat())
    max_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class TurnDelta:
    """A piece of assistant text: ``channel`` is ``final`` for the answer, ``analysis`` for reasoning."""

    channel: str | None
    recipient: str | None
    text: str


@dataclass
class TurnResult:
    messages: list[Message]
    finish_reason: str | None
    num_tokens: int
    warnings: list[str]

    @property
    def final_text(self) -> str:
        return "".join(m.text for m in self.messages if m.channel == "final")


class ChatSession:
    def __init__(self, llm: LLM, settings: ChatSettings | None = None):
        self.llm = llm
        self.settings = settings or ChatSettings()
        self.history: list[Message] = []
        self.last: TurnResult | None = None

    # ---------------------------------------------------------------- the prompt
    def system_message(self) -> Message:
        s = self.settings
        content = (
            SystemContent.new()
            .with_reasoning_effort(ReasoningEffort.parse(s.reasoning_effort))
            .with_knowledge_cutoff(s.knowledge_cutoff)
        )
        if s.conversation_date:
            content = content.with_conversation_start_date(s.conversation_date)
        return Message.from_role_and_content(Role.SYSTEM, content)

    def messages(self) -> list[Message]:
        out = [self.system_message()]
        if self.settings.developer:
            out.append(Message.from_role_and_content(Role.DEVELOPER, DeveloperContent.new().with_instructions(self.settings.developer)))
        return out + self.history

    def transcript(self) -> Conversation:
        return Conversation.from_messages(self.messages())

    def prompt_tokens(self) -> list[int]:
        return render_conversation_for_completion(self.messages(), Role.ASSISTANT, tokenizer=self.llm.tokenizer)

    def reset(self) -> None:
        self.history.clear()
        self.last = None

    # ---------------------------------------------------------------- a turn
    def send(self, user_text: str) -> Iterator[TurnDelta]:
        """Add a user message and stream the assistant's reply. Stopping early (closing the iterator, or
        Ctrl-C) keeps whatever was generated so far as the assistant's (partial) messages."""
        self.history.append(Message.from_role_and_content(Role.USER, user_text))
        yield from self.continue_turn()

    def continue_turn(self) -> Iterator[TurnDelta]:
        s = self.settings
        tok = self.llm.tokenizer
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed,
                                stop_token_ids=stop_tokens_for_assistant_actions(tok))
        parser = StreamParser(tok, role=Role.ASSISTANT)
        finish = None
        count = 0
        try:
            for event in self.llm.stream(self.prompt_tokens(), params):
                count += 1
                finish = event.finish_reason
                parser.process(event.token)
                if parser.last_content_delta:
                    yield TurnDelta(parser.current_channel, parser.current_recipient, parser.last_content_delta)
        finally:
            if finish is None:
                finish = "interrupted"
            parser.process_eos()
            new = [m for m in parser.messages if m.text or m.recipient]
            self.history.extend(new)
            self.last = TurnResult(new, finish, count, [str(w) for w in parser.warnings])
