"""``gptoss serve``: an OpenAI-compatible server (Chat Completions, Responses) on FastAPI and uvicorn."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

from gptoss.cli.common import (
    DEMO_MODEL_NAME,
    DEMO_REASONING_MAX_TOKENS,
    add_browser_args,
    add_model_args,
    add_tensor_parallel_args,
    follow_if_not_rank0,
    load_llm,
)
from gptoss.cli.guard_args import add_guard_args, guard_settings, load_guard_llm
from gptoss.errors import GptossError


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server", description=__doc__)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (checked before the model loads)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set GPTOSS_API_KEY)")
    p.add_argument(
        "--api-keys-file", default=None, help="file of API keys, one a line; each key sees only the responses it stored"
    )
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default 8)")
    p.add_argument(
        "--share-prefix-cache",
        action="store_true",
        help="let requests of different API keys reuse each other's cached prompt prefixes (default: "
        "only within one key, since reuse shows in response times; see docs/security.md)",
    )
    add_tensor_parallel_args(p)
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before answering 429 (default 256)")
    p.add_argument(
        "--served-model-name",
        default=None,
        help=f"the model name clients send (default: the --model argument; {DEMO_MODEL_NAME} for the synthetic demo)",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also serve this PEFT LoRA adapter as the model NAME (repeatable; the base stays served, "
        "requests for different adapters share batches)",
    )
    p.add_argument(
        "--reasoning-max-tokens",
        type=int,
        default=None,
        help="cap on tokens in one reasoning (analysis) message; the model is then made to move on "
        f"(default: none; {DEMO_REASONING_MAX_TOKENS} for the synthetic demo)",
    )
    p.add_argument(
        "--store", default=None, help="SQLite file for stored responses (default: ~/.cache/gptoss/responses.sqlite)"
    )
    p.add_argument(
        "--store-ttl",
        type=float,
        default=30 * 86400,
        help="seconds a stored response is kept (default 30 days; 0: forever)",
    )
    p.add_argument("--tools", default="", help="built-in tools the Responses API may run: browser,python")
    add_browser_args(p)
    p.add_argument(
        "--python-sandboxes-memory",
        default=None,
        metavar="SIZE",
        help="memory of all Python sandboxes together (processes and their files on tmpfs), e.g. 16g: "
        "a parent memory cgroup, as root (default: no budget beyond each conversation's 4g)",
    )
    p.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an MCP server (streamable HTTP) whose tools Responses requests may offer the model with "
        '{"type": "mcp", "server_label": NAME}; repeatable. Only servers declared here are used',
    )
    p.add_argument(
        "--strict-max-tokens",
        action="store_true",
        help="answer 400 when max_tokens / max_output_tokens is more than the context leaves after the "
        "prompt (as OpenAI does); default: generate up to the end of the context",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn's log level",
    )
    add_guard_args(p)
    p.set_defaults(func=run)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, taken before the model loads, so that a busy port fails at once
    (in one line) and nothing announces a server that cannot start."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise GptossError(f"--host {host!r}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise GptossError(
                f"--port {port}: {host}:{port} is already in use (another server?); stop it or choose another --port"
            ) from None
        raise GptossError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def parse_size(text: str, flag: str) -> int:
    """``"16g"``, ``"512m"``, ``"1048576"`` in bytes; a bad one is one line naming the flag."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise GptossError(f"{flag}: expected a size such as 16g, 512m or a number of bytes, found {text!r}")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index(m.group(2) or "b"))


