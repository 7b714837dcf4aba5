"""``gptoss mcp``: serve the sandboxed Python tool and the browser as an MCP server (stdio or streamable HTTP),
for other agents. Each MCP session gets its own Python kernel and browser state."""

from __future__ import annotations

import argparse
import ipaddress

from gptoss.errors import GptossError


def add_parser(sub) -> None:
    p = sub.add_parser("mcp", help="serve the Python and browser tools over MCP", description=__doc__)
    p.add_argument("--tools", default="python,browser", help="the tools to serve: python, browser, or both")
    p.add_argument("--corpus", default=None, metavar="DIR", help="folder of documents the browser searches")
    p.add_argument(
        "--transport",
        default="stdio",
        choices=["stdio", "http"],
        help="stdio (an agent starts this command) or http (streamable HTTP at /mcp)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on with --transport http (default: loopback)")
    p.add_argument("--port", type=int, default=8765, help="TCP port with --transport http")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptoss.tools import make_toolbox
    from gptoss.tools.mcp_server import build_server

    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    bad = [n for n in names if n not in ("python", "browser")]
    if bad or not names:
        raise GptossError(f"--tools: expected python, browser or both, found {args.tools!r}")
    if not 1 <= args.port <= 65535:
        raise GptossError(f"--port: expected 1-65535, found {args.port}")
    toolbox = make_toolbox(names, corpus=args.corpus)
    server = build_server(toolbox)
    if args.transport == "stdio":
        server.run("stdio")
        return 0
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        # The tools run code: beyond loopback, anyone who reaches the port runs it. Said plainly, then served.
        import sys

        print(f"gptoss mcp: serving the tools on {args.host}:{args.port} without authentication", file=sys.stderr)
    server.run("streamable-http", host=args.host, port=args.port)
    return 0
