"""``gptoss`` entry point. Subcommands live in sibling modules, each exposing
``add_parser(subparsers)`` (which sets ``func`` on its parser) and is listed in ``SUBCOMMANDS``."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from gptoss import __version__
from gptoss.errors import GptossError

# Module names under gptoss.cli, in the order `gptoss --help` lists them.
SUBCOMMANDS = [
    "chat",
    "serve",
    "generate",
    "harmony_cmd",
    "make_checkpoint",
    "quantize_cmd",
    "finetune_cmd",
    "merge_cmd",
    "bench",
    "bench_serve",
    "eval_cmd",
    "mcp_cmd",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their paragraphs; every option's help ends with its default unless it names one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or action.option_strings == []
            or default in ("", [])
        ):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def plain(text: str | None) -> str | None:
    """A docstring as terminal text: ``code`` and :role:`name` lose their reST markup."""
    if not text:
        return text
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _polish(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.description = plain(parser.description)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _polish(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptoss", description="Run OpenAI's gpt-oss models end to end.")
    parser.add_argument("--version", action="version", version=f"gptoss {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"gptoss.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gptoss.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    _polish(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("GPTOSS_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except GptossError as exc:
        if debug:
            raise
        print(f"gptoss: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
