"""How the learner's micro-batch size moves its update time on a CPU, paired (no Ray).

    python benchmarks/micro_batches.py                          # long answers, 1 and 2 threads (~11 minutes on 2 cores)
    python benchmarks/micro_batches.py --regime short --rounds 12

Why `configs/debug_cpu.yaml` caps micro-batches at 4,096 tokens: on this CPU one forward and backward over a
whole batch is not the fastest way through it (why is not measured here; smaller activations that stay in
cache are the likely reason). On a vs_trl model (cached by vs_trl.py) and a batch of 8 prompts x 8 samples the
policy generated, rlpost's learner makes one optimizer step per call under each setting: the whole batch in one
pass (no budget, 64 samples), token budgets, and sample counts. A budget that holds the whole batch (8,192
tokens with long answers) does exactly the baseline's work: its ratio shows the noise. The settings take turns
within each round (always in this order), so drift on a noisy machine hits them alike; each setting's time is
reported as the median over rounds of its ratio to the whole-batch pass in the same round, with how many
rounds it was faster. Each thread count runs in a fresh process. Gradients
are the same in every setting (tests/test_learner.py). Writes benchmarks/results/micro_batches.json.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bare_step import in_processes, policy_batch  # noqa: E402
from benchmarks.common import parser, print_table, write_result  # noqa: E402
from benchmarks.vs_trl import ensure_model  # noqa: E402

SETTINGS = {  # name -> trainer overrides (the first is the baseline)
    "whole batch": {"micro_batch_size": 64, "max_tokens_per_micro_batch": None},
    "2,048 tokens": {"micro_batch_size": 64, "max_tokens_per_micro_batch": 2048},
    "4,096 tokens": {"micro_batch_size": 64, "max_tokens_per_micro_batch": 4096},
    "8,192 tokens": {"micro_batch_size": 64, "max_tokens_per_micro_batch": 8192},
    "32 samples": {"micro_batch_size": 32, "max_tokens_per_micro_batch": None},
    "16 samples": {"micro_batch_size": 16, "max_tokens_per_micro_batch": None},
}


def paired_times(regime: str, model: str, threads: int, rounds: int) -> dict[str, Any]:
    """Per setting: seconds per update in each round (after one warm-up update each), and the batch's size."""
    from actors.learner import Learner

    cfg, batch = policy_batch(regime, model)
    learners = {name: Learner(model, cfg.model.dtype, cfg.lora, cfg.algorithm, cfg.trainer.model_copy(update=update),
                              cfg.rollout.temperature, cfg.rollout.max_new_tokens, cfg.run.seed, threads=threads)
                for name, update in SETTINGS.items()}
    times: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(rounds + 1):  # the first round warms up
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.update(batch)
            times[name].append(time.perf_counter() - start)
    lengths = [len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)]
    return {"tokens": sum(lengths), "longest": max(lengths), "times": {name: t[1:] for name, t in times.items()}}


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    base = measured["times"]["whole batch"]
    out = {}
    for name, times in measured["times"].items():
        ratios = [t / b for t, b in zip(times, base)]
        out[name] = {"median_s": statistics.median(times), "paired_ratio": statistics.median(ratios),
                     "faster_rounds": sum(r < 1 for r in ratios)}
    return out


def main() -> None:
    cli = parser(__doc__, out="micro_batches.json")
    cli.add_argument("--regime", default="long")
    cli.add_argument("--threads", default="1,2")
    cli.add_argument("--rounds", type=int, default=8)
    args = cli.parse_args()
    model = str(ensure_model(args.regime))
    result: dict[str, Any] = {"regime": args.regime, "rounds": args.rounds, "settings": SETTINGS, "threads": {}}
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        measured = in_processes([(paired_times, args.regime, model, threads, args.rounds)])[0]
        summary = summarize(measured)
        result["threads"][threads] = {**measured, "summary": summary}
        rows += [(threads, name, s["median_s"], s["paired_ratio"], f"{s['faster_rounds']}/{args.rounds}")
                 for name, s in summary.items()]
    print(f"{args.regime} answers: {measured['tokens']:,} tokens in the batch, longest sample {measured['longest']}")
    print_table(["threads", "micro-batches", "s/update", "x whole batch (paired)", "faster in"], rows,
                ["", "", ".3f", ".3f", ""])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
