"""Built-in synthetic task families of graded difficulty, generated deterministically from a seed.

Each family is a named data source whose answers are checkable exactly, so every feature can be
demonstrated and tested with no download. Prompts end with '=' and the answer follows directly.
"""
from __future__ import annotations

import random
from collections.abc import Callable

Example = tuple[str, str]  # (prompt, answer)
LETTERS = "abcdefgh"


def _addition(digits: int) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return f"{a}+{b}=", str(a + b)

    return make


def _reversal(length: int) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        word = "".join(rng.choice(LETTERS) for _ in range(length))
        return f"rev {word}=", word[::-1]

    return make


def _digit_sort(length: int) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        return f"sort {digits}=", "".join(sorted(digits))

    return make


def _counting(length: int) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        word = "".join(rng.choice(LETTERS[:4]) for _ in range(length))
        letter = rng.choice(LETTERS[:4])
        return f"count {letter} {word}=", str(word.count(letter))

    return make


TASK_FAMILIES: dict[str, Callable[[random.Random], Example]] = {
    "add_1d": _addition(1),
    "add_2d": _addition(2),
    "add_3d": _addition(3),
    "reverse_4": _reversal(4),
    "reverse_8": _reversal(8),
    "sort_4": _digit_sort(4),
    "sort_6": _digit_sort(6),
    "count_8": _counting(8),
}


def generate_split(source: str, n_train: int, n_test: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Distinct examples of one family, split so that no test prompt appears in train.

    Small families (add_1d has 100 prompts) give fewer train examples than asked: the test
    split is filled first, the rest goes to train.
    """
    if source not in TASK_FAMILIES:
        raise KeyError(f"unknown built-in task {source!r}; known: {', '.join(TASK_FAMILIES)}")
    make = TASK_FAMILIES[source]
    rng = random.Random(f"{source}:{seed}")
    seen: dict[str, str] = {}
    attempts = 0
    while len(seen) < n_train + n_test and attempts < 50 * (n_train + n_test):
        prompt, answer = make(rng)
        seen.setdefault(prompt, answer)
        attempts += 1
    examples = list(seen.items())
    return examples[n_test:], examples[:n_test]
