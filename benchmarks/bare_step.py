"""What rlpost's own engine and learner cost for one vs_trl step with no framework around them (no Ray).

    python benchmarks/bare_step.py                 # both regimes, one run (~9 minutes on 2 cores)
    python benchmarks/bare_step.py --runs 3        # three runs, each with its own TRL measurement

(One measurement starts a local Ray: on a machine with other interfaces, run it in a private network namespace
as the README's tests do.)

Issue #15 asks for step-time ratios against TRL. This separates what the framework adds (Ray calls, the
verified sync, scheduling) from what the work itself costs with rlpost's implementation on this machine: a
target below these numbers cannot be met by framework work alone. They are floors of this implementation
(HF `generate` in float32, the eager learner), not of the hardware: a faster decoder or kernels would lower
them. On the vs_trl models (cached by vs_trl.py), with a batch of 8 prompts x 8 samples the policy generated:
  * generate: rlpost's hf engine (the folded adapter) at 1 and at 2 torch threads in one process, and as two
    processes of half the batch at one thread each, side by side (what two rollout workers do); and at 2 threads
    again beside a local Ray holding a run's actors, idle (what Ray's own processes cost the work: the
    difference from the bare 2-thread time);
  * update: rlpost's learner, one optimizer step on that batch, at 1 and at 2 threads;
  * TRL: vs_trl.py's `trl_2t` arm for a few steps in the same run, so each ratio has its own baseline.
Each is the median of --repeats timed calls after one warm-up, in a fresh process.

Bare step times: sync = the best generation plus the best update; async = the slower of generation and update
at one thread each (rlpost's async shape: one core per side); per core = the one-thread work of both sides
over the cores (any split, at one-thread efficiency). Writes benchmarks/results/bare_step.json.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import random
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parser, print_table, read_jsonl, timed, write_result  # noqa: E402
from benchmarks.vs_trl import REGIMES, ensure_model, launch, rlpost_config, summarize, write_data  # noqa: E402


def _setup(regime: str, model: str, seed: int = 0):
    """vs_trl's config for this regime's rlpost arm (hf sync), 8 of its training prompts and its sampling: the
    measured engine and learner are set up exactly as the benchmark runs them."""
    from actors.policy_model import load_tokenizer
    from pipeline.records import PromptSpec
    from pipeline.train import _sampling

    with tempfile.TemporaryDirectory(prefix="bare-step-") as tmp:
        train_file, test_file = write_data(regime, Path(tmp))
        cfg = rlpost_config({"regime": regime, "arm": "hf_sync", "seed": seed, "steps": 1, "model": model,
                             "train": str(train_file), "test": str(test_file)}, Path(tmp) / "run")
        rows = random.Random(seed).sample(read_jsonl(train_file), 8)
    tokenizer = load_tokenizer(model)
    specs = [PromptSpec(i, tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for i, r in enumerate(rows)]
    return cfg, specs, _sampling(cfg, seed)


def _engine(model: str, cfg):
    from actors.hf_backend import HFEngine
    from actors.policy_model import adapter_parameters

    engine = HFEngine(model, cfg.model.dtype, cfg.lora, gpus=0)
    adapter = {k: v.detach().numpy().copy() for k, v in adapter_parameters(engine.model).items()}
    engine.load_adapter(adapter, 1)  # as after a weight sync: the adapter folded into the weights
    return engine


def generate_times(regime: str, model: str, threads: int, part: slice, repeats: int, barrier=None) -> list[float]:
    """Seconds per generate call of the prompts in `part`; with a barrier, each call starts with the other process's."""
    import torch

    torch.set_num_threads(threads)
    cfg, specs, sampling = _setup(regime, model)
    engine = _engine(model, cfg)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        if barrier is not None:
            barrier.wait()
        start = time.perf_counter()
        engine.generate(specs[part], sampling, 1)
        times.append(time.perf_counter() - start)
    return times[1:]


def policy_batch(regime: str, model: str):
    """vs_trl's config for this regime and a training batch of 8 prompts x 8 samples the policy generated."""
    from pipeline.records import TrainBatch

    cfg, specs, sampling = _setup(regime, model)
    completions = _engine(model, cfg).generate(specs, sampling, 1)
    advantages = [random.Random(i).uniform(-1, 1) for i in range(len(completions))]  # the cost does not depend on them
    return cfg, TrainBatch([c.prompt_ids for c in completions], [c.token_ids for c in completions], advantages,
                           [c.group_id for c in completions])


def update_times(regime: str, model: str, threads: int, repeats: int) -> list[float]:
    """Seconds per learner update (at `threads`: the learner sets them) on a batch the policy generated."""
    from actors.learner import Learner

    cfg, batch = policy_batch(regime, model)
    learner = Learner(model, cfg.model.dtype, cfg.lora, cfg.algorithm, cfg.trainer, cfg.rollout.temperature,
                      cfg.rollout.max_new_tokens, cfg.run.seed, threads=threads)
    return timed(lambda: learner.update(batch), repeats)[0]


