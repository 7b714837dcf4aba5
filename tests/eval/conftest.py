"""Servers for the eval end-to-end tests. Each fixture yields a ``Backend``: a base URL and a model name.

``fake_server``: an in-process oracle (tests/eval/fake_server.py) with a request log.
``serve_backend``: the real ``gptoss serve`` on a synthetic tiny checkpoint (random weights), when this
version of gptoss has the ``serve`` subcommand; otherwise the test is skipped, saying so.
``backend``: both, so the same end-to-end test runs against each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.eval.fake_server import FakeServer

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Backend:
    name: str
    base_url: str
    model: str | None
    fake: FakeServer | None = None  # the request log, when the backend is the fake


@pytest.fixture
def fake_server():
    server = FakeServer().start()
    yield server
    server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="session")
def serve_backend(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("eval-serve") / "tiny"
    subprocess.run(
        [sys.executable, "-m", "gptoss", "make-checkpoint", "--preset", "tiny", "--out", str(ckpt)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    port = _free_port()
    log = open(ckpt.parent / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptoss", "serve", "--model", str(ckpt), "--port", str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"gptoss serve exited with {proc.returncode}: {(ckpt.parent / 'serve.log').read_text()[-2000:]}"
                )
            try:
                _get_json(f"{base}/health")
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError("gptoss serve did not answer GET /health within 180 s") from None
                time.sleep(0.5)
        try:
            models = [m["id"] for m in _get_json(f"{base}/v1/models")["data"]]
        except (OSError, KeyError, TypeError, ValueError):
            models = []
        yield Backend("serve", f"{base}/v1", models[0] if models else None)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(params=["fake", pytest.param("serve", marks=pytest.mark.slow)])
def backend(request):
    if request.param == "fake":
        server = FakeServer(delay=0.05).start()
        yield Backend("fake", server.base_url, server.model, server)
        server.stop()
    else:
        yield request.getfixturevalue("serve_backend")
