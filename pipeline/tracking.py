"""Seeing the run: metrics.jsonl, W&B (offline by default) and a one-line-per-step console view."""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from pipeline.config import Config


class PhaseTimer:
    """Accumulates wall time per named phase: `with timer("generate"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        self.seconds.clear()
        return out


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
