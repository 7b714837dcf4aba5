"""A sign of life while the model works on something the chat does not show (hidden reasoning, the prompt).

On a terminal a line redrawn four times a second: a spinner, the hidden tokens so far and their rate;
it is erased once visible text comes, leaving a one-line summary. Elsewhere (a pipe, a log) one plain
line: ``(thinking... 24 tokens in 2.9 s, 8.3 tok/s)``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TextIO

SPINNER = "-\\|/"


class ThinkingIndicator:
    """``count()`` returns a running total of generated tokens; the indicator shows those generated
    between :meth:`start` and :meth:`stop`. ``live``: redraw one line in place (a terminal)."""

    def __init__(
        self,
        out: TextIO,
        count: Callable[[], int],
        live: bool,
        interval: float = 0.25,
        hint: str = "/reasoning on shows it",
    ):
        self.out = out
        self.count = count
        self.live = live
        self.interval = interval
        self.hint = hint
        self.active = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- state
    def start(self) -> None:
        # Ordered so that a Ctrl-C landing anywhere in here leaves a state stop() can undo.
        if self.active:
            return
        self._base = self.count()
        self._started = time.monotonic()
        self._first: tuple[float, int] | None = None  # (time, count) when the first hidden token was seen
        self._stop.clear()
        self.active = True
        if not self.live:
            self._write("(thinking...")
        self._tick(0)
        thread = threading.Thread(target=self._run, name="thinking-indicator", daemon=True)
        thread.start()
        self._thread = thread  # only a started thread is ever joined

    def stop(self) -> int:
        """Erase the live line (or end the plain one) and return the hidden tokens counted."""
        if not self.active:
            return 0
        self.active = False
        self._stop.set()  # also ends a thread started just before a Ctrl-C kept it from being recorded
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        tokens = self.tokens()
        summary = self.summary(tokens)
        if self.live:
            self._write("\r\x1b[2K")
            if tokens:
                self._write(f"\x1b[2m({summary}; {self.hint})\x1b[0m\n")
        else:
            self._write(f" {summary})\n")
        return tokens

    def tokens(self) -> int:
        return max(0, self.count() - self._base)

    def rate(self, tokens: int) -> float | None:
        """Tokens/s since the first hidden token (the prompt's prefill is not in it)."""
        if self._first is None or tokens - self._first[1] < 1:
            return None
        elapsed = time.monotonic() - self._first[0]
        return (tokens - self._first[1]) / elapsed if elapsed > 0 else None

    def summary(self, tokens: int) -> str:
        elapsed = time.monotonic() - self._started
        rate = self.rate(tokens)
        text = f"thought for {tokens} token{'s' if tokens != 1 else ''} in {elapsed:.1f} s"
        return text + (f", {rate:.1f} tok/s" if rate else "")

    # ---------------------------------------------------------------- drawing
    def _run(self) -> None:
        frame = 0
        while not self._stop.wait(self.interval):
            frame += 1
            self._tick(frame)

    def _tick(self, frame: int) -> None:
        tokens = self.tokens()
        if tokens and self._first is None:
            self._first = (time.monotonic(), tokens)
        if not self.live:
            return
        elapsed = time.monotonic() - self._started
        if tokens:
            rate = self.rate(tokens)
            detail = f"{tokens} tokens" + (f", {rate:.1f} tok/s" if rate else "") + f", {elapsed:.0f} s"
        else:
            detail = f"reading the prompt, {elapsed:.0f} s"
        self._write(f"\r\x1b[2K\x1b[2m{SPINNER[frame % len(SPINNER)]} thinking: {detail}\x1b[0m")

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text)
            self.out.flush()
