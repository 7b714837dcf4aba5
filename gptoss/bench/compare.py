"""``gptoss bench --device cpu --model CKPT --compare llama.cpp,transformers``: gptoss side by side with other
engines on the same weights, in one interleaved run.

Each round runs every engine in turn (gptoss, then llama.cpp, then transformers), each in its own subprocess
(:mod:`gptoss.bench.workers`) so that its peak RSS is its own, all with the same thread count, the same prompt
token ids and the same decode token ids; machine noise then hits all engines alike, and the rounds give a range.
Before it loads, each engine reads its weight files through once (``page_cache_warm_seconds``), so that no timed
step waits on the disk (two engines' files together can exceed the memory and evict each other). Per engine and
round: the prefill of ``--prompt-len`` tokens, batch-1 decode after that prompt, and (gptoss) batch-8 decode; load
time; peak RSS (VmHWM, which counts the memory-mapped weights it touched). Each round also measures the copy
bandwidth; the batch-1 floor is the bytes one decode step must read at the best bandwidth measured (a copy of 128
MiB, which a CPU with a large L3 may partly serve from cache; the read bandwidth of a 1 GiB buffer, and the floor
at it, come beside it for context).

llama.cpp runs through llama-cpp-python on a GGUF of the same checkpoint written by llama.cpp's own converter
(``convert_hf_to_gguf.py --outtype bf16``: experts stay MXFP4, attention and embeddings bf16). Give the GGUF
(``--gguf``) or the converter (``--llama-cpp-converter`` or ``$GPTOSS_LLAMA_CPP_CONVERTER``); the GGUF is then
written beside the checkpoint as ``<checkpoint>.gguf`` and reused. transformers loads the checkpoint with its
MXFP4 experts dequantized to bf16 (what it does without a GPU); it is slow and needs memory for the dequantized
copy, so it gets a shorter prompt and fewer rounds (``--transformers-prompt-len``, ``--transformers-rounds``),
and is skipped with a message when the memory is not available.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from gptoss.bench.common import cpu_name, log
from gptoss.bench.memory import copy_bandwidth_gbs, read_bandwidth_gbs

ENGINES = ("gptoss", "llama.cpp", "transformers")
CONVERTER_ENV = "GPTOSS_LLAMA_CPP_CONVERTER"
NO_LLAMA_CPP = "llama_cpp is not installed: pip install llama-cpp-python (built for this CPU), then rerun"
NO_CONVERTER = (
    f"no GGUF of the checkpoint: pass --gguf FILE, or point --llama-cpp-converter (or ${CONVERTER_ENV}) "
    "at llama.cpp's convert_hf_to_gguf.py to write one"
)


def parse_engines(text: str) -> list[str]:
    from gptoss.errors import GptossError

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ENGINES[1:]]
    if bad or not names:
        raise GptossError(
            f"--compare: unknown engine {', '.join(bad) or repr(text)} (choose from llama.cpp, transformers)"
        )
    return ["gptoss"] + [n for n in ENGINES[1:] if n in names]


# ----------------------------------------------------------------------------- one engine, one process
def mem_available_bytes() -> int | None:
    from gptoss.model.checkpoint import mem_available

    return mem_available()


def _thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "GPTOSS_NUM_THREADS": str(threads)}


def run_worker(engine: str, spec: dict, timeout: float) -> dict:
    """Run one engine in a fresh interpreter; its JSON, or ``{"error": ...}`` naming what went wrong."""
    with tempfile.TemporaryDirectory(prefix="gptoss-bench-") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        env = os.environ | _thread_env(spec["threads"])
        cmd = [sys.executable, "-m", "gptoss.bench.workers", engine, str(spec_file), str(out_file)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        wall = round(time.perf_counter() - t0, 1)
        if proc.returncode != 0 or not out_file.is_file():
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
            return {"error": f"{engine} worker failed ({why}): {tail[0][:300]}"}
        result = json.loads(out_file.read_text())
        result["process_seconds"] = wall
        return result


# ----------------------------------------------------------------------------- llama.cpp's GGUF
def llama_cpp_version() -> str | None:
    try:
        import llama_cpp
    except Exception:
        return None
    return str(llama_cpp.__version__)


def find_gguf(folder: Path, gguf: str | None, converter: str | None) -> tuple[Path | None, str | None]:
    """The GGUF to run llama.cpp on, written by llama.cpp's converter when needed: ``(path, None)`` or
    ``(None, why not)``."""
    if gguf:
        path = Path(gguf)
        return (path, None) if path.is_file() else (None, f"--gguf {gguf}: file not found")
    target = folder.parent / (folder.name + ".gguf")
    converter = converter or os.environ.get(CONVERTER_ENV)
    if target.is_file() and target.stat().st_mtime >= (folder / "config.json").stat().st_mtime:
        return target, None
    if not converter:
        return None, NO_CONVERTER
    script = Path(converter)
    if script.is_dir():
        script = script / "convert_hf_to_gguf.py"
    if not script.is_file():
        return None, f"llama.cpp converter {converter}: not found (expected convert_hf_to_gguf.py)"
    log(f"converting {folder} to {target} with {script}")
    tmp = target.with_suffix(".gguf.partial")
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), "--outtype", "bf16", "--outfile", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if proc.returncode != 0 or not tmp.is_file():
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return None, f"llama.cpp's converter failed on {folder}: {tail[0][:300]}"
    os.replace(tmp, target)
    return target, None


def transformers_memory_bytes(config) -> int:
    """What transformers holds for the checkpoint: every weight in bf16, the experts dequantized."""
    from gptoss.model.checkpoint import canonical_shapes

    total = 0
    for name, (shape, _kind) in canonical_shapes(config).items():
        n = 1
        for s in shape:
            n *= s
        if name.endswith(".blocks"):
            n *= 2  # two FP4 values a byte
        elif name.endswith(".scales"):
            continue
        total += 2 * n
    return total


# ----------------------------------------------------------------------------- the interleaved run
def _spread(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def _decode(result: dict, batch: int) -> float | None:
    return next((d["tok_s"] for d in result.get("decode", []) if d["batch"] == batch), None)


def run_compare(args, engines: list[str]) -> dict:
    """``--rounds`` interleaved rounds of ``engines`` on ``--model``, each engine in its own process; the JSON."""
    import torch

    from gptoss.errors import GptossError
    from gptoss.model.checkpoint import locate
    from gptoss.model.hub import resolve_model_path

    if not args.model:
        raise GptossError(
            "--compare needs --model CHECKPOINT (a folder in the Hugging Face layout; "
            "write one with `gptoss make-checkpoint`)"
        )
    if args.device != "cpu":
        raise GptossError(f"--compare runs on the CPU (--device cpu), not {args.device}")
    folder = Path(resolve_model_path(args.model))
    config = locate(folder).config
    threads = args.threads or 2
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, 199998, (args.prompt_len,), generator=gen).tolist()  # ordinary tokens only
    decode_ids = torch.randint(0, 199998, (max(args.decode_tokens, 64),), generator=gen).tolist()
    spec = {
        "model": str(folder),
        "threads": threads,
        "prompt": prompt,
        "decode_ids": decode_ids,
        "decode_tokens": args.decode_tokens,
        "batch": 8,
        "batch_decode_tokens": args.batch_decode_tokens,
    }
    skipped: dict[str, str] = {}
    if "llama.cpp" in engines:
        if llama_cpp_version() is None:
            skipped["llama.cpp"] = NO_LLAMA_CPP
        else:
            gguf, why = find_gguf(folder, args.gguf, args.llama_cpp_converter)
            if why:
                skipped["llama.cpp"] = why
            else:
                spec["gguf"] = str(gguf)
    for engine, why in skipped.items():
        log(f"{engine}: skipped — {why}")
    torch.set_num_threads(threads)
    runs, bandwidth, read_bw = run_rounds(args, engines, spec, skipped, config)
    return summarize(args, engines, folder, config, threads, runs, skipped, bandwidth, read_bw)


def engine_spec(args, engine: str, spec: dict) -> dict:
    """What ``engine``'s worker is given: the shared spec, with llama.cpp's GGUF, or transformers' shorter run."""
    s = {k: v for k, v in spec.items() if k != "gguf"}
    if engine == "llama.cpp":
        s["gguf"] = spec["gguf"]
    if engine == "transformers":
        s["prompt"] = spec["prompt"][: args.transformers_prompt_len]
        s["decode_tokens"] = args.transformers_decode_tokens
    return s


