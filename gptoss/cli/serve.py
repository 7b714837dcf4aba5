"""``gptoss serve``: an OpenAI-compatible server (Chat Completions, Responses) on FastAPI and uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from gptoss.cli.common import add_model_args, load_llm
from gptoss.cli.guard_args import add_guard_args, guard_settings, load_guard_llm
from gptoss.errors import GptossError


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server", description=__doc__)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set GPTOSS_API_KEY)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default 8)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before answering 429 (default 256)")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the --model argument)")
    p.add_argument("--reasoning-max-tokens", type=int, default=None,
                   help="cap on tokens in one reasoning (analysis) message; the model is then made to move on")
    p.add_argument("--store", default=None, help="SQLite file for stored responses (default: ~/.cache/gptoss/responses.sqlite)")
    p.add_argument("--tools", default="", help="built-in tools the Responses API may run: browser,python")
    p.add_argument("--corpus", default=None, help="folder of documents the browser searches (indexed on start)")
    p.add_argument("--log-level", default="info")
    add_guard_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from gptoss.conversation.openai_chat import ServerPersona
    from gptoss.server.app import ServerConfig, create_app
    from gptoss.server.http import uvicorn_config

    if not 1 <= args.port <= 65535:
        raise GptossError(f"--port: expected 1-65535, found {args.port}")
    if args.max_batch < 1:
        raise GptossError(f"--max-batch: expected a positive number, found {args.max_batch}")
    toolbox = None
    if args.tools:  # checked before the (slow) model load
        from gptoss.tools import make_toolbox

        toolbox = make_toolbox(args.tools, corpus=args.corpus)
    cache = os.environ.get("GPTOSS_CACHE") or os.path.expanduser("~/.cache/gptoss")
    guard = guard_settings(args, cache)  # policies read before the (slow) model load
    llm = load_llm(args, max_batch=args.max_batch)
    load_guard_llm(args, guard)
    name = args.served_model_name or args.model or "openai/gpt-oss-20b"
    aliases = [a for a in {os.path.basename(str(name).rstrip("/")), "gpt-oss"} if a != name]
    store = args.store or os.path.join(os.environ.get("GPTOSS_CACHE") or os.path.expanduser("~/.cache/gptoss"), "responses.sqlite")
    config = ServerConfig(model_name=name, aliases=aliases, api_key=args.api_key or os.environ.get("GPTOSS_API_KEY"),
                          max_queue=args.max_queue, store_path=store,
                          persona=ServerPersona(reasoning_max_tokens=args.reasoning_max_tokens), toolbox=toolbox,
                          guard=guard, reasoning=args.reasoning)
    app = create_app(llm, config)
    print(f"gptoss: serving {name} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port, log_level=args.log_level)).run()
    return 0
