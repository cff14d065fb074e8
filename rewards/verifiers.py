"""Answer verifiers and shaping components. Each is a TRL-style reward function: completions and
row columns (as keyword lists) in, one float per completion out; extra options come from config.

The answer verifiers take `extract` (raw | gsm8k | boxed, see rewards/answers.py): the rule that
reads the final answer out of a completion first; a completion without one scores 0."""
from __future__ import annotations

import math
import re
import string

from rewards.answers import extract_answer

_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")
_MATH_MODE = re.compile(r"(?<!\\)\$")
_CHOICE_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*\(?([A-Z])\)?\b", re.IGNORECASE),
    re.compile(r"\(([A-Z])\)"),
    re.compile(r"^\s*([A-Z])[.):]?\s*$", re.MULTILINE),
]


def normalize(text: str, lowercase: bool = True, strip_punctuation: bool = False) -> str:
    """Whitespace-collapsed text, optionally lower-cased and without punctuation."""
    text = " ".join(str(text).split())
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation)).strip()
    return text


def _finals(completions: list[str], extract: str) -> list[str | None]:
    return [extract_answer(c, extract) for c in completions]


def exact_match(completions: list[str], answer: list[str], lowercase: bool = True, strip_punctuation: bool = False,
                extract: str = "raw", **_: list) -> list[float]:
    """1.0 when the (extracted) answer equals the reference answer after `normalize`, else 0.0."""
    return [float(c is not None and normalize(c, lowercase, strip_punctuation) == normalize(a, lowercase, strip_punctuation))
            for c, a in zip(_finals(completions, extract), answer, strict=True)]


def numeric_match(completions: list[str], answer: list[str], rel_tol: float = 1e-6, abs_tol: float = 1e-9,
                  extract: str = "raw", **_: list) -> list[float]:
    """1.0 when the last number in the (extracted) answer equals the reference number within tolerance."""
    scores = []
    for completion, reference in zip(_finals(completions, extract), answer, strict=True):
        found = _NUMBER.findall((completion or "").replace(",", ""))
        expected = _NUMBER.findall(str(reference).replace(",", ""))
        ok = bool(found and expected) and math.isclose(float(found[-1]), float(expected[-1]), rel_tol=rel_tol, abs_tol=abs_tol)
        scores.append(float(ok))
    return scores


def math_equivalence(completions: list[str], answer: list[str], extract: str = "raw", **_: list) -> list[float]:
    """1.0 when math-verify finds the completion's final answer equivalent to the reference.

    Handles LaTeX (\\boxed{}, \\frac, sets, intervals) and plain answers. With extract=raw
    math-verify finds the completion's final answer itself; an extracted one, and a reference
    without '$', are read whole as the answer (see _as_latex).
    math-verify's own signal-based timeouts are off: the scorer bounds every call itself.
    """
    from math_verify import parse, verify

    scores = []
    for completion, final, reference in zip(completions, _finals(completions, extract), answer, strict=True):
        gold = parse(_as_latex(str(reference)), parsing_timeout=None)
        pred = [] if final is None else parse(completion if extract == "raw" else _as_latex(final), parsing_timeout=None)
        scores.append(float(bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=None)))
    return scores


def _as_latex(answer: str) -> str:
    """A bare answer (a \\boxed{} label like \\dfrac{3}{4}, or 0.5) as $\\boxed{...}$, so math-verify reads all of it as
    the answer; unwrapped, it misreads bare LaTeX (\\pi as nothing, 3\\sqrt{2} as 3). Text with a math-mode '$' (not
    an escaped \\$ as in \\$18.90) is LaTeX already."""
    return answer if _MATH_MODE.search(answer) else f"$\\boxed{{{answer}}}$"


def multiple_choice(completions: list[str], answer: list[str], **_: list) -> list[float]:
    """1.0 when the chosen option letter ('answer: B', '(B)', a lone 'B') matches the reference letter."""
    return [float(_choice(c) == str(a).strip().upper()[:1]) for c, a in zip(completions, answer, strict=True)]


def _choice(completion: str) -> str | None:
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(completion)
        if found:
            return found[-1].upper()
    return None


def tag_format(completions: list[str], tag: str = "answer", **_: list) -> list[float]:
    """1.0 when the completion contains exactly one non-empty <tag>...</tag> block."""
    pattern = re.compile(rf"<{re.escape(tag)}>(.+?)</{re.escape(tag)}>", re.DOTALL)
    return [float(len(pattern.findall(c)) == 1) for c in completions]


def length_penalty(completions: list[str], max_chars: int = 1000, **_: list) -> list[float]:
    """0 up to max_chars characters, then linearly down to -1 at twice that length."""
    return [-min(1.0, max(0, len(c) - max_chars) / max_chars) for c in completions]