def python_config(args: argparse.Namespace):
    """The Python tool's configuration from the flags (None: the defaults)."""
    if not args.python_sandboxes_memory:
        return None
    from gptoss.tools.python import PythonConfig, SandboxLimits

    return PythonConfig(
        limits=SandboxLimits(
            sandboxes_memory_bytes=parse_size(args.python_sandboxes_memory, "--python-sandboxes-memory")
        )
    )


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise GptossError(f"--port: expected 1-65535, found {args.port}")
    if args.max_batch < 1:
        raise GptossError(f"--max-batch: expected a positive number, found {args.max_batch}")
    if args.store_ttl < 0:
        raise GptossError(f"--store-ttl: expected seconds >= 0, found {args.store_ttl}")
    api_keys = []
    if args.api_keys_file:
        from gptoss.server.state import read_api_keys

        api_keys = read_api_keys(args.api_keys_file)
    if args.device:
        from gptoss.engine.llm import check_device

        check_device(args.device)
    if follow_if_not_rank0(args, max_batch=args.max_batch):  # torchrun: the API lives on rank 0 only
        return 0
    from gptoss.tools.mcp import parse_mcp_servers

    mcp_servers = parse_mcp_servers(args.mcp)  # checked before the (slow) model load
    toolbox = None
    if args.tools:  # checked before the (slow) model load
        from gptoss.tools import make_toolbox

        toolbox = make_toolbox(
            args.tools,
            corpus=args.corpus,
            python_config=python_config(args),
            browser_allow_hosts=args.browser_allow_hosts,
        )
    cache = os.environ.get("GPTOSS_CACHE") or os.path.expanduser("~/.cache/gptoss")
    guard = guard_settings(args, cache)  # policies read before the (slow) model load
    sock = listen(args.host, args.port)  # a busy port fails here, in one line, before the model loads
    try:
        import uvicorn

        from gptoss.conversation.openai_chat import ServerPersona
        from gptoss.server.app import ServerConfig, create_app
        from gptoss.server.http import uvicorn_config

        llm = load_llm(args, max_batch=args.max_batch)
        load_guard_llm(args, guard)
        name, aliases = served_names(args, llm)
        store = args.store or os.path.join(cache, "responses.sqlite")
        config = ServerConfig(
            model_name=name,
            aliases=aliases,
            api_key=args.api_key or os.environ.get("GPTOSS_API_KEY"),
            api_keys=api_keys,
            store_ttl=args.store_ttl or None,
            max_queue=args.max_queue,
            store_path=store,
            persona=ServerPersona(reasoning_max_tokens=args.reasoning_max_tokens),
            toolbox=toolbox,
            guard=guard,
            reasoning=args.reasoning,
            strict_max_tokens=args.strict_max_tokens,
            mcp_servers=mcp_servers,
            share_prefix_cache=args.share_prefix_cache,
            adapters=_adapter_names(llm, name, aliases),
        )
        app = create_app(llm, config)
        if llm.model_dir is not None:  # weights are memory-mapped: a bus error gets one line saying why
            from gptoss.server.crash import explain_fatal_signals

            explain_fatal_signals(str(llm.model_dir))
        what = " (SYNTHETIC DEMO CHECKPOINT: random weights)" if llm.is_synthetic else ""
        print(f"gptoss: serving {name}{what} on http://{args.host}:{args.port}/v1", file=sys.stderr)
        server = uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port, log_level=args.log_level))
        engine = app.state.gptoss.engine
        engine.on_fatal = lambda exc: _stop_soon(server)
        server.run(sockets=[sock])
        if engine.error is not None:  # a tensor parallel rank is gone: one line naming it, nonzero exit
            raise GptossError(engine.error)
    finally:
        sock.close()
        if "llm" in locals():
            llm.close()
    return 0


def _adapter_names(llm, name: str, aliases: list[str]) -> list[str]:
    """The served names of the LoRA adapters (--lora NAME=PATH), none of them the base model's."""
    names = llm.model.lora.names if getattr(llm.model, "lora", None) is not None else []
    for adapter in names:
        if adapter == name or adapter in aliases:
            raise GptossError(f"--lora {adapter}=...: {adapter!r} is the base model's name; give the adapter another")
    return names


def _stop_soon(server, grace: float = 2.0) -> None:
    """Stop serving after ``grace`` seconds (the failed requests get their answers; /health says why)."""
    import threading

    def stop():
        server.should_exit = True
        server.force_exit = True

    threading.Timer(grace, stop).start()


def served_names(args: argparse.Namespace, llm) -> tuple[str, list[str]]:
    """The model name clients send, and its aliases. The synthetic demo is never served under the real
    model's name (nor the generic gpt-oss): its name says what it is. Also sets the demo's reasoning budget."""
    if llm.is_demo:
        if args.served_model_name and "synthetic" not in args.served_model_name.lower():
            raise GptossError(
                f"--served-model-name {args.served_model_name!r}: the synthetic demo is served only "
                "under a name containing 'synthetic'"
            )
        if args.reasoning_max_tokens is None:
            args.reasoning_max_tokens = DEMO_REASONING_MAX_TOKENS
        return args.served_model_name or DEMO_MODEL_NAME, []
    name = args.served_model_name or args.model or "openai/gpt-oss-20b"
    return name, [a for a in {os.path.basename(str(name).rstrip("/")), "gpt-oss"} if a != name]
