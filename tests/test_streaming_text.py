"""A long streamed message costs linear work: the turn decoder and the Responses items append each delta
in its own length and join once (``text += delta`` on attributes would make a 100k-token message cost
quadratic time: 7.4 s against 0.39 s for the parser alone). Work is counted, not timed."""

from gptoss.conversation.openai_responses import TurnItems
from gptoss.conversation.turn import GrowingText, TurnDecoder


def test_growing_text_appends_and_joins_once():
    t = GrowingText("a")
    for piece in ("b", "", "cd"):
        t.append(piece)
    assert str(t) == "abcd" and len(t) == 4
    assert str(t) is str(t)  # cached until the next append
    t.append("e")
    assert str(t) == "abcde"


def test_a_long_message_is_streamed_with_linear_work(tokenizer, monkeypatch):
    joined = []
    real = GrowingText.__str__

    def counting(self):
        if self._joined is None:
            joined.append(len("".join(self._parts)))
        return real(self)

    monkeypatch.setattr(GrowingText, "__str__", counting)
    n = 20_000
    words = tokenizer.encode(" word" * n)[:n]
    stream = [
        tokenizer.special_id("<|channel|>"),
        *tokenizer.encode("final"),
        tokenizer.special_id("<|message|>"),
        *words,
        tokenizer.special_id("<|return|>"),
    ]
    decoder, items = TurnDecoder(tokenizer), TurnItems()
    for token in stream:
        decoder.feed(token)
        items.update(decoder.parser)
    text = tokenizer.decode(words)
    assert decoder.content == text and [i.text for i in items.items] == [text]
    # Every character is copied a bounded number of times, however many tokens the message had
    # (``+=`` on an attribute would have copied about n**2 / 2 * 5 characters).
    assert sum(joined) <= 3 * len(text), (sum(joined), len(text))
