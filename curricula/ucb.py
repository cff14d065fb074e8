"""DUMP: a UCB bandit over data sources, scored by their learnability (spec §3.2, released code).

Learnability of a source = mean |advantage| over a window of its last `window` responses;
UCB_j = mu_j + c * sqrt(2 ln(N + 1) / (n_j + 1)) with N = max(1, sum n_j); sampling
probabilities = softmax(UCB / temperature). Uniform until the first update; sources absent from
a batch keep their statistics.
"""
from __future__ import annotations

import math
import random
from collections import deque
from typing import Any


def ucb_scores(learnability: list[float], counts: list[int], c: float = 1.0) -> list[float]:
    total = max(1, sum(counts))
    return [mu + c * math.sqrt(2.0 * math.log(total + 1) / (n + 1)) for mu, n in zip(learnability, counts)]


def softmax(scores: list[float], temperature: float) -> list[float]:
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


class UCBSampler:
    """Draws each prompt slot's source from the live UCB softmax, then a prompt uniformly with replacement."""

    def __init__(self, source_sizes: dict[str, int], seed: int, window: int = 300, c: float = 1.0,
                 temperature: float = 0.1, update_on_validation: bool = False):
        empty = [s for s, n in source_sizes.items() if n == 0]
        if empty:
            raise ValueError(f"source(s) {empty} have no training rows")
        self.sizes = dict(source_sizes)
        self.c, self.temperature, self.update_on_validation = c, temperature, update_on_validation
        self.windows: dict[str, deque[float]] = {s: deque(maxlen=window) for s in self.sizes}
        self.counts = {s: 0 for s in self.sizes}
        self.weights = {s: 1.0 / len(self.sizes) for s in self.sizes}
        self.rng = random.Random(seed)

    def sample(self, batch_size: int) -> list[tuple[str, int]]:
        names = list(self.sizes)
        picks = []
        for _ in range(batch_size):
            source = self.rng.choices(names, weights=[self.weights[n] for n in names])[0]
            picks.append((source, self.rng.randrange(self.sizes[source])))
        return picks

    def update(self, sources: list[str], advantages: list[float]) -> None:
        """One entry per response: its scalar advantage goes into its source's window."""
        for source, advantage in zip(sources, advantages):
            self.windows[source].append(abs(advantage))
            self.counts[source] += 1
        self._reweight()

    def observe_validation(self, mean_reward: dict[str, float]) -> None:
        """The released code's quirk (off by default): a validation mean reward enters the window."""
        if not self.update_on_validation:
            return
        for source, reward in mean_reward.items():
            if source in self.windows:
                self.windows[source].append(abs(reward))
                self.counts[source] += 1
        self._reweight()

    def learnability(self) -> dict[str, float]:
        return {s: (sum(w) / len(w) if w else 0.0) for s, w in self.windows.items()}

    def ucb(self) -> dict[str, float]:
        names, mu = list(self.sizes), self.learnability()
        return dict(zip(names, ucb_scores([mu[s] for s in names], [self.counts[s] for s in names], self.c)))

    def _reweight(self) -> None:
        scores = self.ucb()
        self.weights = dict(zip(scores, softmax(list(scores.values()), self.temperature)))

    def probabilities(self) -> dict[str, float]:
        return dict(self.weights)

    def stats(self) -> dict[str, float]:
        """Per-source learnability, response count and UCB score, for the step's metrics."""
        mu, scores = self.learnability(), self.ucb()
        out: dict[str, float] = {}
        for s in self.sizes:
            out.update({f"learnability/{s}": mu[s], f"count/{s}": float(self.counts[s]), f"ucb/{s}": scores[s]})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"windows": {s: list(w) for s, w in self.windows.items()}, "counts": dict(self.counts),
                "weights": dict(self.weights), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, values in state["windows"].items():
            self.windows[s].clear()
            self.windows[s].extend(values)
        self.counts = dict(state["counts"])
        self.weights = dict(state["weights"])
        self.rng.setstate(state["rng"])
