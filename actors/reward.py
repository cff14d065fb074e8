"""RewardWorker: scores completions in a process of its own, so a reward function that crashes,
hangs in native code or leaks costs a restartable actor, never the driver."""
from __future__ import annotations

from typing import Any

from rewards.scoring import Component, Scorer, Scores


class RewardWorker:
    def __init__(self, components: list[Component], timeout_s: float, failure_score: float,
                 by_source: dict[str, list[Component]] | None = None):
        self.scorer = Scorer(components, timeout_s, failure_score, by_source)

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Scores:
        return self.scorer.score(completions, columns)
