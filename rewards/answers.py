"""Final-answer extraction for common formats, shared by the dataset loader (reference answers) and
the verifiers (completions), so a label and a completion are read by the same rule."""
from __future__ import annotations

import re

# '####', optional ':' or markdown bold, a sign before or after '$', a plain decimal with thousands commas; `rest`
# catches a number that goes on (3/4, 1e5, 1 000, 1.2.3), which would otherwise be misread as its first part
_GSM8K = re.compile(r"####[\s:*]*(?:\$\s*)?(?P<sign>[-\u2212+]?)\s*(?:\$\s*)?(?P<number>(?:\d[\d,]*)?\.?\d+)"
                    r"(?P<rest>\s*/|[eE][-+]?\d|[^\S\n]+\d|\.\d)?")
# \boxed{...} or \fbox{...} (braces counted after the match), or a brace-less \boxed 5 (a token up to space or $)
_BOXED = re.compile(r"\\(?:boxed|fbox)(?:\s*\{|\s+(?P<token>[^\s{$]+))")

ANSWER_FORMATS = {"raw": "the whole text", "gsm8k": "'#### <number>'", "boxed": "'\\boxed{...}'"}  # rule -> what it reads


def gsm8k_answer(text: str) -> str | None:
    """The number after the last '####' followed by one (GSM8K's final-answer marker), as a plain decimal:
    no thousands commas or '+', '-' for a Unicode minus. None when that number is not a plain decimal
    (a fraction, an exponent, digits split by a space): no reading beats reading 3/4 as 3."""
    found = list(_GSM8K.finditer(text))
    if not found or found[-1]["rest"]:
        return None
    last = found[-1]
    return ("-" if last["sign"] in ("-", "\u2212") else "") + last["number"].replace(",", "")


def boxed_answer(text: str) -> str | None:
    """The contents of the last \\boxed{...} or \\fbox{...} (nested braces included), or the token of a last
    brace-less \\boxed 5, as Hendrycks' MATH grader reads them; None when absent, empty or unbalanced."""
    found = list(_BOXED.finditer(text))
    if not found:
        return None
    if found[-1]["token"]:
        return found[-1]["token"]
    depth, start = 1, found[-1].end()
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip() or None
    return None


def extract_answer(text: str, rule: str) -> str | None:
    """The final answer of `text` under `rule` (one of ANSWER_FORMATS; raw = the whole text), or None."""
    if rule == "raw":
        return text
    if rule == "gsm8k":
        return gsm8k_answer(text)
    if rule == "boxed":
        return boxed_answer(text)
    raise ValueError(f"unknown answer format {rule!r}; use one of {', '.join(ANSWER_FORMATS)}")
