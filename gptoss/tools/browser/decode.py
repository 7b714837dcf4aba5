"""Content-Encoding decoding under a byte budget enforced while inflating.

A compressed body is hostile data: 2 kB of double gzip inflates to 1 GiB. The decoder here takes the raw
bytes as they arrive and inflates them in bounded steps (``zlib``'s ``max_length``), so no step makes
more than :data:`STEP` bytes and the output stops the moment it passes the budget: peak memory stays
near the budget, however large the bomb. At most :data:`MAX_STACKED` encodings are accepted
(``gzip, gzip`` yes, five layers no) and only gzip and deflate (and identity) are known; anything else
is refused rather than passed on undecoded.
"""

from __future__ import annotations

import zlib

from gptoss.tools.browser.backend import BackendError

STEP = 64 * 1024
MAX_STACKED = 2
ACCEPT_ENCODING = "gzip, deflate"  # what the browser asks for: exactly what it can decode under a budget


class DecodeError(BackendError):
    """The body is over budget, stacks too many encodings, uses an unknown one, or is corrupt."""


def parse_encodings(header: str | None) -> list[str]:
    """The codings of a Content-Encoding header in the order they were applied; identity dropped."""
    if not header:
        return []
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if len(codings) > MAX_STACKED:
        raise DecodeError(
            f"the page stacks {len(codings)} content encodings ({header}); at most {MAX_STACKED} are decoded"
        )
    for c in codings:
        if c not in ("gzip", "x-gzip", "deflate"):
            raise DecodeError(
                f"the page uses the content encoding {c!r}, which the browser does not decode "
                "(it decodes gzip and deflate)"
            )
    return codings


class _Inflater:
    """One coding layer: zlib in bounded steps (gzip members one after another, deflate with or without
    its zlib header)."""

    def __init__(self, coding: str):
        self.coding = coding
        self.gzip = coding in ("gzip", "x-gzip")
        self.obj = zlib.decompressobj(16 + zlib.MAX_WBITS if self.gzip else zlib.MAX_WBITS)
        self.first = True  # deflate: fall back to a raw stream if the zlib header is missing
        self.pending = b""

    def feed(self, data: bytes):
        """Yields the inflated bytes of ``data`` in pieces of at most STEP bytes."""
        self.pending += data
        while self.pending:
            chunk, self.pending = self.pending, b""
            try:
                out = self.obj.decompress(chunk, STEP)
            except zlib.error as exc:
                if self.first and not self.gzip:
                    self.obj = zlib.decompressobj(-zlib.MAX_WBITS)
                    self.first = False
                    out = self._raw(chunk)
                else:
                    raise DecodeError(f"the page's {self.coding} data is corrupt ({exc})") from None
            self.first = False
            if out:
                yield out
            if self.obj.unconsumed_tail:
                self.pending = self.obj.unconsumed_tail
            elif self.obj.eof and self.obj.unused_data:
                rest = self.obj.unused_data
                if not self.gzip:
                    return  # bytes after the end of a deflate stream are ignored
                self.obj = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
                self.pending = rest

    def _raw(self, chunk: bytes) -> bytes:
        try:
            return self.obj.decompress(chunk, STEP)
        except zlib.error as exc:
            raise DecodeError(f"the page's {self.coding} data is corrupt ({exc})") from None


class BoundedDecoder:
    """Raw body bytes in, decoded bytes out, never more than ``budget`` of them (DecodeError past it)."""

    def __init__(self, content_encoding: str | None, budget: int, what: str = "the page"):
        codings = parse_encodings(content_encoding)
        # decoding undoes the codings in the reverse of the order they were applied
        self.layers = [_Inflater(c) for c in reversed(codings)]
        self.budget = budget
        self.what = what
        self.size = 0
        self.layer_sizes = [0] * len(self.layers)  # each layer's output is held to the budget too (CPU bound)
        self.out: list[bytes] = []

    def feed(self, raw: bytes) -> None:
        self._push(0, raw)

    def _push(self, level: int, data: bytes) -> None:
        if level == len(self.layers):
            self.size += len(data)
            if self.size > self.budget:
                raise DecodeError(
                    f"{self.what} is larger than {self.budget} bytes" + (" once decompressed" if self.layers else "")
                )
            self.out.append(data)
            return
        for piece in self.layers[level].feed(data):
            self.layer_sizes[level] += len(piece)
            if self.layer_sizes[level] > self.budget:
                raise DecodeError(f"{self.what} is larger than {self.budget} bytes once decompressed")
            self._push(level + 1, piece)

    def result(self) -> bytes:
        return b"".join(self.out)
