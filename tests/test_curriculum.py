"""Spec §3.6 worked examples E8-E12, invariants of the UCB curriculum, and exact state restore."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from curricula import make_sampler
from curricula.ucb import UCBSampler, softmax, ucb_scores
from pipeline.config import CurriculumConfig
from pipeline.core_algos import grpo_advantage


def test_e8_ucb_and_softmax():
    scores = ucb_scores([0.2, 0.8, 0.5], [700, 700, 648])
    assert scores == pytest.approx([0.347496, 0.947496, 0.653291], abs=1e-5)
    assert softmax(scores, 0.1) == pytest.approx([0.002349, 0.947655, 0.049996], abs=1e-5)


def test_e9_unvisited_source_takes_everything():
    scores = ucb_scores([0.3, 0.6, 0.0], [1600, 800, 0])
    assert scores == pytest.approx([0.398608, 0.739409, 3.945539], abs=1e-5)
    assert softmax(scores, 0.1)[2] == pytest.approx(1.0, abs=1e-6)


def test_e10_all_zero_start_is_uniform():
    scores = ucb_scores([0.0] * 3, [0] * 3)
    assert scores == pytest.approx([1.17741] * 3, abs=1e-5)
    assert softmax(scores, 0.1) == pytest.approx([1 / 3] * 3)
    assert UCBSampler({"a": 5, "b": 5, "c": 5}, seed=0).probabilities() == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


@pytest.mark.parametrize("k, expected", [(0, 0), (2, 0.640433), (4, 0.838524), (6, 0.937498), (8, 0.968244),
                                         (10, 0.937498), (12, 0.838524), (14, 0.640433), (16, 0)])
def test_e11_learnability_of_binary_groups(k, expected):
    rewards = torch.tensor([1.0] * k + [0.0] * (16 - k), dtype=torch.float64)
    sampler = UCBSampler({"s": 10}, seed=0)
    sampler.update(["s"] * 16, grpo_advantage(rewards, [0] * 16).tolist())
    assert sampler.learnability()["s"] == pytest.approx(expected, abs=1e-5)
    p = k / 16
    assert expected == pytest.approx(2 * math.sqrt(p * (1 - p)) * math.sqrt(15 / 16), abs=1e-5)


def test_e12_window_keeps_the_last_300_responses():
    sampler = UCBSampler({"s": 10}, seed=0)
    sampler.update(["s"] * 200, [0.5] * 200)
    sampler.update(["s"] * 200, [-1.0] * 200)
    assert sampler.learnability()["s"] == pytest.approx(0.833333, abs=1e-6)
    assert sampler.counts["s"] == 400


def test_sources_absent_from_a_batch_are_unchanged():
    sampler = UCBSampler({"a": 5, "b": 5}, seed=0)
    sampler.update(["a", "b"], [0.4, 0.8])
    before = (sampler.learnability()["b"], sampler.counts["b"])
    sampler.update(["a", "a"], [1.0, 1.0])
    assert (sampler.learnability()["b"], sampler.counts["b"]) == before


def test_validation_update_only_with_the_parity_flag():
    off, on = UCBSampler({"a": 5}, seed=0), UCBSampler({"a": 5}, seed=0, update_on_validation=True)
    off.observe_validation({"a": 2.0})
    on.observe_validation({"a": 2.0})
    assert off.counts["a"] == 0 and on.counts["a"] == 1 and on.learnability()["a"] == 2.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(0, 5000)), min_size=1, max_size=8), st.floats(0.01, 2.0))
def test_probabilities_sum_to_one_and_unvisited_sources_get_the_largest_bonus(arms, temperature):
    mus, counts = [a for a, _ in arms], [n for _, n in arms]
    probs = softmax(ucb_scores(mus, counts), temperature)
    assert sum(probs) == pytest.approx(1.0) and all(p >= 0 for p in probs)
    bonus = [s - mu for s, mu in zip(ucb_scores(mus, counts), mus)]
    for n, b in zip(counts, bonus):
        if n == 0:
            assert b == pytest.approx(max(bonus))


def test_state_restores_exactly():
    sampler = UCBSampler({"a": 50, "b": 50, "c": 50}, seed=3)
    for _ in range(3):
        picks = sampler.sample(8)
        sampler.update([s for s, _ in picks], [0.1 * i for i in range(8)])
    clone = UCBSampler({"a": 50, "b": 50, "c": 50}, seed=99)
    clone.load_state_dict(sampler.state_dict())
    assert clone.sample(20) == sampler.sample(20) and clone.probabilities() == sampler.probabilities()


def test_factory_builds_each_sampler_and_checks_weights():
    sizes = {"a": 10, "b": 30}
    assert make_sampler(CurriculumConfig(name="uniform"), sizes, 0).probabilities() == {"a": 0.25, "b": 0.75}
    assert make_sampler(CurriculumConfig(name="fixed", weights={"a": 1, "b": 1}), sizes, 0).probabilities() == {"a": 0.5, "b": 0.5}
    assert isinstance(make_sampler(CurriculumConfig(name="ucb"), sizes, 0), UCBSampler)
    with pytest.raises(ValueError, match="unknown source"):
        make_sampler(CurriculumConfig(name="fixed", weights={"zzz": 1}), sizes, 0)
    with pytest.raises(ValueError, match="needs curriculum.weights"):
        make_sampler(CurriculumConfig(name="fixed"), sizes, 0)
