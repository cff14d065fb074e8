"""Each verifier on true and false cases, including tricky math equivalences."""
import pytest

from rewards.verifiers import exact_match, length_penalty, math_equivalence, multiple_choice, numeric_match, tag_format


def test_exact_match_options():
    assert exact_match(["Paris."], ["paris"]) == [0.0]
    assert exact_match(["Paris."], ["paris"], strip_punctuation=True) == [1.0]
    assert exact_match(["ABC"], ["abc"], lowercase=False) == [0.0]


def test_numeric_tolerance():
    assert numeric_match(["3.1416"], ["3.14159"], rel_tol=1e-4) == [1.0]
    assert numeric_match(["3.2"], ["3.14159"], rel_tol=1e-4) == [0.0]
    assert numeric_match(["-2e3"], ["-2000"]) == [1.0]


@pytest.mark.parametrize("completion, answer, expected", [
    ("The answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("so x = \\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 1.0),
    ("$(x+1)^2$", "$x^2+2x+1$", 1.0),
    ("\\boxed{\\dfrac{6}{4}}", "1.5", 1.0),
    ("the result is 12", "12", 1.0),
    ("\\boxed{[1, 3)}", "$[1,3)$", 1.0),
    ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
    ("\\boxed{x^2 + 1}", "$(x+1)^2$", 0.0),
    ("no idea", "7", 0.0),
])
def test_math_equivalence(completion, answer, expected):
    assert math_equivalence([completion], [answer]) == [expected]


@pytest.mark.parametrize("completion, expected", [
    ("The answer is (B).", 1.0), ("B", 1.0), ("answer: b", 1.0), ("I think (C)", 0.0), ("maybe", 0.0),
])
def test_multiple_choice(completion, expected):
    assert multiple_choice([completion], ["B"]) == [expected]


def test_format_and_length_components():
    assert tag_format(["<answer>4</answer>", "4", "<answer></answer>", "<answer>1</answer><answer>2</answer>"]) == [1, 0, 0, 0]
    assert tag_format(["<final>x</final>"], tag="final") == [1.0]
    assert length_penalty(["a" * 10, "a" * 15, "a" * 40], max_chars=10) == [0.0, -0.5, -1.0]