def no_memory_for_transformers(config) -> str | None:
    """Why transformers cannot run now, or None. Checked just before each transformers run: the machine may be
    shared."""
    need, avail = transformers_memory_bytes(config) * 1.15, mem_available_bytes()
    if avail is not None and need > avail:
        return f"needs ~{need / 2**30:.1f} GiB for its dequantized copy, {avail / 2**30:.1f} GiB available"
    return None


def run_rounds(args, engines: list[str], spec: dict, skipped: dict[str, str], config):
    """Each round: the copy and read bandwidths, then every engine not skipped in turn. Returns each engine's
    results (one a round it ran), and the bandwidths measured."""
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    bandwidth: list[float] = []
    read_bw: list[float] = []
    for r in range(args.rounds):
        bandwidth.append(copy_bandwidth_gbs("cpu"))
        read_bw.append(read_bandwidth_gbs())
        for engine in engines:
            if engine in skipped or (engine == "transformers" and r >= args.transformers_rounds):
                continue
            if engine == "transformers" and (why := no_memory_for_transformers(config)):
                log(f"round {r + 1}: transformers: skipped — {why}")
                runs[engine].append({"round": r + 1, "error": f"skipped: {why}"})
                continue
            log(f"round {r + 1}/{args.rounds}: {engine}")
            res = run_worker(engine, engine_spec(args, engine, spec), args.engine_timeout)
            res["round"] = r + 1
            runs[engine].append(res)
            log(
                f"round {r + 1}: {engine}: "
                + (
                    res["error"]
                    if "error" in res
                    else f"prefill {res['prefill']['tok_s']} tok/s, decode b1 {_decode(res, 1)} tok/s, "
                    f"peak RSS {res['peak_rss_gib']} GiB"
                )
            )
    return runs, bandwidth, read_bw


