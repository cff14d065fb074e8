"""Time per phase of a training step, and the share of wall time that is overhead.

    python benchmarks/step_breakdown.py configs/debug_cpu.yaml --steps 30 [section.key=value ...]

Overhead = step wall time not spent generating, scoring, training or syncing (driver-side
advantage computation, metric assembly, logging, Ray call latency outside the timed phases).
Prints a table and writes benchmarks/results/step_breakdown.json.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import NO_EVAL, parser, print_table, read_jsonl, train_run, write_result  # noqa: E402

PHASES = ("generate", "score", "train", "sync")


def main() -> None:
    cli = parser(__doc__, config=True, out="step_breakdown.json")
    cli.add_argument("--steps", type=int, default=30)
    cli.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the averages")
    args = cli.parse_intermixed_args()

    start = time.perf_counter()
    _, run_dir = train_run(args.config, [*args.overrides, f"trainer.steps={args.steps}", *NO_EVAL])
    total = time.perf_counter() - start
    rows = read_jsonl(run_dir / "metrics.jsonl")[args.skip:]

    step = statistics.mean(r["time/step"] for r in rows)
    phases = {p: statistics.mean(r[f"time/{p}"] for r in rows) for p in PHASES}
    overhead = step - sum(phases.values())
    result = {
        "config": args.config, "overrides": args.overrides, "steps_measured": len(rows),
        "step_s": step, "phases_s": phases, "overhead_s": overhead, "overhead_share": overhead / step,
        "startup_and_teardown_s": total - sum(r["time/step"] for r in rows),
        "gen_tokens_per_s": statistics.mean(r["throughput/gen_tokens_per_s"] for r in rows),
    }
    print_table(["phase", "s/step", "share"],
                [(name, seconds, seconds / step) for name, seconds in [*phases.items(), ("overhead", overhead), ("step", step)]],
                ["", ".4f", ".1%"])
    print(f"startup + teardown {result['startup_and_teardown_s']:.1f}s")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
