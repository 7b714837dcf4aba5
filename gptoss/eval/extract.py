"""Answer extraction from free-form model output: integers (AIME) and option letters (multiple choice).

Both extractors are forgiving about formatting (LaTeX, Markdown, thousands separators, case) and strict
about ambiguity: when a response names two different answers with equal authority, they return ``None``
rather than guess.
"""

from __future__ import annotations

import re

__all__ = ["extract_integer", "extract_choice", "boxed_contents", "clean_latex"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")

# "answer is 17", "Answer: 17", "final answer = 17", "answer: **17**"
_ANSWER_MARKER = re.compile(r"\b(?:final\s+answer|answer)\b\s*(?:is|:|=|would\s+be|will\s+be)?\s*:?", re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])")


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` / ``\\fbox{...}``, braces matched (nesting allowed), in order.

    ``\\boxed 42`` (no braces, as some models write) yields the following token. An unclosed box yields
    the rest of the text.
    """
    out: list[str] = []
    i = 0
    while True:
        starts = [(text.find(cmd, i), cmd) for cmd in _BOX_COMMANDS]
        starts = [(pos, cmd) for pos, cmd in starts if pos >= 0]
        if not starts:
            return out
        pos, cmd = min(starts)
        j = pos + len(cmd)
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            depth, k = 0, j
            while k < len(text):
                if text[k] == "{":
                    depth += 1
                elif text[k] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            out.append(text[j + 1 : k])
            i = k + 1
        else:
            m = re.match(r"\S+", text[j:])
            if m and j > pos + len(cmd):
                out.append(m.group(0))
                i = j + m.end()
            else:
                i = j
        if i >= len(text):
            return out


def clean_latex(text: str) -> str:
    """Strip the LaTeX and Markdown noise that surrounds numbers: ``\\text{..}`` and friends keep their
    contents, ``$``, ``\\,``, ``\\!``, ``{,}`` and ``^\\circ`` go, ``\\dfrac`` becomes ``\\frac``."""
    t = text
    for _ in range(3):  # unwrap nested \text{\textbf{..}}
        t = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|operatorname|emph|mbox)\s*\{([^{}]*)\}", r"\1", t)
    t = t.replace("{,}", ",")  # 1{,}000
    t = re.sub(r"\\[,!;:> ]", "", t)  # thin spaces: 1\,000
    t = re.sub(r"\^\s*\{?\\circ\}?", "", t)
    t = t.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    t = re.sub(r"\\(?:left|right)\b", "", t)
    t = t.replace("$", "").replace("**", "").replace("__", "")
    return t


def _normalize_numbers(text: str) -> str:
    """``1,000,000`` -> ``1000000`` (only well-formed thousands groups; ``1, 2`` and ``3,4`` are left alone),
    and ``1 000`` written with a LaTeX thin space is already joined by :func:`clean_latex`."""
    return _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), text)


def _as_integer(token: str) -> int | None:
    try:
        value = float(token)
    except ValueError:
        return None
    if value != int(value):
        return None
    return int(token.split(".")[0]) if "." in token else int(token)


def _last_integer(text: str) -> int | None:
    """The last number in ``text`` if it is an integer (``42``, ``042``, ``42.0``); ``None`` for ``3.5``."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?", _normalize_numbers(clean_latex(text)))
    if not numbers:
        return None
    return _as_integer(numbers[-1])


def _integer_in_box(content: str) -> int | None:
    cleaned = clean_latex(content)
    if "\\frac" in cleaned or "\\sqrt" in cleaned or "/" in cleaned:
        return None  # a fraction or radical is not an integer answer
    return _last_integer(cleaned)


def extract_integer(text: str | None) -> int | None:
    """The integer a response gives as its answer, or ``None``.

    Priority: the last ``\\boxed{}`` (nested braces and LaTeX noise allowed; a non-integer box such as
    ``\\frac{1}{2}`` gives ``None``), then the last "answer is N" / "Answer: N", then the last number in
    the text. Thousands separators (``1,000``, ``1{,}000``, ``1\\,000``) are joined; leading zeros dropped.
    """
    if not text:
        return None
    boxes = [b for b in boxed_contents(text) if b.strip()]
    if boxes:
        return _integer_in_box(boxes[-1])
    markers = list(_ANSWER_MARKER.finditer(text))
    for marker in reversed(markers):
        tail = text[marker.end() : marker.end() + 80]
        tail = tail.split("\n\n")[0]
        first = re.match(r"\s*[\\$*({\[\s]*(?:\\text\{)?\s*(-?[\d,{}\\]*\d(?:\.\d+)?)", clean_latex(tail))
        if first:
            value = _last_integer(first.group(1))
            if value is not None:
                return value
    return _last_integer(text)


# ---------------------------------------------------------------------------------------------- letters

_CHOICE_MARKER = re.compile(
    r"\b(?:final\s+answer|correct\s+answer|answer|correct\s+(?:option|choice)|best\s+(?:option|choice|answer)|"
    r"(?:i\s+(?:choose|pick|select)))\b"
    r"(?:\s+(?:is|would\s+be|will\s+be|should\s+be))?\s*(?::|=|-)?\s*"
    r"(?:(?:option|choice|letter)\s+)?",
    re.IGNORECASE,
)


def _letter_after_marker(tail: str, letters: str) -> tuple[str | None, bool]:
    """(letter, ambiguous) for the text right after an answer marker."""
    segment = re.split(r"\n|(?<=[.!?])\s", tail, maxsplit=1)[0][:60]
    seg = clean_latex(segment)
    for inner in boxed_contents(seg):  # Answer: \boxed{C}
        seg = seg.replace(inner, f" {inner} ")
    seg = seg.replace("\\boxed", " ").replace("\\fbox", " ")
    m = re.match(r"[\s*_`'\"({\[]*([A-Za-z])(?![A-Za-z])([\s*_`'\")}\].,;:!]*)(.*)", seg)
    if not m:
        return None, False
    letter, closer, rest = m.group(1), m.group(2), m.group(3)
    if letter.upper() not in letters:
        return None, False
    if letter.islower():
        # "the answer is a tricky one": a lowercase letter counts only when set off: (b), b., b alone
        set_off = bool(closer.strip()) or not rest.strip() or segment.lstrip().startswith(("(", "[", "*"))
        if not set_off:
            return None, False
    others = {x.upper() for x in re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", rest) if x.upper() in letters}
    if re.match(r"\s*(?:or|and|/|,)\s*", rest) and others - {letter.upper()}:
        return None, True  # "Answer: A or B"
    return letter.upper(), False


def extract_choice(text: str | None, letters: str = "ABCD") -> str | None:
    """The option letter a response chooses (upper case), or ``None`` when absent or ambiguous.

    Understands "Answer: C", "The correct option is B.", "answer: (c)", "**D**", "(b)", ``\\boxed{A}``,
    "Answer: \\textbf{B}"; the last explicit answer wins. Without an explicit answer, letters standing
    alone (bold, parenthesized, or a line by themselves) count only if they all agree.
    """
    if not text:
        return None
    letters = letters.upper()
    # 1) \boxed{C}
    for content in reversed(boxed_contents(text)):
        c = clean_latex(content).strip().strip("(). ")
        if len(c) == 1 and c.upper() in letters:
            return c.upper()
    # 2) explicit answer markers, the last decisive one wins
    for marker in reversed(list(_CHOICE_MARKER.finditer(text))):
        letter, ambiguous = _letter_after_marker(text[marker.end() :], letters)
        if ambiguous:
            return None
        if letter:
            return letter
    # 3) letters set off on their own: **D**, (b), "C." or "C" alone on a line
    cls = f"[{letters}{letters.lower()}]"
    standalone = re.findall(
        rf"\*\*\(?({cls})\)?\*\*|(?<![\w(])\(({cls})\)(?!\w)|^\s*({cls})[.):]?\s*$",
        text,
        flags=re.MULTILINE,
    )
    found = {next(g for g in groups if g).upper() for groups in standalone}
    if len(found) == 1:
        return found.pop()
    return None
