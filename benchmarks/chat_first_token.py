"""Time `gptoss chat` as a user meets it, in a pseudo-terminal: start-up until the prompt, then, for a
conversation of about --prompt-tokens tokens, the time from pressing Enter to the first token of the answer
(the final channel: after the prompt's prefill and the reasoning). Prints JSON.

    python benchmarks/chat_first_token.py --model /path/to/gpt-oss-20b --threads 2 --reasoning-max-tokens 16

On a synthetic (random-weight) checkpoint the model never chooses to stop reasoning, so --reasoning-max-tokens
(the chat's reasoning budget) decides how many reasoning tokens come before the answer; the JSON says how many
there were (the chat's own "thought for N tokens" line).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

SENTENCE = (
    "Please summarise the trade-offs between running a mixture-of-experts language model on a laptop "
    "CPU and on a single datacenter GPU, covering memory, speed and cost. "
)


def conversation_text(target_tokens: int) -> tuple[str, int]:
    """A user message whose rendered prompt (system message + user message + assistant header) is about
    ``target_tokens`` long, and that length."""
    from gptoss.harmony import Message, Role, SystemContent
    from gptoss.harmony.render import render_conversation_for_completion
    from gptoss.tokenizer import Tokenizer

    tok = Tokenizer.load()
    text, n = "", 0
    while True:
        candidate = text + SENTENCE
        messages = [
            Message.from_role_and_content(Role.SYSTEM, SystemContent.new()),
            Message.from_role_and_content(Role.USER, candidate),
        ]
        m = len(render_conversation_for_completion(messages, Role.ASSISTANT, tokenizer=tok))
        if m > target_tokens and text:
            return text.strip(), n
        text, n = candidate, m


def main() -> None:
    import pexpect

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--reasoning-max-tokens", type=int, default=16)
    p.add_argument("--reasoning-effort", default="low")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()

    text, prompt_tokens = conversation_text(args.prompt_tokens)
    cmd = [
        "-m",
        "gptoss",
        "chat",
        "--model",
        args.model,
        "--seed",
        "1",
        "--temperature",
        "0",
        "--reasoning-effort",
        args.reasoning_effort,
        "--reasoning-max-tokens",
        str(args.reasoning_max_tokens),
        "--max-tokens",
        str(args.reasoning_max_tokens + 48),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    child = pexpect.spawn(sys.executable, cmd, encoding="utf-8", timeout=args.timeout, dimensions=(50, 200))
    child.expect(">>> ")
    ready_s = time.perf_counter() - t0
    child.sendline(text)
    t1 = time.perf_counter()
    # The thinking line ends when the first answer token arrives: "(thought for N tokens in X s; ...)\n".
    child.expect(r"thought for (\d+) tokens? in ([\d.]+) s[^\n]*\n")
    reasoning_tokens = int(child.match.group(1))
    child.expect(r"\S")
    first_answer_s = time.perf_counter() - t1
    child.expect(">>> ")
    turn_s = time.perf_counter() - t1
    answer = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", child.before or "").strip()
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    print(
        json.dumps(
            {
                "model": args.model,
                "threads": args.threads,
                "prompt_tokens": prompt_tokens,
                "reasoning_tokens": reasoning_tokens,
                "startup_to_prompt_s": round(ready_s, 1),
                "enter_to_first_answer_token_s": round(first_answer_s, 1),
                "whole_turn_s": round(turn_s, 1),
                "answer_chars": len(answer),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
