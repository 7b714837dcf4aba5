"""``gptoss chat``: talk to gpt-oss in the terminal.

Streams the final answer as it is generated; reasoning (the analysis channel) is shown dimmed only
with --show-reasoning; while it is hidden, a line shows that the model is thinking (tokens, tok/s).
Ctrl-C stops the current answer and keeps the session; Ctrl-D or /quit ends it.

Without --model and without a network, the synthetic demo (random weights, clearly labelled) answers
with a short reasoning budget and short answers, so that a turn takes seconds on a CPU.

With --tools browser,python (and --functions FILE) the model can search and read a local corpus
(--corpus DIR) or the web, run Python in a sandboxed kernel, and call your functions; each call and its
result are shown dimmed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from gptoss.cli.common import DEMO_MAX_TOKENS, DEMO_REASONING_MAX_TOKENS, add_browser_args, add_model_args, load_llm
from gptoss.errors import GptossError
from gptoss.harmony import EFFORT_NAMES

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
    p.add_argument(
        "--reasoning-effort",
        default="medium",
        choices=EFFORT_NAMES,
        help="how much the model reasons before answering: low, medium or high",
    )
    p.add_argument("--developer", default=None, help="developer instructions (the system prompt, in Harmony terms)")
    p.add_argument("--show-reasoning", action="store_true", help="show the analysis channel, dimmed")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"most tokens per assistant turn (default 2048; {DEMO_MAX_TOKENS} for the synthetic demo)",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy")
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling: keep the most likely tokens up to this probability"
    )
    p.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable answers (default: random)")
    p.add_argument(
        "--reasoning-max-tokens",
        type=int,
        default=None,
        help="reasoning budget: at most one analysis message of this many tokens before the answer "
        f"(default: none; {DEMO_REASONING_MAX_TOKENS} for the synthetic demo)",
    )
    p.add_argument(
        "--unconstrained", action="store_true", help="sample freely instead of under the Harmony turn grammar"
    )
    p.add_argument(
        "--tools", default="", metavar="LIST", help="built-in tools the model may use, comma-separated: browser, python"
    )
    p.add_argument(
        "--functions",
        default=None,
        metavar="FILE",
        help="a Python module whose functions the model may call (functions.NAME)",
    )
    add_browser_args(p)
    p.add_argument("--max-tool-calls", type=int, default=16, help="most tool calls in one answer (default 16)")
    p.set_defaults(func=run)


class ChatUI:
    def __init__(self, session, show_reasoning: bool, tool_loop=None):
        from rich.console import Console

        from gptoss.cli.thinking import ThinkingIndicator

        self.session = session
        self.tool_loop = tool_loop
        self.show_reasoning = show_reasoning
        self.console = Console(highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True, markup=False)
        self.thinking = ThinkingIndicator(self.out.file, lambda: session.tokens_generated, live=self.out.file.isatty())

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
            if arg not in EFFORT_NAMES:
                self.say(
                    f"usage: /effort {'|'.join(EFFORT_NAMES)} (now {self.session.settings.reasoning_effort})", "yellow"
                )
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

    def _events(self, text: str):
        if self.tool_loop is None:
            return self.session.send(text)
        return self.tool_loop.stream(self.session, text)

    def turn(self, text: str) -> None:
        from gptoss.conversation.tool_loop import FunctionCallRequested, LoopFinished, ToolCallFinished, ToolCallStarted

        channel = None
        finished = None
        try:
            self.thinking.start()  # at once: the prompt's prefill alone can take seconds
            for event in self._events(text):
                if isinstance(event, ToolCallStarted):
                    self.thinking.stop()
                    if channel is not None:
                        self.out.print()
                    channel = None
                    self.show_call(event)
                    continue
                if isinstance(event, ToolCallFinished):
                    self.show_result(event)
                    self.thinking.start()  # the model reads the result and goes on
                    continue
                if isinstance(event, FunctionCallRequested):
                    self.thinking.stop()
                    self.say(f"(the model called functions.{event.name}, which has no implementation here)", "yellow")
                    continue
                if isinstance(event, LoopFinished):
                    finished = event
                    continue
                delta = event
                if delta.recipient:
                    continue  # a tool call being written: shown when it runs
                is_final = delta.channel == "final"
                if not is_final and not self.show_reasoning:
                    continue
                self.thinking.stop()
                if delta.channel != channel:
                    if channel is not None:
                        self.out.print()
                    if not is_final:
                        self.console.print(
                            f"[{delta.channel or 'no channel'}]", style="dim italic", end=" ", markup=False
                        )
                    channel = delta.channel
                self.out.print(delta.text, end="", style=None if is_final else "dim")
        except KeyboardInterrupt:
            self.thinking.stop()
            self.out.print()
            self.say("(stopped)")
            return
        finally:
            self.thinking.stop()
        self.out.print()
        last = self.session.last
        if finished is not None and finished.reason == "max_tool_calls":
            self.say(f"(stopped after {finished.tool_calls} tool calls: --max-tool-calls)", "yellow")
        if last is not None:
            if not last.final_text and (finished is None or finished.reason != "max_tool_calls"):
                self.say(f"(no final answer: {last.num_tokens} tokens, finish reason {last.finish_reason})")
            if self.tool_loop is None:
                for message in last.messages:
                    if message.recipient:
                        self.say(f"(the model called {message.recipient}, but no tools are enabled)", "yellow")
            elif last.final_text:
                _, annotations = self.tool_loop.toolbox.cite(last.final_text)
                urls = list(dict.fromkeys(a["url"] for a in annotations))
                for i, url in enumerate(urls, 1):
                    self.say(f"[{i}] {url}")

    def show_call(self, event) -> None:
        details = event.details
        if event.kind == "code_interpreter":
            body = details.get("code", event.arguments)
        elif event.kind == "web_search":
            action = details.get("action", {})
            body = action.get("query") or action.get("url") or action.get("pattern") or event.arguments
        else:
            body = event.arguments
        self.console.print(f"[{event.recipient}]", style="cyan dim", end=" ", markup=False)
        self.say(_clip(body, 15))

    def show_result(self, event) -> None:
        style = "dim" if event.status == "completed" else "yellow dim"
        self.say(_clip(event.output, 12), style)

    def loop(self) -> int:
        # Ctrl-C must reach us even when the parent started us with SIGINT ignored or blocked (both are
        # inherited across exec): an interactive chat promises that Ctrl-C stops an answer.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
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


def _clip(text: str, max_lines: int) -> str:
    lines = text.rstrip("\n").split("\n")
    if len(lines) <= max_lines:
        return "\n".join(lines)
    return "\n".join(lines[:max_lines]) + f"\n... ({len(lines) - max_lines} more lines)"


def _make_tools(args: argparse.Namespace):
    """The toolbox and its loop, or (None, None) without --tools and --functions."""
    if not args.tools and not args.functions:
        if args.corpus:
            raise GptossError("--corpus: the browser is not enabled (add --tools browser)")
        return None, None
    from gptoss.conversation.tool_loop import ToolLoop
    from gptoss.tools import make_toolbox

    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    if args.corpus and "browser" not in names:
        raise GptossError("--corpus: the browser is not enabled (add --tools browser)")
    if args.max_tool_calls < 0:
        raise GptossError(f"--max-tool-calls: expected a number >= 0, found {args.max_tool_calls}")
    toolbox = make_toolbox(
        names, corpus=args.corpus, functions=args.functions, browser_allow_hosts=args.browser_allow_hosts
    )
    browser = toolbox.get("browser")
    if browser is not None:
        backends = getattr(browser.backend, "backends", [browser.backend])
        if not any(b.can_search() for b in backends):
            print(
                "browser: no --corpus and no web search provider (SEARXNG_URL, EXA_API_KEY or YDC_API_KEY): "
                "searches will fail; pages can still be opened by URL",
                flush=True,
            )
        for backend in backends:
            if hasattr(backend, "index"):
                stats = backend.index()
                print(f"corpus {backend.root}: {stats.documents} documents", flush=True)
                for problem in stats.skipped:
                    print(f"  skipped {problem}", flush=True)
    return toolbox, ToolLoop(toolbox, max_tool_calls=args.max_tool_calls)


def run(args: argparse.Namespace) -> int:
    from gptoss.conversation import ChatSession, ChatSettings
    from gptoss.conversation.session import forced_turns_from_env

    if args.max_tokens is not None and args.max_tokens < 1:
        raise GptossError(f"--max-tokens: expected a positive number, found {args.max_tokens}")
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover - not on every platform
        pass
    toolbox, tool_loop = _make_tools(args)
    try:
        llm = load_llm(args, max_batch=1)
        if llm.is_demo:
            if args.max_tokens is None:
                args.max_tokens = DEMO_MAX_TOKENS
            if args.reasoning_max_tokens is None:
                args.reasoning_max_tokens = DEMO_REASONING_MAX_TOKENS
            print(
                f"gptoss: demo settings: reasoning budget {args.reasoning_max_tokens} tokens, answers up to "
                f"{args.max_tokens} tokens (--reasoning-max-tokens, --max-tokens)",
                file=sys.stderr,
            )
        elif args.max_tokens is None:
            args.max_tokens = 2048
        settings = ChatSettings(
            reasoning_effort=args.reasoning_effort,
            developer=args.developer,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            constrained=not args.unconstrained,
            reasoning_max_tokens=args.reasoning_max_tokens,
        )
        forced = forced_turns_from_env(llm.tokenizer) if os.environ.get("GPTOSS_TESTING_FORCE_TURNS") else None
        session = ChatSession(llm, settings, tools=toolbox, logits_processors_factory=forced)
        session.prepare()
        return ChatUI(session, args.show_reasoning, tool_loop).loop()
    finally:
        if tool_loop is not None:
            tool_loop.close()
