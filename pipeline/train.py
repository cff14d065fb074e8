"""The GRPO training loop: sample -> generate -> score -> advantage -> update -> sync -> log.

Run it:   rlpost train configs/debug_cpu.yaml [section.key=value ...]
   or:    python -m pipeline train configs/debug_cpu.yaml   (the form `ray job submit` uses)
"""
from __future__ import annotations

import json
import random
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from actors.group import ActorGroup, LearnerDied, init_ray
from actors.policy_model import layout_of, load_tokenizer
from actors.rollout import engine_context
from curricula import PromptSampler, make_sampler
from pipeline.advantages import compute_advantages, curriculum_feed, learnable_indices, trained_indices
from pipeline.batch_checks import SpecialTokens, check_completions, special_tokens
from pipeline.checkpoint import DriverState, check_compatible, find_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from pipeline.config import Config
from pipeline.data import load_prompts
from pipeline.errors import RlpostError
from pipeline.evaluation import evaluate
from pipeline.hub import resolve_model, resolved_commit
from pipeline.records import Prompt, SamplingSpec
from pipeline.step_batch import StepBatch, collect, train_batch
from pipeline.timing import PhaseTimer
from pipeline.tiny_model import ensure_tiny_model
from pipeline.tracking import Tracker, final_report, sample_rows, step_metrics

Prompts = dict[str, list[Prompt]]  # by source


class TrainingDiverged(RlpostError):
    """Too many updates in a row were skipped (non-finite or exploding gradients)."""


class RunInterrupted(RlpostError):
    """SIGTERM or Ctrl-C: the step in flight finished, a checkpoint was written, the actors stop."""

    exit_code = 130


class CurriculumError(RlpostError):
    """The curriculum cannot sample from these sources with these settings."""


def train(cfg: Config) -> dict[str, Any]:
    run_dir = _prepare_run_dir(cfg)
    _seed_everything(cfg.run.seed)
    model, model_path, checkpoint = resolve_inputs(cfg)
    tokenizer = load_tokenizer(model_path)
    train_prompts, test_prompts = load_prompts(cfg, tokenizer, engine_context(cfg.rollout, model_path))
    special = special_tokens(tokenizer, model_path)
    sampler = _sampler(cfg, train_prompts)
    init_ray(cfg)
    actors = ActorGroup(cfg, model)  # each actor resolves it again, on its own node
    try:
        with StopRequest() as stop, ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlpost-rollouts") as background:
            return _train(cfg, run_dir, checkpoint, actors, sampler, train_prompts, test_prompts, special, stop, background)
    except LearnerDied as err:
        raise LearnerDied(f"{err}; {_resume_hint(run_dir)}") from err
    finally:
        actors.shutdown()  # also when the run stops on an error: no actor outlives it


def resolve_inputs(cfg: Config) -> tuple[str, str, Path | None]:
    """The model as configured and as a directory on this node, and the checkpoint to resume from: decided
    before Ray starts, so a model this node cannot get or a checkpoint this run cannot continue stops it here."""
    model = cfg.model.path or str(ensure_tiny_model(cfg.model.tiny))
    model_path = resolve_model(model, cfg.model.revision)
    cfg.model.revision = resolved_commit(model, model_path) or cfg.model.revision  # every actor loads this very commit
    checkpoint = find_checkpoint(Path(cfg.run.dir), cfg.run.resume)
    if checkpoint:
        check_compatible(checkpoint, cfg)
    return model, model_path, checkpoint


