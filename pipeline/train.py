"""The GRPO training loop: sample -> generate -> score -> advantage -> update -> sync -> log.

Run it:   rlpost train configs/debug_cpu.yaml [section.key=value ...]
   or:    python -m pipeline train configs/debug_cpu.yaml   (the form `ray job submit` uses)
"""
from __future__ import annotations

import json
import math
import random
import signal
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import yaml
from ray.exceptions import RayActorError

from actors.policy_model import ModelLoadError, layout_of, load_tokenizer
from curricula import make_sampler
from pipeline.advantages import compute_advantages, learnable_indices, trained_indices
from pipeline.batch_checks import BatchInvariantError, SpecialTokens, check_completions, special_tokens
from pipeline.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
from pipeline.config import Config
from pipeline.data import DataError, Row, encode_prompt, load_rows, prompt_text
from pipeline.evaluation import evaluate
from pipeline.records import Completion, PromptSpec, SamplingSpec, TrainBatch
from pipeline.step_batch import DynamicSamplingError, StepBatch, collect
from pipeline.tiny_model import ensure_tiny_model
from pipeline.placement import PlacementError
from pipeline.tracking import PhaseTimer, Tracker
from pipeline.worker_pool import WorkerLost
from pipeline.workers import SyncError, Workers, init_ray


class TrainingDiverged(RuntimeError):
    pass


class LearnerDied(RuntimeError):
    """The learner actor died: the run ends, resumable from its latest checkpoint."""


class RunInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C: the step in flight finished, a checkpoint was written, the actors stop."""


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks between steps (restored on exit)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __enter__(self) -> "StopRequest":
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# Problems a user can fix (bad data, model, checkpoint, settings): reported as one clear line.
USER_ERRORS = (DataError, ModelLoadError, CheckpointError, DynamicSamplingError, SyncError, TrainingDiverged, RunInterrupted,
               LearnerDied, WorkerLost, PlacementError, BatchInvariantError)

Prompt = tuple[list[int], dict[str, Any]]  # (prompt token ids, the row's columns for reward functions)


def train(cfg: Config) -> dict[str, Any]:
    run_dir = _prepare_run_dir(cfg)
    _seed_everything(cfg.run.seed)
    model_path = cfg.model.path or str(ensure_tiny_model(cfg.model.tiny))
    train_prompts, test_prompts = tokenized_prompts(cfg, model_path)
    special = special_tokens(load_tokenizer(model_path), model_path, cfg.rollout)
    sampler = make_sampler(cfg.curriculum, {s: len(p) for s, p in train_prompts.items()}, cfg.run.seed)
    init_ray(cfg)
    workers = Workers(cfg, model_path)
    try:
        with StopRequest() as stop, ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlpost-rollouts") as background:
            return _train(cfg, run_dir, workers, sampler, train_prompts, test_prompts, special, stop, background)
    except RayActorError as err:  # the pools recover rollout and reward workers: an actor error here is the learner's
        try:
            where = f"the latest checkpoint is {find_checkpoint(run_dir, 'auto')} (continue with resume=auto)"
        except CheckpointError:
            where = "no checkpoint was written yet (set run.checkpoint_every)"
        raise LearnerDied(f"the learner actor died ({str(err).splitlines()[0]}); {where}") from err
    finally:
        workers.shutdown()  # also when the run stops on an error: no actor outlives it


def _train(cfg: Config, run_dir: Path, workers: Workers, sampler, train_prompts, test_prompts, special: SpecialTokens,
           stop: StopRequest, background: ThreadPoolExecutor) -> dict[str, Any]:
    state = {"step": 0, "reward_curve": [], "before": {}, "wandb_id": None}
    checkpoint = find_checkpoint(run_dir, cfg.run.resume) if cfg.run.resume else None
    if checkpoint:
        state = load_checkpoint(checkpoint, workers.learners, cfg)
        sampler.load_state_dict(state["sampler"])
    if cfg.lora.init == "eva":  # the adapter's per-layer shape comes from EVA, or from the checkpoint
        layout = layout_of(checkpoint / "adapter") if checkpoint else _eva_layout(cfg, workers, train_prompts)
        workers.reshape_lora(layout)
        (run_dir / "lora_layout.json").write_text(json.dumps(layout, indent=2))
    tracker = Tracker(cfg, run_dir, resume_step=state["step"] if cfg.run.resume else None, wandb_id=state["wandb_id"])
    (run_dir / "placement.json").write_text(json.dumps(workers.where(), indent=2))
    probe = _probe(train_prompts)
    workers.sync_weights(state["step"], probe)
    if cfg.eval.before and not cfg.run.resume:
        state["before"] = _evaluate(workers, test_prompts, cfg, sampler, tracker, step=0)

    def sample_prompts(n: int) -> list[tuple[str, list[int], dict]]:
        return [(s, *train_prompts[s][i]) for s, i in sampler.sample(n)]

    def collect_step(step: int) -> StepBatch:
        return collect(cfg, sample_prompts, workers, _sampling(cfg, seed=cfg.run.seed * 100_003 + step))

    timer, reward_curve, consecutive_skips = PhaseTimer(), state["reward_curve"], 0
    ahead = _finished(state["prefetched"]) if state.get("prefetched") else None  # an async run resumes on its own batch
    for step in range(state["step"] + 1, cfg.trainer.steps + 1):
        step_start = time.perf_counter()
        batch = ahead.result() if ahead else collect_step(step)
        check_completions(batch.completions, cfg.rollout, special)
        learnable = learnable_indices(batch)
        kl = (workers.reference_kl([batch.completions[i] for i in learnable])
              if cfg.algorithm.kl_in == "reward" and cfg.algorithm.kl_coef > 0 else None)
        advantages, shaping = compute_advantages(cfg, batch, learnable, kl)
        per_sample = dict(zip(learnable, advantages))
        sampler.update(*_curriculum_feed(batch, per_sample))
        trained = [(batch.completions[i], per_sample[i]) for i in trained_indices(batch)]
        # rollout.async: the next batch is generated (by the policy before this update) while the learner trains
        ahead = background.submit(collect_step, step + 1) if cfg.rollout.async_ and step < cfg.trainer.steps else None
        with timer("train"):
            train_metrics = workers.update(_train_batch(cfg, trained)) if trained else {"skipped": 1.0}
        with timer("wait_for_rollouts"):
            if ahead:
                ahead.result()  # a weight sync must not land between the chunks of a generation
        consecutive_skips = consecutive_skips + 1 if train_metrics.get("all_skipped") else 0
        if consecutive_skips >= cfg.trainer.max_consecutive_skips:
            raise TrainingDiverged(f"{consecutive_skips} updates in a row were skipped (non-finite loss or gradient norm, or "
                                   f"norm >= trainer.grad_skip_thresh); stopping instead of training on garbage")
        with timer("sync"):
            sync_bytes = workers.sync_weights(step, probe)
        metrics = {**_step_metrics(cfg, step, batch, train_metrics, sampler, {**batch.times, **timer.pop()}), **shaping,
                   "time/step": time.perf_counter() - step_start, "sync/bytes": sync_bytes,
                   **workers.fault_counters()}
        tracker.log(step, metrics)
        if cfg.tracking.samples_every and step % cfg.tracking.samples_every == 0:
            tracker.log_samples(step, _sample_rows(batch, per_sample, cfg.tracking.samples_per_table))
        reward_curve.append(metrics["reward/mean"])
        if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.trainer.steps:
            _evaluate(workers, test_prompts, cfg, sampler, tracker, step)
        if (cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0) or stop.signal:
            driver_state = {"step": step, "sampler": sampler.state_dict(), "reward_curve": reward_curve,
                            "before": state["before"], "wandb_id": tracker.wandb_id,
                            "prefetched": ahead.result() if ahead else None}  # drew its prompts after this step's update
            path = save_checkpoint(run_dir, step, workers.state_ranks, driver_state, cfg, cfg.run.keep_last)
        if stop.signal:
            tracker.close()
            raise RunInterrupted(f"stopped by {signal.Signals(stop.signal).name} after step {step}; checkpoint {path} "
                                 "(continue with resume=auto)")

    after = _evaluate(workers, test_prompts, cfg, sampler, tracker, cfg.trainer.steps) if cfg.eval.after else {}
    ray.get(workers.on_rank0("save_adapter", str(run_dir / "final_adapter")))
    return _finish(tracker, run_dir, state["before"], after, reward_curve)


# --- the helpers the loop calls, in the order it calls them ------------------------------------


def _prepare_run_dir(cfg: Config) -> Path:
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return run_dir


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tokenized_prompts(cfg: Config, model_path: str) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    tokenizer = load_tokenizer(model_path)
    train_rows, test_rows = load_rows(cfg.data, cfg.run.seed)
    if not train_rows:
        raise DataError("no training rows: give data.sources or data.files")

    def encode(rows: list[Row]) -> list[Prompt]:
        out = []
        for row in rows:
            text, templated = prompt_text(row, tokenizer, cfg.data.chat_template)
            question = row.prompt if isinstance(row.prompt, str) else row.prompt[-1]["content"]
            out.append((encode_prompt(tokenizer, text, templated), {"answer": row.answer, "source": row.source, "prompt": text,
                                                                     "prompts": row.prompt, "question": question, **row.fields}))
        return out

    return ({s: encode(r) for s, r in train_rows.items()}, {s: encode(r) for s, r in test_rows.items() if r})


def _eva_layout(cfg: Config, workers: Workers, train_prompts: dict[str, list[Prompt]]) -> dict[str, Any]:
    """EVA on the activations of training prompts plus their initial rollouts (spec §5.4)."""
    sources = list(train_prompts)
    ids = [train_prompts[sources[i % len(sources)]][i // len(sources)][0] for i in range(cfg.lora.eva_prompts)
           if i // len(sources) < len(train_prompts[sources[i % len(sources)]])]
    completions = workers.generate([PromptSpec(g, p) for g, p in enumerate(ids)], _sampling(cfg, seed=cfg.run.seed))
    layout = ray.get(workers.learner.init_eva.remote([c.prompt_ids + c.token_ids for c in completions]))
    print(f"EVA rank pattern ({len(layout['target_modules'])} modules kept): {layout['rank_pattern']}")
    return layout


def _probe(train_prompts: dict[str, list[Prompt]]) -> tuple[list[int], list[int]]:
    """A fixed prompt and completion whose log-probs prove each weight sync took effect."""
    ids = next(iter(train_prompts.values()))[0][0]
    return ids, ids[: max(1, min(len(ids), 6))]


def _evaluate(workers, test_prompts, cfg: Config, sampler, tracker: Tracker, step: int) -> dict[str, dict[str, float]]:
    results = evaluate(workers, test_prompts, cfg, seed=cfg.run.seed)
    tracker.log_eval(step, results)
    sampler.observe_validation({s: r["reward"] for s, r in results.items()})
    return results


def _sampling(cfg: Config, seed: int) -> SamplingSpec:
    r = cfg.rollout
    return SamplingSpec(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                        max_new_tokens=r.max_new_tokens, stop=tuple(r.stop), seed=seed)


def _curriculum_feed(batch: StepBatch, advantages: dict[int, float]) -> tuple[list[str], list[float]]:
    """The sampler learns from every scored sample's true advantage: what was trained on, mixed groups
    cut by dynamic sampling, and 0 for groups without a signal; unscored groups teach it nothing."""
    unscored = {c.group_id for c, total in zip(batch.completions, batch.scores.total) if not math.isfinite(total)}
    kept = [i for i, c in enumerate(batch.completions) if c.group_id not in unscored]
    return [batch.sources[i] for i in kept], [advantages.get(i, 0.0) for i in kept]


def _finished(result: Any) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


def _sample_rows(batch: StepBatch, advantages: dict[int, float], n: int) -> list[dict[str, Any]]:
    """The first sample of the first n groups: prompt, completion, reward and its components."""
    firsts = [i for i, c in enumerate(batch.completions) if i == 0 or batch.completions[i - 1].group_id != c.group_id][:n]
    return [{"source": batch.sources[i], "prompt": batch.columns[i].get("prompt", ""), "completion": batch.completions[i].text,
             "answer": str(batch.columns[i].get("answer", "")), "reward": batch.scores.total[i], "advantage": advantages.get(i, 0.0),
             "trained": batch.trained[i], **{f"reward/{k}": v[i] for k, v in batch.scores.components.items()}} for i in firsts]


def _train_batch(cfg: Config, trained: list[tuple[Completion, float]]) -> TrainBatch:
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


def _step_metrics(cfg: Config, step: int, batch: StepBatch, train_metrics: dict[str, float], sampler,
                  times: dict[str, float]) -> dict[str, float]:
    scores, completions = batch.scores, batch.completions
    correct = [float(ok) for ok in batch.correct]
    metrics: dict[str, Any] = {"reward/mean": _mean_scored(scores.total), "accuracy/mean": float(np.mean(correct))}
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(batch.sources):
        by_source[source].append(i)
    for source, idx in sorted(by_source.items()):
        metrics[f"reward/{source}"] = _mean_scored([scores.total[i] for i in idx])
        metrics[f"accuracy/{source}"] = float(np.mean([correct[i] for i in idx]))
    for name, values in scores.components.items():  # None where a component does not apply
        applied = [i for i, v in enumerate(values) if v is not None]
        metrics[f"reward_component/{name}"] = float(np.mean([values[i] for i in applied]))
        for source, idx in sorted(by_source.items()):
            mine = [values[i] for i in idx if values[i] is not None]
            if mine:
                metrics[f"reward_component/{name}/{source}"] = float(np.mean(mine))
    metrics["scoring/errors"] = float(scores.errors)
    metrics["scoring/timeouts"] = float(scores.timeouts)
    metrics["scoring/unscored_groups"] = float(batch.unscored_groups)
    metrics.update({f"scoring/first_error/{name}": message for name, message in scores.first_errors.items()})
    for key in dict.fromkeys(k for m in batch.consensus_metrics for k in m):
        metrics[key] = float(np.mean([m[key] for m in batch.consensus_metrics if key in m]))
    metrics["batch/gen_rounds"] = float(batch.gen_rounds)
    metrics["batch/trained_groups"] = float(len(batch.kept_groups()))
    metrics["batch/trained_samples"] = float(sum(batch.trained))
    metrics.update({f"train/{k}": v for k, v in train_metrics.items()})
    metrics.update({f"curriculum/p/{s}": p for s, p in sampler.probabilities().items()})
    metrics.update({f"curriculum/{k}": v for k, v in sampler.stats().items()})
    lengths = [len(c.token_ids) for c in completions]
    metrics["response/length_mean"] = float(np.mean(lengths))
    metrics["response/truncated_frac"] = float(np.mean([c.finish_reason == "length" for c in completions]))
    metrics["rollout/staleness"] = float(np.mean([step - 1 - c.policy_version for c in completions]))  # updates behind the learner
    metrics.update(times)
    metrics["throughput/gen_tokens_per_s"] = sum(lengths) / max(times.get("time/generate", 0.0), 1e-9)
    return metrics


def _mean_scored(totals: list[float]) -> float:
    """Mean over the samples that were scored (a hung reward worker leaves NaN)."""
    scored = [t for t in totals if math.isfinite(t)]
    return float(np.mean(scored)) if scored else float("nan")


def _finish(tracker: Tracker, run_dir: Path, before: dict, after: dict, reward_curve: list[float]) -> dict[str, Any]:
    from rich.table import Table

    window = max(1, min(10, len(reward_curve) // 2))
    results: dict[str, Any] = {"before": before, "after": after}
    if reward_curve:
        results["train_reward_first"] = float(np.mean(reward_curve[:window]))
        results["train_reward_last"] = float(np.mean(reward_curve[-window:]))
        tracker.print(f"mean training reward: first {window} steps {results['train_reward_first']:.3f} "
                      f"-> last {window} steps {results['train_reward_last']:.3f}")
    (run_dir / "eval.json").write_text(json.dumps(results, indent=2))
    if before or after:
        table = Table(title="held-out evaluation (before -> after training)")
        table.add_column("source")
        metric_names = list(next(iter((after or before).values())))
        for name in metric_names:
            table.add_column(name, justify="right")
        for source in (after or before):
            cells = [f"{before.get(source, {}).get(m, float('nan')):.2f}→{after.get(source, {}).get(m, float('nan')):.2f}"
                     for m in metric_names]
            table.add_row(source, *cells)
        tracker.print(table)
        tracker.log_final_eval(before, after)
    tracker.close()
    return results
