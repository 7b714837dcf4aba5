"""What a long streamed message costs on the Responses path, as JSON: the Harmony parser alone, with the
turn decoder, and with the Responses output items (TurnItems), for one final message of N tokens.

    python3 benchmarks/streaming_text.py [--tokens 100000]

Measured side by side in one run; the ratios to the parser alone are the point (linear work keeps them
constant as N grows; ``+=`` on attributes made them grow with N).
"""

from __future__ import annotations

import argparse
import json
import time

from gptoss.conversation.openai_responses import TurnItems
from gptoss.conversation.turn import TurnDecoder
from gptoss.harmony import Role, StreamParser
from gptoss.tokenizer import Tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100_000)
    args = p.parse_args()
    tok = Tokenizer.load()
    words = tok.encode(" word" * args.tokens)[: args.tokens]
    stream = [
        tok.special_id("<|channel|>"),
        *tok.encode("final"),
        tok.special_id("<|message|>"),
        *words,
        tok.special_id("<|return|>"),
    ]

    def run(decoder: bool, items: bool) -> float:
        d = TurnDecoder(tok)
        parser = d.parser if decoder else StreamParser(tok, role=Role.ASSISTANT)
        cutter = TurnItems()
        start = time.perf_counter()
        for token in stream:
            d.feed(token) if decoder else parser.process(token)
            if items:
                cutter.update(parser)
        return time.perf_counter() - start

    parser, decoder, items = run(False, False), run(True, False), run(True, True)
    print(
        json.dumps(
            {
                "tokens": args.tokens,
                "parser_s": round(parser, 3),
                "parser_decoder_s": round(decoder, 3),
                "parser_decoder_items_s": round(items, 3),
                "items_over_parser": round(items / parser, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
