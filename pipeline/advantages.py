"""From scored samples to advantages: reward shaping, then the group-relative estimator.

Order (spec §1.4, §2.2): the unlikeliness factor scales the correctness term of correct samples
(the task reward), the soft overlong punishment is added, the estimator normalises within each
group, and a KL-in-reward term is added last, centred per group but never divided by the reward
std: an all-correct group must not turn tiny KL differences into O(1) advantages.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pipeline import core_algos
from pipeline.config import Config
from pipeline.step_batch import StepBatch
from rewards.overlong import soft_overlong_penalty
from rewards.unlikeliness import apply_unlikeliness


def trained_indices(batch: StepBatch) -> list[int]:
    return [i for i, t in enumerate(batch.trained) if t]


def learnable_indices(batch: StepBatch) -> list[int]:
    """Samples of every scored group with a learning signal: the trained ones, and mixed groups that
    dynamic sampling generated but cut (their true advantages feed the curriculum)."""
    return [i for i, ok in enumerate(batch.learnable) if ok]


def compute_advantages(cfg: Config, batch: StepBatch, indices: list[int],
                       reference_kl: list[float] | None = None) -> tuple[list[float], dict[str, float]]:
    """Advantages of the samples at `indices` (whole groups) and shaping metrics.

    reference_kl: per sample of `indices`, the summed KL to the reference policy (algorithm.kl_in=reward).
    """
    algo = cfg.algorithm
    completions = [batch.completions[i] for i in indices]
    rewards = [batch.scores.total[i] for i in indices]
    group_ids = [c.group_id for c in completions]
    metrics: dict[str, float] = {}
    unlikely = cfg.reward.unlikeliness
    if unlikely.beta_rank > 0:
        correct = [batch.correct[i] for i in indices]
        mean_logprobs = [float(np.mean(c.logprobs)) if c.logprobs else 0.0 for c in completions]
        correctness = [_correctness_term(cfg, batch, i) for i in indices]
        rewards, factors = apply_unlikeliness(rewards, correctness, correct, mean_logprobs, group_ids, unlikely.beta_rank,
                                              unlikely.rank_convention)
        metrics["unlikeliness/mean_factor_correct"] = _mean([f for f, ok in zip(factors, correct) if ok])
        metrics["unlikeliness/unique_correct_per_group"] = _unique_correct_per_group(completions, correct)
    if algo.overlong_buffer_len:
        penalties = [soft_overlong_penalty(len(c.token_ids), cfg.rollout.max_new_tokens, algo.overlong_buffer_len,
                                           algo.overlong_penalty_factor) for c in completions]
        rewards = [r + p for r, p in zip(rewards, penalties)]
        metrics["reward_component/overlong_penalty"] = _mean(penalties)
    estimator = core_algos.ADVANTAGE_ESTIMATORS[algo.adv_estimator]
    advantages = estimator(torch.tensor(rewards, dtype=torch.float64), group_ids, eps=algo.adv_eps, ddof=algo.std_ddof)
    if reference_kl is not None:
        kl = torch.tensor(reference_kl, dtype=torch.float64)
        advantages = advantages - algo.kl_coef * (kl - core_algos.group_stats(kl, group_ids)[0])
        metrics["train/kl_in_reward"] = _mean(reference_kl)
    return advantages.tolist(), metrics


def curriculum_feed(batch: StepBatch, advantages: dict[int, float]) -> tuple[list[str], list[float]]:
    """The sampler learns from every scored sample's true advantage: what was trained on, mixed groups
    cut by dynamic sampling, and 0 for groups without a signal; unscored groups teach it nothing."""
    unscored = {c.group_id for c, total in zip(batch.completions, batch.scores.total) if not math.isfinite(total)}
    kept = [i for i, c in enumerate(batch.completions) if c.group_id not in unscored]
    return [batch.sources[i] for i in kept], [advantages.get(i, 0.0) for i in kept]


def _correctness_term(cfg: Config, batch: StepBatch, i: int) -> float:
    """The part of sample i's reward earned by being correct: the weighted value of the verifier component
    (reward.unlikeliness.component, or the first component of its source); format bonuses, penalties and
    the consensus bonus are not part of it."""
    components = cfg.reward.by_source.get(batch.sources[i], cfg.reward.components)
    name = cfg.reward.unlikeliness.component or components[0].name
    weight = next((c.weight for c in components if c.name == name), 0.0)
    value = batch.scores.components.get(name, [None] * len(batch.completions))[i]
    return weight * (value or 0.0)


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
