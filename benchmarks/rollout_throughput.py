"""Rollout throughput: bare vLLM vs the rlpost RolloutWorker (vllm backend) vs the hf backend.

    python benchmarks/rollout_throughput.py [--prompts 64 --n 8 --new-tokens 8 --repeats 3] [--model PATH]

Same prompts and sampling settings through (a) `vllm.LLM.generate`, (b) RolloutWorker(backend=vllm),
(c) RolloutWorker(backend=hf), (d) RolloutWorker(backend=vllm) serving merged weights (no LoRA), all in
this process on the same model. Prints generated tokens/s, the ratios b/a (wrapper overhead), b/c and
d/b, and the time and size of one verified weight sync: adapter (b) vs merged full weights reloaded in
place (d), each including the learner's side (reading out the adapter / folding it into every weight).
Writes benchmarks/results/rollout_throughput.json.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from actors.learner import Learner  # noqa: E402
from actors.rollout import RolloutWorker  # noqa: E402
from benchmarks.common import parser, print_table, timed, write_result  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.records import PromptSpec, SamplingSpec  # noqa: E402
from pipeline.tasks import generate_split  # noqa: E402
from pipeline.tiny_model import ensure_tiny_model  # noqa: E402


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = timed(fn, repeats)
    return statistics.median(times), out


def main() -> None:
    cli = parser(__doc__, out="rollout_throughput.json", new_tokens=8)
    cli.add_argument("--model", default=None)
    args = cli.parse_args()

    cfg = load_config("configs/debug_cpu.yaml", [f"model.path={args.model}"] if args.model else [])
    path = cfg.model.path or str(ensure_tiny_model(cfg.model.tiny))
    lora = cfg.lora
    hf = RolloutWorker(path, "float32", lora, "hf", threads=os.cpu_count() or 1, gpus=0)
    ours = RolloutWorker(path, "float32", lora, "vllm", threads=os.cpu_count() or 1, gpus=0)
    merged = RolloutWorker(path, "float32", None, "vllm", threads=os.cpu_count() or 1, gpus=0)
    texts = [p for p, _ in generate_split("sort_6", args.prompts, 0, seed=0)[0]]
    prompts = [PromptSpec(i, hf.engine.tokenizer(t, add_special_tokens=False)["input_ids"]) for i, t in enumerate(texts)]
    sampling = SamplingSpec(n=args.n, temperature=1.0, max_new_tokens=args.new_tokens, seed=0)

    from vllm import SamplingParams

    bare = ours.engine.llm  # the same engine object, driven directly: the baseline without rlpost's code
    params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.new_tokens, seed=0, logprobs=0)
    inputs = [{"prompt_token_ids": p.prompt_ids} for p in prompts]
    bare_s, bare_out = median_time(lambda: bare.generate(inputs, params, use_tqdm=False), args.repeats)
    bare_tokens = sum(len(o.token_ids) for r in bare_out for o in r.outputs)
    rows = {"a_bare_vllm": (bare_s, bare_tokens)}
    for name, worker in (("b_rlpost_vllm", ours), ("c_rlpost_hf", hf), ("d_rlpost_vllm_merged", merged)):
        seconds, out = median_time(lambda w=worker: w.generate(prompts, sampling), args.repeats)
        rows[name] = (seconds, sum(len(c.token_ids) for c in out))

    learner = Learner(path, "float32", lora, cfg.algorithm, cfg.trainer, 1.0, args.new_tokens, 0)
    probe = (prompts[0].prompt_ids, prompts[0].prompt_ids[:4])
    versions = iter(range(1, 10**6))
    sync = {}
    for kind, state, worker in (("adapter", learner.adapter_state, ours), ("merged", learner.merged_state, merged)):
        seconds, (_, nbytes) = median_time(lambda: worker.load_weights(state(), next(versions), probe), args.repeats)
        sync[kind] = {"seconds": seconds, "bytes": nbytes}

    result = {"model": path,
              "samples": args.prompts * args.n, "max_new_tokens": args.new_tokens,
              "tokens_per_s": {k: t / s for k, (s, t) in rows.items()}, "seconds": {k: s for k, (s, _) in rows.items()},
              "sync": sync, "sync_ratio_merged_over_adapter": sync["merged"]["seconds"] / sync["adapter"]["seconds"]}
    tps = result["tokens_per_s"]
    result["ratio_b_over_a"] = tps["b_rlpost_vllm"] / tps["a_bare_vllm"]
    result["ratio_b_over_c"] = tps["b_rlpost_vllm"] / tps["c_rlpost_hf"]
    result["ratio_d_over_b"] = tps["d_rlpost_vllm_merged"] / tps["b_rlpost_vllm"]
    print_table(["engine", "seconds", "tokens/s"], [(name, s, t / s) for name, (s, t) in rows.items()], ["", ".3f", ".0f"])
    print(f"b/a = {result['ratio_b_over_a']:.2f}   b/c = {result['ratio_b_over_c']:.2f}   d/b = {result['ratio_d_over_b']:.2f}")
    for kind, row in sync.items():
        print(f"{kind} sync (learner read-out + transfer file + load + verify probe): {row['seconds'] * 1000:.1f} ms "
              f"for {row['bytes'] / 1e6:.2f} MB")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
