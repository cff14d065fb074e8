"""Time per phase of a training step, and the share of wall time that is overhead.

    python benchmarks/step_breakdown.py configs/debug_cpu.yaml --steps 30 [section.key=value ...]

Overhead = step wall time not spent generating, scoring, training or syncing (driver-side
advantage computation, metric assembly, logging, Ray call latency outside the timed phases).
Prints a table and writes benchmarks/results/step_breakdown.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.train import train  # noqa: E402

PHASES = ("generate", "score", "train", "sync")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the averages")
    parser.add_argument("--out", default="benchmarks/results/step_breakdown.json")
    args = parser.parse_args()

    run_dir = tempfile.mkdtemp(prefix="rlpost-bench-")
    cfg = load_config(args.config, [*args.overrides, f"trainer.steps={args.steps}", f"run.dir={run_dir}",
                                    "eval.before=false", "eval.after=false", "tracking.wandb=disabled", "run.checkpoint_every=0"])
    start = time.perf_counter()
    train(cfg)
    total = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()][args.skip:]

    step = statistics.mean(r["time/step"] for r in rows)
    phases = {p: statistics.mean(r[f"time/{p}"] for r in rows) for p in PHASES}
    overhead = step - sum(phases.values())
    result = {
        "config": args.config, "overrides": args.overrides, "steps_measured": len(rows),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores",
        "step_s": step, "phases_s": phases, "overhead_s": overhead, "overhead_share": overhead / step,
        "startup_and_teardown_s": total - sum(r["time/step"] for r in rows),
        "gen_tokens_per_s": statistics.mean(r["throughput/gen_tokens_per_s"] for r in rows),
    }
    print(f"{'phase':<10}{'s/step':>10}{'share':>9}")
    for name, seconds in [*phases.items(), ("overhead", overhead)]:
        print(f"{name:<10}{seconds:>10.4f}{seconds / step:>9.1%}")
    print(f"{'step':<10}{step:>10.4f}{1:>9.1%}   (startup + teardown {result['startup_and_teardown_s']:.1f}s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
