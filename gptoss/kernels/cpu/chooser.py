"""Which kernel variant runs a product, chosen by timing the candidates on the running CPU.

A product is known by its kind (``dense`` bf16 rows, the ``unembedding``, MXFP4 ``experts``, ``attention``), its
token class (``1``, ``2-4``, ``5-16``, ``prefill``), its shape and the thread count. The first time one is seen, each
candidate variant — a compiled instruction set (``avx512bf16``, ``avx512``, ``avx2``, ...), optionally with
another prefetch distance or attention's query tile, or torch's own GEMM — is timed on a trial of that product
(interleaved rounds, best of each, a time budget of about half a second a product), and the fastest one is used
from then on.
Flags alone do not decide: on a Zen 4 the 512-bit bf16 dot product is double-pumped and the float32 FMA
path can win where a Xeon prefers it the other way.

The choices are kept in a JSON file beside the compiled libraries, named by the CPU (model name and feature
flags) and the build (kernel source, compiler, flags): another CPU or an edited kernel reads another file,
and a file whose recorded CPU or build differs is ignored. ``GPTOSS_CPU_ISA`` forces one instruction set and
skips the choice. No variant changes what a product means: each one is held to the plain-torch reference by
the kernel tests, so the choice moves only the speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptoss.kernels.cpu import builder

# Products whose weights are smaller than this are never timed (the router, tiny test models): they take the
# default variant, so small runs stay deterministic and pay nothing for the choice.
MIN_WEIGHT_BYTES = 4 << 20
MARGIN = 1.05  # another variant replaces the default only when at least 5% faster (noise keeps the default)
BUDGET_S = 0.5  # timing budget a product (after every candidate ran once)
ROUNDS = 3  # at most this many timed rounds a product


@dataclass(frozen=True)
class Variant:
    """One way to run a product: a compiled instruction set (or ``torch``), a prefetch distance in bytes
    (0: the library's default), and for attention the queries a tile (0: each query on its own)."""

    isa: str
    pf: int = 0
    tile: int = 0

    def __str__(self) -> str:
        return self.isa + (f"+pf{self.pf}" if self.pf else "") + (f"+tile{self.tile}" if self.tile else "")

    @classmethod
    def parse(cls, text: str) -> Variant:
        isa, *options = text.split("+")
        values = {"pf": 0, "tile": 0}
        for option in options:
            name = option.rstrip("0123456789")
            values[name] = int(option[len(name) :])
        return cls(isa, values["pf"], values["tile"])


def token_class(n: int) -> str:
    return "1" if n <= 1 else "2-4" if n <= 4 else "5-16" if n <= 16 else "prefill"


def cpu_identity() -> str:
    """The CPU as the choice depends on it: its model name and feature flags."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Processor", "CPU part")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import platform

    model = model or platform.processor() or platform.machine()
    return model + " | " + " ".join(sorted(builder.cpu_flags()))


def build_identity() -> str:
    """The build as the choice depends on it: kernel source, compiler and the flags of every variant."""
    cxx = builder.compiler() or ""
    try:
        version = builder._compiler_version(cxx) if cxx else ""
    except builder.BuildError:
        version = ""
    h = hashlib.sha256()
    for part in (
        builder.SOURCE.read_bytes(),
        cxx.encode(),
        version.encode(),
        json.dumps([builder.BASE_FLAGS, builder.OPENMP_FLAGS, builder.ISA_FLAGS], sort_keys=True).encode(),
    ):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _time_variant(trial: Callable[[Variant], Any], variant: Variant) -> tuple[float, Any]:
    """Seconds one run of ``trial(variant)`` takes, and what it returned."""
    t = time.perf_counter()
    out = trial(variant)
    return time.perf_counter() - t, out


class Chooser:
    """The choices for this CPU and build, loaded from (and saved to) the file beside the libraries."""

    def __init__(self, folder: Path | None = None):
        self._folder = folder
        self._lock = threading.Lock()
        self._choices: dict[str, str] | None = None
        self._timings: dict[str, dict[str, float]] = {}
        self._ident: tuple[str, str] | None = None

    # ----------------------------------------------------------------- the file
    def identity(self) -> tuple[str, str]:
        if self._ident is None:
            self._ident = (cpu_identity(), build_identity())
        return self._ident

    def path(self) -> Path:
        cpu, build = self.identity()
        key = hashlib.sha256(f"{cpu}\n{build}".encode()).hexdigest()[:16]
        return (self._folder or builder.cache_dir()) / f"choices-{key}.json"

    def _load(self) -> dict[str, str]:
        if self._choices is None:
            self._choices = {}
            cpu, build = self.identity()
            try:
                data = json.loads(self.path().read_text())
                if data.get("cpu") == cpu and data.get("build") == build and isinstance(data.get("choices"), dict):
                    self._choices = {str(k): str(v) for k, v in data["choices"].items()}
                    self._timings = data.get("timings_s") or {}
            except (OSError, ValueError):
                pass  # none yet, or unreadable: choose afresh
        return self._choices

    def _save(self) -> None:
        path = self.path()
        cpu, build = self.identity()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with builder._file_lock(path.with_name(path.name + ".lock")):
                try:  # keep what another process chose meanwhile
                    data = json.loads(path.read_text())
                    theirs = data["choices"] if data.get("cpu") == cpu and data.get("build") == build else {}
                except (OSError, ValueError, KeyError):
                    theirs = {}
                merged = {**theirs, **(self._choices or {})}
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    json.dump(
                        {"cpu": cpu, "build": build, "choices": merged, "timings_s": self._timings},
                        f,
                        indent=1,
                        sort_keys=True,
                    )
                os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: the choice still holds for this process

    # ----------------------------------------------------------------- choosing
    def choices(self) -> dict[str, str]:
        with self._lock:
            return dict(self._load())

    def run(
        self,
        key: str,
        weight_bytes: int,
        candidates: list[Variant],
        call: Callable[[Variant], Any],
        trial: Callable[[Variant], Any] | None = None,
    ) -> Any:
        """``call(v)`` with the chosen variant ``v`` for product ``key``, timing ``candidates`` (the first is
        the default) on ``trial`` (default: ``call`` itself) the first time ``key`` is seen. ``weight_bytes``:
        what the product reads, below :data:`MIN_WEIGHT_BYTES` the default runs untimed."""
        if len(candidates) == 1 or weight_bytes < MIN_WEIGHT_BYTES:
            return call(candidates[0])
        with self._lock:
            known = self._load().get(key)
        if known is not None:
            v = Variant.parse(known)
            if v in candidates:
                return call(v)
        winner, out = self._measure(key, candidates, trial or call)
        return out if trial is None else call(winner)

    def _measure(self, key: str, candidates: list[Variant], trial: Callable[[Variant], Any]) -> tuple[Variant, Any]:
        best: dict[Variant, float] = {}
        outs: dict[Variant, Any] = {}
        for v in candidates:  # one untimed-for-the-choice run each: page faults, first touches, lazy builds
            best[v], outs[v] = _time_variant(trial, v)
        start = time.perf_counter()
        for _ in range(ROUNDS):
            for v in candidates:
                s, outs[v] = _time_variant(trial, v)
                best[v] = min(best[v], s)
            if time.perf_counter() - start > BUDGET_S:
                break
        winner = min(candidates, key=lambda v: best[v])
        if best[candidates[0]] <= MARGIN * best[winner]:
            winner = candidates[0]
        with self._lock:
            self._load()[key] = str(winner)
            self._timings[key] = {str(v): round(s, 6) for v, s in best.items()}
        self._save()
        return winner, outs[winner]


_chooser: Chooser | None = None


def chooser() -> Chooser:
    global _chooser
    if _chooser is None:
        _chooser = Chooser()
    return _chooser


@contextlib.contextmanager
def using(c: Chooser):
    """Use ``c`` as the process's chooser inside the block (tests)."""
    global _chooser
    before, _chooser = _chooser, c
    try:
        yield c
    finally:
        _chooser = before
