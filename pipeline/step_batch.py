"""Collect one step's samples: generate and score, then filter groups (and resample, as DAPO does).

Group filtering drops groups whose metric (correctness or score) is the same for every sample:
their GRPO advantage is exactly 0, so they carry no policy gradient. With dynamic sampling the
loop keeps generating until `prompts_per_step` mixed groups are kept, up to `max_gen_rounds`.
A group with a sample no reward worker could score (its worker hung: total NaN) is dropped and
counted, never trained on with a made-up score. In label-free consensus mode nothing here reads
the answer column: groups are filtered on the consensus score.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pipeline.config import Config
from pipeline.consensus_reward import consensus_rewards
from pipeline.data import columnar
from pipeline.errors import RlpostError
from pipeline.records import Completion, Group, Prompt, PromptSpec, SamplingSpec, TrainBatch
from pipeline.timing import PhaseTimer
from rewards.scoring import Scores


class DynamicSamplingError(RlpostError):
    pass


@dataclass
class StepBatch:
    """Everything generated in a step (metrics see all of it) and which samples are trained on."""

    completions: list[Completion] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    columns: list[dict[str, Any]] = field(default_factory=list)  # each sample's row fields
    scores: Scores = field(default_factory=lambda: Scores(total=[], components={}))
    correct: list[bool] = field(default_factory=list)  # by the verifiers (reward.correct_threshold)
    trained: list[bool] = field(default_factory=list)
    learnable: list[bool] = field(default_factory=list)  # scored, with a signal: trained, or a mixed group cut by the cap
    unscored_groups: int = 0  # dropped because a reward worker hung on them
    gen_rounds: int = 0
    consensus_metrics: list[dict[str, float]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)  # time/generate, time/score

    def extend(self, completions: list[Completion], sources: list[str], columns: list[dict], scores: Scores,
               correct: list[bool]) -> None:
        self.completions += completions
        self.sources += sources
        self.columns += columns
        self.scores.extend(scores)
        self.correct += correct
        self.trained += [True] * len(completions)
        self.learnable += [True] * len(completions)

    def kept_groups(self) -> list[int]:
        return list(dict.fromkeys(c.group_id for c, t in zip(self.completions, self.trained) if t))


def mixed_groups(values: list[float], group_ids: list[int]) -> set[int]:
    """Ids of groups whose values are not all equal (the ones with a learning signal)."""
    seen: dict[int, set[float]] = defaultdict(set)
    for v, g in zip(values, group_ids):
        seen[g].add(v)
    return {g for g, vals in seen.items() if len(vals) > 1}


def reward_inputs(rows: list[dict[str, Any]], completions: list[Completion]) -> dict[str, list[Any]]:
    """Keyword lists for reward functions, as TRL passes them: every row column (`prompts` too) plus
    `completion_ids`; the completions' texts are the first positional argument."""
    return {**columnar(rows), "completion_ids": [c.token_ids for c in completions]}


class RolloutActors(Protocol):
    """What collecting a batch needs of the actors (actors.group.ActorGroup, or a scripted stand-in)."""

    def generate(self, prompts: list[PromptSpec], sampling: SamplingSpec) -> list[Completion]: ...
    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Scores: ...
    def score_texts(self, prompts: list[str], continuations: list[str]) -> list[float]: ...


