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

import itertools
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from benchmarks.common import NO_EVAL, machine, parser, print_table, read_jsonl, train_run, write_result  # noqa: E402

PHASES = ("generate", "score", "train", "wait_for_rollouts", "sync")


def run(config: str, overrides: list[str], steps: int) -> list[dict]:
    _, run_dir = train_run(config, [*overrides, f"trainer.steps={steps}", *NO_EVAL], prefix="rlpost-scaling-")
    return read_jsonl(run_dir / "metrics.jsonl")


def summarise(rows: list[dict], skip: int) -> dict:
    rows = rows[skip:]
    step_s = statistics.mean(r["time/step"] for r in rows)
    samples = statistics.mean(r["batch/trained_samples"] for r in rows)
    tokens = statistics.mean(r["response/length_mean"] * r["batch/trained_samples"] for r in rows)
    return {"step_s": step_s, "samples_per_s": samples / step_s, "gen_tokens_per_s": tokens / step_s,
            "phases_s": {p: statistics.mean(r.get(f"time/{p}", 0.0) for r in rows) for p in PHASES}}


def main() -> None:
    cli = parser(__doc__, config=True, out="scaling.json")
    cli.add_argument("--steps", type=int, default=15)
    cli.add_argument("--skip", type=int, default=3)
    cli.add_argument("--rollout-workers", type=int, nargs="+", default=[1, 2])
    cli.add_argument("--learners", type=int, nargs="+", default=[1, 2])
    cli.add_argument("--curve-steps", type=int, default=60, help="steps of the sync vs async reward curves (0 = skip)")
    args = cli.parse_intermixed_args()

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
    for g in grid:
        g["speedup_vs_1_1_sync"] = base["step_s"] / g["step_s"]
    print()
    print_table(["workers", "learners", "async", "step s", "samples/s", "tok/s", "speed-up", *PHASES],
                [(g["rollout_workers"], g["learners"], str(g["async"]), g["step_s"], g["samples_per_s"], g["gen_tokens_per_s"],
                  g["speedup_vs_1_1_sync"], *(g["phases_s"][p] for p in PHASES)) for g in grid],
                ["", "", "", ".3f", ".0f", ".0f", ".2f", *[".3f"] * len(PHASES)])
    for name, curve in curves.items():
        tail = curve["reward"][-10:]
        print(f"{name}: {curve['samples'][-1]} samples in {curve['wall_s']:.0f}s, reward first 10 "
              f"{statistics.mean(curve['reward'][:10]):.3f} -> last 10 {statistics.mean(tail):.3f}")
    result = {"machine": machine(), "config": args.config, "overrides": args.overrides, "steps": args.steps,
              "skip": args.skip, "grid": grid, "curves": curves}
    plot(result, write_result(args.out, result).with_suffix(".png"))


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
