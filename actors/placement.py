"""Where the actors run: `cpu`, `colocate` (one shared GPU) or `split` (placement groups of GPUs).

The plan is a list of Ray `.options()` per learner and per rollout worker. colocate reserves one
bundle (a GPU and the CPUs) and puts the learner and every rollout worker in it, each with its
fractional GPU share, so they are sure to share that GPU. split reserves one placement group of
learner bundles and one of rollout bundles (strategy from config: PACK fills nodes, SPREAD spreads
them), so rollout and learner GPUs are kept apart and may sit on different nodes. A restarted
actor comes back in its own bundle. Reward workers need CPUs only and go wherever Ray has them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pipeline.config import Config
from pipeline.errors import RlpostError


class PlacementError(RlpostError):
    """The cluster cannot grant the resources the placement asks for."""


@dataclass
class Placement:
    learners: list[dict[str, Any]]  # Ray actor options, one per learner
    rollout: list[dict[str, Any]]  # one per rollout worker
    groups: list[PlacementGroup] = field(default_factory=list)

    def release(self) -> None:
        for group in self.groups:
            remove_placement_group(group)


def plan(cfg: Config, learners: int) -> Placement:
    r, t, mode = cfg.rollout, cfg.trainer, cfg.placement.mode
    learner = {"num_cpus": t.cpus_per_learner, "num_gpus": t.gpus_per_learner}
    worker = {"num_cpus": r.cpus_per_worker, "num_gpus": r.gpus_per_worker}
    if mode == "cpu":
        return Placement([dict(learner) for _ in range(learners)], [dict(worker) for _ in range(r.num_workers)])
    if mode == "colocate":
        bundle = {"GPU": 1.0, "CPU": learners * t.cpus_per_learner + r.num_workers * r.cpus_per_worker}
        group = _reserve("colocate", [bundle], "PACK", cfg.placement.timeout_s)
        return Placement([_in(group, 0, learner) for _ in range(learners)],
                         [_in(group, 0, worker) for _ in range(r.num_workers)], [group])
    placement = Placement([], [])
    try:
        if learners:
            group = _reserve("learners", [_bundle(learner)] * learners, cfg.placement.strategy, cfg.placement.timeout_s)
            placement.groups.append(group)
            placement.learners = [_in(group, i, learner) for i in range(learners)]
        group = _reserve("rollout", [_bundle(worker)] * r.num_workers, cfg.placement.strategy, cfg.placement.timeout_s)
        placement.groups.append(group)
        placement.rollout = [_in(group, i, worker) for i in range(r.num_workers)]
    except PlacementError:
        placement.release()
        raise
    return placement


def _bundle(options: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in {"CPU": options["num_cpus"], "GPU": options["num_gpus"]}.items() if v}


def _in(group: PlacementGroup, index: int, options: dict[str, Any]) -> dict[str, Any]:
    return {**options, "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)}


def _reserve(name: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float) -> PlacementGroup:
    group = placement_group(bundles, strategy=strategy, name=f"rlpost-{name}")
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except GetTimeoutError:
        remove_placement_group(group)
        raise PlacementError(f"the cluster could not grant the {name} placement group {bundles} ({strategy}) within "
                             f"{timeout_s:.0f}s; it has {ray.cluster_resources()} in all, {ray.available_resources()} free") from None
    return group
