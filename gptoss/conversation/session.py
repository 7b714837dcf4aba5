"""A multi-turn Harmony chat over an :class:`~gptoss.engine.LLM`.

Each user turn renders the whole conversation for completion (the Harmony system message with the
reasoning effort and the built-in tools' namespaces, the developer instructions and function tools, the
history under Harmony's rules: earlier analysis is dropped once a final answer follows), samples until
``<|return|>`` or ``<|call|>``, and parses the assistant's messages with the forgiving streaming parser,
yielding text deltas as they arrive. Running the tools a turn calls is the job of
:mod:`gptoss.conversation.tool_loop`.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from gptoss.engine import LLM, SamplingParams
from gptoss.harmony import (
    DEFAULT_KNOWLEDGE_CUTOFF,
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

if TYPE_CHECKING:
    from gptoss.tools import Toolbox


@dataclass
class ChatSettings:
    reasoning_effort: str = "medium"
    developer: str | None = None
    knowledge_cutoff: str = DEFAULT_KNOWLEDGE_CUTOFF
    conversation_date: str | None = field(default_factory=lambda: datetime.date.today().isoformat())
    max_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    # Decode every turn under the Harmony turn grammar (valid channels, known recipients, function
    # arguments that follow their schemas); a reasoning budget bounds the analysis before the answer.
    constrained: bool = True
    reasoning_max_tokens: int | None = None


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
    stop_token: int | None = None  # <|return|> or <|call|> when finish_reason is "stop"

    @property
    def final_text(self) -> str:
        return "".join(m.text for m in self.messages if m.channel == "final")


class ChatSession:
    """``tools``: a :class:`~gptoss.tools.Toolbox` whose namespaces go into the system message (browser,
    python) and the developer message (functions). ``logits_processors_factory``: a hook for tests and
    constrained decoding, called with the session before each turn, returning extra logits processors."""

    def __init__(
        self,
        llm: LLM,
        settings: ChatSettings | None = None,
        tools: "Toolbox | None" = None,
        logits_processors_factory: Callable[["ChatSession"], list] | None = None,
    ):
        self.llm = llm
        self.settings = settings or ChatSettings()
        self.tools = tools
        self.logits_processors_factory = logits_processors_factory
        self.history: list[Message] = []
        self.last: TurnResult | None = None
        self.tokens_generated = 0  # a running total over all turns (what a progress display counts)

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
        if self.tools:
            content = self.tools.system_content(content)
        return Message.from_role_and_content(Role.SYSTEM, content)

    def developer_message(self) -> Message | None:
        content = DeveloperContent.new()
        if self.settings.developer:
            content = content.with_instructions(self.settings.developer)
        if self.tools:
            content = self.tools.developer_content(content)
        if content.instructions is None and not content.tools:
            return None
        return Message.from_role_and_content(Role.DEVELOPER, content)

    def messages(self) -> list[Message]:
        out = [self.system_message()]
        dev = self.developer_message()
        if dev is not None:
            out.append(dev)
        return out + self.history

    def turn_grammar(self):
        """What the next turn may contain, from the tools in the system and developer messages."""
        from gptoss.harmony.grammar import BUILTIN_TOOL_HEADERS, TurnGrammar

        functions: dict = {}
        builtins: list[str] = []
        for message in self.messages()[:2]:
            for content in message.content:
                for ns in (getattr(content, "tools", None) or {}).values():
                    if ns.name == "functions":
                        functions.update({t.name: t.parameters for t in ns.tools})
                    elif ns.name == "python":
                        builtins.append("python")
                    else:
                        builtins += [
                            f"{ns.name}.{t.name}" for t in ns.tools if f"{ns.name}.{t.name}" in BUILTIN_TOOL_HEADERS
                        ]
        return TurnGrammar(
            functions=functions, builtin_tools=builtins, reasoning_max_tokens=self.settings.reasoning_max_tokens
        )

    def transcript(self) -> Conversation:
        return Conversation.from_messages(self.messages())

    def prompt_tokens(self) -> list[int]:
        return render_conversation_for_completion(self.messages(), Role.ASSISTANT, tokenizer=self.llm.tokenizer)

    def prepare(self) -> None:
        """Build now what the first turn would otherwise build after the question: the tokenizer and, when
        decoding is constrained, the turn grammar's tokenizer tables (seconds on a CPU)."""
        tok = self.llm.tokenizer
        if self.settings.constrained and self.logits_processors_factory is None:
            from gptoss.engine.guided import GrammarConstraint

            GrammarConstraint(tok, self.turn_grammar().lark())

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
        params = SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=s.seed,
            stop_token_ids=stop_tokens_for_assistant_actions(tok),
        )
        if self.logits_processors_factory is not None:
            params.logits_processors = list(self.logits_processors_factory(self))
        elif s.constrained:
            from gptoss.engine.guided import GrammarConstraint

            params.logits_processors = [GrammarConstraint(tok, self.turn_grammar().lark())]
        parser = StreamParser(tok, role=Role.ASSISTANT)
        finish = None
        count = 0
        last_token = None
        try:
            for event in self.llm.stream(self.prompt_tokens(), params):
                count += 1
                self.tokens_generated += 1
                finish = event.finish_reason
                last_token = event.token
                parser.process(event.token)
                if parser.last_content_delta:
                    yield TurnDelta(parser.current_channel, parser.current_recipient, parser.last_content_delta)
        finally:
            if finish is None:
                finish = "interrupted"
            parser.process_eos()
            new = [m for m in parser.messages if m.text or m.recipient]
            self.history.extend(new)
            self.last = TurnResult(
                new,
                finish,
                count,
                [str(w) for w in parser.warnings],
                stop_token=last_token if finish == "stop" else None,
            )


# ---------------------------------------------------------------------------------------------------- testing
FORCE_TURNS_ENV = "GPTOSS_TESTING_FORCE_TURNS"


def force_tokens(tokens: list[int]):
    """A logits processor that makes the model emit exactly ``tokens``, then lets it go on freely."""

    def processor(output_ids: list[int], logits):
        step = len(output_ids)
        if step >= len(tokens):
            return logits
        forced = logits.new_full(logits.shape, float("-inf"))
        forced[tokens[step]] = 0.0
        return forced

    return processor


def forced_turns_factory(turns: list[str], tokenizer) -> Callable[[ChatSession], list]:
    """For tests: the n-th assistant turn (a call of the factory) emits exactly ``turns[n]`` (Harmony
    text after ``<|start|>assistant``, special tokens allowed); later turns are free."""
    encoded = [tokenizer.encoding.encode(t, allowed_special="all") for t in turns]
    state = {"turn": 0}

    def factory(_session: ChatSession) -> list:
        n = state["turn"]
        state["turn"] += 1
        return [force_tokens(encoded[n])] if n < len(encoded) else []

    return factory


def forced_turns_from_env(tokenizer) -> Callable[[ChatSession], list] | None:
    """``$GPTOSS_TESTING_FORCE_TURNS``: a JSON list of Harmony strings, one per assistant turn. For
    testing only (it is how the end-to-end tests make a random checkpoint call a tool)."""
    raw = os.environ.get(FORCE_TURNS_ENV)
    if not raw:
        return None
    turns = json.loads(raw)
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise ValueError(f"{FORCE_TURNS_ENV}: expected a JSON list of strings")
    return forced_turns_factory(turns, tokenizer)
