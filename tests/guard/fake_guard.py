"""A deterministic guard endpoint for tests (OpenAI-compatible chat completions, http.server in a thread).

Each policy names its trigger in its text as ``TRIGGER=WORD``; the verdict is a violation when the content
holds that word. An output check (the answer and its request as JSON after OUTPUT_PREAMBLE) also violates a
policy that says ``ANSWER_LIMIT=N`` once the answer reaches N characters, so a test can let the first
pieces of a streamed answer pass and block the rest. Every request is logged: (policy trigger, content).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gptoss.guard.stream import OUTPUT_PREAMBLE


def answer_of(content: str) -> str | None:
    """The assistant response of an output check (None for other checks)."""
    if not content.startswith(OUTPUT_PREAMBLE):
        return None
    return json.loads(content[len(OUTPUT_PREAMBLE) :])["assistant_response"]


@dataclass
class FakeGuard:
    model: str = "fake-guard"
    status: int = 200  # answer every chat request with this HTTP status (500: a guard that is down)
    garbage: bool = False  # answer with text that is no verdict
    delay: float = 0.0  # seconds each verdict takes
    log: list[tuple[str, str]] = field(default_factory=list)
    base_url: str = ""

    def verdict(self, policy: str, content: str) -> dict:
        trigger = re.search(r"TRIGGER=(\w+)", policy)
        limit = re.search(r"ANSWER_LIMIT=(\d+)", policy)
        word = trigger.group(1) if trigger else "\0"
        self.log.append((word, content))
        answer = answer_of(content)
        hit = word in (answer if answer is not None else content)
        if limit and answer is not None and len(answer) >= int(limit.group(1)):
            hit = True
        return {
            "violation": int(hit),
            "policy_category": word if hit else None,
            "rationale": f"{'contains' if hit else 'no'} {word}",
        }

    def completion(self, body: dict) -> tuple[int, dict]:
        if self.delay:
            import time

            time.sleep(self.delay)
        if self.status != 200:
            return self.status, {"error": {"message": "injected", "type": "server_error"}}
        messages = body.get("messages", [])
        policy = next((m["content"] for m in messages if m.get("role") == "system"), "")
        content = next((m["content"] for m in messages if m.get("role") == "user"), "")
        text = "no verdict here" if self.garbage else json.dumps(self.verdict(policy, content))
        return 200, {
            "id": "chatcmpl-guard",
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def contents(self, word: str | None = None) -> list[str]:
        return [c for w, c in list(self.log) if word is None or w == word]

    def start(self) -> "FakeGuard":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": fake.model, "object": "model", "created": 0, "owned_by": "test"}],
                    },
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(*fake.completion(body))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
