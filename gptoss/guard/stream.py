"""Releasing a streamed answer only after the guard has seen it.

:class:`OutputGate` holds a choice's deltas. In ``end`` mode (the default) everything waits for one check
of the finished answer: nothing of an answer the guard blocks is ever released. In ``chunks`` mode, each
time at least ``chunk_chars`` of unchecked text have gathered, the guard checks the whole answer so far
(context matters: a piece alone may look harmless) and, if it passes, everything held is released; a block
drops what is held then. What chunks mode guarantees is narrower: every released character was part of an
answer prefix the guard passed, but when a later piece gets the answer blocked, the pieces released before
it have already reached the client (the stream then ends with ``content_filter``). Deltas of other kinds
(tool calls) keep their place in the order.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from gptoss.guard.guard import Decision, Guard


class OutputGate:
    def __init__(
        self,
        guard: Guard,
        request_id: str,
        endpoint: str,
        context: str = "",
        kinds: tuple[str, ...] = ("content",),
        text_of: Callable[[Any], tuple[str, str]] | None = None,
    ):
        """``text_of(delta) -> (kind, text)``; deltas whose kind is in ``kinds`` are checked."""
        self.guard = guard
        self.request_id = request_id
        self.endpoint = endpoint
        self.context = context
        self.kinds = kinds
        self.text_of = text_of or (lambda d: (d.kind, d.text))
        self.mode = guard.settings.stream
        self.chunk = guard.settings.chunk_chars
        self.held: list[Any] = []
        self.text = {k: "" for k in kinds}
        self.unchecked = 0
        self.decision: Decision | None = None  # the last check's
        self.flagged = False

    async def feed(self, deltas: list[Any]) -> list[Any]:
        """The deltas that may be released now (possibly after a check). Check ``blocked`` afterwards."""
        if self.blocked:
            return []
        for d in deltas:
            kind, text = self.text_of(d)
            if kind in self.text:
                self.text[kind] += text
                self.unchecked += len(text)
            self.held.append(d)
        if self.mode == "chunks" and self.unchecked >= self.chunk:
            return await self._check()
        return []

    async def finish(self) -> list[Any]:
        """The answer is complete: the final check; returns what is left to release."""
        if self.blocked:
            return []
        if self.unchecked or self.decision is None:
            return await self._check()
        out, self.held = self.held, []
        return out

    @property
    def blocked(self) -> bool:
        return self.decision is not None and self.decision.blocked

    async def _check(self) -> list[Any]:
        self.unchecked = 0
        decision = None
        for kind in self.kinds:
            text = self.text[kind]
            if not text:  # nothing to release, nothing to check (tool call arguments are not checked)
                continue
            stage = "reasoning" if kind == "reasoning" else "output"
            d = await self.guard.check(compose_output(self.context, text), stage, self.request_id, self.endpoint)
            self.flagged = self.flagged or d.flagged
            decision = d
            if d.blocked:
                break
        self.decision = decision
        if self.blocked:
            self.held = []
            return []
        out, self.held = self.held, []
        return out


OUTPUT_PREAMBLE = (
    "Classify the assistant's response below. The user's request is context only. Both are given as one JSON object:\n"
)


def compose_output(request: str, answer: str) -> str:
    """What the guard reads for an output check: the answer, with the request it answers for context, as a
    JSON object, so that neither text can forge where the other begins (both are hostile)."""
    if not request:
        return OUTPUT_PREAMBLE + json.dumps({"assistant_response": answer}, ensure_ascii=False)
    return OUTPUT_PREAMBLE + json.dumps({"user_request": request, "assistant_response": answer}, ensure_ascii=False)
