"""The driver's one handle on every Ray actor: it starts and places them, spreads work over them
(gathered by group id), restarts the ones that die, and offers the loop plain typed methods, so
nothing outside actors/ imports Ray or makes a remote call."""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError

from actors.learner import Learner
from actors.cluster_fit import total
from actors.placement import PlacementError, demands, own_threads, plan
from actors.reward import RewardWorker
from actors.rollout import RolloutWorker, resolve_backend
from actors.worker_pool import WorkerPool, get_each
from pipeline.config import Config, LoraSection
from pipeline.errors import RlpostError
from pipeline.records import Completion, PromptSpec, SamplingSpec, TrainBatch
from rewards.scoring import Scores


class SyncError(RlpostError):
    """A rollout worker's policy does not match the learner's after a weight sync."""


class LearnerDied(RlpostError):
    """A learner actor died: the run ends (resumable from its latest checkpoint)."""


@contextmanager
def _learners_kept():
    """The pools recover rollout and reward workers; a learner is not recovered: its death ends the run."""
    try:
        yield
    except RayActorError as err:
        raise LearnerDied(f"the learner actor died ({str(err).splitlines()[0]})") from err


def init_ray(cfg: Config) -> None:
    """Join the cluster running this job, or the one at run.ray_address; else start a local Ray sized for the run."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS") and not cfg.run.ray_address:
        ray.init(log_to_driver=True)  # a Ray job's driver: join the cluster it runs on, with the job's runtime env
        return
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}}
    if cfg.run.ray_address:
        ray.init(address=cfg.run.ray_address, runtime_env=env, log_to_driver=True)
        return
    wanted = total(demands(cfg, cfg.trainer.num_learners), "CPU")
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)), include_dashboard=False, runtime_env=env,
             log_to_driver=True, configure_logging=False)


def _start_rollout_worker(cfg: Config, model_path: str, lora: LoraSection | None, options: dict[str, Any],
                          revision: str | None = None, threads: int = 1):
    r = cfg.rollout
    engine_options = ({"gpu_memory_utilization": r.gpu_memory_utilization, "max_model_len": r.max_model_len,
                       "sleep_mode": r.sleep_while_training} if resolve_backend(r.backend) == "vllm" else {})
    return ray.remote(RolloutWorker).options(**options, max_restarts=r.max_restarts).remote(
        model_path, cfg.model.dtype, lora, r.backend, threads, r.gpus_per_worker, engine_options, revision)


def _start_reward_worker(cfg: Config, options: dict[str, Any]):
    def components(items):
        return [(c.name, c.weight, c.args) for c in items]

    return ray.remote(RewardWorker).options(**options, max_restarts=cfg.reward.max_restarts).remote(
        components(cfg.reward.components), cfg.reward.timeout_s, cfg.reward.failure_score,
        {source: components(items) for source, items in cfg.reward.by_source.items()})


@dataclass
class Policy:
    """What every rollout worker must be running: the adapter version and the probe that proves it."""

    weights: Any  # object ref to the adapter's (or the merged model's) tensors
    version: int
    probe: tuple[list[int], list[int]]
    expected: list[float]  # the learner's probe log-probs
    tolerance: float


class ActorGroup:
    """Rollout, reward and learner actors. Rollout and reward work goes through pools that restart
    dead or hung workers and redo their share; a dead learner raises LearnerDied."""

    def __init__(self, cfg: Config, model_path: str, with_learner: bool = True):
        self.cfg, self.policy, self.layout = cfg, None, None
        self.placement = plan(cfg, learners=cfg.trainer.num_learners if with_learner else 0)
        self._learners = [ray.remote(Learner).options(**options).remote(
            model_path, cfg.model.dtype, cfg.lora, cfg.algorithm, cfg.trainer,
            cfg.rollout.temperature, cfg.rollout.max_new_tokens, cfg.run.seed, cfg.model.revision, self.placement.learner_threads)
            for options in self.placement.learners]
        # the ranks a call that runs the model or reads its weights goes to: all under FSDP (a collective), else
        # rank 0, which sends weights, scores probes and writes checkpoints
        self._state_ranks = self._learners if cfg.trainer.fsdp else self._learners[:1]
        served = None if cfg.rollout.weight_sync == "merged" else cfg.lora  # merged: engines run the bare model, reloaded in place
        self.rollout = WorkerPool("rollout", [_start_rollout_worker(cfg, model_path, served, options, cfg.model.revision,
                                                                    self.placement.rollout_threads)
                                              for options in self.placement.rollout],
                                  cfg.rollout.worker_deadline_s, revive=self._install_policy)
        self.reward = WorkerPool("reward", [_start_reward_worker(cfg, options) for options in self.placement.reward],
                                 cfg.reward.worker_deadline_s)
        consensus_model = cfg.reward.consensus.model_path  # a bare scoring LM, no adapter, outside the placement groups
        self.consensus = None if consensus_model is None else WorkerPool(
            "consensus", [_start_rollout_worker(cfg, consensus_model, None, options, threads=own_threads(cfg)[1])
                          for options in self.placement.consensus],
            cfg.rollout.worker_deadline_s)
        # every actor placed before the first call on any, or one message why not: never a "lost" worker later (an
        # autoscaling cluster places them as its nodes come up)
        try:
            if not cfg.placement.autoscaling:
                self.placement.wait_until_placed({"learner": self._learners, "rollout worker": self.rollout.actors,
                                                  "reward worker": self.reward.actors,
                                                  "consensus worker": self.consensus.actors if self.consensus else []},
                                                 cfg.placement.timeout_s)
        except PlacementError:
            self.shutdown()
            raise
        if len(self._learners) > 1:
            address = ray.get(self._learners[0].rendezvous.remote())
            ray.get([learner.join_group.remote(address, rank, len(self._learners), cfg.trainer.fsdp)
                     for rank, learner in enumerate(self._learners)])

    def generate(self, prompts: list[PromptSpec], sampling: SamplingSpec) -> list[Completion]:
        """Prompts spread over the rollout workers by load; results ordered by (group id, sample).

        The engines derive each group's seed from the step's seed and its group id, so results do not
        depend on which worker ran a chunk (a chunk redone after a worker died gives the same samples)."""
        version, chunks = self._version, _chunks(prompts, len(self.rollout.actors), self.cfg.rollout.chunks_per_worker)
        parts = self.rollout.map(chunks, lambda w, c, chunk: w.generate.remote(chunk, sampling, version))
        return sorted((c for part in parts for c in part), key=lambda c: c.group_id)  # stable: keeps sample order

    @property
    def _version(self) -> int | None:
        """The policy version every rollout worker must run (None before the first sync)."""
        return self.policy.version if self.policy else None

    def reshape_lora(self, layout: dict[str, Any]) -> None:
        self.layout = layout
        self.rollout.broadcast(lambda w: w.reshape_lora.remote(layout))

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Scores:
        """Scores from all reward workers in parallel. A worker that dies is restarted and its samples
        re-scored; one that misses the deadline (hung in native code, say) is killed and restarted,
        and its samples come back unscored (total NaN)."""
        chunks = _chunks(list(range(len(completions))), len(self.reward.actors), 2)

        def hung(idx: list[int]) -> Scores:  # unscored (NaN): their groups are dropped, not trained on a made-up score
            return Scores(total=[math.nan] * len(idx), components={}, first_errors={
                "reward_worker": f"missed the {self.cfg.reward.worker_deadline_s}s deadline; killed and restarted"})

        parts = self.reward.map(chunks, lambda w, c, idx: w.score.remote(
            [completions[i] for i in idx], {k: [v[i] for i in idx] for k, v in columns.items()}), on_hang=hung)
        merged = Scores(total=[], components={})
        for part in parts:
            merged.extend(part)
        return merged

    def score_texts(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """log P(continuation | prompt) from the consensus scoring model (the policy unless configured)."""
        pool, version = (self.consensus, None) if self.consensus else (self.rollout, self._version)
        chunks = _chunks(list(range(len(prompts))), len(pool.actors), self.cfg.rollout.chunks_per_worker)
        parts = pool.map(chunks, lambda w, c, idx: w.score_texts.remote(
            [prompts[i] for i in idx], [continuations[i] for i in idx], version))
        return [v for part in parts for v in part]

    # --- the learner ---------------------------------------------------------------------------

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """One learner update on every rank; with rollout.sleep_while_training the rollout engines free
        their GPU memory meanwhile."""
        if not self.cfg.rollout.sleep_while_training:
            return self._on_learners("update", batch)
        freed = self.rollout.broadcast(lambda w: w.sleep.remote())
        try:
            return {**self._on_learners("update", batch), "rollout_sleep_freed_gib": sum(freed)}
        finally:
            self.rollout.broadcast(lambda w: w.wake_up.remote())

    def reference_kl(self, completions: list[Completion]) -> list[float]:
        return self._on_rank0("reference_kl", [c.prompt_ids for c in completions], [c.token_ids for c in completions])

    def init_eva(self, sequences: list[list[int]]) -> dict[str, Any]:
        """EVA on the learner (one rank); returns the per-layer LoRA layout."""
        return self._on_rank0("init_eva", sequences)

    def save(self, directory: str) -> None:
        """The learner's checkpoint files (adapter, optimizer, RNGs) into `directory` (rank 0 writes)."""
        self._get([learner.save.remote(directory) for learner in self._state_ranks])

    def load(self, directory: str) -> None:
        self._get([learner.load.remote(directory) for learner in self._learners])

    def save_adapter(self, directory: str) -> None:
        """The adapter in peft's format, with the tokenizer: loads with PeftModel.from_pretrained."""
        self._on_rank0("save_adapter", directory)

    def _on_rank0(self, method: str, *args: Any) -> Any:
        """Rank 0's result of a learner call, run on every rank that must take part."""
        return self._get([getattr(learner, method).remote(*args) for learner in self._state_ranks])[0]

    def _on_learners(self, method: str, *args: Any) -> Any:
        """Call `method` on every learner rank (they step together); rank 0's result. The first rank
        to fail raises at once, while the others may still be blocked in a collective."""
        with _learners_kept():
            return get_each([getattr(learner, method).remote(*args) for learner in self._learners])[0]

    @staticmethod
    def _get(refs: list) -> list:
        with _learners_kept():
            return ray.get(refs)

    # --- weight sync --------------------------------------------------------------------------

    def sync(self, version: int, probe: tuple[list[int], list[int]], tolerance: float = 1e-3) -> int:
        """Send the learner's policy (its LoRA adapter, or merged full weights with rollout.weight_sync=merged)
        to every rollout worker and verify it took effect.

        Each worker returns its log-probs of a fixed probe completion; they must match the
        learner's, so a rollout worker can never silently keep sampling from a stale policy.
        Returns the bytes each worker received.
        """
        merged = self.cfg.rollout.weight_sync == "merged"
        ranks = [getattr(learner, "merged_state" if merged else "adapter_state").remote() for learner in self._state_ranks]
        # the learner scores the probe while the rollout workers load the weights and score it themselves (the same
        # calls in the same order on every rank, so FSDP's collectives still line up); where the two sides take
        # turns on the CPUs, each side at its own share, so that together they do not oversubscribe them (vLLM's CPU
        # build keeps its own threads: there the learner scores first)
        threads = own_threads(self.cfg) if self.placement.turns else (None, None)
        expected = [learner.probe_logprobs.remote(probe, merged, threads[0]) for learner in self._state_ranks]
        if self.placement.turns and resolve_backend(self.cfg.rollout.backend) == "vllm":
            with _learners_kept():
                get_each(expected)
        return self._install(ranks[0], version, probe, expected, tolerance, threads[1])

    def load_weights(self, weights: dict[str, np.ndarray], version: int, probe: tuple[list[int], list[int]]) -> int:
        """Install given adapter weights (a saved adapter, say) on every rollout worker; they must agree."""
        return self._install(ray.put(weights), version, probe, None, 1e-3)

    def _install(self, weights, version: int, probe: tuple[list[int], list[int]], learner_probes: list | None,
                 tolerance: float, threads: int | None = None) -> int:
        """Install policy `version` on every rollout worker; each must reproduce the probe log-probs of the
        learner ranks' `learner_probes` (None: the first worker's). A worker Ray restarts later gets it again."""
        with _learners_kept():  # a learner that died or fails is the learner's failure, not the workers'
            got = self.rollout.broadcast(lambda w: w.load_weights.remote(weights, version, probe, threads), learner_probes)
            expected = ray.get(learner_probes[0]) if learner_probes else got[0][0]  # ready: the broadcast awaited it
        self.policy = Policy(weights, version, probe, expected, tolerance)
        for i, (values, _) in enumerate(got):
            self._verify(i, values)
        return got[0][1]

    def _install_policy(self, worker) -> None:
        """Bring a restarted rollout worker back to the current policy (and EVA layout), verified."""
        if self.layout is not None:
            ray.get(worker.reshape_lora.remote(self.layout))
        if self.policy is not None:
            p = self.policy
            values, _ = ray.get(worker.load_weights.remote(p.weights, p.version, p.probe))
            self._verify(self.rollout.actors.index(worker), values)

    def _verify(self, i: int, values: list[float]) -> None:
        gap = max(abs(a - b) for a, b in zip(values, self.policy.expected))
        if gap > self.policy.tolerance:
            raise SyncError(f"rollout worker {i} disagrees with the learner after sync v{self.policy.version}: "
                            f"max |logprob gap| {gap:.2e} > {self.policy.tolerance:.0e}")

    def where(self) -> list[dict[str, Any]]:
        """Which node and GPUs each learner rank and rollout worker got (written to the run directory)."""
        def locate(_):
            context = ray.get_runtime_context()
            return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                    "gpus": context.get_accelerator_ids().get("GPU", [])}

        roles = [("learner", i, a) for i, a in enumerate(self._learners)] + [("rollout", i, a) for i, a in enumerate(self.rollout.actors)]
        found = ray.get([actor.__ray_call__.remote(locate) for _, _, actor in roles])
        return [{"role": role, "index": i, **place} for (role, i, _), place in zip(roles, found)]

    def fault_counters(self) -> dict[str, float]:
        """Cumulative restarts and redone work (groups for rollouts, samples for rewards)."""
        return {"faults/rollout_restarts": self.rollout.counters.restarts, "faults/rollout_redone_groups": self.rollout.counters.redone,
                "faults/reward_restarts": self.reward.counters.restarts, "faults/reward_redone_samples": self.reward.counters.redone}

    def shutdown(self) -> None:
        pools = [self.rollout, self.reward, self.consensus]
        for actor in [*self._learners, *(a for pool in pools if pool for a in pool.actors)]:
            ray.kill(actor)
        self.placement.release()


def _chunks(items: list, workers: int, per_worker: int) -> list[list]:
    """Contiguous, near-equal, non-empty chunks, `per_worker` for each of several workers (one worker
    gets one chunk: one big batch is fastest); group ids travel with the items, so order never matters."""
    n = workers * per_worker if workers > 1 else 1
    size = math.ceil(len(items) / n) if items else 1
    return [items[i : i + size] for i in range(0, len(items), size)]
