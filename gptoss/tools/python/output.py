"""What one call returns: the model's text, cut to a size with a clear marker, and its status."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
NO_OUTPUT = "[no output: use print() to see values]"


@dataclass
class Execution:
    """The result of running one cell."""

    output: str  # what the model sees (truncated, with notes)
    status: str  # ok | error | timeout | crashed
    raw_chars: int = 0  # characters of output before truncation
    notes: list[str] = field(default_factory=list)


class OutputBuffer:
    """Keeps the head and the tail of a long output, counting what was dropped in the middle."""

    def __init__(self, limit: int):
        self.limit = max(limit, 64)
        self.head = ""
        self.tail = ""
        self.total = 0

    def add(self, text: str) -> None:
        if not text:
            return
        self.total += len(text)
        half = self.limit // 2
        if len(self.head) < half:
            take = half - len(self.head)
            self.head += text[:take]
            text = text[take:]
        self.tail = (self.tail + text)[-(self.limit - half) :]

    def text(self) -> str:
        shown = len(self.head) + len(self.tail)
        if self.total <= self.limit:
            return self.head + self.tail
        dropped = self.total - shown
        return f"{self.head}\n[... {dropped} characters truncated ...]\n{self.tail}"


def truncate(text: str, limit: int) -> str:
    buf = OutputBuffer(limit)
    buf.add(text)
    return buf.text()


def _size(n: int | None) -> str:
    if n is None:
        return "none"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"
