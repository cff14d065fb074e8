"""GPU check: the learner's LoRA update and the `hf` rollout backend on CUDA, with a model built here.

    python benchmarks/gpu_check.py [--hidden 1024 --layers 12 --prompts 64 --n 8 --new-tokens 128]

Needs only torch, transformers, peft, pydantic and pyyaml (no Ray, no vLLM): it drives the same
plain classes the Ray actors wrap. Prints generated tokens/s, learner step time and trained
tokens/s, and checks that an adapter synced from the learner gives the rollout engine the same
log-probs; times an adapter sync against a merged full-weight sync (reloaded in place into an engine
without LoRA, verified the same way), and measures what the engine's sleep frees while the learner
trains. Writes benchmarks/results/gpu_check.json (or --out).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.hf_backend import HFEngine  # noqa: E402
from actors.learner import Learner  # noqa: E402
from benchmarks.common import parser, timed, write_result  # noqa: E402
from pipeline.config import TinyModelConfig, load_config  # noqa: E402
from pipeline.records import PromptSpec, SamplingSpec, TrainBatch  # noqa: E402
from pipeline.tasks import generate_split  # noqa: E402
from pipeline.tiny_model import build_tokenizer, ensure_tiny_model  # noqa: E402


def cuda_timed(fn, repeats: int, warmup: bool = True) -> tuple[list[float], object]:
    return timed(fn, repeats, warmup=warmup, sync=torch.cuda.synchronize)


def main() -> None:
    cli = parser(__doc__, out="gpu_check.json", new_tokens=128)
    cli.add_argument("--hidden", type=int, default=1024)
    cli.add_argument("--layers", type=int, default=12)
    cli.add_argument("--dtype", default="bfloat16")
    args = cli.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device")

    import peft
    import transformers

    recipe = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64,
                             max_positions=512, sft_steps=0, cache_dir=tempfile.mkdtemp())
    path = str(ensure_tiny_model(recipe))
    cfg = load_config("configs/debug_cpu.yaml", ["trainer.gpus_per_learner=1", "placement.mode=split", "trainer.minibatch_size=512",
                                                  "trainer.micro_batch_size=128", "trainer.lr=1e-4",
                                                  "trainer.max_tokens_per_micro_batch=null"])  # as recorded: 128-sample micro-batches
    lora = cfg.lora
    engine = HFEngine(path, args.dtype, lora, gpus=1)
    learner = Learner(path, args.dtype, lora, cfg.algorithm, cfg.trainer,
                      temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
    n_params = sum(p.numel() for p in engine.model.parameters())

    tokenizer = build_tokenizer()
    examples = generate_split("add_3d", args.prompts, 0, seed=0)[0]
    prompts = [PromptSpec(i, tokenizer(p)["input_ids"]) for i, (p, _) in enumerate(examples)]
    sampling = SamplingSpec(n=args.n, temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
    engine.generate(prompts[:4], sampling, 0)  # warm-up (CUDA context, kernels)
    gen_times, completions = cuda_timed(lambda: engine.generate(prompts, sampling, 0), args.repeats, warmup=False)
    gen_tokens = sum(len(c.token_ids) for c in completions)

    gen = torch.Generator().manual_seed(0)
    batch = TrainBatch([c.prompt_ids for c in completions], [c.token_ids for c in completions],
                       torch.randn(len(completions), generator=gen).tolist(), [c.group_id for c in completions])
    train_times, metrics = cuda_timed(lambda: learner.update(batch), args.repeats)

    engine.load_adapter(learner.adapter_state(), 1)
    probe = (completions[0].prompt_ids, completions[0].token_ids)
    rollout_lp = engine.sequence_logprobs([probe[0]], [probe[1]], 1.0)[0]
    learner_lp = learner.sequence_logprobs([probe[0]], [probe[1]])[0]
    gap = max(abs(a - b) for a, b in zip(rollout_lp, learner_lp))

    bare = HFEngine(path, args.dtype, None, gpus=1)  # rollout.weight_sync=merged: the engine runs no LoRA
    sync = {}
    for kind, send in (("adapter", lambda: engine.load_adapter(learner.adapter_state(), 2)),
                       ("merged", lambda: bare.load_merged(learner.merged_state(), 2))):
        times, _ = cuda_timed(send, args.repeats)
        sync[kind] = {"seconds_median": statistics.median(times)}
    sync["adapter"]["bytes"] = sum(v.nbytes for v in learner.adapter_state().values())
    sync["merged"]["bytes"] = sum(t.numel() * t.element_size() for t in learner.merged_state().values())
    merged_lp = bare.sequence_logprobs([probe[0]], [probe[1]], 1.0)[0]
    expected_lp = learner.merged_logprobs([probe[0]], [probe[1]], 1.0)[0]
    sync["merged"]["max_logprob_gap"] = max(abs(a - b) for a, b in zip(merged_lp, expected_lp))
    sync["merged"]["max_gap_to_adapter_on_the_fly"] = max(abs(a - b) for a, b in zip(merged_lp, learner_lp))

    greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=16)
    before_sleep = [c.token_ids for c in engine.generate(prompts[:8], greedy, 2)]
    allocated = torch.cuda.memory_allocated()
    engine.sleep()
    freed_gib = (allocated - torch.cuda.memory_allocated()) / 2**30
    engine.wake_up()
    same_after_wake = [c.token_ids for c in engine.generate(prompts[:8], greedy, 2)] == before_sleep

    result = {
        "device": torch.cuda.get_device_name(0),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "model": {"hidden": args.hidden, "layers": args.layers, "params": n_params, "dtype": args.dtype,
                  "lora_rank": lora.rank},
        "rollout_hf": {"samples": len(completions), "generated_tokens": gen_tokens,
                       "seconds_median": statistics.median(gen_times),
                       "gen_tokens_per_s": gen_tokens / statistics.median(gen_times)},
        "learner": {"samples": len(completions), "trained_tokens": gen_tokens,
                    "update_seconds_median": statistics.median(train_times),
                    "trained_tokens_per_s": gen_tokens / statistics.median(train_times),
                    "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "last_metrics": metrics},
        "adapter_sync_max_logprob_gap": gap,
        "sync": sync, "sync_ratio_merged_over_adapter": sync["merged"]["seconds_median"] / sync["adapter"]["seconds_median"],
        "sleep": {"freed_gib": freed_gib, "same_greedy_output_after_wake": same_after_wake},
    }
    print(f"device            {result['device']}  ({n_params / 1e6:.0f}M params, {args.dtype}, LoRA r={lora.rank})")
    print(f"hf rollout        {len(completions)} samples, {gen_tokens} tokens in {statistics.median(gen_times):.2f}s"
          f" = {result['rollout_hf']['gen_tokens_per_s']:.0f} tok/s")
    print(f"learner update    {statistics.median(train_times):.2f}s per update of {len(completions)} samples"
          f" = {result['learner']['trained_tokens_per_s']:.0f} trained tok/s, peak {result['learner']['peak_memory_gib']:.1f} GiB")
    print(f"adapter sync      max |logprob gap| learner vs rollout = {gap:.2e}")
    for kind, row in sync.items():
        print(f"{kind + ' sync':<18}{row['seconds_median'] * 1000:.1f} ms for {row['bytes'] / 1e6:.1f} MB")
    print(f"merged sync       max |logprob gap| = {sync['merged']['max_logprob_gap']:.2e}")
    print(f"engine sleep      freed {freed_gib:.2f} GiB; same greedy output after wake-up: {same_after_wake}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
