"""What each --guard-stream mode releases of an answer whose later piece gets it blocked."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from gptoss.guard import GuardSettings
from gptoss.guard.guard import Decision
from gptoss.guard.policy import load_policies
from gptoss.guard.stream import OUTPUT_PREAMBLE, OutputGate


@dataclass
class Delta:
    kind: str
    text: str


class LengthGuard:
    """Blocks an answer once it reaches ``limit`` characters; records each answer it checked."""

    def __init__(self, settings: GuardSettings, limit: int):
        self.settings, self.limit, self.checked = settings, limit, []

    async def check(self, content: str, stage: str, request_id: str, endpoint: str) -> Decision:
        answer = json.loads(content[len(OUTPUT_PREAMBLE) :])["assistant_response"]
        self.checked.append(answer)
        return Decision(stage=stage, action="block" if len(answer) >= self.limit else "allow")


def released(tmp_path, **kw) -> tuple[str, bool, list[str]]:
    (tmp_path / "p.md").write_text("---\nname: p\n---\n# Policy\n")
    guard = LengthGuard(GuardSettings(policies=load_policies([str(tmp_path / "p.md")]), chunk_chars=10, **kw), 40)
    gate = OutputGate(guard, "chatcmpl-1", "chat")

    async def run():
        out = []
        for piece in ["The first part. ", "Still harmless. ", "Now the part that ", "gets it blocked."]:
            out += await gate.feed([Delta("content", piece)])
            if gate.blocked:
                break
        out += await gate.finish()
        return "".join(d.text for d in out)

    return asyncio.run(run()), gate.blocked, guard.checked


def test_end_mode_is_the_default_and_releases_nothing_of_a_blocked_answer(tmp_path):
    text, blocked, checked = released(tmp_path)
    assert blocked and text == "" and len(checked) == 1  # one check, of the whole answer


def test_chunks_mode_releases_the_pieces_that_passed_before_the_block(tmp_path):
    text, blocked, checked = released(tmp_path, stream="chunks")
    assert blocked and checked[:2] == ["The first part. ", "The first part. Still harmless. "] and len(checked) == 3
    assert text == "The first part. Still harmless. "  # sent before the third piece got the answer blocked
