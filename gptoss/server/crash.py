"""Saying why the server died when it dies of a fatal signal.

Weights are memory-mapped from the checkpoint files. If one of them is truncated or replaced while the
server runs, the next read of a page that is gone raises SIGBUS, and the process dies on the spot (exit
status 135): no Python code can run in that thread any more, so nothing would be logged. Here the
interpreter's ``faulthandler`` writes its fatal-error report into a pipe; a small watcher process (it
only reads the pipe) writes, in front of that report on the server's stderr, one line saying what
happened and why. The watcher ends when the server does (the pipe closes).
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys

# The watcher: copies the report to stderr, prefixed by one explaining line for a bus error.
_WATCHER = r"""
import os, sys
where = sys.argv[1]
data = b""
while chunk := os.read(0, 65536):
    data += chunk
if b"Bus error" in data:
    sys.stderr.write("gptoss: the server died of SIGBUS: a memory-mapped checkpoint file in " + where + " was "
                     "truncated or replaced while being served; restore the files and restart the server\n")
sys.stderr.write(data.decode("utf-8", "replace"))
sys.stderr.flush()
"""


def explain_fatal_signals(checkpoint_dir: str) -> subprocess.Popen | None:
    """Route faulthandler's report of a fatal signal (SIGBUS, SIGSEGV, ...) through the watcher, which
    explains a bus error in one line. Returns the watcher (None if it could not start: then faulthandler
    reports to stderr directly)."""
    read, write = os.pipe()
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-c", _WATCHER, checkpoint_dir],
            stdin=read,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        os.close(read)
        os.close(write)
        faulthandler.enable(all_threads=True)
        return None
    os.close(read)
    faulthandler.enable(file=write, all_threads=True)  # the write end stays open for the life of the server
    return watcher
