"""``gptoss chat``: talk to gpt-oss in the terminal.

Streams the final answer as it is generated; reasoning (the analysis channel) is shown dimmed only
with --show-reasoning. Ctrl-C stops the current answer and keeps the session; Ctrl-D or /quit ends it.
"""

from __future__ import annotations

import argparse

from gptoss.cli.common import add_model_args, load_llm
from gptoss.errors import GptossError

EFFORTS = ("low", "medium", "high")
HELP = """commands:
  /reset              start a new conversation (settings are kept)
  /effort LEVEL       reasoning effort: low, medium or high
  /save PATH          save the transcript (Harmony conversation JSON)
  /reasoning on|off   show or hide the model's reasoning
  /help               this list
  /quit               leave (Ctrl-D works too)
Ctrl-C stops the answer being generated."""


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with gpt-oss in the terminal", description=__doc__)
    add_model_args(p)
    p.add_argument("--reasoning-effort", default="medium", choices=EFFORTS)
    p.add_argument("--developer", default=None, help="developer instructions (the system prompt, in Harmony terms)")
    p.add_argument("--show-reasoning", action="store_true", help="show the analysis channel, dimmed")
    p.add_argument("--max-tokens", type=int, default=2048, help="most tokens per assistant turn (default 2048)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=run)


class ChatUI:
    def __init__(self, session, show_reasoning: bool):
        from rich.console import Console

        self.session = session
        self.show_reasoning = show_reasoning
        self.console = Console(highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True, markup=False)

    def say(self, text: str, style: str = "dim") -> None:
        self.console.print(text, style=style, markup=False)

    def command(self, line: str) -> bool:
        """Handle a slash command; returns False to quit."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "reset":
            self.session.reset()
            self.say("(new conversation)")
        elif name == "effort":
            if arg not in EFFORTS:
                self.say(f"usage: /effort {'|'.join(EFFORTS)} (now {self.session.settings.reasoning_effort})", "yellow")
            else:
                self.session.settings.reasoning_effort = arg
                self.say(f"(reasoning effort: {arg})")
        elif name == "save":
            if not arg:
                self.say("usage: /save PATH", "yellow")
            else:
                try:
                    with open(arg, "w", encoding="utf-8") as f:
                        f.write(self.session.transcript().to_json())
                        f.write("\n")
                    self.say(f"(saved {len(self.session.history)} messages to {arg})")
                except OSError as exc:
                    self.say(f"cannot save to {arg}: {exc.strerror}", "red")
        elif name == "reasoning":
            if arg not in ("on", "off"):
                self.say("usage: /reasoning on|off", "yellow")
            else:
                self.show_reasoning = arg == "on"
                self.say(f"(reasoning {'shown' if self.show_reasoning else 'hidden'})")
        elif name == "help":
            self.say(HELP)
        else:
            self.say(f"unknown command /{name}; /help lists them", "yellow")
        return True

    def turn(self, text: str) -> None:
        channel = None
        try:
            for delta in self.session.send(text):
                is_final = delta.channel == "final"
                if not is_final and not self.show_reasoning:
                    continue
                if delta.channel != channel:
                    if channel is not None:
                        self.out.print()
                    if not is_final:
                        self.console.print(f"[{delta.channel or 'no channel'}]", style="dim italic", end=" ")
                    channel = delta.channel
                self.out.print(delta.text, end="", style=None if is_final else "dim")
        except KeyboardInterrupt:
            self.out.print()
            self.say("(stopped)")
            return
        self.out.print()
        last = self.session.last
        if last is not None:
            if not last.final_text:
                self.say(f"(no final answer: {last.num_tokens} tokens, finish reason {last.finish_reason})")
            for message in last.messages:
                if message.recipient:
                    self.say(f"(the model called {message.recipient}, but no tools are enabled)", "yellow")

    def loop(self) -> int:
        self.say("gpt-oss chat. /help lists commands; Ctrl-C stops an answer, Ctrl-D quits.")
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                self.out.print()
                return 0
            except KeyboardInterrupt:
                self.out.print()
                self.say("(Ctrl-D or /quit to leave)")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            self.turn(line)


def run(args: argparse.Namespace) -> int:
    from gptoss.conversation import ChatSession, ChatSettings

    if args.max_tokens < 1:
        raise GptossError(f"--max-tokens: expected a positive number, found {args.max_tokens}")
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover - not on every platform
        pass
    llm = load_llm(args, max_batch=1)
    settings = ChatSettings(reasoning_effort=args.reasoning_effort, developer=args.developer, max_tokens=args.max_tokens,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    return ChatUI(ChatSession(llm, settings), args.show_reasoning).loop()

