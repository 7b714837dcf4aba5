"""What every benchmark shares: timing on a device, the log on stderr, the JSON out, the machine's name."""

from __future__ import annotations

import json
import sys
import time


def log(msg: str, tag: str = "bench") -> None:
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)


def emit_json(result: dict, out: str | None) -> int:
    """Print the benchmark's JSON, and also write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Seconds one call of ``fn`` takes (on the host clock: CPU work only)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def best_time(fn, device, repeats: int) -> float:
    """Best of ``repeats`` timed calls after one warm-up call (kernel compilation, graph capture, allocator)."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def cpu_kernels(model) -> dict | None:
    """The native CPU kernels ``model`` runs on (instruction set, threads, chosen variants), or None when off."""
    from gptoss import kernels

    if not kernels.cpu_active(model.unembedding.weight):
        return None
    from gptoss.kernels import cpu

    return {"isa": cpu.chosen_isa(), "threads": cpu.num_threads(), "choices": cpu.choices()}


def cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None