def summarize(args, engines, folder, config, threads, runs, skipped, bandwidth, read_bw=()) -> dict:
    """The comparison's JSON: each engine's figures over the rounds, the floor, the ratios, the targets met."""
    import platform

    import torch

    ok = {e: [r for r in runs.get(e, []) if "error" not in r] for e in engines}
    floor = floor_summary(ok.get("gptoss"), bandwidth, read_bw)
    ratios = ratio_summary(ok, floor, args.rounds)
    return {
        "benchmark": "gptoss bench --compare",
        "model": str(folder),
        "config": {"layers": config.num_hidden_layers, "experts": config.num_experts, "hidden": config.hidden_size},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "torch": torch.__version__,
        "llama_cpp_python": llama_cpp_version(),
        "threads": threads,
        "rounds": args.rounds,
        "prompt_len": args.prompt_len,
        "decode_tokens": args.decode_tokens,
        "batch_decode_tokens": args.batch_decode_tokens,
        "order": engines,
        "engines": {e: {"skipped": skipped[e]} if e in skipped else engine_summary(e, runs[e], ok[e]) for e in engines},
        "floor": floor,
        "ratios": ratios,
        "targets_met": targets_met(ratios),
    }


def engine_summary(engine: str, rounds: list[dict], good: list[dict]) -> dict:
    """One engine's rounds, and the spread of its figures over those that did not fail."""
    entry: dict = {"rounds": rounds}
    if good:
        entry |= {
            "prefill_tok_s": _spread([r["prefill"]["tok_s"] for r in good]),
            "prefill_tokens": good[0]["prefill"]["tokens"],
            "decode_b1_tok_s": _spread([_decode(r, 1) for r in good]),
            "peak_rss_gib": _spread([r["peak_rss_gib"] for r in good]),
        }
        if engine == "gptoss":
            entry["decode_b8_tok_s"] = _spread([_decode(r, 8) for r in good])
        if engine != "gptoss":
            entry["version"] = good[0].get("version")
    return entry


