"""Fixed-distribution prompt samplers: `uniform` (sources by size) and `fixed` (given weights)."""
from __future__ import annotations

import random
from typing import Any


class UniformSampler:
    """Draws (source, index) pairs with replacement: an infinite stream, driven by step count.

    Every sampler offers sample / update / probabilities / state_dict / load_state_dict so the
    training loop never needs to know which curriculum it runs.
    """

    def __init__(self, source_sizes: dict[str, int], seed: int, weights: dict[str, float] | None = None):
        unknown = sorted(set(weights or {}) - set(source_sizes))
        if unknown:
            raise ValueError(f"curriculum.weights names unknown source(s) {unknown}; sources: {sorted(source_sizes)}")
        empty = [s for s, n in source_sizes.items() if n == 0]
        if empty:
            raise ValueError(f"source(s) {empty} have no training rows")
        self.sizes = dict(source_sizes)
        raw = {s: weights.get(s, 0.0) for s in self.sizes} if weights else {s: float(n) for s, n in self.sizes.items()}
        if sum(raw.values()) <= 0:
            raise ValueError("curriculum.weights must give at least one source a positive weight")
        total = sum(raw.values())
        self.weights = {s: w / total for s, w in raw.items()}
        self.rng = random.Random(seed)

    def sample(self, batch_size: int) -> list[tuple[str, int]]:
        names = list(self.weights)
        sources = self.rng.choices(names, weights=[self.weights[n] for n in names], k=batch_size)
        return [(s, self.rng.randrange(self.sizes[s])) for s in sources]

    def update(self, sources: list[str], advantages: list[float]) -> None:
        """A fixed distribution learns nothing from advantages."""

    def observe_validation(self, mean_reward: dict[str, float]) -> None:
        """Nothing to learn from validation either."""

    def probabilities(self) -> dict[str, float]:
        return dict(self.weights)

    def stats(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
