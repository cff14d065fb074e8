"""Spec §2.7 worked examples E6-E7 and the tie-break rule."""
import pytest
import torch

from pipeline.core_algos import grpo_advantage
from rewards.unlikeliness import apply_unlikeliness, ascending_ranks, unlikeliness_factors

R6 = [1, 1, 0, 1, 0, 0, 1, 0]
L6 = [-0.2, -0.9, -0.5, -0.4, -1.2, -0.3, -0.7, -1.0]


def _advantages(rewards, logprobs, convention="code"):
    correct = [r == 1 for r in rewards]
    modified, factors = apply_unlikeliness(rewards, rewards, correct, logprobs, [0] * len(rewards), 0.25, convention)
    return modified, factors, grpo_advantage(torch.tensor(modified, dtype=torch.float64), [0] * len(rewards)).tolist()


def test_e6_code_convention():
    assert ascending_ranks(L6) == [7, 2, 4, 5, 0, 6, 3, 1]
    modified, factors, adv = _advantages(R6, L6)
    assert factors == pytest.approx([0.78125, 0.9375, 0.875, 0.84375, 1.0, 0.8125, 0.90625, 0.96875])
    assert modified == pytest.approx([0.78125, 0.9375, 0, 0.84375, 0, 0, 0.90625, 0])
    assert adv == pytest.approx([0.7464494, 1.0819323, -0.9309650, 0.8806425, -0.9309650, -0.9309650, 1.0148357, -0.9309650], abs=1e-5)


def test_e6_paper0_convention():
    modified, factors, adv = _advantages(R6, L6, "paper0")
    assert factors == pytest.approx([0.75, 0.90625, 0.84375, 0.8125, 0.96875, 0.78125, 0.875, 0.9375])
    assert adv == pytest.approx([0.7392845, 1.0871831, -0.9306288, 0.8784440, -0.9306288, -0.9306288, 1.0176034, -0.9306288], abs=1e-5)


def test_e7_all_correct_group_gets_nonzero_advantages_under_both_conventions():
    for convention, expected in (("code", [0.8125, 0.9375, 0.875, 1.0]), ("paper0", [0.75, 0.875, 0.8125, 0.9375])):
        modified, _, adv = _advantages([1, 1, 1, 1], [-0.1, -0.5, -0.3, -0.9], convention)
        assert modified == pytest.approx(expected)
        assert adv == pytest.approx([-1.1618806, 0.3872935, -0.3872935, 1.1618806], abs=1e-5)


def test_ties_are_broken_by_sample_index_and_groups_by_id():
    assert ascending_ranks([-0.5, -0.5, -0.7, -0.5]) == [1, 2, 0, 3]
    factors = unlikeliness_factors([-1.0, -3.0, -2.0, -1.0], ["b", "a", "b", "a"], 0.5)
    assert factors == pytest.approx([1 - 0.5 * 1 / 2, 1.0, 1.0, 1 - 0.5 * 1 / 2])


def test_unknown_rank_convention_is_rejected():
    with pytest.raises(ValueError, match="code"):
        unlikeliness_factors([0.0], [0], 0.25, "paper1")


def test_only_the_correctness_term_of_correct_samples_is_scaled():
    """With +-1 rewards the most likely wrong answer must not be penalised less than a rare one (issue 12.4)."""
    plus_minus = [1 if r else -1 for r in R6]
    modified, _ = apply_unlikeliness(plus_minus, plus_minus, [r == 1 for r in R6], L6, [0] * 8, 0.25)
    assert modified == pytest.approx([0.78125, 0.9375, -1, 0.84375, -1, -1, 0.90625, -1])
    # a correct answer with a format bonus: only the correctness term (1.0 of 1.2) shrinks
    modified, _ = apply_unlikeliness([1.2, 0.2], [1.0, 0.0], [True, False], [-0.1, -0.5], [0, 0], 0.5)
    assert modified == pytest.approx([1.2 - 0.25, 0.2])
