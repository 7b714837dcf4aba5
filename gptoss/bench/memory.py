"""Memory: what a process holds (resident, peak) and how fast the machine moves bytes (copy, read)."""

from __future__ import annotations

import sys
import time

from gptoss.bench.common import sync, timed


def rss_bytes() -> int:
    """This process's resident set now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int | None:
    """This process's peak resident set (VmHWM), memory-mapped file pages included."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def copy_bandwidth_gbs(device: str) -> float:
    """Measured device-memory bandwidth: bytes read plus written by a large copy, per second."""
    import torch

    n = (1 << 30) if device.startswith("cuda") else (1 << 27)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return round(2 * n / best / 1e9, 1)


def read_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Bytes a second the process reads from a buffer of ``nbytes`` (1 GiB: larger than any L3), best of 3."""
    import torch

    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()
    best = min(timed(buf.sum) for _ in range(3))
    return round(nbytes / best / 1e9, 1)


def warm_page_cache(files: list[str]) -> float:
    """Read ``files`` through once, so the timed work finds the weights in memory rather than on disk (each
    engine gets this before it loads: two engines' files together can exceed the memory). Returns seconds."""
    t = time.perf_counter()
    buf = bytearray(16 << 20)
    for name in files:
        with open(name, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t


def checkpoint_files(folder: str) -> list[str]:
    """The tensor files of the checkpoint in ``folder``."""
    from gptoss.model.checkpoint import locate

    return sorted({str(f) for f in locate(folder).tensor_files.values()})
