"""code_tests scoring throughput: completions/s on short programs, isolation on and off, 1 and N workers.

Also the start-up cost of one execution (harness + `python -I -S`, with and without bubblewrap)
against a bare interpreter. Writes benchmarks/results/sandbox_throughput.json.

    python benchmarks/sandbox_throughput.py [--programs 1000] [--workers 1 4]
"""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parser, print_table, timed, write_result  # noqa: E402
from rewards import sandbox_isolation  # noqa: E402
from rewards.sandbox import Limits, run_tests  # noqa: E402
from rewards.sandbox_exec import execute  # noqa: E402
from rewards.sandbox_isolation import interpreter, isolation, probe  # noqa: E402


def programs(n: int) -> list[tuple[str, object]]:
    """Short programs, a third per test format, half of them wrong."""
    out = []
    for i in range(n):
        k, wrong = i % 3, (i // 3) % 2
        if k == 0:
            out.append((f"a, b = map(int, input().split())\nprint(a + b + {wrong})", {"inputs": [f"{i} 1"], "outputs": [str(i + 1)]}))
        elif k == 1:
            out.append((f"def f(x):\n    return x * 2 + {wrong}", {"fn_name": "f", "inputs": [[i], [1]], "outputs": [2 * i, 2]}))
        else:
            out.append((f"def f(x):\n    return sorted(x)[::{1 - 2 * wrong}]", [f"assert f([3, 1, {i}]) == {sorted([3, 1, i])}"]))
    return out


def throughput(progs: list[tuple[str, object]], workers: int, sandbox: str) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: run_tests(p[0], p[1], Limits(), sandbox), progs))
    wall = time.perf_counter() - start
    return {"workers": workers, "completions": len(progs), "seconds": round(wall, 2),
            "completions_per_s": round(len(progs) / wall, 1), "passed_fraction": sum(r.passed == r.total for r in results) / len(progs)}


def startup_ms(fn, repeats: int) -> float:
    """Mean milliseconds of `fn()` over `repeats` calls."""
    times, _ = timed(fn, repeats, warmup=False)
    return round(1000 * sum(times) / repeats, 1)


def harness(bwrap: str | None):
    return lambda: execute({"mode": "stdio", "code": "pass"}, b"", Limits(), time.monotonic() + 10, bwrap)


def main() -> None:
    cli = parser(__doc__, out="sandbox_throughput.json")
    cli.add_argument("--programs", type=int, default=1000)
    cli.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    cli.add_argument("--startup-repeats", type=int, default=100)
    args = cli.parse_args()
    logging.disable(logging.WARNING)  # the best_effort warning, expected here
    bwrap = isolation("strict")
    bare = startup_ms(lambda: subprocess.run([interpreter(), "-I", "-S", "-c", "pass"], check=True), args.startup_repeats)
    result = {"startup_ms": {"bare python -I -S": bare, "harness, no bwrap": startup_ms(harness(None), args.startup_repeats),
                             "harness in bwrap": startup_ms(harness(bwrap), args.startup_repeats)},
              "throughput": {}}
    progs = programs(args.programs)
    for label, isolated in (("isolation on (bwrap)", True), ("isolation off (best_effort layers)", False)):
        if not isolated:
            sandbox_isolation.probe = lambda: (None, "benchmark: isolation off")
        result["throughput"][label] = [throughput(progs, w, "strict" if isolated else "best_effort") for w in args.workers]
    sandbox_isolation.probe = probe
    print_table(["start-up of one execution", "ms"], result["startup_ms"].items(), ["", ".1f"])
    print_table(["scoring", "workers", "completions/s", "passed"],
                [(label, r["workers"], r["completions_per_s"], r["passed_fraction"])
                 for label, rows in result["throughput"].items() for r in rows], ["", "", ".1f", ".3f"])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
