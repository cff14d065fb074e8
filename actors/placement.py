"""Where the actors run: `cpu`, `colocate` (one shared GPU) or `split` (placement groups of GPUs).

The plan is a list of Ray `.options()` per actor. colocate reserves one bundle (a GPU and the CPUs)
and puts the learner and every rollout worker in it, each with its fractional GPU share, so they are
sure to share that GPU. split reserves one placement group of learner bundles and one of rollout
bundles (strategy from config: PACK fills nodes, SPREAD spreads them), so rollout and learner GPUs
are kept apart and may sit on different nodes. A restarted actor comes back in its own bundle.
Reward workers (and a consensus scoring worker) need no bundle and go wherever Ray has room.

A cluster that cannot hold the run stops it with one PlacementError that lists what each actor asks
for and what the cluster has: checked before anything is reserved or started (actors/cluster_fit.py),
and again once the actors are started, for one Ray still has not placed after placement.timeout_s
(other jobs hold the room, or it is split over nodes): never left to look like a lost worker later.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.cluster_fit import Request, describe, problems
from pipeline.config import Config
from pipeline.errors import RlpostError


class PlacementError(RlpostError):
    """The cluster cannot grant the resources the placement asks for."""


@dataclass
class Placement:
    requests: list[Request]  # what the run asks of the cluster
    reward: list[dict[str, Any]]  # Ray actor options, one per reward worker
    consensus: list[dict[str, Any]]  # the consensus scoring worker's, if it has one
    learners: list[dict[str, Any]] = field(default_factory=list)  # one per learner
    rollout: list[dict[str, Any]] = field(default_factory=list)  # one per rollout worker
    learner_threads: int = 1  # torch threads per learner and per rollout worker (see `threads`)
    rollout_threads: int = 1
    turns: bool = False  # the two sides take turns on one node's CPUs (a sync's probes run at once, each at its share)
    groups: list[PlacementGroup] = field(default_factory=list)

    def release(self) -> None:
        for group in self.groups:
            remove_placement_group(group)

    def wait_until_placed(self, actors: dict[str, list[Any]], timeout_s: float) -> None:
        """Return once Ray has given every actor (by role) a worker (its constructor may still run); raise
        PlacementError if after timeout_s one still has none while the cluster reports demand it cannot meet."""
        give_up = time.monotonic() + timeout_s
        waiting = {f"{role} {i}": actor for role, handles in actors.items() for i, actor in enumerate(handles)}
        while True:
            waiting = {label: actor for label, actor in waiting.items() if _unplaced(actor)}
            if not waiting:
                return
            if time.monotonic() >= give_up:
                unmet = _unmet_demand()
                if unmet is None:  # this Ray cannot say: the up-front check_fit stands alone
                    return
                if unmet:  # else they wait for a worker process (a runtime env being installed, say), not for room
                    raise PlacementError(f"Ray has not placed {', '.join(waiting)} within {timeout_s:g}s (unmet demand "
                                         f"{', '.join(unmet)}; free now {_free()}): {describe(self.requests, _nodes())}")
            time.sleep(0.2)


def demands(cfg: Config, learners: int) -> list[Request]:
    """Every actor and placement group the run asks the cluster for, as plan() and ActorGroup ask for them."""
    r, mode, strategy = cfg.rollout, cfg.placement.mode, cfg.placement.strategy
    learner, worker = _bundle(_learner(cfg)), _bundle(_worker(cfg))
    if mode == "cpu":
        placed = [Request("learner", learner, learners), Request("rollout worker", worker, r.num_workers)]
    elif mode == "colocate":
        placed = [Request("colocate group (learners and rollout workers)", _colocated(cfg, learners), 1, "PACK")]
    else:
        placed = [Request("learner group", learner, learners, strategy), Request("rollout group", worker, r.num_workers, strategy)]
    anywhere = [Request("reward worker", _bundle(_reward(cfg)), cfg.reward.num_workers),
                Request("consensus worker", worker, len(_consensus(cfg)))]
    return [request for request in placed + anywhere if request.count]


def check_fit(requests: list[Request]) -> None:
    """Raise PlacementError, before any actor starts, if the cluster can never hold the requests."""
    nodes = _nodes()
    found = problems(requests, nodes)
    if found:
        raise PlacementError(f"the cluster cannot hold this run ({'; '.join(found)}): {describe(requests, nodes)}")


def plan(cfg: Config, learners: int) -> Placement:
    r, mode = cfg.rollout, cfg.placement.mode
    learner, worker = _learner(cfg), _worker(cfg)
    placement = Placement(demands(cfg, learners), [_reward(cfg) for _ in range(cfg.reward.num_workers)], _consensus(cfg))
    if not cfg.placement.autoscaling:  # an autoscaling cluster adds nodes on demand: what exists now is no limit
        check_fit(placement.requests)
    placement.learner_threads, placement.rollout_threads, placement.turns = threads(cfg, learners, one_node=len(_nodes()) == 1)
    if mode == "cpu":
        placement.learners, placement.rollout = [dict(learner) for _ in range(learners)], [dict(worker) for _ in range(r.num_workers)]
        return placement
    if mode == "colocate":
        group = _reserve("colocate", [_colocated(cfg, learners)], "PACK", cfg.placement.timeout_s)
        placement.groups.append(group)
        placement.learners = [_in(group, 0, learner) for _ in range(learners)]
        placement.rollout = [_in(group, 0, worker) for _ in range(r.num_workers)]
        return placement
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


def own_threads(cfg: Config) -> tuple[int, int]:
    """Torch threads per learner and per rollout-sized worker on their own CPU share (at least one each)."""
    return max(1, int(cfg.trainer.cpus_per_learner)), max(1, int(cfg.rollout.cpus_per_worker))


def threads(cfg: Config, learners: int, one_node: bool) -> tuple[int, int, bool]:
    """Torch threads per learner and per rollout worker, and whether the two sides take turns. Each actor's own
    CPU share, except when they take turns on one node (placement.cpu_threads=turns, synchronous rollouts,
    colocate or a one-node cpu run): the learners train while the rollout workers wait and the other way
    round, so the side at work uses the CPUs of both (a 2-core machine trains 1.7x faster on two threads)."""
    own = own_threads(cfg)
    mode = cfg.placement.mode
    shared_node = mode == "colocate" or (mode == "cpu" and one_node and not cfg.placement.autoscaling)
    if cfg.placement.cpu_threads != "turns" or cfg.rollout.async_ or not shared_node or not learners:
        return *own, False
    pool = learners * cfg.trainer.cpus_per_learner + cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
    return max(own[0], int(pool // learners)), max(own[1], int(pool // cfg.rollout.num_workers)), True


def _learner(cfg: Config) -> dict[str, Any]:
    return {"num_cpus": cfg.trainer.cpus_per_learner, "num_gpus": cfg.trainer.gpus_per_learner}


def _worker(cfg: Config) -> dict[str, Any]:
    return {"num_cpus": cfg.rollout.cpus_per_worker, "num_gpus": cfg.rollout.gpus_per_worker}


def _reward(cfg: Config) -> dict[str, Any]:
    return {"num_cpus": cfg.reward.cpus_per_worker}


def _consensus(cfg: Config) -> list[dict[str, Any]]:
    """A separate consensus scoring model runs on a rollout-sized worker of its own, outside the groups."""
    return [] if cfg.reward.consensus.model_path is None else [_worker(cfg)]


def _colocated(cfg: Config, learners: int) -> dict[str, float]:
    """colocate's one bundle: the GPU they share and the CPUs of them all."""
    return {"GPU": 1.0, "CPU": learners * cfg.trainer.cpus_per_learner + cfg.rollout.num_workers * cfg.rollout.cpus_per_worker}


