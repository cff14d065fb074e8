"""Answer verifiers. Each is a TRL-style reward function: completions and row fields in, floats out."""
from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


def normalize(text: str) -> str:
    """Whitespace-collapsed, lower-cased text: the comparison exact match makes."""
    return " ".join(str(text).split()).lower()


def exact_match(completions: list[str], answer: list[str], **_: list) -> list[float]:
    """1.0 when the completion equals the reference answer after `normalize`, else 0.0."""
    return [float(normalize(c) == normalize(a)) for c, a in zip(completions, answer, strict=True)]


def numeric_match(completions: list[str], answer: list[str], rel_tol: float = 1e-6, **_: list) -> list[float]:
    """1.0 when the last number in the completion equals the reference number (relative tolerance)."""
    scores = []
    for completion, reference in zip(completions, answer, strict=True):
        found = _NUMBER.findall(completion.replace(",", ""))
        expected = _NUMBER.findall(str(reference).replace(",", ""))
        ok = bool(found and expected) and math.isclose(float(found[-1]), float(expected[-1]), rel_tol=rel_tol, abs_tol=1e-12)
        scores.append(float(ok))
    return scores
