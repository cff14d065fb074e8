"""Throughput against the number of rollout workers and learners, sync vs async, and the reward
curve of sync vs async at the same number of samples.

    python benchmarks/scaling.py configs/debug_cpu.yaml [--steps 15 --curve-steps 60] [section.key=value ...]

Every run uses the same seeds and one local Ray (CPU placement). Throughput = trained samples and
generated tokens per second of step wall time (the first --skip steps left out); the breakdown is
the mean seconds per step of each phase (in async mode generate/score overlap train, and
wait_for_rollouts is what the overlap did not hide). Prints a table, writes
benchmarks/results/scaling.json and scaling.png.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.train import train  # noqa: E402

PHASES = ("generate", "score", "train", "wait_for_rollouts", "sync")


def run(config: str, overrides: list[str], steps: int) -> list[dict]:
    run_dir = tempfile.mkdtemp(prefix="rlpost-scaling-")
    train(load_config(config, [*overrides, f"trainer.steps={steps}", f"run.dir={run_dir}", "eval.before=false",
                               "eval.after=false", "tracking.wandb=disabled", "run.checkpoint_every=0"]))
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def summarise(rows: list[dict], skip: int) -> dict:
    rows = rows[skip:]
    step_s = statistics.mean(r["time/step"] for r in rows)
    samples = statistics.mean(r["batch/trained_samples"] for r in rows)
    tokens = statistics.mean(r["response/length_mean"] * r["batch/trained_samples"] for r in rows)
    return {"step_s": step_s, "samples_per_s": samples / step_s, "gen_tokens_per_s": tokens / step_s,
            "phases_s": {p: statistics.mean(r.get(f"time/{p}", 0.0) for r in rows) for p in PHASES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--rollout-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--learners", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--curve-steps", type=int, default=60, help="steps of the sync vs async reward curves (0 = skip)")
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args()

    ray.init(address="local", num_cpus=8, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    grid = []
    for workers, learners, overlap in itertools.product(args.rollout_workers, args.learners, (False, True)):
        overrides = [*args.overrides, f"rollout.num_workers={workers}", f"trainer.num_learners={learners}",
                     f"rollout.async={str(overlap).lower()}", "rollout.cpus_per_worker=1", "trainer.cpus_per_learner=1"]
        grid.append({"rollout_workers": workers, "learners": learners, "async": overlap,
                     **summarise(run(args.config, overrides, args.steps), args.skip)})
        row = grid[-1]
        print(f"workers={workers} learners={learners} async={overlap!s:<5}  step {row['step_s']:.3f}s  "
              f"{row['samples_per_s']:.0f} samples/s  {row['gen_tokens_per_s']:.0f} tok/s", flush=True)
    curves = {}
    if args.curve_steps:
        for overlap in (False, True):
            rows = run(args.config, [*args.overrides, f"rollout.async={str(overlap).lower()}"], args.curve_steps)
            curves["async" if overlap else "sync"] = {
                "samples": list(itertools.accumulate(r["batch/trained_samples"] for r in rows)),
                "reward": [r["reward/mean"] for r in rows], "wall_s": sum(r["time/step"] for r in rows)}
    ray.shutdown()

    base = next(g for g in grid if g["rollout_workers"] == 1 and g["learners"] == 1 and not g["async"])
    print(f"\n{'workers':>7} {'learners':>8} {'async':>6} {'step s':>7} {'samples/s':>10} {'tok/s':>7} {'speed-up':>8}  "
          + " ".join(f"{p:>9.9}" for p in PHASES))
    for g in grid:
        g["speedup_vs_1_1_sync"] = base["step_s"] / g["step_s"]
        print(f"{g['rollout_workers']:>7} {g['learners']:>8} {g['async']!s:>6} {g['step_s']:>7.3f} {g['samples_per_s']:>10.0f} "
              f"{g['gen_tokens_per_s']:>7.0f} {g['speedup_vs_1_1_sync']:>8.2f}  " + " ".join(f"{g['phases_s'][p]:>9.3f}" for p in PHASES))
    for name, curve in curves.items():
        tail = curve["reward"][-10:]
        print(f"{name}: {curve['samples'][-1]} samples in {curve['wall_s']:.0f}s, reward first 10 "
              f"{statistics.mean(curve['reward'][:10]):.3f} -> last 10 {statistics.mean(tail):.3f}")
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "config": args.config,
              "overrides": args.overrides, "steps": args.steps, "skip": args.skip, "grid": grid, "curves": curves}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    plot(result, Path(args.out).with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{g['rollout_workers']}w/{g['learners']}l\n{'async' if g['async'] else 'sync'}" for g in result["grid"]]
    bottom = [0.0] * len(labels)
    for phase in PHASES:
        values = [g["phases_s"][phase] for g in result["grid"]]
        left.bar(labels, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    left.plot(labels, [g["step_s"] for g in result["grid"]], "k_", markersize=30, label="step wall time")
    left.set_ylabel("seconds per step")
    left.set_title("time per step by phase (rollout workers / learners)")
    left.legend(fontsize=8)
    for name, curve in result["curves"].items():
        right.plot(curve["samples"], curve["reward"], label=f"{name} ({curve['wall_s']:.0f}s)", alpha=0.8)
    right.set_xlabel("trained samples")
    right.set_ylabel("training reward")
    right.set_title("reward at the same number of samples")
    right.legend()
    fig.suptitle(f"rlpost scaling on {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
