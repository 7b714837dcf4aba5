"""The host's view of processes: /proc read without following anything the sandbox controls, the
descendants of a process, and the names of a host (pid and start time) that folders and cgroups carry."""

from __future__ import annotations

import os
import re

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Folders and cgroups are named after their host: its pid and the start time of that pid (so that a later
# process that got the same pid, common in containers, is not taken for it). Older names had the pid only.
STALE_RE = re.compile(r"gptoss-(?:py|data|python|sandboxes)-(\d+)(?:\.(\d+))?(?:-|$)")


def _stat_of(pid: int) -> tuple[int, int, int, str] | None:
    """(ppid, start time in ticks, cpu ticks used, state letter) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]), fields[0]


def process_table() -> dict[int, tuple[int, int, int, str]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat_of(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def descendants(root: int, table: dict[int, tuple[int, int, int, str]] | None = None) -> list[int]:
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(1 << 20).decode(errors="replace").split("\0")
    except OSError:
        return []


def tasks_of_uid(uid: int) -> int:
    """Processes and threads whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields.get("Threads", "1"))
        except (KeyError, ValueError, IndexError):
            continue
    return total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    st = _stat_of(pid)
    return st is not None and st[3] != "Z"


def host_tag() -> str:
    """``PID.START``: this process, as the names of its sandboxes' folders and cgroups say."""
    pid = os.getpid()
    st = _stat_of(pid)
    return f"{pid}.{st[1] if st else 0}"


def _host_gone(m: re.Match) -> bool:
    """Is the host a stale name (``STALE_RE``'s match) was made by no longer running?"""
    pid = int(m.group(1))
    if not _pid_alive(pid):
        return True
    if m.group(2) is None:
        return False
    st = _stat_of(pid)
    return st is None or st[1] != int(m.group(2))
