"""The GRPO training loop: sample -> generate -> score -> advantage -> update -> sync -> log.

Run it:   rlpost train configs/debug_cpu.yaml [section.key=value ...]
   or:    python -m pipeline train configs/debug_cpu.yaml   (the form `ray job submit` uses)
"""
from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import yaml

from actors.policy_model import load_tokenizer
from curricula import SAMPLERS
from pipeline import core_algos
from pipeline.checkpoint import save_checkpoint
from pipeline.config import Config
from pipeline.data import DataError, Row, load_rows, prompt_text
from pipeline.evaluation import evaluate
from pipeline.records import Completion, PromptSpec, SamplingSpec, TrainBatch
from pipeline.tiny_model import ensure_tiny_model
from pipeline.tracking import PhaseTimer, Tracker
from pipeline.workers import Workers, init_ray
from rewards.scoring import Scores

Prompt = tuple[list[int], dict[str, Any]]  # (prompt token ids, the row's columns for reward functions)


def train(cfg: Config) -> dict[str, Any]:
    run_dir = _prepare_run_dir(cfg)
    _seed_everything(cfg.run.seed)
    model_path = cfg.model.path or str(ensure_tiny_model(cfg.model.tiny))
    train_prompts, test_prompts = _tokenized_prompts(cfg, model_path)
    sampler = SAMPLERS[cfg.curriculum.name]({s: len(p) for s, p in train_prompts.items()}, cfg.run.seed, cfg.curriculum.weights)
    init_ray(cfg)
    workers = Workers.start(cfg, model_path)
    tracker = Tracker(cfg, run_dir)
    probe = _probe(train_prompts)
    workers.sync_adapter(0, probe, cfg.rollout.temperature)
    before = evaluate(workers, test_prompts, cfg, seed=cfg.run.seed) if cfg.eval.before else {}

    timer, reward_curve = PhaseTimer(), []
    for step in range(1, cfg.trainer.steps + 1):
        step_start = time.perf_counter()
        with timer("generate"):
            picks = sampler.sample(cfg.trainer.prompts_per_step)
            prompts = [PromptSpec(g, train_prompts[s][i][0]) for g, (s, i) in enumerate(picks)]
            completions = workers.generate(prompts, _sampling(cfg, seed=cfg.run.seed * 100_003 + step))
        with timer("score"):
            scores = workers.score([c.text for c in completions], _reward_columns(completions, picks, train_prompts))
        rewards = torch.tensor(scores.total, dtype=torch.float32)
        group_ids = [c.group_id for c in completions]
        advantages = core_algos.ADVANTAGE_ESTIMATORS[cfg.algorithm.adv_estimator](
            rewards, group_ids, eps=cfg.algorithm.adv_eps, ddof=cfg.algorithm.std_ddof)
        sources = [picks[g][0] for g in group_ids]
        sampler.update(sources, advantages.tolist())
        with timer("train"):
            train_metrics = workers.update(TrainBatch(
                [c.prompt_ids for c in completions], [c.token_ids for c in completions],
                advantages.tolist(), group_ids, [c.logprobs for c in completions]))
        with timer("sync"):
            adapter_bytes = workers.sync_adapter(step, probe, cfg.rollout.temperature)
        metrics = _step_metrics(cfg, completions, scores, sources, train_metrics, sampler, timer.pop())
        metrics.update({"time/step": time.perf_counter() - step_start, "sync/adapter_bytes": adapter_bytes})
        tracker.log(step, metrics)
        reward_curve.append(metrics["reward/mean"])
        if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
            save_checkpoint(run_dir, step, workers.learner, {"sampler": sampler.state_dict(), "step": step})

    after = evaluate(workers, test_prompts, cfg, seed=cfg.run.seed) if cfg.eval.after else {}
    ray.get(workers.learner.save_adapter.remote(str(run_dir / "final_adapter")))
    results = _finish(tracker, run_dir, before, after, reward_curve)
    workers.shutdown()
    return results


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


def _tokenized_prompts(cfg: Config, model_path: str) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    tokenizer = load_tokenizer(model_path)
    train_rows, test_rows = load_rows(cfg.data, cfg.run.seed)
    if not train_rows:
        raise DataError("no training rows: give data.sources or data.files")

    def encode(rows: list[Row]) -> list[Prompt]:
        out = []
        for row in rows:
            text = prompt_text(row, tokenizer, cfg.data.chat_template)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append((ids, {"answer": row.answer, "source": row.source, **row.fields}))
        return out

    return ({s: encode(r) for s, r in train_rows.items()}, {s: encode(r) for s, r in test_rows.items() if r})


def _probe(train_prompts: dict[str, list[Prompt]]) -> tuple[list[int], list[int]]:
    """A fixed prompt and completion whose log-probs prove each weight sync took effect."""
    ids = next(iter(train_prompts.values()))[0][0]
    return ids, ids[: max(1, min(len(ids), 6))]


def _sampling(cfg: Config, seed: int) -> SamplingSpec:
    r = cfg.rollout
    return SamplingSpec(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                        max_new_tokens=r.max_new_tokens, stop=tuple(r.stop), seed=seed)


def _reward_columns(completions: list[Completion], picks, train_prompts) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = defaultdict(list)
    for c in completions:
        source, index = picks[c.group_id]
        for key, value in train_prompts[source][index][1].items():
            columns[key].append(value)
    return dict(columns)


def _step_metrics(cfg: Config, completions: list[Completion], scores: Scores, sources: list[str],
                  train_metrics: dict[str, float], sampler, times: dict[str, float]) -> dict[str, float]:
    correct = [float(t >= cfg.reward.correct_threshold) for t in scores.total]
    metrics: dict[str, float] = {"reward/mean": float(np.mean(scores.total)), "accuracy/mean": float(np.mean(correct))}
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        by_source[source].append(i)
    for source, idx in sorted(by_source.items()):
        metrics[f"reward/{source}"] = float(np.mean([scores.total[i] for i in idx]))
        metrics[f"accuracy/{source}"] = float(np.mean([correct[i] for i in idx]))
    for name, values in scores.components.items():
        metrics[f"reward_component/{name}"] = float(np.mean(values))
    metrics["scoring/errors"] = float(scores.errors)
    metrics["scoring/timeouts"] = float(scores.timeouts)
    metrics.update({f"train/{k}": v for k, v in train_metrics.items()})
    metrics.update({f"curriculum/p/{s}": p for s, p in sampler.probabilities().items()})
    lengths = [len(c.token_ids) for c in completions]
    metrics["response/length_mean"] = float(np.mean(lengths))
    metrics["response/truncated_frac"] = float(np.mean([c.finish_reason == "length" for c in completions]))
    metrics.update(times)
    metrics["throughput/gen_tokens_per_s"] = sum(lengths) / max(times.get("time/generate", 0.0), 1e-9)
    return metrics


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
        tracker.summary({f"eval/{when}/{s}/{m}": v for when, res in (("before", before), ("after", after))
                         for s, d in res.items() for m, v in d.items()})
    tracker.close()
    return results
