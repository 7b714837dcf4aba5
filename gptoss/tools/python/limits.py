"""What the sandboxed code may use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SandboxLimits:
    """Limits on what the sandboxed code may use. ``None`` leaves a limit unset."""

    memory_bytes: int | None = 2 * 1024**3  # address space of each process (RLIMIT_AS)
    total_memory_bytes: int | None = 4 * 1024**3  # the whole conversation: processes, /tmp, /dev/shm (memory cgroup)
    disk_bytes: int | None = 1024**3  # the conversation's own /mnt/data in all (a tmpfs of this size, as root)
    processes: int | None = 128  # processes and threads of the sandbox
    cpu_seconds: int | None = 3600  # CPU time of each process (RLIMIT_CPU); the kernel restarts past it
    file_size_bytes: int | None = 1024**3
    open_files: int | None = 1024
    tmp_size: str = "256m"  # private /tmp and /dev/shm (tmpfs, counts as memory)
    # every sandbox of this process together (a parent memory cgroup, as root); None: no budget beyond each one's
    sandboxes_memory_bytes: int | None = None


def _tmpfs_bytes(size: str | int) -> int:
    """``"256m"`` (tmpfs's own notation: k, m, g) in bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().lower()
    scale = {"k": 2**10, "m": 2**20, "g": 2**30}.get(text[-1:], 1)
    return int(text[:-1] if text[-1:] in "kmg" else text) * scale
