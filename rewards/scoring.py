"""Score completions with a weighted sum of named reward components; failures are scored, not raised."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rewards.registry import RewardFn, resolve_reward
from rewards.time_limit import CallTimeout, call_with_timeout


@dataclass
class Scores:
    total: list[float]
    components: dict[str, list[float | None]]  # None where the component does not apply to the sample's source
    errors: int = 0  # samples whose component raised or returned garbage
    timeouts: int = 0  # samples whose component exceeded the time limit
    first_errors: dict[str, str] = field(default_factory=dict)  # component name -> its first error message

    def extend(self, other: "Scores") -> None:
        """Append another batch's scores (used to merge shards and generation rounds)."""
        before, added = len(self.total), len(other.total)
        for name in list(dict.fromkeys([*self.components, *other.components])):
            self.components.setdefault(name, [None] * before).extend(other.components.get(name, [None] * added))
        self.total += other.total
        self.errors += other.errors
        self.timeouts += other.timeouts
        for name, message in other.first_errors.items():
            self.first_errors.setdefault(name, message)


Component = tuple[str, float, dict[str, Any]]  # (name, weight, options)


class Scorer:
    """Applies each sample's components (by its `source` column) and combines them by weight.

    Each component is first called on all its samples at once (fast path), with a time budget of
    timeout_s per sample. If that call fails, the component is called per sample, so only the
    samples that really fail get `failure_score` (counted as errors or timeouts).
    """

    def __init__(self, components: list[Component], timeout_s: float, failure_score: float,
                 by_source: dict[str, list[Component]] | None = None):
        self.default = [(n, resolve_reward(n), w, a) for n, w, a in components]
        self.by_source = {s: [(n, resolve_reward(n), w, a) for n, w, a in comps] for s, comps in (by_source or {}).items()}
        self.timeout_s = timeout_s
        self.failure_score = failure_score

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Scores:
        result = Scores(total=[0.0] * len(completions), components={})
        sources = columns.get("source", [None] * len(completions))
        for source in dict.fromkeys(sources):
            idx = [i for i, s in enumerate(sources) if s == source]
            for name, fn, weight, options in self.by_source.get(source, self.default):
                sub_columns = {k: [v[i] for i in idx] for k, v in columns.items()}
                values = self._component(name, fn, options, [completions[i] for i in idx], sub_columns, result)
                slot = result.components.setdefault(name, [None] * len(completions))
                for i, value in zip(idx, values):
                    slot[i] = value
                    result.total[i] += weight * value
        return result

    def _component(self, name: str, fn: RewardFn, options: dict[str, Any], completions: list[str], columns: dict[str, list[Any]],
                   result: Scores) -> list[float]:
        try:
            return self._checked(fn, options, completions, columns, len(completions))
        except Exception:
            pass
        values = []
        for i, completion in enumerate(completions):
            try:
                values += self._checked(fn, options, [completion], {k: [v[i]] for k, v in columns.items()}, 1)
            except CallTimeout as err:
                result.timeouts += 1
                result.first_errors.setdefault(name, f"timed out: {err}")
                values.append(self.failure_score)
            except Exception as err:
                result.errors += 1
                result.first_errors.setdefault(name, f"{type(err).__name__}: {err}")
                values.append(self.failure_score)
        return values

    def _checked(self, fn: RewardFn, options: dict[str, Any], completions: list[str], columns: dict[str, list[Any]],
                 n: int) -> list[float]:
        values = call_with_timeout(fn, self.timeout_s * n, completions=completions, **columns, **options)  # by keyword, as TRL calls
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):  # NaN would read as "unscored" downstream and hide the bug
            raise ValueError(f"returned a non-finite score: {values}")
        if len(values) != n:
            raise ValueError(f"returned {len(values)} scores for {n} completions")
        return values