def _train(cfg: Config, run_dir: Path, checkpoint: Path | None, actors: ActorGroup, sampler: PromptSampler,
           train_prompts: Prompts, test_prompts: Prompts, special: SpecialTokens, stop: StopRequest,
           background: ThreadPoolExecutor) -> dict[str, Any]:
    state = _restore(cfg, checkpoint, actors, sampler)
    if cfg.lora.init == "eva":  # the adapter's per-layer shape comes from EVA, or from the checkpoint
        layout = layout_of(checkpoint / "adapter") if checkpoint else _eva_layout(cfg, actors, train_prompts)
        actors.reshape_lora(layout)
        (run_dir / "lora_layout.json").write_text(json.dumps(layout, indent=2))
    tracker = Tracker(cfg, run_dir, resume_step=state.step if checkpoint else None, wandb_id=state.wandb_id)
    (run_dir / "placement.json").write_text(json.dumps(actors.where(), indent=2))
    probe = _probe(train_prompts)
    actors.sync(state.step, probe)
    if cfg.eval.before and not checkpoint:
        state.before = _evaluate(actors, test_prompts, cfg, sampler, tracker, step=0)

    def collect_step(step: int) -> StepBatch:
        def sample_prompts(n: int) -> list[Prompt]:
            return [train_prompts[source][i] for source, i in sampler.sample(n)]

        return collect(cfg, sample_prompts, actors, _sampling(cfg, seed=cfg.run.seed * 100_003 + step))

    timer, skipped_in_a_row = PhaseTimer(), 0
    ahead = _finished(state.prefetched) if state.prefetched and cfg.rollout.async_ else None  # an async resume: its own batch
    for step in range(state.step + 1, cfg.trainer.steps + 1):
        step_start = time.perf_counter()
        # the step's samples: generated now, or (rollout.async) while the learner trained on the previous step
        batch = ahead.result() if ahead else collect_step(step)
        check_completions(batch.completions, cfg.rollout, special)
        # advantages of every scored group with a signal; the curriculum learns from all of them
        learnable = learnable_indices(batch)
        kl = (actors.reference_kl([batch.completions[i] for i in learnable])
              if learnable and cfg.algorithm.kl_in == "reward" and cfg.algorithm.kl_coef > 0 else None)
        advantages, shaping = compute_advantages(cfg, batch, learnable, kl)
        per_sample = dict(zip(learnable, advantages))
        sampler.update(*curriculum_feed(batch, per_sample))
        # rollout.async: the next batch is generated (by the policy before this update) while the learner trains
        ahead = background.submit(collect_step, step + 1) if cfg.rollout.async_ and step < cfg.trainer.steps else None
        # the update, on the trained samples only; a weight sync must not land between the chunks of a generation
        with timer("train"):
            trained = [(batch.completions[i], per_sample[i]) for i in trained_indices(batch)]
            train_metrics = actors.update(train_batch(cfg, trained)) if trained else {"skipped": 1.0}
        with timer("wait_for_rollouts"):
            prefetched = ahead.result() if ahead else None
        skipped_in_a_row = _check_skips(cfg, train_metrics, skipped_in_a_row)
        # every rollout worker gets the new policy, verified
        with timer("sync"):
            sync_bytes = actors.sync(step, probe)
        # log, evaluate, checkpoint
        metrics = {**step_metrics(cfg, step, batch, train_metrics, sampler, {**batch.times, **timer.pop()}), **shaping,
                   "time/step": time.perf_counter() - step_start, "sync/bytes": sync_bytes, **actors.fault_counters()}
        tracker.log(step, metrics)
        if cfg.tracking.samples_every and step % cfg.tracking.samples_every == 0:
            tracker.log_samples(step, sample_rows(batch, per_sample, cfg.tracking.samples_per_table))
        if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.trainer.steps:
            _evaluate(actors, test_prompts, cfg, sampler, tracker, step)
        state = DriverState(step, sampler.state_dict(), [*state.reward_curve, metrics["reward/mean"]], state.before,
                            tracker.wandb_id, prefetched)
        if (cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0) or stop.signal:
            path = save_checkpoint(run_dir, actors, state, cfg, cfg.run.keep_last)
        if stop.signal:
            tracker.close()
            raise RunInterrupted(f"stopped by {signal.Signals(stop.signal).name} after step {step}; checkpoint {path} "
                                 "(continue with resume=auto)")

    after = _evaluate(actors, test_prompts, cfg, sampler, tracker, cfg.trainer.steps) if cfg.eval.after else {}
    actors.save_adapter(str(run_dir / "final_adapter"))
    return final_report(tracker, run_dir, state.before, after, state.reward_curve)


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


def _sampler(cfg: Config, train_prompts: Prompts) -> PromptSampler:
    try:
        return make_sampler(cfg.curriculum, {s: len(p) for s, p in train_prompts.items()}, cfg.run.seed)
    except ValueError as err:  # curricula/ is plain Python: its complaints become the run's one-line error here
        raise CurriculumError(f"curriculum.{cfg.curriculum.name}: {err}") from None


def _resume_hint(run_dir: Path) -> str:
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return "no checkpoint was written yet (set run.checkpoint_every)"
    return f"the latest checkpoint is {latest} (continue with resume=auto)"


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


def _restore(cfg: Config, checkpoint: Path | None, actors: ActorGroup, sampler: PromptSampler) -> DriverState:
    """The driver state to start from, with the learner and the sampler restored to the checkpoint (if any)."""
    if checkpoint is None:
        return DriverState()
    state = load_checkpoint(checkpoint, actors)
    sampler.load_state_dict(state.sampler)
    return state


def _eva_layout(cfg: Config, actors: ActorGroup, train_prompts: Prompts) -> dict[str, Any]:
    """EVA on the activations of training prompts plus their initial rollouts (spec §5.4)."""
    from pipeline.records import PromptSpec

    sources = list(train_prompts)
    ids = [train_prompts[sources[i % len(sources)]][i // len(sources)].ids for i in range(cfg.lora.eva_prompts)
           if i // len(sources) < len(train_prompts[sources[i % len(sources)]])]
    completions = actors.generate([PromptSpec(g, p) for g, p in enumerate(ids)], _sampling(cfg, seed=cfg.run.seed))
    layout = actors.init_eva([c.prompt_ids + c.token_ids for c in completions])
    print(f"EVA rank pattern ({len(layout['target_modules'])} modules kept): {layout['rank_pattern']}")
    return layout


def _probe(train_prompts: Prompts) -> tuple[list[int], list[int]]:
    """A fixed prompt and completion whose log-probs prove each weight sync took effect."""
    ids = next(iter(train_prompts.values()))[0].ids
    return ids, ids[: max(1, min(len(ids), 6))]


def _evaluate(actors: ActorGroup, test_prompts: Prompts, cfg: Config, sampler: PromptSampler, tracker: Tracker,
              step: int) -> dict[str, dict[str, float]]:
    results = evaluate(actors, test_prompts, cfg, seed=cfg.run.seed)
    tracker.log_eval(step, results)
    sampler.observe_validation({s: r["reward"] for s, r in results.items()})
    return results


def _sampling(cfg: Config, seed: int) -> SamplingSpec:
    r = cfg.rollout
    return SamplingSpec(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                        max_new_tokens=r.max_new_tokens, stop=tuple(r.stop), seed=seed)


def _finished(result: Any) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


def _check_skips(cfg: Config, train_metrics: dict[str, float], skipped_in_a_row: int) -> int:
    """Count skipped updates in a row; too many stop the run instead of training on garbage."""
    skipped_in_a_row = skipped_in_a_row + 1 if train_metrics.get("all_skipped") else 0
    if skipped_in_a_row >= cfg.trainer.max_consecutive_skips:
        raise TrainingDiverged(f"{skipped_in_a_row} updates in a row were skipped (non-finite loss or gradient norm, or "
                               f"norm >= trainer.grad_skip_thresh); stopping instead of training on garbage")
    return skipped_in_a_row
