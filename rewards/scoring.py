"""Score completions with a weighted sum of named reward components; failures are scored, not raised."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rewards.registry import RewardFn, resolve_reward
from rewards.time_limit import CallTimeout, call_with_timeout


@dataclass
class Scores:
    total: list[float]
    components: dict[str, list[float]]
    errors: int = 0  # samples whose component raised or returned garbage
    timeouts: int = 0  # samples whose component exceeded the time limit
    error_messages: list[str] = field(default_factory=list)

    def extend(self, other: "Scores") -> None:
        """Append another batch's scores (used to merge shards and generation rounds)."""
        self.total += other.total
        for name, values in other.components.items():
            self.components.setdefault(name, []).extend(values)
        self.errors += other.errors
        self.timeouts += other.timeouts
        self.error_messages += other.error_messages


class Scorer:
    """Applies every configured component to a batch and combines them by weight.

    Each component is first called on the whole batch (fast path). If that call fails, the
    component is called per sample, so only the samples that really fail get `failure_score`.
    """

    def __init__(self, components: list[tuple[str, float]], timeout_s: float, failure_score: float):
        self.components: list[tuple[str, RewardFn, float]] = [(n, resolve_reward(n), w) for n, w in components]
        self.timeout_s = timeout_s
        self.failure_score = failure_score

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Scores:
        result = Scores(total=[0.0] * len(completions), components={})
        for name, fn, weight in self.components:
            values = self._component(fn, completions, columns, result)
            result.components[name] = values
            result.total = [t + weight * v for t, v in zip(result.total, values)]
        return result

    def _component(self, fn: RewardFn, completions: list[str], columns: dict[str, list[Any]], result: Scores) -> list[float]:
        try:
            return self._checked(fn, completions, columns, len(completions))
        except Exception:
            pass
        values = []
        for i, completion in enumerate(completions):
            try:
                values += self._checked(fn, [completion], {k: [v[i]] for k, v in columns.items()}, 1)
            except CallTimeout as err:
                result.timeouts += 1
                result.error_messages.append(f"{getattr(fn, '__name__', fn)}: {err}")
                values.append(self.failure_score)
            except Exception as err:
                result.errors += 1
                result.error_messages.append(f"{getattr(fn, '__name__', fn)}: {type(err).__name__}: {err}")
                values.append(self.failure_score)
        return values

    def _checked(self, fn: RewardFn, completions: list[str], columns: dict[str, list[Any]], n: int) -> list[float]:
        values = call_with_timeout(fn, self.timeout_s, completions, **columns)
        values = [float(v) for v in values]
        if len(values) != n:
            raise ValueError(f"returned {len(values)} scores for {n} completions")
        return values
