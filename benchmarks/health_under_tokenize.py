"""How long ``/health`` waits while big prompts are tokenized, as JSON: ``--requests`` (4) concurrent
``/tokenize`` requests of ``--chars`` characters each against a tiny synthetic model with a context of
``--max-model-len`` (2048) tokens.

    python3 benchmarks/health_under_tokenize.py [--chars 3900000 250000]
    python3 benchmarks/health_under_tokenize.py --max-model-len 131072 --requests 3 --chars 1200000

3.9 million characters cannot fit in 2048 tokens (no token covers more than 128 bytes), so they are
refused before tokenizing; 250,000 can, so they are tokenized in the thread pool while /health is polled.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from gptoss.engine import LLM
from gptoss.model import ModelConfig
from gptoss.model.synthetic import write_checkpoint
from gptoss.server.app import ServerConfig, create_app
from gptoss.server.http import uvicorn_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, nargs="+", default=[3_900_000, 250_000])
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--requests", type=int, default=4)
    args = p.parse_args()
    ckpt = write_checkpoint(Path(tempfile.mkdtemp()) / "tiny", ModelConfig.preset("tiny"), seed=1)
    app = create_app(
        LLM(ckpt, device="cpu", dtype="float32", max_batch=1, max_model_len=args.max_model_len), ServerConfig()
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)
    out = {}
    for chars in args.chars:
        text = ("lorem ipsum dolor " * (chars // 18 + 1))[:chars]
        body = {"model": "gpt-oss", "messages": [{"role": "user", "content": text}]}
        codes: list[int] = []
        workers = [
            threading.Thread(
                target=lambda codes=codes, body=body: codes.append(
                    httpx.post(base + "/tokenize", json=body, timeout=600).status_code
                )
            )
            for _ in range(args.requests)
        ]
        start = time.perf_counter()
        for w in workers:
            w.start()
        worst = 0.0
        while any(w.is_alive() for w in workers):
            t = time.perf_counter()
            httpx.get(base + "/health", timeout=600)
            worst = max(worst, time.perf_counter() - t)
            time.sleep(0.05)
        out[str(chars)] = {
            "status": sorted(codes),
            "wall_s": round(time.perf_counter() - start, 2),
            "worst_health_s": round(worst, 3),
        }
    server.should_exit = True
    app.state.gptoss.engine.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