def collect(cfg: Config, sample_prompts: Callable[[int], list[Prompt]], workers: RolloutActors,
            sampling: SamplingSpec) -> StepBatch:
    """Generate, score and filter until the step's batch is complete (phases timed in `batch.times`)."""
    timer = PhaseTimer()
    algo = cfg.algorithm
    target = cfg.trainer.prompts_per_step
    per_round = (algo.gen_prompts_per_round or 3 * target) if algo.dynamic_sampling else target
    batch, next_group = StepBatch(), 0
    while True:
        batch.gen_rounds += 1
        with timer("generate"):
            groups = {next_group + i: Group(next_group + i, p) for i, p in enumerate(sample_prompts(per_round))}
            completions = workers.generate([g.spec() for g in groups.values()],
                                           replace(sampling, seed=sampling.seed * 100 + batch.gen_rounds))
        picked = [groups[c.group_id].prompt for c in completions]
        columns = [p.columns for p in picked]
        with timer("score"):
            scores = workers.score([c.text for c in completions], reward_inputs(columns, completions))
            correct = [t >= cfg.reward.correct_threshold for t in scores.total]
            if cfg.reward.consensus.weight > 0:
                batch.consensus_metrics.append(_add_consensus(cfg, workers, completions, columns, scores, correct))
        start = len(batch.completions)
        batch.extend(completions, [p.source for p in picked], columns, scores, correct)
        next_group += per_round
        _drop_groups(batch, start, cfg, algo.filter_groups)
        if not algo.dynamic_sampling or len(batch.kept_groups()) >= target:
            if algo.dynamic_sampling:
                _keep_first_groups(batch, target)
            batch.times = timer.pop()
            return batch
        if 0 < algo.max_gen_rounds <= batch.gen_rounds:
            raise DynamicSamplingError(
                f"dynamic sampling kept {len(batch.kept_groups())} of {target} mixed groups after "
                f"{batch.gen_rounds} generation rounds (algorithm.max_gen_rounds); the data may be too easy or too hard")


def _add_consensus(cfg: Config, workers: RolloutActors, completions: list[Completion], columns: list[dict], scores: Scores,
                   correct: list[bool]) -> dict[str, float]:
    """The consensus reward as a component: a bonus on the verifiers' total, or the whole reward (label-free)."""
    settings = cfg.reward.consensus
    values, metrics = consensus_rewards(settings, workers.score_texts, completions, columns, correct)
    scores.components["consensus"] = values
    base = scores.total if settings.use == "bonus" else [0.0] * len(values)
    scores.total = [b + settings.weight * v for b, v in zip(base, values)]
    return metrics


def _drop_groups(batch: StepBatch, start: int, cfg: Config, filtering: bool) -> None:
    """Drop this round's unscored groups and, when filtering, its groups without a signal."""
    totals = batch.scores.total[start:]
    ids = [c.group_id for c in batch.completions[start:]]
    unscored = {g for g, t in zip(ids, totals) if not math.isfinite(t)}
    by_correctness = cfg.algorithm.filter_metric == "acc" and not cfg.reward.consensus.label_free
    values = [float(ok) for ok in batch.correct[start:]] if by_correctness else totals
    kept = (mixed_groups(values, ids) if filtering else set(ids)) - unscored
    for i, gid in enumerate(ids, start=start):
        batch.trained[i] = batch.learnable[i] = gid in kept
    batch.unscored_groups += len(unscored)


def _keep_first_groups(batch: StepBatch, n: int) -> None:
    keep = set(batch.kept_groups()[:n])
    batch.trained = [t and c.group_id in keep for c, t in zip(batch.completions, batch.trained)]


def train_batch(cfg: Config, trained: list[tuple[Completion, float]]) -> TrainBatch:
    """The learner's view of the trained samples and their advantages. Off-policy (rollout.async) samples
    are clipped against the policy that generated them, unless truncated IS (algorithm.tis_cap) corrects
    them instead. A sample cut by the token or context limit (finish reason "length") is truncated."""
    completions = [c for c, _ in trained]
    return TrainBatch(
        prompt_ids=[c.prompt_ids for c in completions], completion_ids=[c.token_ids for c in completions],
        advantages=[a for _, a in trained], group_ids=[c.group_id for c in completions],
        behaviour_logprobs=[c.logprobs for c in completions],
        loss_mask=[c.finish_reason != "length" for c in completions] if cfg.algorithm.overlong_filtering else [],
        old_from_behaviour=cfg.rollout.async_ and not cfg.algorithm.tis_cap,
    )
