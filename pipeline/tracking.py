"""Seeing the run: metrics.jsonl, W&B (offline by default) and a one-line-per-step console view."""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from curricula import PromptSampler
from pipeline.config import Config
from pipeline.step_batch import StepBatch


class Tracker:
    """resume_step: rows logged after that step (by a run killed before its next checkpoint) are
    dropped, and the W&B run `wandb_id` continues instead of a new one starting."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: int | None = None, wandb_id: str | None = None):
        self.console = Console(soft_wrap=True)
        if not self.console.is_terminal:  # logs and `ray job logs`: do not squeeze tables into 80 columns
            self.console.width = 160
        self.every, self.run_dir = cfg.tracking.console_every, run_dir
        self.metrics_file = _open_log(run_dir / "metrics.jsonl", resume_step)
        self.eval_file = _open_log(run_dir / "eval.jsonl", resume_step)
        self.wandb = None
        mode = os.environ.get("WANDB_MODE", cfg.tracking.wandb)
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(
                project=cfg.tracking.project, entity=cfg.tracking.entity, name=cfg.tracking.run_name,
                tags=cfg.tracking.tags, config=cfg.model_dump(), dir=str(run_dir), mode=mode,
                id=wandb_id, resume="allow" if wandb_id else None,
            )

    @property
    def wandb_id(self) -> str | None:
        return None if self.wandb is None else self.wandb.id

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **metrics}
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if step % self.every == 0:
            self.console.print(_step_line(row))
        for key, message in metrics.items():
            if key.startswith("scoring/first_error/"):  # every step with failures, however rare
                self.console.print(f"[yellow]step {step}: reward {key.rsplit('/', 1)[1]} failed; first error: "
                                   f"{escape(message)}[/]", highlight=False)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Sample completions with their reward components: samples.jsonl and a W&B table."""
        with (self.run_dir / "samples.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        if self.wandb is not None and rows:
            import wandb

            columns = list(rows[0])
            self.wandb.log({"samples": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}, step=step)

    def log_final_eval(self, before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> None:
        if self.wandb is None or not (before or after):
            return
        import wandb

        metrics = list(next(iter((after or before).values())))
        data = [[source, when, *[res[source].get(m) for m in metrics]]
                for when, res in (("before", before), ("after", after)) for source in res]
        self.wandb.log({"eval/final": wandb.Table(columns=["source", "when", *metrics], data=data)})
        self.wandb.summary.update({f"eval/{when}/{s}/{m}": v for when, res in (("before", before), ("after", after))
                                   for s, d in res.items() for m, v in d.items()})

    def log_eval(self, step: int, results: dict[str, dict[str, float]]) -> None:
        """Held-out results as eval/<metric>/<source> (one W&B panel per metric) and a console line."""
        flat = {f"eval/{m}/{s}": v for s, per in results.items() for m, v in per.items()}
        self.eval_file.write(json.dumps({"step": step, **flat}) + "\n")
        self.eval_file.flush()
        if self.wandb is not None:
            self.wandb.log(flat, step=step)
        self.console.print(f"[bold]eval @ step {step}[/] " + " ".join(
            f"{s}: acc={per['greedy_acc']:.2f}" for s, per in results.items()))

    def print(self, *things: Any) -> None:
        self.console.print(*things)

    def close(self) -> None:
        self.metrics_file.close()
        self.eval_file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _open_log(path: Path, keep_until_step: int | None):
    """Append to a JSONL log; on resume, first drop the rows after the checkpoint's step."""
    if keep_until_step is not None and path.exists():
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= keep_until_step]
        path.write_text("".join(row + "\n" for row in rows))
    elif keep_until_step is None and path.exists():
        path.unlink()  # a fresh run in a used directory starts a fresh log
    return path.open("a")


def _step_line(row: dict[str, Any]) -> str:
    per_source = " ".join(
        f"{k.split('/', 1)[1]}={v:.2f}" for k, v in row.items() if k.startswith("reward/") and k != "reward/mean"
    )
    times = " ".join(f"{k[5:]}={row[k]:.2f}s" for k in ("time/generate", "time/score", "time/train", "time/sync") if k in row)
    return (
        f"[bold]step {row['step']:>4}[/] reward {row['reward/mean']:.3f} acc {row['accuracy/mean']:.3f} "
        f"kl {row.get('train/kl', 0.0):.4f} clip {row.get('train/clipfrac', 0.0):.3f} "
        f"{row['throughput/gen_tokens_per_s']:.0f} tok/s | {per_source} | {times}"
    )


def step_metrics(cfg: Config, step: int, batch: StepBatch, train_metrics: dict[str, float], sampler: PromptSampler,
                 times: dict[str, float]) -> dict[str, Any]:
    """Everything a step logs: rewards and accuracy (overall and per source), reward components, scoring
    failures, batch shape, the learner's metrics, the curriculum, lengths, staleness and times."""
    scores, completions = batch.scores, batch.completions
    correct = [float(ok) for ok in batch.correct]
    metrics: dict[str, Any] = {"reward/mean": mean_scored(scores.total), "accuracy/mean": float(np.mean(correct))}
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(batch.sources):
        by_source[source].append(i)
    for source, idx in sorted(by_source.items()):
        metrics[f"reward/{source}"] = mean_scored([scores.total[i] for i in idx])
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


def mean_scored(totals: list[float]) -> float:
    """Mean over the samples that were scored (a hung reward worker leaves NaN)."""
    scored = [t for t in totals if math.isfinite(t)]
    return float(np.mean(scored)) if scored else float("nan")


def sample_rows(batch: StepBatch, advantages: dict[int, float], n: int) -> list[dict[str, Any]]:
    """The first sample of the first n groups: prompt, completion, reward and its components."""
    firsts = [i for i, c in enumerate(batch.completions) if i == 0 or batch.completions[i - 1].group_id != c.group_id][:n]
    return [{"source": batch.sources[i], "prompt": batch.columns[i].get("prompt", ""), "completion": batch.completions[i].text,
             "answer": str(batch.columns[i].get("answer", "")), "reward": batch.scores.total[i], "advantage": advantages.get(i, 0.0),
             "trained": batch.trained[i], **{f"reward/{k}": v[i] for k, v in batch.scores.components.items()}} for i in firsts]


def final_report(tracker: Tracker, run_dir: Path, before: dict, after: dict, reward_curve: list[float]) -> dict[str, Any]:
    """First vs last training reward and the before -> after evaluation table: printed, logged, eval.json."""
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
