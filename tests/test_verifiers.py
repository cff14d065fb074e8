"""Each verifier on true and false cases, including tricky math equivalences."""
import pytest

from rewards.answers import boxed_answer, extract_answer, gsm8k_answer
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


# MATH-style labels (the contents of \boxed{...}, as data.answer_format=boxed gives them) and a wrong answer each
MATH_ANSWERS = [
    (r"\dfrac{3}{4}", r"\frac{4}{3}"), (r"\frac{\sqrt3}{2}", r"\frac{\sqrt{2}}{2}"), (r"3\sqrt{2}", "3"), (r"\sqrt{2}", "2"),
    (r"\pi", r"\frac{\pi}{2}"), (r"2\pi", "2"), (r"\left( 3, \frac{\pi}{2} \right)", "3"), (r"(3,\frac{\pi}{2})", r"(3,\pi)"),
    (r"(-\infty, 2]", r"(-\infty, 2)"), (r"\text{(C)}", r"\text{(D)}"), (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
    r"\begin{pmatrix} 1 \\ 3 \end{pmatrix}"), (r"\{1,2\}", r"\{1,3\}"), ("5", "6"), ("-5", "5"), ("0.5", "0.25"),
    (r"-\frac{1}{2}", r"\frac{1}{2}"), (r"10\%", r"20\%"), (r"\$18.90", r"\$19.80"), (r"x^2+7x+10", r"x^2+7x+12"),
]


@pytest.mark.parametrize("extract", ["raw", "boxed"])
@pytest.mark.parametrize("label, wrong", MATH_ANSWERS)
def test_math_equivalence_on_bare_latex_labels(label, wrong, extract):
    completions = [f"So the answer is $\\boxed{{{answer}}}$." for answer in (label, wrong)]
    assert math_equivalence(completions, [label, label], extract=extract) == [1.0, 0.0]


@pytest.mark.parametrize("completion, expected", [
    ("The answer is (B).", 1.0), ("B", 1.0), ("answer: b", 1.0), ("I think (C)", 0.0), ("maybe", 0.0),
])
def test_multiple_choice(completion, expected):
    assert multiple_choice([completion], ["B"]) == [expected]


def test_format_and_length_components():
    assert tag_format(["<answer>4</answer>", "4", "<answer></answer>", "<answer>1</answer><answer>2</answer>"]) == [1, 0, 0, 0]
    assert tag_format(["<final>x</final>"], tag="final") == [1.0]
    assert length_penalty(["a" * 10, "a" * 15, "a" * 40], max_chars=10) == [0.0, -0.5, -1.0]


@pytest.mark.parametrize("text, expected", [
    ("She pays 1,000 + 234.\n#### 1,234", "1234"), ("#### -3", "-3"), ("#### $12.50", "12.50"), ("#### $1,000", "1000"),
    ("#### 1,234.50", "1234.50"), ("#### 1\nthen #### 2", "2"), ("#### 5 then ####", "5"), ("the answer is 42", None),
    ("#### **18**", "18"), ("####: 18", "18"), ("#### $5", "5"), ("#### -$5", "-5"), ("#### $-5", "-5"), ("#### +5", "5"),
    ("#### \u22125", "-5"), ("#### 5.", "5"), ("#### 10%", "10"), ("#### 18 apples\n2. next", "18"),
    # not plain decimals: no reading rather than a wrong one
    ("#### 3/4", None), ("#### 1e5", None), ("#### 1 000", None), ("#### 1.2.3", None), ("#### 5\n#### 3/4", None),
])
def test_gsm8k_answer(text, expected):
    assert gsm8k_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"), ("\\boxed{1} or \\boxed{ \\{a, \\sqrt{b^{2}}\\} }", "\\{a, \\sqrt{b^{2}}\\}"),
    ("\\boxed{\\frac{1}{2}", None), ("1/2", None), ("$\\fbox{3}$", "3"), ("\\boxed 5", "5"), ("$\\boxed 5$.", "5"),
    ("\\boxed {x}", "x"), ("\\boxed{}", None), ("\\boxed{ }", None), ("\\boxed{1} then \\fbox{2}", "2"), ("\\boxedx", None),
])
def test_boxed_answer(text, expected):
    assert boxed_answer(text) == expected


def test_unknown_extraction_rule_lists_the_rules():
    with pytest.raises(ValueError, match="unknown answer format 'xml'; use one of raw, gsm8k, boxed"):
        extract_answer("x", "xml")


@pytest.mark.parametrize("verifier", [exact_match, numeric_match, math_equivalence])
def test_verifiers_read_the_gsm8k_final_answer(verifier):
    completions = ["3 + 39 = 42\n#### 42", "3 + 38 = 41\n#### 41", "it is 42", "#### 1,234"]
    assert verifier(completions, ["42", "42", "42", "1234"], extract="gsm8k") == [1.0, 0.0, 0.0, 1.0]


def test_math_reads_the_boxed_answer():
    completions = ["\\boxed{1} is wrong, \\boxed{\\frac{1}{2}}", "\\boxed{\\frac{1}{3}}", "1/2"]
    assert math_equivalence(completions, ["0.5"] * 3, extract="boxed") == [1.0, 0.0, 0.0]


def test_extraction_rule_is_a_reward_arg():
    from rewards.scoring import Scorer

    scorer = Scorer([("math", 1.0, {"extract": "gsm8k"}), ("exact_match", 1.0, {"extract": "gsm8k"})], 5, -1.0)
    scores = scorer.score(["so 6 * 7 = 42\n#### 42", "#### 24"], {"answer": ["42", "42"]})
    assert scores.total == [2.0, 0.0] and scores.errors == 0
