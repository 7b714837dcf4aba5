"""Run evals against an OpenAI-compatible endpoint: plan every attempt, skip those already recorded, run the
rest concurrently (retrying transient failures), and append one JSON line per attempt as it finishes.

An attempt is (eval, reasoning effort, item, sample). ``attempts.jsonl`` in the output folder is the single
source of truth: a killed run loses at most the attempts in flight, and rerunning the same command redoes
only attempts that are missing or ended in an error. ``run.json`` pins the settings that change results
(model, sampling, data), so a resumed run cannot silently mix two configurations.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import random
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gptoss.errors import GptossError
from gptoss.eval.datasets import ALL_EVALS, EVALS, SAFETY_EVALS, Dataset, load_eval, parse_data_spec
from gptoss.eval.extract import extract_choice, extract_integer
from gptoss.eval.grading import RubricGrader, grade_exact
from gptoss.eval.prompts import build_prompt
from gptoss.harmony import EFFORT_NAMES

EFFORTS = EFFORT_NAMES
ATTEMPTS_FILE = "attempts.jsonl"
RUN_FILE = "run.json"
# Settings that change results: a resumed run must use the same ones.
PINNED = (
    "model",
    "temperature",
    "max_tokens",
    "seed",
    "tools",
    "data",
    "grader_model",
    "grader_max_tokens",
    "guard_policy",
)
GRADED_EVALS = ("healthbench", "disallowed", "jailbreak", "simpleqa")

PYTHON_TOOL = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Run Python code and return what it prints. Use it for calculations and checks.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the Python program to run"}},
            "required": ["code"],
        },
    },
}


@dataclass
class Endpoint:
    """An OpenAI-compatible server and the model to ask there."""

    base_url: str
    model: str | None = None
    api_key: str | None = None

    def __post_init__(self) -> None:
        self.base_url = normalize_base_url(self.base_url)
        self.api_key = self.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"


@dataclass
class EvalConfig:
    endpoint: Endpoint
    out: Path
    evals: list[str] = field(default_factory=lambda: list(EVALS))
    efforts: list[str] = field(default_factory=lambda: list(EFFORTS))
    samples: int = 1
    concurrency: int = 8
    limit: int | None = None
    tools: list[str] = field(default_factory=list)
    data: str | None = None
    max_tokens: int | None = None
    temperature: float | None = 1.0
    seed: int = 0
    grader: Endpoint | None = None  # default: the endpoint under test
    grader_max_tokens: int | None = None  # default: max_tokens
    grader_reasoning_effort: str | None = None
    grader_retries: int = 2  # extra asks when a grader reply holds no verdict
    retries: int = 5
    retry_backoff: float = 1.0  # seconds before the first retry; doubled each time, at most 30
    timeout: float = 600.0
    max_tool_turns: int = 8
    progress: bool | None = None  # None: only when stderr is a terminal
    guard_policy: str | None = None  # the guard eval's policy file (default: the packaged moderation policy)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        bad = [e for e in self.evals if e not in ALL_EVALS]
        if bad or not self.evals:
            raise GptossError(
                f"--eval: unknown eval {bad[0] if bad else '(none)'!r}; choose from {', '.join(ALL_EVALS)}"
            )
        bad = [e for e in self.efforts if e not in EFFORTS]
        if bad or not self.efforts:
            raise GptossError(
                f"--reasoning-effort: unknown effort {bad[0] if bad else '(none)'!r}; choose from {', '.join(EFFORTS)}"
            )
        bad = [t for t in self.tools if t != "python"]
        if bad:
            raise GptossError(f"--tools: unknown tool {bad[0]!r}; only 'python' is supported")
        for name in ("samples", "concurrency", "retries", "grader_retries", "max_tool_turns"):
            if getattr(self, name) < (1 if name in ("samples", "concurrency") else 0):
                raise GptossError(f"--{name.replace('_', '-')} must be positive, found {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise GptossError(f"--limit must be at least 1, found {self.limit}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise GptossError(f"--max-tokens must be at least 1, found {self.max_tokens}")

    @property
    def grader_endpoint(self) -> Endpoint:
        return self.grader or self.endpoint

    def pinned(self) -> dict[str, Any]:
        grader = self.grader_endpoint
        return {
            "model": self.endpoint.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "tools": sorted(self.tools),
            "data": parse_data_spec(self.data, self.evals),
            "grader_model": grader.model,
            "grader_max_tokens": self.grader_max_tokens or self.max_tokens,
            "guard_policy": self.policy().version if "guard" in self.evals else None,
        }

    def policy(self):
        """The guard eval's policy (gptoss.guard.Policy)."""
        from gptoss.eval.safety import default_policy_path
        from gptoss.guard.policy import load_policy

        return load_policy(self.guard_policy or default_policy_path())


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1`` (the client appends ``/chat/completions``)."""
    url = (url or "").strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise GptossError(f"--base-url {url!r}: expected http(s)://HOST[:PORT][/v1]")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url


@dataclass(frozen=True)
class Attempt:
    eval: str
    effort: str
    item: Any
    sample: int

    @property
    def key(self) -> str:
        return attempt_key(self.eval, self.effort, self.item.id, self.sample)


def attempt_key(eval_name: str, effort: str, item_id: str, sample: int) -> str:
    return f"{eval_name}|{effort}|{item_id}|{sample}"


# ------------------------------------------------------------------------------------- the attempts file


class AttemptStore:
    """``attempts.jsonl``: appended one line per finished attempt; the last line for a key wins."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.skipped_lines = 0
        self._file = None

    def load(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        if not self.path.is_file():
            return records
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    records[record["key"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.skipped_lines += 1  # a line cut short by a killed run
        return records

    def append(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = (
                self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            )
            self._file = open(self.path, "a", encoding="utf-8")
            if needs_newline:  # the previous run died mid-line: keep that fragment on a line of its own
                self._file.write("\n")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def check_run_file(out: Path, pinned: dict[str, Any]) -> None:
    """Write ``run.json`` on the first run; on a resumed run, refuse settings that change results."""
    path = out / RUN_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text()).get("pinned", {})
        except (json.JSONDecodeError, AttributeError):
            raise GptossError(f"{path}: unreadable; delete it or use another --out") from None
        for key in PINNED:
            before, now = previous.get(key), pinned.get(key)
            if key == "data" and isinstance(before, dict):  # evals may be added; those in both must match
                clash = [e for e in now if e in before and before[e] != now[e]]
                before, now = ({e: before[e] for e in clash}, {e: now[e] for e in clash}) if clash else (None, None)
                pinned = {**pinned, "data": {**previous["data"], **pinned["data"]}}
            if key in previous and before != now:
                raise GptossError(
                    f"{path}: this folder holds a run with {key}={before!r}, not {now!r}; "
                    "use another --out (or delete the folder) to start a different run"
                )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pinned": pinned}, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ the client


def _openai():
    try:
        import openai
    except ImportError:
        raise GptossError("gptoss eval needs the openai client (pip install openai)") from None
    return openai


class ChatClient:
    """Chat completions with retries: connection errors, timeouts, 429 and 5xx are retried with
    exponential backoff; 401/403/404 mean a misconfiguration and stop the run with a clear error."""

    def __init__(self, endpoint: Endpoint, retries: int, backoff: float, timeout: float):
        openai = _openai()
        self.endpoint = endpoint
        self.retries = retries
        self.backoff = backoff
        self.client = openai.AsyncOpenAI(
            base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0, timeout=timeout
        )

    async def check(self) -> str:
        """Reach the server before starting; returns the model to use (the only one listed if none given)."""
        openai = _openai()
        try:
            listed = [m.id async for m in self.client.models.list()]
        except openai.APIConnectionError as exc:
            raise GptossError(
                f"cannot reach {self.endpoint.base_url} ({exc.__cause__ or exc}); is the server running?"
            ) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise GptossError(
                    f"{self.endpoint.base_url}: authentication failed ({exc.status_code}); "
                    "set --api-key or $OPENAI_API_KEY"
                ) from None
            listed = []  # a server without /models: trust --model
        model = self.endpoint.model
        if not model:
            if len(listed) != 1:
                raise GptossError(
                    f"--model is required: {self.endpoint.base_url} serves "
                    f"{', '.join(listed[:8]) if listed else 'no model list'}"
                )
            model = self.endpoint.model = listed[0]
        elif listed and model not in listed:
            raise GptossError(
                f"{self.endpoint.base_url} does not serve model {model!r}; it serves {', '.join(listed[:8])}"
            )
        return model

    async def create(self, **kwargs):
        openai = _openai()
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return await self.client.chat.completions.create(model=self.endpoint.model, **kwargs)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status in (401, 403):
                    raise GptossError(
                        f"{self.endpoint.base_url}: authentication failed ({status}); set --api-key or $OPENAI_API_KEY"
                    ) from None
                if status == 404:
                    raise GptossError(
                        f"{self.endpoint.base_url}: 404 for model {self.endpoint.model!r} "
                        f"at /chat/completions ({_short(exc)})"
                    ) from None
                if status != 429 and status < 500 or attempt == self.retries:
                    raise
            except openai.APIConnectionError:  # includes timeouts
                if attempt == self.retries:
                    raise
            await asyncio.sleep(min(30.0, delay) * (0.5 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _message_text(message) -> tuple[str, str]:
    """(content, reasoning) of a chat completion message; reasoning from ``reasoning_content`` (ours and
    others) or ``reasoning``, empty when the server does not return it."""
    extra = getattr(message, "model_extra", None) or {}
    reasoning = (
        extra.get("reasoning_content") or extra.get("reasoning") or getattr(message, "reasoning_content", None) or ""
    )
    return message.content or "", reasoning if isinstance(reasoning, str) else json.dumps(reasoning)


# ---------------------------------------------------------------------------------------- python tool


def python_tool_class():
    """``gptoss.tools.python.PythonTool``, looked up at run time: the eval does not need it unless the model
    calls the tool, and then a clear error says when this installation lacks it."""
    try:
        spec = importlib.util.find_spec("gptoss.tools.python")
    except (ModuleNotFoundError, ValueError):
        spec = None
    if spec is None:
        raise GptossError(
            "--tools python: the model called the python tool, but the python tool is unavailable "
            "(gptoss.tools.python is not part of this installation); run without --tools python"
        )
    try:
        module = importlib.import_module("gptoss.tools.python")
    except ImportError as exc:
        raise GptossError(
            f"--tools python: the python tool is unavailable (importing gptoss.tools.python failed: {exc})"
        ) from None
    cls = getattr(module, "PythonTool", None)
    if cls is None:
        raise GptossError("--tools python: the python tool is unavailable (gptoss.tools.python has no PythonTool)")
    return cls


class PythonSession:
    """One stateful python tool per attempt (as in a conversation), started on the model's first call."""

    def __init__(self) -> None:
        self.tool = None

    async def run(self, arguments: str) -> str:
        try:
            code = json.loads(arguments)["code"]
        except (json.JSONDecodeError, KeyError, TypeError):
            code = arguments  # built-in style: the arguments are the program itself
        if self.tool is None:
            self.tool = python_tool_class()()
        try:
            result = await self.tool.execute(code)
        except GptossError as exc:  # the tool could not run this call: the model reads why
            return f"Error: {exc}"
        output = getattr(result, "output", result)
        return output if isinstance(output, str) else json.dumps(output, default=str)

    async def close(self) -> None:
        if self.tool is not None and hasattr(self.tool, "aclose"):
            await self.tool.aclose()


# ------------------------------------------------------------------------------------------- the runner


class Runner:
    def __init__(self, config: EvalConfig):
        self.config = config
        self.client: ChatClient | None = None
        self.grader_client: ChatClient | None = None
        self.grader_sem: asyncio.Semaphore | None = None
        self.guard_policy = config.policy() if "guard" in config.evals else None

    def datasets(self) -> dict[str, Dataset]:
        sources = parse_data_spec(self.config.data, self.config.evals)
        out = {}
        for name in self.config.evals:
            ds = load_eval(name, sources[name])
            if self.config.limit:
                ds.items = ds.items[: self.config.limit]
            out[name] = ds
        return out

    def plan(self, datasets: dict[str, Dataset]) -> list[Attempt]:
        return [
            Attempt(name, effort, item, s)
            for effort in self.config.efforts
            for name in self.config.evals
            for item in datasets[name].items
            for s in range(self.config.samples)
        ]

    def request_seed(self, key: str) -> int:
        return (self.config.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**31

    async def _grader_complete(self, messages: list[dict]) -> tuple[str, int]:
        kwargs: dict[str, Any] = {"messages": messages}
        max_tokens = self.config.grader_max_tokens or self.config.max_tokens
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        if self.config.grader_reasoning_effort:
            kwargs["reasoning_effort"] = self.config.grader_reasoning_effort
        async with self.grader_sem:
            resp = await self.grader_client.create(**kwargs)
        content = _message_text(resp.choices[0].message)[0] if resp.choices else ""
        return content, (resp.usage.completion_tokens if resp.usage else 0) or 0

    async def attempt(self, a: Attempt) -> dict:
        """Ask, grade, and return the record (errors included) of one attempt."""
        cfg = self.config
        use_tools = "python" in cfg.tools and a.eval == "aime"
        prompt = build_prompt(a.eval, a.item, a.sample, cfg.seed, tools=use_tools, policy=self.guard_policy)
        record: dict[str, Any] = {
            "key": a.key,
            "eval": a.eval,
            "effort": a.effort,
            "item": a.item.id,
            "sample": a.sample,
            "prompt": prompt.messages,
            "expected": prompt.expected,
        }
        if a.eval == "healthbench":
            record["theme"] = a.item.theme
        elif getattr(a.item, "subject", ""):
            record["subject"] = a.item.subject
        started = time.perf_counter()
        try:
            record.update(await self._converse(a, prompt.messages, use_tools, prompt.response_format))
            content = record["response"]
            if a.eval in SAFETY_EVALS:
                from gptoss.eval import safety

                grader = self._grader_complete if a.eval in GRADED_EVALS else None
                record.update(await safety.grade(a.eval, a.item, prompt, content, grader, cfg.grader_retries))
            elif a.eval == "aime":
                record["extracted"] = extract_integer(content)
                record["score"] = grade_exact(record["extracted"], prompt.expected)
            elif a.eval in ("gpqa", "mmlu"):
                record["extracted"] = extract_choice(content, prompt.letters)
                record["score"] = grade_exact(record["extracted"], prompt.expected)
            else:
                grade = await RubricGrader(self._grader_complete, cfg.grader_retries).grade(
                    prompt.messages, content, a.item.rubric
                )
                record.update(
                    extracted=None,
                    score=grade.score,
                    grades=grade.details,
                    grader_unparsed=grade.unparsed,
                    grader_tokens=grade.grader_tokens,
                )
            record["error"] = None
        except GptossError:
            raise
        except Exception as exc:  # recorded, retried on the next run
            record.update(score=None, error=_short(exc))
        record["seconds"] = round(time.perf_counter() - started, 3)
        record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        return record

    async def _converse(
        self, a: Attempt, messages: list[dict], use_tools: bool, response_format: dict | None = None
    ) -> dict:
        cfg = self.config
        kwargs: dict[str, Any] = {"reasoning_effort": a.effort, "seed": self.request_seed(a.key)}
        if cfg.max_tokens:
            kwargs["max_tokens"] = cfg.max_tokens
        if cfg.temperature is not None:
            kwargs["temperature"] = cfg.temperature
        if use_tools:
            kwargs["tools"] = [PYTHON_TOOL]
        if response_format:
            kwargs["response_format"] = response_format
        history = [dict(m) for m in messages]
        completion_tokens = prompt_tokens = reasoning_chars = tool_calls = 0
        reasoning_tokens: int | None = None
        python = PythonSession()
        try:
            for turn in range(cfg.max_tool_turns + 1):
                resp = await self.client.create(messages=history, **kwargs)
                if not resp.choices:
                    raise RuntimeError("the server returned no choices")
                choice = resp.choices[0]
                content, reasoning = _message_text(choice.message)
                reasoning_chars += len(reasoning)
                if resp.usage:
                    completion_tokens += resp.usage.completion_tokens or 0
                    prompt_tokens += resp.usage.prompt_tokens or 0
                    details = getattr(resp.usage, "completion_tokens_details", None)
                    if details is not None and getattr(details, "reasoning_tokens", None) is not None:
                        reasoning_tokens = (reasoning_tokens or 0) + details.reasoning_tokens
                calls = list(choice.message.tool_calls or []) if use_tools else []
                if not calls or turn == cfg.max_tool_turns:
                    break
                turn_message = {
                    "role": "assistant",
                    "content": content or None,
                    "tool_calls": [c.model_dump(exclude_none=True) for c in calls],
                }
                if reasoning:  # the chain of thought carries across tool calls within one turn
                    turn_message["reasoning_content"] = reasoning
                history.append(turn_message)
                for call in calls:
                    tool_calls += 1
                    name = getattr(getattr(call, "function", None), "name", None)
                    output = (
                        await python.run(call.function.arguments or "")
                        if name == "python"
                        else f"Error: unknown tool {name!r}"
                    )
                    history.append({"role": "tool", "tool_call_id": call.id, "content": output})
        finally:
            await python.close()
        out = {
            "response": content,
            "reasoning_chars": reasoning_chars,
            "reasoning_tokens": reasoning_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens": prompt_tokens,
            "finish_reason": choice.finish_reason,
        }
        if use_tools:
            out["tool_calls"] = tool_calls
        return out

    async def run(self, pending: list[Attempt], store: AttemptStore, progress) -> int:
        """Run ``pending`` with ``concurrency`` workers; returns the number of failed attempts."""
        cfg = self.config
        self.client = ChatClient(cfg.endpoint, cfg.retries, cfg.retry_backoff, cfg.timeout)
        await self.client.check()
        if any(e in GRADED_EVALS for e in cfg.evals):
            grader = cfg.grader_endpoint
            self.grader_client = ChatClient(grader, cfg.retries, cfg.retry_backoff, cfg.timeout)
            if grader is not cfg.endpoint:
                await self.grader_client.check()
            self.grader_sem = asyncio.Semaphore(cfg.concurrency)
        queue: asyncio.Queue = asyncio.Queue()
        for a in pending:
            queue.put_nowait(a)
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    a = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                record = await self.attempt(a)
                store.append(record)
                if record["error"]:
                    errors += 1
                progress.update(1)
                if errors:
                    progress.set_postfix(errors=errors, refresh=False)

        tasks = [asyncio.create_task(worker()) for _ in range(min(cfg.concurrency, max(1, len(pending))))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.client.close()
            if self.grader_client is not None:
                await self.grader_client.client.close()
        return errors


def _progress_bar(total: int, initial: int, enabled: bool | None):
    from tqdm.auto import tqdm

    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        unit="attempt",
        desc="gptoss eval",
        dynamic_ncols=True,
        smoothing=0.1,
        file=sys.stderr,
    )


def run_eval(config: EvalConfig, report_only: bool = False) -> dict:
    """Run (or resume) an evaluation and write attempts.jsonl, summary.json, report.md and the plots.

    Returns the summary. With ``report_only``, nothing is asked: the summary and report are rebuilt from
    the attempts already recorded.
    """
    from gptoss.eval.report import summarize, write_report

    runner = Runner(config)
    datasets = runner.datasets()
    plan = runner.plan(datasets)
    store = AttemptStore(config.out / ATTEMPTS_FILE)
    records = store.load()
    pending = [a for a in plan if records.get(a.key, {}).get("error", "missing") is not None]
    if config.endpoint.model is None and (report_only or not pending):
        config.endpoint.model = _recorded_model(config.out)
    if not report_only and pending:
        if config.endpoint.model is None:  # resolved from the server's model list
            asyncio.run(_resolve_model(config))
        check_run_file(config.out, config.pinned())
        bar = _progress_bar(len(plan), len(plan) - len(pending), config.progress)
        try:
            asyncio.run(runner.run(pending, store, bar))
        finally:
            bar.close()
            store.close()
        records = store.load()
    summary = summarize(config, datasets, plan, records)
    write_report(summary, config.out)
    return summary


def _recorded_model(out: Path) -> str | None:
    try:
        return json.loads((out / RUN_FILE).read_text())["pinned"]["model"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


async def _resolve_model(config: EvalConfig) -> None:
    client = ChatClient(config.endpoint, config.retries, config.retry_backoff, config.timeout)
    try:
        await client.check()
    finally:
        await client.client.close()


def config_dict(config: EvalConfig) -> dict[str, Any]:
    """The run's settings for summary.json (API keys left out)."""
    d = asdict(config)
    d["out"] = str(config.out)
    for ep in ("endpoint", "grader"):
        if d.get(ep):
            d[ep].pop("api_key", None)
    return d