@contextmanager
def ray_idle(regime: str, model: str):
    """A local Ray with a run's actors (learner, rollout and reward workers, weights synced once), idle: the
    background processes every rlpost step runs beside, whose wake-ups a bare measurement does not pay."""
    import ray

    from actors.group import ActorGroup, init_ray

    cfg, specs, _ = _setup(regime, model)
    init_ray(cfg)
    actors = ActorGroup(cfg, model)
    try:
        actors.sync(1, (specs[0].prompt_ids, specs[0].prompt_ids[:6]))
        yield
    finally:
        actors.shutdown()
        ray.shutdown()


def _child(queue, fn, *args) -> None:
    queue.put(fn(*args))


def in_processes(calls: list[tuple]) -> list[Any]:
    """Each (fn, *args) in its own fresh process, all at once; their results in order. A process that dies
    without a result stops the benchmark with its exit code instead of hanging it."""
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in calls]
    procs = [ctx.Process(target=_child, args=(q, *call)) for q, call in zip(queues, calls)]
    for p in procs:
        p.start()
    results = []
    for q, p in zip(queues, procs):
        while True:
            try:
                results.append(q.get(timeout=5))
                break
            except queue.Empty:
                if not p.is_alive() and q.empty():
                    raise RuntimeError(f"a measuring process exited with code {p.exitcode} and no result") from None
    for p in procs:
        p.join()
    return results


def trl_step(regime: str, model: str, log_dir: Path) -> float:
    """TRL's median s/step (vs_trl's `trl_2t` arm, a few steps after warm-up) on this machine, now."""
    spec = REGIMES[regime]
    train_file, test_file = write_data(regime, log_dir)
    job = {"regime": regime, "arm": "trl_2t", "seed": 0, "steps": spec["quick_steps"] + 4, "model": model,
           "train": str(train_file), "test": str(test_file)}
    return summarize(launch(job, log_dir), spec["quick_skip"])["step_s"]


def measure(regime: str, repeats: int, log_dir: Path) -> dict[str, Any]:
    model = str(ensure_model(regime))
    whole, first, second = slice(None), slice(0, 4), slice(4, 8)
    out = {name: statistics.median(in_processes([(generate_times, regime, model, t, whole, repeats)])[0])
           for name, t in (("generate_1t", 1), ("generate_2t", 2))}
    with ray_idle(regime, model):
        out["generate_2t_ray_idle"] = statistics.median(in_processes([(generate_times, regime, model, 2, whole, repeats)])[0])
    barrier = mp.get_context("spawn").Barrier(2)
    halves = in_processes([(generate_times, regime, model, 1, part, repeats, barrier) for part in (first, second)])
    out["generate_2x1t"] = statistics.median(max(pair) for pair in zip(*halves))
    for name, t in (("update_1t", 1), ("update_2t", 2)):
        out[name] = statistics.median(in_processes([(update_times, regime, model, t, repeats)])[0])
    cores = len(os.sched_getaffinity(0))
    out["bare_sync_s"] = min(out["generate_1t"], out["generate_2t"], out["generate_2x1t"]) + min(out["update_1t"], out["update_2t"])
    out["bare_async_s"] = max(out["generate_1t"], out["update_1t"])
    out["bare_per_core_s"] = (out["generate_1t"] + out["update_1t"]) / cores
    out["trl_step_s"] = trl = trl_step(regime, model, log_dir)
    for key in ("sync", "async", "per_core"):
        out[f"bare_{key}_x_trl"] = out[f"bare_{key}_s"] / trl
    return out


def main() -> None:
    cli = parser(__doc__, out="bare_step.json")
    cli.add_argument("--regimes", default="short,long")
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--runs", type=int, default=1, help="whole measurements, one after the other (the spread is "
                     "this machine's noise)")
    args = cli.parse_args()
    result: dict[str, Any] = {"repeats": args.repeats, "runs": args.runs, "regimes": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bare-step-trl-") as log_dir:
        for regime in args.regimes.split(","):
            runs = [measure(regime, args.repeats, Path(log_dir)) for _ in range(args.runs)]
            result["regimes"][regime] = {"runs": runs, "median": {k: statistics.median(r[k] for r in runs) for k in runs[0]}}
            rows += [(regime, i, r["generate_1t"], r["generate_2t"], r["generate_2t_ray_idle"], r["generate_2x1t"],
                      r["update_1t"], r["update_2t"],
                      r["trl_step_s"], r["bare_sync_x_trl"], r["bare_async_x_trl"], r["bare_per_core_x_trl"])
                     for i, r in enumerate(runs)]
    print_table(["regime", "run", "gen 1t", "gen 2t", "gen 2t, Ray idle", "gen 2x1t", "update 1t", "update 2t",
                 "TRL s/step", "bare sync x TRL", "bare async x TRL", "per core x TRL"], rows,
                ["", "", ".3f", ".3f", ".3f", ".3f", ".3f", ".3f", ".3f", ".2f", ".2f", ".2f"])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