def floor_summary(gptoss_rounds: list[dict] | None, bandwidth: list[float], read_bw) -> dict | None:
    """The batch-1 floor: gptoss's bytes a decode step at the best copy bandwidth measured (and, for context,
    at the best 1 GiB read bandwidth); None without a gptoss round or a bandwidth."""
    best_bw = max(bandwidth) if bandwidth else None
    if not gptoss_rounds or not best_bw:
        return None
    step = gptoss_rounds[0]["bytes_per_step"]["1"]
    floor = {
        "measured_copy_gbs": _spread(bandwidth),
        "bandwidth_gbs": best_bw,
        "batch1_bytes_per_token": step,
        "batch1_floor_tok_s": round(best_bw * 1e9 / step["total"], 2),
    }
    if read_bw:  # context: a copy of 128 MiB can sit in a large L3; reading 1 GiB cannot
        floor |= {
            "measured_read_1gib_gbs": _spread(list(read_bw)),
            "batch1_floor_at_read_1gib_tok_s": round(max(read_bw) * 1e9 / step["total"], 2),
        }
    return floor


def ratio_summary(ok: dict[str, list[dict]], floor: dict | None, rounds: int) -> dict:
    """Ratios to the floor and between engines, each taken within a round and spread over the rounds."""

    def per_round(fn) -> dict | None:
        """A ratio taken within each round (both figures from the same round), over the rounds."""
        vals = []
        for r in range(1, rounds + 1):
            try:
                vals.append(fn(r))
            except (StopIteration, KeyError, TypeError, ZeroDivisionError):
                continue
        return _spread(vals)

    def fig(engine: str, r: int, what: str) -> float:
        res = next(x for x in ok.get(engine, []) if x["round"] == r)
        return res["prefill"]["tok_s"] if what == "prefill" else _decode(res, int(what[1:]))

    ratios: dict = {}
    if floor:
        f = floor["batch1_floor_tok_s"]
        ratios["gptoss_decode_b1_to_floor"] = per_round(lambda r: fig("gptoss", r, "b1") / f)
        if ok.get("llama.cpp"):
            ratios["llama_cpp_decode_b1_to_floor"] = per_round(lambda r: fig("llama.cpp", r, "b1") / f)
        if floor.get("batch1_floor_at_read_1gib_tok_s"):  # context only: the target is on the copy floor
            fr = floor["batch1_floor_at_read_1gib_tok_s"]
            ratios["gptoss_decode_b1_to_read_1gib_floor"] = per_round(lambda r: fig("gptoss", r, "b1") / fr)
    ratios["gptoss_b8_to_b1"] = per_round(lambda r: fig("gptoss", r, "b8") / fig("gptoss", r, "b1"))
    if ok.get("llama.cpp"):
        ratios["gptoss_to_llama_cpp_prefill"] = per_round(
            lambda r: fig("gptoss", r, "prefill") / fig("llama.cpp", r, "prefill")
        )
        ratios["gptoss_to_llama_cpp_decode_b1"] = per_round(
            lambda r: fig("gptoss", r, "b1") / fig("llama.cpp", r, "b1")
        )
    if ok.get("transformers"):
        ratios["gptoss_to_transformers_decode_b1"] = per_round(
            lambda r: fig("gptoss", r, "b1") / fig("transformers", r, "b1")
        )
    return ratios


def targets_met(ratios: dict) -> dict[str, bool]:
    """The targets: decode and prefill at least llama.cpp's, decode at least half the floor, batch 8 at least
    three times batch 1 (each on the median over the rounds)."""
    targets = {}
    if ratios.get("gptoss_to_llama_cpp_decode_b1"):
        targets["decode_b1_at_least_llama_cpp"] = ratios["gptoss_to_llama_cpp_decode_b1"]["median"] >= 1
        targets["prefill_at_least_llama_cpp"] = ratios["gptoss_to_llama_cpp_prefill"]["median"] >= 1
    if ratios.get("gptoss_decode_b1_to_floor"):
        targets["decode_b1_at_least_half_the_floor"] = ratios["gptoss_decode_b1_to_floor"]["median"] >= 0.5
    if ratios.get("gptoss_b8_to_b1"):
        targets["b8_at_least_3x_b1"] = ratios["gptoss_b8_to_b1"]["median"] >= 3
    return targets
