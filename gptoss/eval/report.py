"""Results: ``summary.json`` (accuracy per eval and reasoning effort, tokens, errors, HealthBench themes),
``report.md``, and two PNG plots drawn with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from gptoss.eval.grading import theme_scores
from gptoss.eval.safety import METRICS as SAFETY_METRICS
from gptoss.eval.safety import metrics as safety_metrics

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOT_EFFORT = "accuracy_vs_effort.png"
PLOT_TOKENS = "accuracy_vs_tokens.png"
METRIC = {"aime": "pass@1", "gpqa": "accuracy", "mmlu": "accuracy", "healthbench": "score"}
SAFETY_FIELDS = ("not_unsafe", "not_overrefuse", "hallucination_rate", "not_attempted", "precision", "recall", "f1")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _stderr(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def summarize(config, datasets: dict, plan: list, records: dict[str, dict]) -> dict[str, Any]:
    """Aggregate the recorded attempts of ``plan``: per (eval, effort), the mean over items of each item's
    mean score over its completed samples (pass@1 averaged over K samples); HealthBench means are clipped
    to [0, 1], overall and per theme."""
    from gptoss.eval.runner import config_dict

    groups: dict[tuple[str, str], list] = {}
    for a in plan:
        groups.setdefault((a.eval, a.effort), []).append(a)
    results = []
    for (name, effort), attempts in groups.items():
        per_item: dict[str, list[float]] = {}
        themes: dict[str, str] = {}
        done, errors, no_answer, unparsed = [], 0, 0, 0
        for a in attempts:
            r = records.get(a.key)
            if r is None:
                continue
            if r.get("error"):
                errors += 1
                continue
            done.append(r)
            per_item.setdefault(a.item.id, []).append(r["score"])
            if name == "healthbench":
                themes[a.item.id] = a.item.theme
                unparsed += r.get("grader_unparsed", 0)
            elif r.get("extracted") is None:
                no_answer += 1
        item_means = {i: sum(v) / len(v) for i, v in per_item.items()}
        row: dict[str, Any] = {
            "eval": name,
            "effort": effort,
            "metric": METRIC.get(name) or SAFETY_METRICS[name],
            "items": len({a.item.id for a in attempts}),
            "samples": config.samples,
            "attempts": len(attempts),
            "completed": len(done),
            "errors": errors,
            "missing": len(attempts) - len(done) - errors,
        }
        if name in SAFETY_METRICS:
            row.update(accuracy=_mean(item_means.values()), no_answer=no_answer, metric=SAFETY_METRICS[name])
            row.update(safety_metrics(name, done))
            if name == "guard":
                row["accuracy"] = row["f1"]  # the headline: F1 of "violates"
        elif name == "healthbench":
            overall, by_theme = theme_scores((themes[i], m) for i, m in item_means.items())
            row.update(accuracy=overall, themes=by_theme, grader_unparsed=unparsed)
        else:
            row.update(accuracy=_mean(item_means.values()), no_answer=no_answer)
        row["stderr"] = _stderr(list(item_means.values()))
        row["mean_completion_tokens"] = _mean(r.get("completion_tokens") for r in done)
        row["mean_reasoning_chars"] = _mean(r.get("reasoning_chars") for r in done)
        row["mean_reasoning_tokens"] = _mean(r.get("reasoning_tokens") for r in done)
        results.append(row)
    planned = len(plan)
    failed = sum(r["errors"] for r in results)
    completed = sum(r["completed"] for r in results)
    return {
        "model": config.endpoint.model,
        "base_url": config.endpoint.base_url,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data": {name: ds.source for name, ds in datasets.items()},
        "config": config_dict(config),
        "attempts": {
            "planned": planned,
            "completed": completed,
            "errors": failed,
            "missing": planned - completed - failed,
        },
        "results": results,
    }


# ------------------------------------------------------------------------------------------------ files


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:,.0f}"


def markdown(summary: dict[str, Any], plots: list[str]) -> str:
    cfg = summary["config"]
    lines = [
        f"# gptoss eval: {summary['model']}",
        "",
        f"- endpoint: `{summary['base_url']}`, written {summary['created']}",
        f"- samples per item: {cfg['samples']}, temperature: {cfg['temperature']}, "
        f"max tokens: {cfg['max_tokens'] or 'server default'}, "
        f"seed: {cfg['seed']}" + (f", tools: {', '.join(cfg['tools'])} (AIME)" if cfg["tools"] else ""),
        "- data: " + "; ".join(f"{k}: `{v}`" for k, v in summary["data"].items()),
        f"- attempts: {summary['attempts']['completed']} of {summary['attempts']['planned']} completed, "
        f"{summary['attempts']['errors']} failed",
        "",
        "| eval | effort | metric | score (%) | ± s.e. | items | completed | errors | no answer "
        "| mean output tokens | mean reasoning chars |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["results"]:
        lines.append(
            f"| {r['eval']} | {r['effort']} | {r['metric']} | {_fmt(r['accuracy'])} | {_fmt(r['stderr'])} "
            f"| {r['items']} | "
            f"{r['completed']}/{r['attempts']} | {r['errors']} | {r.get('no_answer', '–')} | "
            f"{_fmt(r['mean_completion_tokens'], False)} | {_fmt(r['mean_reasoning_chars'], False)} |"
        )
    hb = [r for r in summary["results"] if r["eval"] == "healthbench"]
    if hb:
        themes = sorted({t for r in hb for t in r["themes"]})
        lines += [
            "",
            "## HealthBench by theme (score %, clipped to [0, 100])",
            "",
            "| theme | " + " | ".join(r["effort"] for r in hb) + " |",
            "|---|" + "---:|" * len(hb),
        ]
        lines += [f"| {t} | " + " | ".join(_fmt(r["themes"].get(t)) for r in hb) + " |" for t in themes]
        unparsed = sum(r["grader_unparsed"] for r in hb)
        if unparsed:
            lines += [
                "",
                f"{unparsed} rubric verdicts could not be read from the grader's replies and counted as not met.",
            ]
    safety = [r for r in summary["results"] if r["eval"] in SAFETY_METRICS]
    if safety:
        lines += [
            "",
            "## Safety (%; compare with the gpt-oss model card's tables)",
            "",
            "| eval | effort | " + " | ".join(SAFETY_FIELDS) + " | detail |",
            "|---|---|" + "---:|" * len(SAFETY_FIELDS) + "---|",
        ]
        for r in safety:
            detail = r.get("by_template") or r.get("by_kind") or {}
            text = ", ".join(f"{k}: {_fmt(v)}" for k, v in detail.items())
            if r["eval"] == "guard":
                text = f"tp {r['tp']}, fp {r['fp']}, fn {r['fn']}, unparsed {r['unparsed']}"
            lines.append(
                f"| {r['eval']} | {r['effort']} | " + " | ".join(_fmt(r.get(f)) for f in SAFETY_FIELDS) + f" | {text} |"
            )
        unparsed = sum(r.get("grader_unparsed", 0) for r in safety)
        if unparsed:
            lines += ["", f"{unparsed} safety grader replies held no verdict; they count against the model."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots]
    if summary["attempts"]["errors"] or summary["attempts"]["missing"]:
        lines += [
            "",
            f"**Incomplete:** {summary['attempts']['errors']} attempts failed and {summary['attempts']['missing']} "
            "were not run; rerun the same command to retry only those.",
        ]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], out: Path) -> list[str]:
    """accuracy against reasoning effort, and against mean output tokens; one line per eval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gptoss.eval.runner import EFFORTS

    by_eval: dict[str, list[dict]] = {}
    for r in summary["results"]:
        by_eval.setdefault(r["eval"], []).append(r)
    for rows in by_eval.values():
        rows.sort(key=lambda r: EFFORTS.index(r["effort"]))
    efforts = [e for e in EFFORTS if any(r["effort"] == e for r in summary["results"])]
    written = []

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, rows in by_eval.items():
        pts = [(efforts.index(r["effort"]), 100 * r["accuracy"]) for r in rows if r["accuracy"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xticks(range(len(efforts)), efforts)
    ax.set_xlim(-0.3, len(efforts) - 0.7)
    ax.set_ylim(0, 108)
    ax.set_xlabel("reasoning effort")
    ax.set_ylabel("score (%)")
    ax.set_title(f"{summary['model']}: score against reasoning effort", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / PLOT_EFFORT, dpi=110)
    written.append(PLOT_EFFORT)

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, rows in by_eval.items():
        pts = [
            (r["mean_completion_tokens"], 100 * r["accuracy"], r["effort"])
            for r in rows
            if r["accuracy"] is not None and r["mean_completion_tokens"] is not None
        ]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            for x, y, effort in pts:
                ax.annotate(effort, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_ylim(0, 108)
    ax.set_xlabel("mean output tokens per attempt")
    ax.set_ylabel("score (%)")
    ax.set_title(f"{summary['model']}: score against output length", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / PLOT_TOKENS, dpi=110)
    written.append(PLOT_TOKENS)
    return written


def write_report(summary: dict[str, Any], out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plots = plot(summary, out)
    (out / REPORT_FILE).write_text(markdown(summary, plots))


def text_table(summary: dict[str, Any]) -> str:
    """A compact table for the terminal."""
    rows = [f"{'eval':<12} {'effort':<7} {'score%':>7} {'done':>9} {'errors':>6} {'out tokens':>10}"]
    for r in summary["results"]:
        rows.append(
            f"{r['eval']:<12} {r['effort']:<7} {_fmt(r['accuracy']):>7} "
            f"{str(r['completed']) + '/' + str(r['attempts']):>9} "
            f"{r['errors']:>6} {_fmt(r['mean_completion_tokens'], False):>10}"
        )
    return "\n".join(rows)
