"""gptoss serve --tensor-parallel 2 on the CPU (gloo): the openai client end to end; a killed rank ends the
server with one line naming it, within the collective timeout."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.helpers import checkpoint

TIMEOUT_S = 20  # --distributed-timeout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = checkpoint(tmp_path_factory.mktemp("tp"), "tiny", layout="hf", num_hidden_layers=1)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptoss",
            "serve",
            "--model",
            str(folder),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--tensor-parallel",
            "2",
            "--distributed-timeout",
            str(TIMEOUT_S),
            "--max-model-len",
            "1024",
            "--max-batch",
            "2",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    yield proc, base
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_openai_client_then_a_killed_rank_ends_the_server(served):
    proc, base = served
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, seed=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    streamed = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, seed=0, stream=True
    )
    assert [c for c in streamed]

    # The spawned rank announced itself on stderr; kill it.
    pid = None
    while pid is None:
        line = proc.stderr.readline()
        assert line, "the server never named its rank 1"
        found = re.search(r"tensor parallel rank 1 is process (\d+)", line)
        pid = int(found.group(1)) if found else None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises((openai.APIStatusError, openai.APIConnectionError)) as failed:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    if isinstance(failed.value, openai.APIStatusError):
        # 503 whether the engine noticed the dead rank before this request came (submit refuses it) or while
        # it was queued (the engine hands it EngineStopped, which the stream once re-raised as a 400)
        assert failed.value.status_code == 503 and "rank 1" in str(failed.value)
    saw_health = None
    while proc.poll() is None and time.monotonic() - killed < TIMEOUT_S + 10:
        try:
            health = httpx.get(base + "/health", timeout=1)
            if health.status_code == 503:
                saw_health = health.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode not in (0, None)
    assert time.monotonic() - killed < TIMEOUT_S + 10
    errors = [line for line in rest.splitlines() if line.startswith("gptoss: error:")]
    assert len(errors) == 1 and "rank 1" in errors[0], rest[-2000:]
    assert saw_health is not None, "/health never said the engine stopped"
    assert saw_health["status"] == "error" and "rank 1" in saw_health["error"]
