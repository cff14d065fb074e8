"""The driver's handle on the Ray actors: start them, spread work over them, gather by group id."""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import ray

from actors.learner import Learner
from actors.rollout import RolloutWorker, resolve_backend
from pipeline.config import Config
from pipeline.records import Completion, PromptSpec, SamplingSpec, TrainBatch
from rewards.scoring import Scorer, Scores


class SyncError(RuntimeError):
    """A rollout worker's policy does not match the learner's after a weight sync."""


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
    wanted = (cfg.rollout.num_workers * cfg.rollout.cpus_per_worker + cfg.reward.num_workers * cfg.reward.cpus_per_worker
              + cfg.trainer.cpus_per_learner)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)), include_dashboard=False, runtime_env=env,
             log_to_driver=True, configure_logging=False)


def _start_rollout_worker(cfg: Config, model_path: str, lora: dict[str, Any] | None):
    r = cfg.rollout
    engine_options = ({"gpu_memory_utilization": r.gpu_memory_utilization, "max_model_len": r.max_model_len}
                      if resolve_backend(r.backend) == "vllm" else {})
    return ray.remote(RolloutWorker).options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker).remote(
        model_path, cfg.model.dtype, lora, r.backend, r.cpus_per_worker, r.gpus_per_worker, engine_options)


def _start_reward_worker(cfg: Config):
    def components(items):
        return [(c.name, c.weight, c.args) for c in items]

    return ray.remote(Scorer).options(num_cpus=cfg.reward.cpus_per_worker).remote(
        components(cfg.reward.components), cfg.reward.timeout_s, cfg.reward.failure_score,
        {source: components(items) for source, items in cfg.reward.by_source.items()})


@dataclass
class Workers:
    learner: Any  # None for evaluation-only pools
    rollout: list[Any]
    reward: list[Any]
    start_reward_worker: Callable[[], Any]
    reward_deadline_s: float = 120.0
    failure_score: float = 0.0
    consensus_scorer: Any = None

    @classmethod
    def start(cls, cfg: Config, model_path: str, with_learner: bool = True) -> "Workers":
        lora = cfg.lora.model_dump()
        learner = ray.remote(Learner).options(
            num_cpus=cfg.trainer.cpus_per_learner, num_gpus=cfg.trainer.gpus_per_learner,
        ).remote(model_path, cfg.model.dtype, lora, cfg.algorithm.model_dump(), cfg.trainer.model_dump(),
                 cfg.rollout.temperature, cfg.rollout.max_new_tokens, cfg.run.seed) if with_learner else None
        rollout = [_start_rollout_worker(cfg, model_path, lora) for _ in range(cfg.rollout.num_workers)]
        reward = [_start_reward_worker(cfg) for _ in range(cfg.reward.num_workers)]
        consensus_model = cfg.reward.consensus.model_path  # a bare scoring LM: no adapter
        consensus_scorer = None if consensus_model is None else _start_rollout_worker(cfg, consensus_model, None)
        return cls(learner, rollout, reward, partial(_start_reward_worker, cfg), cfg.reward.worker_deadline_s,
                   cfg.reward.failure_score, consensus_scorer)

    def generate(self, prompts: list[PromptSpec], sampling: SamplingSpec) -> list[Completion]:
        """Prompts spread over the rollout workers; results ordered by (group id, sample)."""
        shards = _shards(prompts, len(self.rollout))
        futures = [
            worker.generate.remote(shard, replace(sampling, seed=sampling.seed * 1000 + i))
            for i, (worker, shard) in enumerate(zip(self.rollout, shards)) if shard
        ]
        completions = [c for part in ray.get(futures) for c in part]
        return sorted(completions, key=lambda c: c.group_id)  # stable: keeps sample order inside a group

    def reshape_lora(self, layout: dict[str, Any]) -> None:
        ray.get([w.reshape_lora.remote(layout) for w in self.rollout])

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> Scores:
        """Scores from all reward workers in parallel. A worker that misses the deadline (hung in
        native code, say) is killed and replaced, and its samples are scored as timeouts."""
        index_shards = _shards(list(range(len(completions))), len(self.reward))
        futures = [
            (worker, idx, worker.score.remote([completions[i] for i in idx], {k: [v[i] for i in idx] for k, v in columns.items()}))
            for worker, idx in zip(self.reward, index_shards) if idx
        ]
        ready, _ = ray.wait([f for _, _, f in futures], num_returns=len(futures), timeout=self.reward_deadline_s)
        merged = Scores(total=[], components={})
        for slot, (worker, idx, future) in enumerate(futures):
            if future in ready:
                merged.extend(ray.get(future))
                continue
            ray.kill(worker)
            self.reward[self.reward.index(worker)] = self.start_reward_worker()
            merged.extend(Scores(total=[self.failure_score] * len(idx), components={}, timeouts=len(idx),
                                 error_messages=[f"reward worker {slot} missed the {self.reward_deadline_s}s deadline; replaced"]))
        return merged

    def score_texts(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """log P(continuation | prompt) from the consensus scoring model (the policy unless configured)."""
        scorers = [self.consensus_scorer] if self.consensus_scorer is not None else self.rollout
        index_shards = _shards(list(range(len(prompts))), len(scorers))
        futures = [w.score_texts.remote([prompts[i] for i in idx], [continuations[i] for i in idx])
                   for w, idx in zip(scorers, index_shards) if idx]
        return [v for part in ray.get(futures) for v in part]

    def reference_kl(self, completions: list[Completion]) -> list[float]:
        return ray.get(self.learner.reference_kl.remote([c.prompt_ids for c in completions], [c.token_ids for c in completions]))

    def update(self, batch: TrainBatch) -> dict[str, float]:
        return ray.get(self.learner.update.remote(batch))

    def sync_adapter(self, version: int, probe: tuple[list[int], list[int]], tolerance: float = 1e-3) -> int:
        """Send the learner's LoRA adapter to every rollout worker and verify it took effect.

        Each worker returns its log-probs of a fixed probe completion; they must match the
        learner's, so a rollout worker can never silently keep sampling from a stale policy.
        Returns the adapter's size in bytes.
        """
        adapter_ref = self.learner.adapter_state.remote()
        expected_ref = self.learner.sequence_logprobs.remote([probe[0]], [probe[1]], 1.0)
        got = ray.get([w.load_adapter.remote(adapter_ref, version, probe) for w in self.rollout])
        expected = ray.get(expected_ref)[0]
        for i, values in enumerate(got):
            gap = max(abs(a - b) for a, b in zip(values, expected))
            if gap > tolerance:
                raise SyncError(f"rollout worker {i} disagrees with the learner after sync v{version}: "
                                f"max |logprob gap| {gap:.2e} > {tolerance:.0e}")
        return sum(v.nbytes for v in ray.get(adapter_ref).values())

    def shutdown(self) -> None:
        for actor in [self.learner, *self.rollout, *self.reward, self.consensus_scorer]:
            if actor is not None:
                ray.kill(actor)


def _shards(items: list, n: int) -> list[list]:
    """Contiguous, near-equal shards; group ids travel with the items, so order never matters."""
    size = math.ceil(len(items) / n) if items else 0
    return [items[i * size : (i + 1) * size] for i in range(n)]