def _bundle(options: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in {"CPU": options["num_cpus"], "GPU": options.get("num_gpus", 0.0)}.items() if v}


def _nodes() -> dict[str, dict[str, float]]:
    """Each live node's resources, by address (with its raylet's port: nodes may share a machine)."""
    return {f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}": n["Resources"] for n in ray.nodes() if n["Alive"]}


def _free() -> str:
    free = ray.available_resources()
    return ", ".join(f"{free.get(res, 0.0):g} {res}" for res in ("CPU", "GPU"))


# Ray's public state API needs the dashboard, which a local Ray here does not start; its internal GCS
# readers do not. They are read defensively: should a Ray release move them, the wait is skipped (the
# up-front check_fit still stands) rather than the run broken.
def _unplaced(actor: Any) -> bool:
    """Ray has not given the actor a worker yet (its GCS record has no port)."""
    try:
        from ray._private import state

        record = state.actors(actor._actor_id.hex())
        return record["State"] in ("DEPENDENCIES_UNREADY", "PENDING_CREATION") and not record["Address"]["Port"]
    except (ImportError, AttributeError, KeyError, TypeError):
        return False


def _unmet_demand() -> list[str] | None:
    """The resource shapes the cluster has been asked for and cannot grant now (None: this Ray cannot say)."""
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        demand = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands.ray_task_actor_demand
        return [f"{b.bundle} ×{b.count}" for d in demand for b in d.bundles_by_count]
    except (ImportError, AttributeError):
        return None


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
