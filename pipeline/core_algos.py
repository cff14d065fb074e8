"""Advantages, policy losses, KL estimators and loss aggregation: small pure torch functions.

Registered by name (in the spirit of verl's core_algos) so a variant is a new function, not a
branch. Formulas and defaults follow shared/specs/ALGORITHMS.md §1.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {}
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
LOSS_AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {}
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {}


def _register(table: dict, name: str):
    def add(fn):
        table[name] = fn
        return fn

    return add


# --- advantages (spec §1.1, §1.2) -------------------------------------------------------------


def group_stats(rewards: torch.Tensor, group_ids: Sequence, ddof: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and std of its group's rewards, groups found by id (never by position).

    A group of size 1 gets mean 0 and std 1, as verl does.
    """
    mean, std = torch.zeros_like(rewards), torch.ones_like(rewards)
    for gid in dict.fromkeys(group_ids):
        idx = torch.tensor([i for i, g in enumerate(group_ids) if g == gid])
        if len(idx) > 1:
            mean[idx] = rewards[idx].mean()
            std[idx] = rewards[idx].std(correction=ddof)
    return mean, std


@_register(ADVANTAGE_ESTIMATORS, "grpo")
def grpo_advantage(rewards: torch.Tensor, group_ids: Sequence, eps: float = 1e-6, ddof: int = 1) -> torch.Tensor:
    """(R - mean_group) / (std_group + eps); an all-equal group gives exactly 0."""
    mean, std = group_stats(rewards, group_ids, ddof)
    return (rewards - mean) / (std + eps)


@_register(ADVANTAGE_ESTIMATORS, "dr_grpo")
def dr_grpo_advantage(rewards: torch.Tensor, group_ids: Sequence, eps: float = 1e-6, ddof: int = 1) -> torch.Tensor:
    """R - mean_group: no std normalisation, which removes the question-difficulty bias."""
    mean, _ = group_stats(rewards, group_ids, ddof)
    return rewards - mean


# --- clipped surrogate (spec §1.1) ----------------------------------------------------------


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO loss (to minimise) and per-token indicator tensors for the metrics."""
    ratio = torch.exp(torch.clamp(logprobs - old_logprobs, -20.0, 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    info = {"clipped": (clipped > unclipped).float(), "ratio": ratio.detach()}
    if dual_clip_c is not None:
        bound = -advantages * dual_clip_c
        dual = torch.minimum(loss, bound)
        lower = (advantages < 0) & (loss > bound)
        loss = torch.where(advantages < 0, dual, loss)
        info["dual_clipped"] = lower.float()
    return loss, info


# --- KL estimators (spec §1.1 table; x = log pi_theta, y = log pi_ref) ---------------------------


@_register(KL_ESTIMATORS, "k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


@_register(KL_ESTIMATORS, "k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@_register(KL_ESTIMATORS, "k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """exp(y - x) - (y - x) - 1, always >= 0; clamped as verl does for stability."""
    diff = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(diff) - diff - 1.0, -10.0, 10.0)


@_register(KL_ESTIMATORS, "abs")
def kl_abs(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return (logprobs - ref_logprobs).abs()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL estimate. A trailing '+' gives the value of `kind` with the gradient of k2."""
    if kind.endswith("+"):
        value = KL_ESTIMATORS[kind[:-1]](logprobs, ref_logprobs)
        grad_path = kl_k2(logprobs, ref_logprobs)
        return grad_path + (value - grad_path).detach()
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs)


# --- loss aggregation (spec §1.1 table, §1.7) ------------------------------------------------
# Each mode returns a *contribution* normalised by batch-wide counts, so summing the values of the
# micro-batches of one mini-batch gives exactly the loss of the whole mini-batch.


@_register(LOSS_AGGREGATIONS, "token-mean")
def agg_token_mean(loss: torch.Tensor, mask: torch.Tensor, total_tokens: float, total_seqs: float, max_len: float) -> torch.Tensor:
    return (loss * mask).sum() / total_tokens


@_register(LOSS_AGGREGATIONS, "seq-mean-token-mean")
def agg_seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, total_tokens: float, total_seqs: float, max_len: float) -> torch.Tensor:
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / total_seqs


@_register(LOSS_AGGREGATIONS, "seq-mean-token-sum")
def agg_seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, total_tokens: float, total_seqs: float, max_len: float) -> torch.Tensor:
    return (loss * mask).sum() / total_seqs


@_register(LOSS_AGGREGATIONS, "seq-mean-token-sum-norm")
def agg_dr_grpo(loss: torch.Tensor, mask: torch.Tensor, total_tokens: float, total_seqs: float, max_len: float) -> torch.Tensor:
    """Dr. GRPO's constant normaliser in the TRL/oat form: sum / (B * L_max) (the canonical scale)."""
    return (loss * mask).sum() / (total_seqs * max_len)


@_register(LOSS_AGGREGATIONS, "token-sum-norm")
def agg_verl_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, total_tokens: float, total_seqs: float, max_len: float) -> torch.Tensor:
    """verl's `seq-mean-token-sum-norm`: sum / L_max with no 1/B (kept for parity with verl)."""
    return (loss * mask).sum() / max_len


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


# --- policy losses: what the learner minimises, composed from the pieces above -----------------


class LossSettings(Protocol):
    """The `algorithm` options a policy loss reads (pipeline.config.AlgorithmConfig has them all)."""

    clip_eps_low: float
    clip_eps_high: float
    dual_clip_c: float | None
    kl_coef: float
    kl_type: str
    loss_agg_mode: str


@dataclass(frozen=True)
class Totals:
    """Counts over the whole mini-batch (all micro-batches, all ranks): every normaliser uses them, so the
    micro-batch contributions add up to exactly the mini-batch loss."""

    tokens: float
    seqs: float
    max_len: float


@_register(POLICY_LOSSES, "ppo_clip")
def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  totals: Totals, settings: LossSettings, is_weights: torch.Tensor | None = None,
                  ref_logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate, times a per-token importance weight (TIS) when given, plus kl_coef x KL to
    the reference when given, aggregated by `loss_agg_mode`. Returns the loss and this micro-batch's
    share of the mini-batch token means (pg_loss, kl, clipfrac)."""
    pg, info = clipped_policy_loss(logprobs, old_logprobs, advantages, settings.clip_eps_low, settings.clip_eps_high,
                                   settings.dual_clip_c)
    if is_weights is not None:
        pg = pg * is_weights
    stats = {"pg_loss": (pg.detach() * mask).sum().item() / totals.tokens,
             "clipfrac": (info["clipped"] * mask).sum().item() / totals.tokens, "kl": 0.0}
    per_token = pg
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, settings.kl_type)
        per_token = pg + settings.kl_coef * kl
        stats["kl"] = (kl.detach() * mask).sum().item() / totals.tokens
    aggregate = LOSS_AGGREGATIONS[settings.loss_agg_mode]
    return aggregate(per_token, mask, total_tokens=totals.tokens, total_seqs=totals.seqs, max_len=totals.max_len), stats
