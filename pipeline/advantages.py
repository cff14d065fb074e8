"""From scored samples to advantages: reward shaping, then the group-relative estimator.

Order (spec §1.4, §2.2): soft overlong punishment and KL-in-reward are added to the reward, the
unlikeliness factor scales it, and only then is it normalised within each group.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import core_algos
from pipeline.config import Config
from pipeline.step_batch import StepBatch
from rewards.overlong import soft_overlong_penalty
from rewards.unlikeliness import apply_unlikeliness


def trained_indices(batch: StepBatch) -> list[int]:
    return [i for i, t in enumerate(batch.trained) if t]


def compute_advantages(cfg: Config, batch: StepBatch, reference_kl: list[float] | None = None) -> tuple[list[float], dict[str, float]]:
    """Advantages of the trained samples (in `trained_indices` order) and shaping metrics.

    reference_kl: per trained sample, the summed KL to the reference policy (algorithm.kl_in=reward).
    """
    algo, idx = cfg.algorithm, trained_indices(batch)
    completions = [batch.completions[i] for i in idx]
    rewards = [batch.scores.total[i] for i in idx]
    metrics: dict[str, float] = {}
    if algo.overlong_buffer_len:
        penalties = [soft_overlong_penalty(len(c.token_ids), cfg.rollout.max_new_tokens, algo.overlong_buffer_len,
                                           algo.overlong_penalty_factor) for c in completions]
        rewards = [r + p for r, p in zip(rewards, penalties)]
        metrics["reward_component/overlong_penalty"] = _mean(penalties)
    if reference_kl is not None:
        rewards = [r - algo.kl_coef * kl for r, kl in zip(rewards, reference_kl)]
        metrics["train/kl_in_reward"] = _mean(reference_kl)
    group_ids = [c.group_id for c in completions]
    unlikely = cfg.reward.unlikeliness
    if unlikely.beta_rank > 0:  # rewards are scaled, so the spec's R in {0, 1} is the verifier's total
        mean_logprobs = [float(np.mean(c.logprobs)) if c.logprobs else 0.0 for c in completions]
        rewards, factors = apply_unlikeliness(rewards, mean_logprobs, group_ids, unlikely.beta_rank, unlikely.rank_convention)
        correct = [batch.correct[i] for i in idx]
        metrics["unlikeliness/mean_factor_correct"] = _mean([f for f, ok in zip(factors, correct) if ok])
        metrics["unlikeliness/unique_correct_per_group"] = _unique_correct_per_group(completions, correct)
    estimator = core_algos.ADVANTAGE_ESTIMATORS[algo.adv_estimator]
    advantages = estimator(torch.tensor(rewards, dtype=torch.float64), group_ids, eps=algo.adv_eps, ddof=algo.std_ddof)
    return advantages.tolist(), metrics


def _unique_correct_per_group(completions, correct: list[bool]) -> float:
    unique: dict[int, set[str]] = {}
    for c, ok in zip(completions, correct):
        unique.setdefault(c.group_id, set())
        if ok:
            unique[c.group_id].add(c.text)
    return _mean([len(texts) for texts in unique.values()])


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0
