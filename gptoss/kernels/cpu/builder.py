"""Build the native CPU kernels on first use and cache them.

``gptoss_cpu.cpp`` (shipped in the package) is compiled with the system C++ compiler into one shared library
per instruction set — ``avx512``, ``avx2``, ``neon`` or ``portable`` — and loaded with ctypes. Libraries live
in ``$GPTOSS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/gptoss/kernels``, i.e. ``~/.cache/gptoss/kernels``), named
by a hash of the source, the flags and the compiler's version, so an edited source or another compiler builds
afresh. A file lock serialises concurrent builds of one library; the result is written to a temporary name and
renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("gptoss_cpu.cpp")

# ISA -> (preprocessor define, compiler flags). The portable build uses only the compiler's baseline.
ISA_FLAGS: dict[str, list[str]] = {
    "avx512": [
        "-DGPTOSS_ISA_AVX512",
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mavx2",
        "-mfma",
        "-mf16c",
        "-mtune=skylake-avx512",
    ],
    # AVX-512 with the bf16 dot product (Sapphire Rapids, Zen 4 and later): bf16 models multiply in bf16
    "avx512bf16": [
        "-DGPTOSS_ISA_AVX512",
        "-DGPTOSS_BF16DOT",
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mavx512bf16",
        "-mavx2",
        "-mfma",
        "-mf16c",
        "-mtune=skylake-avx512",
    ],
    # (a -mtune other than generic: GCC's generic tuning splits every unaligned 256-bit load in two)
    "avx2": ["-DGPTOSS_ISA_AVX2", "-mavx2", "-mfma", "-mf16c", "-mtune=haswell"],
    "neon": ["-DGPTOSS_ISA_NEON"],
    "portable": [],
}
BASE_FLAGS = [
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-ffp-contract=fast",
    "-fno-math-errno",
    "-Wall",
    "-Wno-unknown-pragmas",
]
OPENMP_FLAGS = ["-fopenmp"]


class BuildError(RuntimeError):
    """The native kernels could not be compiled (no compiler, or it failed); the message says why."""


def cache_dir() -> Path:
    if os.environ.get("GPTOSS_CACHE_DIR"):
        return Path(os.environ["GPTOSS_CACHE_DIR"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gptoss" / "kernels"


def compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.lru_cache(maxsize=1)
def _runnable() -> tuple[str, ...]:
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return ("neon", "portable")
    if machine in ("x86_64", "amd64", "x86-64"):
        import torch

        # torch checks the CPU and that the OS saves the wide registers (XCR0).
        cap = torch.backends.cpu.get_cpu_capability().upper()
        if cap.startswith("AVX512"):
            if cpu_flags() >= {"avx512_bf16", "avx512bw", "avx512vl"}:
                return ("avx512bf16", "avx512", "avx2", "portable")
            return ("avx512", "avx2", "portable")
        if cap.startswith("AVX2"):
            return ("avx2", "portable")
    return ("portable",)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def runnable_isas() -> list[str]:
    """Variants this CPU can run, best first (the portable one always last)."""
    return list(_runnable())


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic rename still keeps readers safe
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"the C++ compiler {cxx} does not run: {e}") from e


def build(isa: str) -> Path:
    """Path of the compiled library for ``isa``, compiling it when the cache has none. Raises BuildError."""
    if isa not in ISA_FLAGS:
        raise BuildError(f"unknown instruction set {isa!r}: expected one of {', '.join(ISA_FLAGS)}")
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (set CXX, or install g++ or clang++)")
    source = SOURCE.read_bytes()
    version = _compiler_version(cxx)
    attempts = [BASE_FLAGS + OPENMP_FLAGS + ISA_FLAGS[isa], BASE_FLAGS + ISA_FLAGS[isa]]  # without OpenMP: one thread
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in attempts:
        key = hashlib.sha256(
            b"\0".join([source, " ".join(flags).encode(), cxx.encode(), version.encode()])
        ).hexdigest()[:16]
        target = folder / f"gptoss_cpu-{isa}-{key}.so"
        if target.exists():
            return target
        with _file_lock(folder / f"{target.name}.lock"):
            if target.exists():  # another process built it while we waited
                return target
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            try:
                proc = subprocess.run(
                    [cxx, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=600
                )
                if proc.returncode == 0:
                    os.replace(tmp, target)
                    return target
                errors.append(f"{' '.join([os.path.basename(cxx), *flags])}: {proc.stderr.strip()[-2000:]}")
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(str(e))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    raise BuildError(f"compiling {SOURCE.name} for {isa} failed:\n" + "\n".join(errors))
