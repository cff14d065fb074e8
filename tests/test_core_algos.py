"""The spec's worked examples (shared/specs/ALGORITHMS.md §1.6) and invariants of the pure functions."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import core_algos as ca

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


@pytest.mark.parametrize("rewards, expected", [
    ([1, 0, 0, 1], [0.8660239, -0.8660239, -0.8660239, 0.8660239]),
    ([1, 1, 1, 1], [0, 0, 0, 0]),
    ([1, 0, 0, 0], [1.499997, -0.499999, -0.499999, -0.499999]),
    ([1, 1, 1, 0], [0.499999, 0.499999, 0.499999, -1.499997]),
])
def test_e1_grpo_advantage_verl(rewards, expected):
    adv = ca.grpo_advantage(T(*rewards), [7] * 4, eps=1e-6)
    assert torch.allclose(adv, T(*expected), atol=1e-5)


def test_e1_trl_eps_and_dr_grpo():
    assert torch.allclose(ca.grpo_advantage(T(1, 0, 0, 1), [0] * 4, eps=1e-4), T(0.8658754, -0.8658754, -0.8658754, 0.8658754), atol=1e-6)
    assert torch.allclose(ca.dr_grpo_advantage(T(1, 0, 0, 1), [0] * 4), T(0.5, -0.5, -0.5, 0.5))


def test_groups_are_found_by_id_not_position():
    rewards = T(1, 5, 0, 5, 0, 1)
    ids = ["a", "b", "a", "b", "a", "a"]
    adv = ca.grpo_advantage(rewards, ids)
    assert torch.allclose(adv[[0, 2, 4, 5]], ca.grpo_advantage(T(1, 0, 0, 1), ["a"] * 4))
    assert torch.all(adv[[1, 3]] == 0)


def test_singleton_group_uses_mean_zero_std_one():
    assert torch.allclose(ca.grpo_advantage(T(0.7), [3]), T(0.7 / (1 + 1e-6)))


@pytest.mark.parametrize("adv, ratio, lo, hi, dual, expected", [
    (1, 1.3, 0.2, 0.2, None, -1.2),
    (1, 1.3, 0.2, 0.28, None, -1.28),
    (1, 1.1, 0.2, 0.2, None, -1.1),
    (-1, 0.7, 0.2, 0.2, None, 0.8),
    (-1, 1.3, 0.2, 0.2, None, 1.3),
    (-1, 5.0, 0.2, 0.2, 3.0, 3.0),
])
def test_e2_clipped_token_loss(adv, ratio, lo, hi, dual, expected):
    loss, _ = ca.clipped_policy_loss(T(math.log(ratio)), T(0.0), T(adv), lo, hi, dual)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_e2_clipped_token_has_zero_gradient():
    logp = T(math.log(1.3)).requires_grad_()
    loss, info = ca.clipped_policy_loss(logp, T(0.0), T(1.0))
    loss.backward()
    assert logp.grad.item() == 0 and info["clipped"].item() == 1


def test_e3_kl_estimators():
    x, y = T(-1.0), T(-1.5)
    assert ca.kl_penalty(x, y, "k1").item() == pytest.approx(0.5)
    assert ca.kl_penalty(x, y, "k2").item() == pytest.approx(0.125)
    assert ca.kl_penalty(x, y, "k3").item() == pytest.approx(0.1065307, abs=1e-6)
    assert ca.kl_penalty(y, x, "k3").item() == pytest.approx(0.1487213, abs=1e-6)
    assert ca.kl_penalty(x, x, "k3").item() == 0


def test_straight_through_kl_has_k3_value_and_k2_gradient():
    x = T(-1.0).requires_grad_()
    value = ca.kl_penalty(x, T(-1.5), "k3+")
    value.backward()
    assert value.item() == pytest.approx(0.1065307, abs=1e-6)
    assert x.grad.item() == pytest.approx(0.5)  # d/dx of 0.5 (x - y)^2


E4_LOSS = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
E4_MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", 10 / 6), ("seq-mean-token-mean", 1.5), ("seq-mean-token-sum", 5.0),
    ("token-sum-norm", 2.5), ("seq-mean-token-sum-norm", 1.25),
])
def test_e4_aggregation(mode, expected):
    value = ca.LOSS_AGGREGATIONS[mode](E4_LOSS, E4_MASK, total_tokens=6.0, total_seqs=2.0, max_len=4.0)
    assert value.item() == pytest.approx(expected, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=2, max_size=16), st.floats(1e-8, 1e-3))
def test_all_equal_group_gives_exact_zero_never_nan(bits, eps):
    rewards = torch.full((len(bits),), float(bits[0]))
    adv = ca.grpo_advantage(rewards, [0] * len(bits), eps=eps)
    assert torch.all(adv == 0) and not torch.isnan(adv).any()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**16), st.sampled_from(list(ca.LOSS_AGGREGATIONS)))
def test_aggregation_does_not_depend_on_micro_batch_split(split, seed, mode):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(6, 5, generator=gen)
    mask = (torch.rand(6, 5, generator=gen) > 0.3).float()
    mask[:, 0] = 1
    totals = dict(total_tokens=mask.sum().item(), total_seqs=6.0, max_len=5.0)
    whole = ca.LOSS_AGGREGATIONS[mode](loss, mask, **totals)
    parts = sum(ca.LOSS_AGGREGATIONS[mode](l, m, **totals) for l, m in zip(loss.split(split), mask.split(split)))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5, abs=1e-6)
