"""Prompt samplers chosen by `curriculum.name`; each keeps a serialisable state.

Every sampler offers: sample(batch_size) -> [(source, index)], update(sources, advantages),
observe_validation(mean_reward_by_source), probabilities(), stats(), state_dict(), load_state_dict().
"""
from __future__ import annotations

from typing import Any

from curricula.ucb import UCBSampler
from curricula.uniform import UniformSampler


def make_sampler(cfg: Any, source_sizes: dict[str, int], seed: int):
    """The sampler a `curriculum` config section names."""
    if cfg.name == "ucb":
        return UCBSampler(source_sizes, seed, window=cfg.window, c=cfg.exploration_c,
                          temperature=cfg.temperature, update_on_validation=cfg.update_on_validation)
    if cfg.name == "fixed" and not cfg.weights:
        raise ValueError("curriculum.name=fixed needs curriculum.weights: {source: weight, ...}")
    return UniformSampler(source_sizes, seed, cfg.weights if cfg.name == "fixed" else None)
