"""Prompt samplers chosen by `curriculum.name`; each keeps a serialisable state."""
from __future__ import annotations

from typing import Any, Protocol

from curricula.ucb import UCBSampler
from curricula.uniform import UniformSampler


class PromptSampler(Protocol):
    """Which data source (and which prompt of it) each prompt slot of a step is drawn from."""

    def sample(self, batch_size: int) -> list[tuple[str, int]]: ...  # (source, index within the source)
    def update(self, sources: list[str], advantages: list[float]) -> None: ...  # one entry per response
    def observe_validation(self, mean_reward: dict[str, float]) -> None: ...
    def probabilities(self) -> dict[str, float]: ...
    def stats(self) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_sampler(cfg: Any, source_sizes: dict[str, int], seed: int) -> PromptSampler:
    """The sampler a `curriculum` config section names."""
    if cfg.name == "ucb":
        return UCBSampler(source_sizes, seed, window=cfg.window, c=cfg.exploration_c,
                          temperature=cfg.temperature, update_on_validation=cfg.update_on_validation)
    if cfg.name == "fixed" and not cfg.weights:
        raise ValueError("curriculum.name=fixed needs curriculum.weights: {source: weight, ...}")
    return UniformSampler(source_sizes, seed, cfg.weights if cfg.name == "fixed" else None)
