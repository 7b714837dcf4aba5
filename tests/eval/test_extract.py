"""Answer extraction on the formats models actually write."""

import pytest

from gptoss.eval.extract import boxed_contents, extract_choice, extract_integer


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"So the answer is $\boxed{42}$.", 42),
        (r"\boxed{ 042 }", 42),
        (r"\boxed{x = {12}}", 12),  # nested braces
        (r"\boxed{\text{1,000}}", 1000),  # \text{} noise and a thousands separator
        (r"\boxed{\textbf{\text{77}}}", 77),
        (r"\boxed{100\,000}", 100000),  # LaTeX thin space
        (r"\boxed{10^\circ}", 10),
        (r"\boxed {7}", 7),  # a space before the brace
        (r"\boxed 7 is my answer", 7),  # no braces at all
        (r"\fbox{33}", 33),
        (r"first \boxed{5}, then on reflection \boxed{7}", 7),  # multiple answers: the last
        (r"\boxed{\frac{1}{2}}", None),  # a fraction is not an integer answer
        (r"\boxed{\dfrac{3}{4}} although 5 appears later", None),  # the box decides
        ("The answer is 17.", 17),
        ("**Final answer:** 336", 336),
        ("Answer: 25\n\nWe double-checked 7 cases.", 25),  # the explicit answer beats the last number
        ("answer: $1{,}234$", 1234),
        ("There are 1,000 ways.", 1000),
        ("So we get 3, 4 and finally 5", 5),  # a list is not a thousands separator
        ("the remainder is 42.0", 42),
        ("It comes to -5", -5),
        ("x is 3.5", None),
        ("no numbers here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_integer(text, expected):
    assert extract_integer(text) == expected


def test_boxed_contents_matches_braces():
    assert boxed_contents(r"a \boxed{\frac{1}{2}} b \boxed{{3}} c \boxed{unclosed") == [
        r"\frac{1}{2}",
        "{3}",
        "unclosed",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: C", "C"),
        ("Answer:D", "D"),
        ("I think the right one is (b)", "B"),
        ("**D**", "D"),
        ("The correct option is B.", "B"),
        ("answer: c", "C"),  # lower case
        ("The answer is b.", "B"),
        ("answer is (a)", "A"),
        ("Final Answer: **B**", "B"),
        (r"Answer: \boxed{C}", "C"),
        (r"$\boxed{\text{D}}$", "D"),
        ("correct answer: d) 15 m/s", "D"),
        ("Considering the options...\nC\n", "C"),  # alone on the last line
        ("The answer is A. Wait, no: the answer is D.", "D"),  # the last explicit answer
        ("Answer: C. The answer is a bit subtle, though.", "C"),  # 'a' in prose is not an answer
        ("(A) is wrong and (C) is wrong, so Answer: B", "B"),
        # ambiguous or absent -> None
        ("It is either A or B", None),
        ("Answer: A or B", None),
        ("(A) looks right, but (C) also fits.", None),
        ("The answer is a tricky one.", None),
        ("Answer: E", None),  # not one of the letters
        ("I don't know.", None),
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_extract_choice_with_more_letters():
    assert extract_choice("Answer: (G)", letters="ABCDEFGHIJ") == "G"
    assert extract_choice("Answer: (G)", letters="ABCD") is None
