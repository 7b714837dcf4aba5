"""A live gptoss server on 127.0.0.1 (uvicorn in a thread) over a synthetic checkpoint."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest

# Arguments whose values end under random weights (enums, booleans, bounded integers, no extra keys):
# free strings never close when the model is noise.
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Tokyo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 5},
        "metric": {"type": "boolean"},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(llm, config=None, **config_kwargs):
    """create_app(llm, config or ServerConfig(**config_kwargs)) under uvicorn in a thread on a free
    loopback port; yields the base URL."""
    import uvicorn

    from gptoss.server.app import ServerConfig, create_app
    from gptoss.server.http import uvicorn_config

    app = create_app(llm, config or ServerConfig(**config_kwargs))
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        app.state.gptoss.engine.shutdown()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from gptoss.model import ModelConfig
    from gptoss.model.synthetic import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("server") / "tiny", ModelConfig.preset("tiny"), seed=21)


@pytest.fixture(scope="session")
def tiny_llm(tiny_ckpt):
    from gptoss.engine import LLM

    return lambda max_batch=8, max_model_len=2048: LLM(
        tiny_ckpt, device="cpu", dtype="float32", max_batch=max_batch, max_model_len=max_model_len
    )
