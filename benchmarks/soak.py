"""Soak test: a long CPU run while rollout and reward workers are killed on a timer.

    python benchmarks/soak.py configs/debug_cpu.yaml --steps 300 --kill-every 10 [section.key=value ...]

Every --kill-every seconds a random rollout or reward worker of the run gets SIGKILL (alternating).
Reports steps completed, restarts, redone work, the memory of the driver plus every Ray process
(peak, and the mean of the first vs the last quarter of the run: growth would show a leak) and
/dev/shm entries before and after. Prints a table, writes benchmarks/results/soak.json.
"""
from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import NO_EVAL, machine, parser, print_table, read_jsonl, train_run, write_result  # noqa: E402

VICTIMS = ("ray::RolloutWorker", "ray::RewardWorker")


def ray_processes() -> list[psutil.Process]:
    """This run's actors: the local Ray started by this driver runs as its descendants."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any(part.startswith("ray::") for part in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def rss_gib() -> float:
    """The driver and every process of its Ray (raylet, GCS, workers)."""
    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**30


class Chaos(threading.Thread):
    def __init__(self, every_s: float, seed: int):
        super().__init__(daemon=True)
        self.every_s, self.rng, self.stop = every_s, random.Random(seed), threading.Event()
        self.kills: dict[str, int] = {v: 0 for v in VICTIMS}
        self.memory: list[tuple[float, float]] = []  # (seconds, GiB)

    def run(self) -> None:
        start, next_kill, turn = time.monotonic(), time.monotonic() + self.every_s, 0
        while not self.stop.wait(1.0):
            self.memory.append((time.monotonic() - start, rss_gib()))
            if time.monotonic() < next_kill:
                continue
            kind = VICTIMS[turn % len(VICTIMS)]
            victims = [p for p in ray_processes() if any(part.startswith(kind) for part in p.cmdline())]
            if victims:
                self.rng.choice(victims).send_signal(signal.SIGKILL)
                self.kills[kind] += 1
            turn, next_kill = turn + 1, time.monotonic() + self.every_s


def main() -> None:
    cli = parser(__doc__, config=True, out="soak.json")
    cli.add_argument("--steps", type=int, default=300)
    cli.add_argument("--kill-every", type=float, default=10.0, help="seconds between kills")
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_intermixed_args()

    overrides = ["rollout.num_workers=2", "rollout.cpus_per_worker=0.5", "reward.num_workers=2", "rollout.max_restarts=-1",
                 "reward.max_restarts=-1", *args.overrides, f"trainer.steps={args.steps}", *NO_EVAL, "run.checkpoint_every=50"]
    shm_before = len(os.listdir("/dev/shm"))
    chaos = Chaos(args.kill_every, args.seed)
    chaos.start()
    start = time.perf_counter()
    try:
        results, run_dir = train_run(args.config, overrides, prefix="rlpost-soak-")
    finally:
        chaos.stop.set()
        chaos.join()
    wall = time.perf_counter() - start
    time.sleep(2.0)  # let killed actors' processes exit
    rows = read_jsonl(run_dir / "metrics.jsonl")
    memory = [gib for _, gib in chaos.memory]
    quarter = max(1, len(memory) // 4)
    report = {
        "machine": machine(),
        "config": args.config, "overrides": args.overrides, "steps_asked": args.steps,
        "steps_completed": len(rows), "steps_unique": len({r["step"] for r in rows}), "wall_s": round(wall, 1),
        "kills": chaos.kills, **{k: rows[-1][k] for k in rows[-1] if k.startswith("faults/")},
        "samples_per_step_min": min(r["batch/trained_samples"] for r in rows),
        "samples_per_step_max": max(r["batch/trained_samples"] for r in rows),
        "train_reward_first": results.get("train_reward_first"), "train_reward_last": results.get("train_reward_last"),
        "memory_peak_gib": round(max(memory), 3), "memory_first_quarter_gib": round(sum(memory[:quarter]) / quarter, 3),
        "memory_last_quarter_gib": round(sum(memory[-quarter:]) / quarter, 3),
        "dev_shm_entries_before": shm_before, "dev_shm_entries_after": len(os.listdir("/dev/shm")),
    }
    print_table(["metric", "value"], report.items())
    write_result(args.out, {**report, "memory_trace_gib": [round(m, 3) for m in memory]})


if __name__ == "__main__":
    main()
