"""``gptoss harmony``: render conversations to token ids and parse token ids back into messages."""

from __future__ import annotations

import argparse
import json
import sys

from gptoss.errors import GptossError


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "harmony",
        help="render / parse the Harmony chat format",
        description="Render Harmony conversations to token ids, or parse token ids.",
    )

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)
    sub = parser.add_subparsers(dest="harmony_command", metavar="ACTION")

    render = sub.add_parser("render", help="conversation JSON on stdin -> token ids (JSON list) on stdout")
    mode = render.add_mutually_exclusive_group()
    mode.add_argument(
        "--for-completion",
        metavar="ROLE",
        choices=["user", "assistant", "system", "developer", "tool"],
        help="append <|start|>ROLE, the prompt for sampling the next message",
    )
    mode.add_argument("--training", action="store_true", help="end a last assistant final message with <|return|>")
    render.add_argument(
        "--keep-analysis", action="store_true", help="do not drop earlier analysis messages (auto_drop_analysis=False)"
    )
    render.add_argument("--tokenizer", metavar="FILE", help="o200k_base.tiktoken or tokenizer.json to use")
    render.set_defaults(func=run_render)

    parse = sub.add_parser(
        "parse", help="token ids (JSON list) on stdin -> messages JSON on stdout, warnings on stderr"
    )
    parse.add_argument(
        "--role",
        choices=["user", "assistant", "system", "developer", "tool"],
        default=None,
        help="role announced by the prompt's trailing <|start|>ROLE (default: tokens start with <|start|>)",
    )
    parse.add_argument("--tokenizer", metavar="FILE", help="o200k_base.tiktoken or tokenizer.json to use")
    parse.set_defaults(func=run_parse)


def _tokenizer(args: argparse.Namespace):
    from gptoss.tokenizer import Tokenizer

    return Tokenizer.load(bpe_file=args.tokenizer) if args.tokenizer else Tokenizer.load()


def _stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise GptossError("no input: pipe a JSON document into stdin (e.g. `gptoss harmony render < conv.json`)")
    return sys.stdin.read()


def run_render(args: argparse.Namespace) -> int:
    from gptoss.harmony import (
        RenderConfig,
        load_conversation,
        render_conversation,
        render_conversation_for_completion,
        render_conversation_for_training,
    )

    conv = load_conversation(_stdin(), "stdin")
    tok = _tokenizer(args)
    config = RenderConfig(auto_drop_analysis=not args.keep_analysis)
    if args.for_completion:
        tokens = render_conversation_for_completion(conv, args.for_completion, config, tokenizer=tok)
    elif args.training:
        tokens = render_conversation_for_training(conv, config, tokenizer=tok)
    else:
        tokens = render_conversation(conv, config, tokenizer=tok)
    print(json.dumps(tokens))
    return 0


def run_parse(args: argparse.Namespace) -> int:
    from gptoss.harmony import StreamParser, load_tokens, messages_to_json

    tokens = load_tokens(_stdin(), "stdin")
    parser = StreamParser(_tokenizer(args), args.role)
    parser.process_many(tokens).process_eos()
    for warning in parser.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(messages_to_json(parser.messages, indent=2))
    return 0
