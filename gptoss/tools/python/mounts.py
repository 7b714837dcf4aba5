"""Mounts the host makes for a sandbox (root only): a sized tmpfs for the conversation's files, and
finding and removing what is mounted below a folder."""

from __future__ import annotations

import os

_MNT_DETACH = 2
_MS_NOSUID, _MS_NODEV = 2, 4


def _libc():
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def mount_tmpfs(path: str, size: int, mode: int = 0o700) -> None:
    """A tmpfs of ``size`` bytes on ``path`` (root only): the bound on the conversation's files."""
    import ctypes

    if _libc().mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size},mode={mode:o}".encode()):
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def unmount(path: str) -> bool:
    return _libc().umount2(path.encode(), _MNT_DETACH) == 0


def _mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return []
    return sorted((p for p in points if p == path or p.startswith(path.rstrip("/") + "/")), key=len, reverse=True)
