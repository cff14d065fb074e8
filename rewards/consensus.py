"""Consensus-game EQUILIBRIUM-RANKING (The Consensus Game, spec §4): pure numpy, no LM calls.

A generator G (told v = correct / incorrect) and a discriminator D (told only the answer y) play a
signalling game, each regularised towards its LM-derived initial policy. piKL no-regret dynamics
with averaged payoffs (spec §4.3, eqs. 1-2, simultaneous updates) approach an equilibrium whose
policies re-rank the candidates: ER-G by pi_G(y | correct), ER-D by pi_D(correct | y).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CORRECT, INCORRECT = 0, 1
_FLOOR = 1e-12


@dataclass
class Equilibrium:
    pi_g: np.ndarray  # [v, y]: last iterate pi_G^(T+1)(y | v)
    pi_d: np.ndarray  # [y, v]: last iterate pi_D^(T+1)(v | y)
    pi_g_avg: np.ndarray  # the averaged iterates, a valid alternative read-out (logged)
    pi_d_avg: np.ndarray
    q_g: np.ndarray  # Q_G^(T), for checking the limit behaviour
    q_d: np.ndarray

    @property
    def er_g(self) -> int:
        return int(np.argmax(self.pi_g[CORRECT]))

    @property
    def er_d(self) -> int:
        return int(np.argmax(self.pi_d[:, CORRECT]))


def log_normalize(logits: np.ndarray, axis: int) -> np.ndarray:
    """log-softmax along `axis`: initial policies from LM log-probs that may be around -200."""
    top = logits.max(axis=axis, keepdims=True)
    return logits - (top + np.log(np.exp(logits - top).sum(axis=axis, keepdims=True)))


def initial_policies(gen_logp: np.ndarray, disc_logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pi_G^(1)(y | v) normalised over the candidates, pi_D^(1)(v | y) over {correct, incorrect}.

    gen_logp[v, y] = log P_LM(y | x, v); disc_logp[y, v] = log P_LM(v | x, y).
    """
    pi_g = np.exp(log_normalize(np.asarray(gen_logp, dtype=np.float64), axis=1))
    pi_d = np.exp(log_normalize(np.asarray(disc_logp, dtype=np.float64), axis=1))
    return np.maximum(pi_g, _FLOOR), np.maximum(pi_d, _FLOOR)


def equilibrium_ranking(gen_logp, disc_logp, lambda_g: float = 0.1, lambda_d: float = 0.1,
                        eta_g: float = 0.1, eta_d: float = 0.1, iterations: int = 5000) -> Equilibrium:
    """Run T iterations of eqs. (1)-(2) from the LM-derived initial policies."""
    pi_g1, pi_d1 = initial_policies(gen_logp, disc_logp)
    if pi_g1.shape[1] == 1:  # a single candidate: the game is trivial
        return Equilibrium(pi_g1, pi_d1, pi_g1, pi_d1, pi_d1.T / 2, pi_g1.T / 2)
    log_g1, log_d1 = np.log(pi_g1), np.log(pi_d1)
    pi_g, pi_d = pi_g1.copy(), pi_d1.copy()
    sum_g, sum_d = np.zeros_like(pi_g), np.zeros_like(pi_d)  # running sums of the iterates
    q_g, q_d = np.zeros_like(pi_g), np.zeros_like(pi_d)
    for t in range(1, iterations + 1):
        sum_g += pi_g
        sum_d += pi_d
        q_g = sum_d.T / (2 * t)  # Q_G(y | v) = (1/2t) sum_tau pi_D(v | y)
        q_d = sum_g.T / (2 * t)  # Q_D(v | y) = (1/2t) sum_tau pi_G(y | v)
        pi_g = np.exp(log_normalize((q_g + lambda_g * log_g1) / (1 / (eta_g * t) + lambda_g), axis=1))
        pi_d = np.exp(log_normalize((q_d + lambda_d * log_d1) / (1 / (eta_d * t) + lambda_d), axis=1))
    count = max(iterations, 1)
    return Equilibrium(pi_g, pi_d, sum_g / count, sum_d / count, q_g, q_d)


def dedupe_candidates(answers: list[str], gen_logp: np.ndarray, completions: list[str]) -> tuple[list[str], np.ndarray, list[int]]:
    """Merge identical final answers, adding their generator probability mass (log-sum-exp, spec §4.6).

    Identical completions are one sequence y, so each counts once (its probability, not count x P(y)).
    Returns the distinct answers, their merged gen_logp[v, y], and each input's candidate index.
    """
    distinct = list(dict.fromkeys(answers))
    index = [distinct.index(a) for a in answers]
    gen_logp = np.asarray(gen_logp, dtype=np.float64)
    merged = np.full((gen_logp.shape[0], len(distinct)), -np.inf)
    for i in {completions.index(c): None for c in completions}:  # the first copy of each distinct completion
        merged[:, index[i]] = np.logaddexp(merged[:, index[i]], gen_logp[:, i])
    return distinct, merged, index
