"""Evaluation data: the four item kinds, their file schemas (JSONL, CSV, Parquet) and where files come from.

Sources (``--data``): the packaged sample sets (default), a folder holding ``{eval}.jsonl|csv|parquet``,
a file per eval (``aime=PATH,gpqa=PATH``), or the Hugging Face hub (``hub`` or ``hf://OWNER/NAME/FILE``),
which is only ever contacted when named explicitly. The schemas are documented in ``docs/eval.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from gptoss.errors import GptossError

EVALS = ("aime", "gpqa", "mmlu", "healthbench")  # the default set
SAFETY_EVALS = ("disallowed", "jailbreak", "hierarchy", "simpleqa", "guard")  # gptoss.eval.safety, on request
ALL_EVALS = EVALS + SAFETY_EVALS
LETTERS = "ABCDEFGHIJ"
SUFFIXES = (".jsonl", ".csv", ".parquet")

# Public files in the documented schemas, fetched only with `--data hub` (gated ones need a token).
# HealthBench is published outside the hub; download it yourself and pass healthbench=PATH.
DEFAULT_HUB: dict[str, list[str]] = {
    "aime": ["hf://opencompass/AIME2025/aime2025-I.jsonl", "hf://opencompass/AIME2025/aime2025-II.jsonl"],
    "gpqa": ["hf://Idavidrein/gpqa/gpqa_diamond.csv"],
    "mmlu": ["hf://cais/mmlu/all/test-00000-of-00001.parquet"],
}


@dataclass(frozen=True)
class IntegerProblem:
    """AIME-style: a problem whose answer is one integer."""

    id: str
    problem: str
    answer: int
    source: str = ""


@dataclass(frozen=True)
class ChoiceQuestion:
    """GPQA / MMLU-style: a question and its options; ``options[correct]`` is right (before shuffling)."""

    id: str
    question: str
    options: tuple[str, ...]
    correct: int
    subject: str = ""
    source: str = ""


@dataclass(frozen=True)
class RubricItem:
    """One HealthBench rubric criterion; ``points`` may be negative (an undesirable behaviour)."""

    criterion: str
    points: float
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RubricConversation:
    """HealthBench-style: a conversation to continue and the rubric its next reply is graded against."""

    id: str
    messages: tuple[dict, ...]
    rubric: tuple[RubricItem, ...]
    themes: tuple[str, ...] = ()
    source: str = ""

    @property
    def theme(self) -> str:
        return self.themes[0] if self.themes else "unspecified"


Item = IntegerProblem | ChoiceQuestion | RubricConversation


@dataclass
class Dataset:
    name: str
    items: list = field(default_factory=list)
    source: str = ""


# ------------------------------------------------------------------------------------------- reading


def _norm_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record with normalized keys) for each record of a JSONL, CSV or Parquet file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise GptossError(f"{path}: no such data file")
    if suffix == ".jsonl" or suffix == ".json":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise GptossError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(record, dict):
                    raise GptossError(f"{path}:{lineno}: expected a JSON object, found {type(record).__name__}")
                yield lineno, {_norm_key(k): v for k, v in record.items()}
    elif suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise GptossError(f"{path}: empty CSV file (expected a header row)")
            for row in reader:
                yield reader.line_num, {_norm_key(k): v for k, v in row.items() if k is not None}
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise GptossError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert it to JSONL"
            ) from None
        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, {_norm_key(k): v for k, v in row.items()}
    else:
        raise GptossError(f"{path}: unknown data file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")


def _text(record: dict, names: tuple[str, ...], where: str, required: bool = True) -> str:
    for name in names:
        value = record.get(name)
        if value is not None and str(value).strip() != "":
            return str(value).strip()
    if required:
        raise GptossError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")
    return ""


def _parse_integer_problem(record: dict, where: str, default_id: str) -> IntegerProblem:
    problem = _text(record, ("problem", "question"), where)
    raw = _text(record, ("answer",), where)
    try:
        answer = int(str(raw).replace(",", "").strip())
    except ValueError:
        raise GptossError(f"{where}: field 'answer' must be an integer, found {raw!r}") from None
    return IntegerProblem(_text(record, ("id", "problem_id"), where, False) or default_id, problem, answer, where)


def _parse_choice_question(record: dict, where: str, default_id: str) -> ChoiceQuestion:
    question = _text(record, ("question",), where)
    qid = _text(record, ("id", "record_id", "question_id"), where, False) or default_id
    subject = _text(record, ("subject", "subdomain", "high_level_domain", "category"), where, False)
    if "correct_answer" in record:  # GPQA: the right answer and the wrong ones
        correct = _text(record, ("correct_answer",), where)
        wrong = record.get("incorrect_answers")
        if isinstance(wrong, list):
            wrong = [str(w).strip() for w in wrong]
        else:
            keys = sorted(
                (k for k in record if re.fullmatch(r"incorrect_answer_?\d+", k)),
                key=lambda k: int(re.sub(r"\D", "", k)),
            )
            wrong = [str(record[k]).strip() for k in keys if record[k] is not None and str(record[k]).strip()]
        if not wrong:
            raise GptossError(f"{where}: missing field 'incorrect_answers' (or 'Incorrect Answer 1'...)")
        options, index = (correct, *wrong), 0
    else:  # MMLU: options A, B, C, D... (or a 'choices' list) and the answer's letter or index
        if isinstance(record.get("choices"), (list, tuple)):
            options = tuple(str(c).strip() for c in record["choices"])
        else:
            options = tuple(str(record[k.lower()]).strip() for k in LETTERS if record.get(k.lower()) not in (None, ""))
        if len(options) < 2:
            raise GptossError(
                f"{where}: expected options in fields 'A', 'B', 'C', 'D' (or a 'choices' list), found {len(options)}"
            )
        raw = record.get("answer")
        raw_s = str(raw).strip() if raw is not None else ""
        if raw_s.upper() in LETTERS[: len(options)] and raw_s.isalpha():
            index = LETTERS.index(raw_s.upper())
        elif raw_s.isdigit() and int(raw_s) < len(options):
            index = int(raw_s)
        else:
            raise GptossError(
                f"{where}: field 'answer' must be a letter A-{LETTERS[len(options) - 1]} "
                f"or an index 0-{len(options) - 1}, found {raw!r}"
            )
    if len(options) > len(LETTERS):
        raise GptossError(f"{where}: at most {len(LETTERS)} options are supported, found {len(options)}")
    return ChoiceQuestion(qid, question, tuple(options), index, subject, where)


def _parse_rubric_conversation(record: dict, where: str, default_id: str) -> RubricConversation:
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise GptossError(f"{where}: field 'prompt' must be a non-empty list of {{'role', 'content'}} messages")
    messages = []
    for i, m in enumerate(prompt):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "developer", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            raise GptossError(
                f"{where}: prompt[{i}] must be {{'role': system|developer|user|assistant, 'content': str}}"
            )
        messages.append({"role": m["role"], "content": m["content"]})
    rubrics = record.get("rubrics")
    if not isinstance(rubrics, list) or not rubrics:
        raise GptossError(f"{where}: field 'rubrics' must be a non-empty list of {{'criterion', 'points'}}")
    rubric = []
    for i, r in enumerate(rubrics):
        if not isinstance(r, dict) or not isinstance(r.get("criterion"), str):
            raise GptossError(f"{where}: rubrics[{i}] needs a string 'criterion'")
        points = r.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)):
            raise GptossError(f"{where}: rubrics[{i}].points must be a number, found {points!r}")
        rubric.append(RubricItem(r["criterion"], float(points), tuple(str(t) for t in r.get("tags") or ())))
    if not any(r.points > 0 for r in rubric):
        raise GptossError(f"{where}: 'rubrics' has no item with positive points, so no score is possible")
    tags = record.get("example_tags") or []
    themes = tuple(t.split(":", 1)[1] for t in tags if isinstance(t, str) and t.startswith("theme:"))
    rid = str(record.get("prompt_id") or record.get("id") or default_id)
    return RubricConversation(rid, tuple(messages), tuple(rubric), themes, where)


def _safety_parsers() -> dict:
    from gptoss.eval.safety import PARSERS as SAFETY_PARSERS

    return SAFETY_PARSERS


PARSERS = {
    "aime": _parse_integer_problem,
    "gpqa": _parse_choice_question,
    "mmlu": _parse_choice_question,
    "healthbench": _parse_rubric_conversation,
    **_safety_parsers(),
}


def load_file(name: str, path: Path, id_prefix: str = "") -> list:
    """Every item of eval ``name`` in one file; ids default to ``{prefix}{line}`` and must be unique."""
    if name not in PARSERS:
        raise GptossError(f"unknown eval {name!r}; choose from {', '.join(ALL_EVALS)}")
    items, seen = [], {}
    for lineno, record in read_records(path):
        where = f"{path}:{lineno}"
        item = PARSERS[name](record, where, f"{id_prefix}{lineno}")
        if id_prefix and not item.id.startswith(id_prefix):
            item = dataclasses.replace(item, id=f"{id_prefix}{item.id}")
        if item.id in seen:
            raise GptossError(f"{where}: duplicate id {item.id!r} (first at line {seen[item.id]})")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise GptossError(f"{path}: no {name} items found")
    from gptoss.eval.safety import expand

    return expand(name, items)


# ------------------------------------------------------------------------------------------- sources


def sample_path(name: str) -> Path:
    folder = resources.files("gptoss.eval") / "samples"
    for suffix in SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return Path(str(candidate))
    raise GptossError(f"no packaged sample set for {name!r}")


def parse_data_spec(spec: str | None, evals: list[str]) -> dict[str, list[str]]:
    """``--data`` -> {eval: [source, ...]}, where a source is ``samples``, a path, or ``hf://...``.

    Accepted: ``samples`` (default), ``hub``, a folder, or ``EVAL=SOURCE[+SOURCE...],EVAL=...``.
    """
    spec = (spec or "samples").strip()
    if "=" not in spec:
        if spec == "samples":
            return {e: ["samples"] for e in evals}
        if spec == "hub":
            return {e: ["hub"] for e in evals}
        folder = Path(spec)
        if not folder.is_dir():
            raise GptossError(f"--data {spec!r}: not a folder, 'samples', 'hub', or EVAL=PATH pairs")
        out = {}
        for e in evals:
            found = [folder / f"{e}{s}" for s in SUFFIXES if (folder / f"{e}{s}").is_file()]
            if not found:
                raise GptossError(f"--data {spec}: no {e}.jsonl, {e}.csv or {e}.parquet in that folder")
            out[e] = [str(found[0])]
        return out
    out: dict[str, list[str]] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise GptossError(f"--data: {part!r} is not EVAL=SOURCE")
        name, value = (x.strip() for x in part.split("=", 1))
        if name not in ALL_EVALS:
            raise GptossError(f"--data: unknown eval {name!r}; choose from {', '.join(ALL_EVALS)}")
        out[name] = [v.strip() for v in value.split("+") if v.strip()]
    missing = [e for e in evals if e not in out]
    if missing:
        raise GptossError(
            f"--data names no source for {', '.join(missing)} "
            f"(add {missing[0]}=PATH, {missing[0]}=samples or {missing[0]}=hub)"
        )
    return out


def hub_download(url: str) -> Path:
    """``hf://OWNER/NAME/PATH[@REVISION]`` -> a local file, through huggingface_hub (explicit use only)."""
    m = re.fullmatch(r"hf://([^/]+/[^/@]+)/([^@]+)(?:@(.+))?", url)
    if not m:
        raise GptossError(f"{url!r}: expected hf://OWNER/NAME/PATH/IN/REPO[@REVISION]")
    repo_id, filename, revision = m.groups()
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise GptossError(
            "downloading from the Hugging Face hub needs huggingface_hub (pip install huggingface_hub)"
        ) from None
    print(f"gptoss eval: fetching {filename} from the Hugging Face dataset {repo_id} ...", file=sys.stderr)
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", revision=revision))
    except Exception as exc:  # network, gated repository, missing file: one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GptossError(
            f"{url}: cannot fetch from the Hugging Face hub ({first}); "
            "gated sets need `huggingface-cli login`, offline use needs a local file"
        ) from None


def load_eval(name: str, sources: list[str]) -> Dataset:
    """The items of one eval from its sources (several files are concatenated, ids prefixed by file stem)."""
    expanded: list[str] = []
    for s in sources:
        if s == "hub":
            if name not in DEFAULT_HUB:
                raise GptossError(
                    f"--data hub: {name} has no Hugging Face hub default; download it and pass {name}=PATH"
                )
            expanded.extend(DEFAULT_HUB[name])
        else:
            expanded.append(s)
    items: list = []
    for s in expanded:
        path = (
            sample_path(name) if s == "samples" else hub_download(s) if s.startswith("hf://") else Path(s).expanduser()
        )
        prefix = f"{path.stem}:" if len(expanded) > 1 else ""
        items.extend(load_file(name, path, prefix))
    return Dataset(name, items, "+".join(expanded))
