"""Spec §4.5 worked example E13, the limit property, read-outs and candidate deduplication."""
import math

import numpy as np
import pytest

from rewards.consensus import dedupe_candidates, equilibrium_ranking, log_normalize

GEN = np.log([[0.6, 0.4], [0.5, 0.5]])  # [v, y], v in (correct, incorrect)
DISC = np.log([[0.3, 0.7], [0.8, 0.2]])  # [y, v]

E13 = {
    1: ([0.494816, 0.505184], [0.506188, 0.493812], [0.499140, 0.502194]),
    2: ([0.495823, 0.504177], [0.506165, 0.493835], [0.496933, 0.505709]),
    10: ([0.501000, 0.499000], [0.508214, 0.491786], [0.481006, 0.531212]),
    100: ([0.427880, 0.572120], [0.620869, 0.379131], [0.352706, 0.706131]),
    1000: ([0.039892, 0.960108], [0.972063, 0.027937], [0.019142, 0.988186]),
    5000: ([0.014183, 0.985817], [0.990424, 0.009576], [0.004936, 0.997084]),
}


@pytest.mark.parametrize("t", sorted(E13))
def test_e13_iterates(t):
    eq = equilibrium_ranking(GEN, DISC, iterations=t)
    g_correct, g_incorrect, d_correct = E13[t]
    assert eq.pi_g[0] == pytest.approx(g_correct, abs=1e-5)
    assert eq.pi_g[1] == pytest.approx(g_incorrect, abs=1e-5)
    assert eq.pi_d[:, 0] == pytest.approx(d_correct, abs=1e-5)


def test_e13_read_outs_resolve_towards_the_discriminator():
    eq = equilibrium_ranking(GEN, DISC)
    assert (eq.er_g, eq.er_d) == (1, 1)  # y2 under both
    assert int(np.argmax(GEN[0])) == 0 and int(np.argmax(DISC[:, 0])) == 1  # G alone: y1, D alone: y2


def test_limit_is_the_kl_regularised_best_response_to_the_average_play():
    lam = 0.1
    eq = equilibrium_ranking(GEN, DISC, iterations=20000)
    pi_g1 = np.exp(log_normalize(GEN, axis=1))
    limit = pi_g1 * np.exp(eq.q_g / lam)
    limit /= limit.sum(axis=1, keepdims=True)
    assert eq.pi_g == pytest.approx(limit, abs=1e-2)


def test_single_candidate_is_returned_as_is():
    eq = equilibrium_ranking(np.array([[-3.0], [-9.0]]), np.array([[-0.1, -2.0]]))
    assert eq.er_g == 0 and eq.er_d == 0 and eq.pi_g[0, 0] == 1.0


def test_initial_policies_are_computed_in_log_space():
    eq = equilibrium_ranking(np.array([[-200.0, -201.0], [-300.0, -300.0]]), np.log([[0.5, 0.5], [0.5, 0.5]]), iterations=1)
    assert np.isfinite(eq.pi_g).all() and eq.pi_g.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_dedupe_merges_identical_answers_with_log_sum_exp():
    answers = ["12", "7", "12"]
    gen = np.log([[0.2, 0.3, 0.1], [0.4, 0.4, 0.2]])
    distinct, merged, index = dedupe_candidates(answers, gen, ["a 12", "b 7", "c 12"])
    assert distinct == ["12", "7"] and index == [0, 1, 0]
    assert np.exp(merged) == pytest.approx(np.array([[0.3, 0.3], [0.6, 0.4]]))
    assert math.isfinite(merged.max())


def test_identical_completions_count_once_in_the_generator_prior():
    """Three copies of one sampled sequence are one candidate sequence: P(y), not 3 x P(y) (issue 12.9)."""
    answers = ["12", "12", "12", "7"]
    gen = np.log([[0.2, 0.2, 0.2, 0.3], [0.1, 0.1, 0.1, 0.4]])
    _, merged, index = dedupe_candidates(answers, gen, ["x 12", "x 12", "x 12", "y 7"])
    assert index == [0, 0, 0, 1]
    assert np.exp(merged) == pytest.approx(np.array([[0.2, 0.3], [0.1, 0.4]]))
