"""The unlikeliness reward (Rewarding the Unlikely, spec §2.2): rare correct samples earn more.

Within each group, samples are ranked by their per-token mean log-prob under the behaviour
policy (ascending: rank 0 = least likely), over the whole group, ties broken by sample index.
The paper scales R(x, y) = 1[y correct] by 1 - beta_rank * rank / G; with richer rewards only that
correctness term of a correct sample is scaled: wrong answers, penalties and any other term keep
their value, so the most likely wrong answer is never penalised less than a rare one.
"""
from __future__ import annotations

from collections.abc import Sequence

RANK_CONVENTIONS = ("code", "paper0")


def ascending_ranks(values: Sequence[float]) -> list[int]:
    """0 for the smallest value; equal values ranked by their index (a stable sort)."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    ranks = [0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def unlikeliness_factors(mean_logprobs: Sequence[float], group_ids: Sequence, beta_rank: float,
                         rank_convention: str = "code") -> list[float]:
    """Per-sample factor 1 - beta_rank * rank / G (code), or one beta_rank / G lower (paper0)."""
    if rank_convention not in RANK_CONVENTIONS:
        raise ValueError(f"rank_convention must be one of {RANK_CONVENTIONS}, got {rank_convention!r}")
    shift = 1 if rank_convention == "paper0" else 0
    factors = [1.0] * len(mean_logprobs)
    for gid in dict.fromkeys(group_ids):
        members = [i for i, g in enumerate(group_ids) if g == gid]
        size = len(members)
        for i, rank in zip(members, ascending_ranks([mean_logprobs[i] for i in members])):
            factors[i] = 1.0 - beta_rank * (rank + shift) / size
    return factors


def apply_unlikeliness(rewards: Sequence[float], correctness: Sequence[float], correct: Sequence[bool],
                       mean_logprobs: Sequence[float], group_ids: Sequence, beta_rank: float,
                       rank_convention: str = "code") -> tuple[list[float], list[float]]:
    """Rewards with each correct sample's correctness term scaled by its factor, and the factors.

    correctness[i] is the part of rewards[i] earned by being correct (with a 0/1 verifier: all of it).
    """
    factors = unlikeliness_factors(mean_logprobs, group_ids, beta_rank, rank_convention)
    modified = [r - (1.0 - f) * c if ok else r for r, c, ok, f in zip(rewards, correctness, correct, factors)]
    return modified, factors
