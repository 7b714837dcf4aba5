"""A tiny OpenAI-compatible chat server for tests (http.server in a thread, 127.0.0.1, random port).

By default it answers like an oracle that knows the sample sets: the right boxed integer, the right
option letter after shuffling, a HealthBench reply, and grader verdicts "met" for positive-point rubric
items only, so every score is exactly 1.0. Reasoning grows with effort, so output tokens do too.
``fail`` lets a test inject HTTP errors; every chat request is logged.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from gptoss.eval.datasets import load_eval

REASONING_WORDS = {"low": 2, "medium": 6, "high": 18, None: 0}


def oracle_answers() -> tuple[dict[str, int], dict[str, str]]:
    """{AIME problem text: answer}, {multiple-choice question: correct option text} from the sample sets."""
    integers = {item.problem: item.answer for item in load_eval("aime", ["samples"]).items}
    choices = {}
    for name in ("gpqa", "mmlu"):
        for item in load_eval(name, ["samples"]).items:
            choices[item.question] = item.options[item.correct]
    return integers, choices


@dataclass
class LoggedRequest:
    kind: str  # aime | choice | healthbench | grader | tool-followup
    content: str  # the last user message
    effort: str | None
    body: dict


@dataclass
class FakeServer:
    model: str = "fake-model"
    delay: float = 0.0
    fail: Callable[[LoggedRequest], int | None] | None = None  # -> HTTP status to answer with instead
    python_tool_calls: bool = False  # when tools are offered, first call the python tool
    log: list[LoggedRequest] = field(default_factory=list)
    base_url: str = ""

    def __post_init__(self) -> None:
        self.integers, self.choices = oracle_answers()
        self._lock = threading.Lock()
        self._counter = 0

    # ------------------------------------------------------------------ answers

    def classify(self, body: dict) -> LoggedRequest:
        messages = body.get("messages", [])
        users = [m for m in messages if m.get("role") == "user"]
        content = users[-1]["content"] if users else ""
        if messages and messages[-1].get("role") == "tool":
            kind = "tool-followup"
        elif "# Rubric item" in content:
            kind = "grader"
        elif "\\boxed{}" in content:
            kind = "aime"
        elif content.startswith("Answer the following multiple choice question"):
            kind = "choice"
        else:
            kind = "healthbench"
        return LoggedRequest(kind, content, body.get("reasoning_effort"), body)

    def answer(self, req: LoggedRequest) -> dict:
        """{content, reasoning_content, tool_calls?}"""
        effort_words = REASONING_WORDS.get(req.effort, 0)
        reasoning = " ".join(["thinking"] * effort_words)
        if req.kind == "grader":
            m = re.search(r"# Rubric item\n\[(-?[\d.]+)\]", req.content)
            met = m is not None and float(m.group(1)) > 0
            return {
                "content": f'```json\n{{"explanation": "checked", "criteria_met": {str(met).lower()}}}\n```',
                "reasoning_content": "",
            }
        if req.kind == "aime":
            problem = req.content.split("\n\nPlease reason step by step")[0]
            answer = self.integers.get(problem, 0)
            if self.python_tool_calls and req.body.get("tools"):
                call = {
                    "id": f"call_{self._counter}",
                    "type": "function",
                    "function": {"name": "python", "arguments": json.dumps({"code": f"print({answer})"})},
                }
                return {"content": None, "reasoning_content": reasoning, "tool_calls": [call]}
            return {
                "content": f"Working it out step by step.\n\nThe answer is $\\boxed{{{answer}}}$.",
                "reasoning_content": reasoning,
            }
        if req.kind == "tool-followup":
            out = req.body["messages"][-1]["content"].strip()
            return {
                "content": f"The tool printed {out}, so the answer is \\boxed{{{out}}}.",
                "reasoning_content": reasoning,
            }
        if req.kind == "choice":
            question = req.content.split("\n\n")[1]
            correct = self.choices.get(question)
            letter = "A"
            for m in re.finditer(r"^([A-J])\) (.*)$", req.content, flags=re.MULTILINE):
                if m.group(2) == correct:
                    letter = m.group(1)
            return {"content": f"Let me compare the options.\n\n**Answer: {letter}**", "reasoning_content": reasoning}
        return {
            "content": "Please call emergency services now if symptoms are severe; see a clinician.",
            "reasoning_content": reasoning,
        }

    def completion(self, body: dict) -> tuple[int, dict]:
        req = self.classify(body)
        with self._lock:
            self._counter += 1
            self.log.append(req)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            status = self.fail(req)
            if status:
                return status, {"error": {"message": f"injected {status}", "type": "server_error", "code": status}}
        msg = self.answer(req)
        tool_calls = msg.pop("tool_calls", None)
        content_tokens = len((msg["content"] or "").split())
        reasoning_tokens = len(msg["reasoning_content"].split())
        message = {"role": "assistant", **msg}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return 200, {
            "id": f"chatcmpl-{self._counter}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
            "usage": {
                "prompt_tokens": len(req.content.split()),
                "completion_tokens": content_tokens + reasoning_tokens,
                "total_tokens": len(req.content.split()) + content_tokens + reasoning_tokens,
            },
        }

    def requests_of(self, *kinds: str) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if r.kind in kinds]

    # ------------------------------------------------------------------ http

    def start(self) -> "FakeServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [{"id": server.model, "object": "model", "created": 0, "owned_by": "test"}],
                        },
                    )
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                elif body.get("model") != server.model:
                    self._send(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                else:
                    self._send(*server.completion(body))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
