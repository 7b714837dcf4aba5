"""Constrained decoding through llguidance: a Lark grammar becomes a per-request logits processor.

Each request gets its own matcher; before every sampling step it consumes the tokens sampled since the
last step and masks out every token the grammar does not allow next.
"""

from __future__ import annotations

import functools

import torch

from gptoss.errors import GptossError
from gptoss.tokenizer import Tokenizer


@functools.lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer: Tokenizer):
    import llguidance

    enc = tokenizer.encoding
    # o200k_harmony names id 200018 twice (<|endofprompt|> and <|reserved_200018|>); llguidance wants one name an id.
    specials = {name: i for name, i in enc._special_tokens.items() if name != "<|endofprompt|>"}
    return llguidance.LLTokenizer.from_tiktoken(
        encoder=enc._mergeable_ranks,
        special_tokens=specials,
        pattern=enc._pat_str,
        eos_token=Tokenizer.RETURN,
        n_vocab=tokenizer.vocab_size,
    )


@functools.lru_cache(maxsize=256)
def compile_lark(lark: str) -> str:
    """Translate and validate a Lark grammar once; raises GptossError with llguidance's message."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise GptossError(f"invalid grammar: {error.strip().splitlines()[0]}")
    return grammar


def json_schema_error(schema: dict) -> str | None:
    """None when ``schema`` compiles to a grammar; otherwise what is wrong with it (for a 400 answer)."""
    import json

    import llguidance

    try:
        error = llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema)))
    except (ValueError, TypeError) as exc:
        return str(exc)
    return error.strip().splitlines()[0] if error else None


class GrammarConstraint:
    """A logits processor (see :class:`~gptoss.engine.sampling.LogitsProcessor`) enforcing a grammar."""

    def __init__(self, tokenizer: Tokenizer, lark: str):
        import llguidance

        self.tokenizer = tokenizer
        self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer), compile_lark(lark), log_level=0)
        if self.matcher.is_error():
            raise GptossError(f"invalid grammar: {self.matcher.get_error()}")
        self.consumed = 0
        self.failed: str | None = None

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return logits
        for token in output_ids[self.consumed :]:
            if not self.matcher.consume_token(token):
                self.failed = self.matcher.get_error() or f"token {token} rejected"
                return logits
        self.consumed = len(output_ids)
        if self.matcher.is_stopped():
            return logits
        mask = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        allowed = _unpack_bits(mask, logits.numel()).to(logits.device)
        return logits.masked_fill(~allowed, float("-inf"))


def _unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    shifts = torch.arange(32, dtype=torch.int32)
    bits = (words[:, None] >> shifts[None, :]) & 1
    return bits.reshape(-1)[:n].bool()
