"""The hf engine's generate with its reserved KV cache (actors/kv_cache.py) against HF's DynamicCache.

    python benchmarks/kv_cache.py                  # both vs_trl regimes, 1 and 2 threads (~7 minutes on 2 cores)

On the vs_trl models and batch (8 prompts x 8 samples, bare_step's setup), each thread count in a fresh
process: --rounds rounds that time one generate call with each cache, in alternating order, after a warm-up of both.
The ratio is the median of the rounds' paired ratios (reserved / DynamicCache), so that the machine's drift
cancels. Every round also checks that both caches gave the same completions, token for token and log-prob for
log-prob. Writes benchmarks/results/kv_cache.json.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bare_step import _engine, _setup, in_processes  # noqa: E402
from benchmarks.common import parser, print_table, write_result  # noqa: E402
from benchmarks.vs_trl import ensure_model  # noqa: E402


def paired_times(regime: str, model: str, threads: int, rounds: int) -> dict[str, Any]:
    import torch

    from actors import hf_backend
    from actors.kv_cache import reserved_kv_cache

    torch.set_num_threads(threads)
    cfg, specs, sampling = _setup(regime, model)
    engine = _engine(model, cfg)
    caches = {"dynamic": lambda model, reserve: None, "reserved": reserved_kv_cache}  # None: HF builds its DynamicCache
    times: dict[str, list[float]] = {name: [] for name in caches}
    identical = True
    for r in range(rounds + 1):  # round 0 warms both up
        outputs = []
        for name in (list(caches) if r % 2 else list(caches)[::-1]):
            hf_backend.reserved_kv_cache = caches[name]
            start = time.perf_counter()
            outputs.append(engine.generate(specs, sampling, 1))
            if r:
                times[name].append(time.perf_counter() - start)
        identical &= outputs[0] == outputs[1]
    ratios = [b / a for a, b in zip(times["dynamic"], times["reserved"])]
    return {"dynamic_s": statistics.median(times["dynamic"]), "reserved_s": statistics.median(times["reserved"]),
            "ratio": statistics.median(ratios), "faster_rounds": sum(r < 1 for r in ratios), "identical": identical,
            "times": times}


def main() -> None:
    cli = parser(__doc__, out="kv_cache.json")
    cli.add_argument("--regimes", default="short,long")
    cli.add_argument("--threads", default="1,2")
    cli.add_argument("--rounds", type=int, default=24, help="paired rounds per thread count (a short-answer call "
                     "takes ~0.15 s, so its ratio needs many)")
    args = cli.parse_args()
    result: dict[str, Any] = {"rounds": args.rounds, "regimes": {}}
    rows = []
    for regime in args.regimes.split(","):
        model = str(ensure_model(regime))
        for threads in map(int, args.threads.split(",")):
            run = in_processes([(paired_times, regime, model, threads, args.rounds)])[0]
            result["regimes"].setdefault(regime, {})[f"{threads}t"] = run
            rows.append((regime, threads, run["dynamic_s"], run["reserved_s"], run["ratio"],
                         f"{run['faster_rounds']}/{args.rounds}", run["identical"]))
            print(f"{regime} at {threads} thread(s): {run['ratio']:.3f}x", flush=True)
    print_table(["regime", "threads", "DynamicCache s", "reserved s", "ratio", "reserved faster", "identical"], rows,
                ["", "", ".3f", ".3f", ".3f", "", ""])
    if not all(row[-1] for row in rows):
        raise SystemExit("the two caches gave different completions")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
