"""Peak learner memory and time of one learner update as the completion length grows.

    python benchmarks/memory.py [--quick] [--layers N] [--lengths 256,1024,...] [--variants ...]

The policy is built in code, with random weights (nothing is downloaded), from Qwen2.5-0.5B's
architecture: hidden 896, 14 attention heads, 2 KV heads, MLP 4864, vocabulary 151,936, tied
embeddings, but --layers decoder layers (the real model has 24; default 2 on the CPU, 24 on a GPU;
--quick: 1 layer and lengths up to 2,048), wrapped in the default LoRA adapter. Each point (variant
x completion length) is one `Learner.update` on --samples completions of that length after a
64-token prompt, in a fresh subprocess:

  chunked        the learner as it is: hidden states of the response positions only, log-probs as
                 logits[token] - logsumexp(logits) a chunk of rows at a time (no tokens x vocabulary
                 tensor kept for the backward)
  checkpointing  the same with trainer.gradient_checkpointing=true
  full-logits    token_logprobs replaced by the previous implementation: float32 logits for every
                 position, a full-vocabulary log_softmax and an entropy over it (capped at
                 --full-logits-max tokens: it grows by ~4 copies of tokens x 151,936 floats)

Peak memory is the update's high-water above what the process held just before it: on the CPU the
resident set (VmHWM, reset through /proc/self/clear_refs; tracemalloc does not see torch's
allocations), on a GPU torch.cuda.max_memory_allocated. Time: wall seconds, and on the CPU also the
process's CPU seconds (all threads; the steadier number on a shared machine). Prints a table with a linear fit per
variant and writes benchmarks/results/memory.json (memory_quick.json with --quick) and a .png.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, parser, print_table, write_result  # noqa: E402

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
PROMPT_TOKENS = 64
VARIANTS = ("chunked", "checkpointing", "full-logits")
MiB = 2 ** 20


def main() -> None:
    cli = parser(__doc__, out="memory.json")
    cli.add_argument("--quick", action="store_true", help="1 layer, lengths 256..2048 (a CPU run of a few minutes)")
    cli.add_argument("--layers", type=int, default=None, help="decoder layers (default: 24 on a GPU, 2 on the CPU, 1 --quick)")
    cli.add_argument("--lengths", default=None, help="completion lengths, comma-separated (default 256..8192, doubling)")
    cli.add_argument("--samples", type=int, default=1, help="completions per update (one micro-batch)")
    cli.add_argument("--variants", default=",".join(VARIANTS))
    cli.add_argument("--full-logits-max", type=int, default=None, help="longest completion for full-logits "
                     "(default: 4096 on the CPU, 1024 --quick, every length on a GPU)")
    cli.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    cli.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    cli.add_argument("--warmup", type=int, default=None, help="untimed updates before the measured one (default: 1 on a GPU, 0 on the CPU)")
    cli.add_argument("--point", help=argparse_hidden())
    args = cli.parse_args()
    if args.point:
        print("RESULT " + json.dumps(measure(json.loads(args.point))), flush=True)
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device == "cuda"
    layers = args.layers or (1 if args.quick else 24 if gpu else 2)
    lengths = [int(v) for v in args.lengths.split(",")] if args.lengths else (
        [256, 512, 1024, 2048] if args.quick else [256, 512, 1024, 2048, 4096, 8192])
    full_max = args.full_logits_max or (max(lengths) if gpu else 1024 if args.quick else 4096)
    if args.quick and args.out == os.path.relpath(RESULTS / "memory.json"):
        args.out = os.path.relpath(RESULTS / "memory_quick.json")
    common = dict(device=device, dtype=args.dtype or ("bfloat16" if gpu else "float32"), layers=layers, samples=args.samples,
                  warmup=args.warmup if args.warmup is not None else int(gpu), threads=os.cpu_count())
    points = []
    for variant in args.variants.split(","):
        for length in lengths:
            if variant == "full-logits" and length > full_max:
                continue
            spec = {**common, "variant": variant, "length": length}
            point = {**spec, **run_point(spec)}
            points.append(point)
            print(f"  {variant:13s} {length:6d} tokens: {point.get('peak_mib', float('nan')):9.1f} MiB  "
                  f"{point.get('update_s', float('nan')):7.2f} s  {point.get('error', '')}", flush=True)
    fits = {variant: linear_fit([(p["length"], p["peak_mib"]) for p in points if p["variant"] == variant and "peak_mib" in p])
            for variant in dict.fromkeys(p["variant"] for p in points)}
    print_table(["variant", "completion tokens", "peak MiB", "update s", "CPU s", "tokens/s"],
                [(p["variant"], p["length"], p["peak_mib"], p["update_s"], p["update_cpu_s"],
                  p["samples"] * (p["length"] + PROMPT_TOKENS) / p["update_s"]) for p in points if "peak_mib" in p],
                ["", "d", ".1f", ".2f", ".1f", ".0f"])
    print_table(["variant", "MiB per 1k tokens", "intercept MiB", "R^2 of a line"],
                [(v, f["slope"] * 1000, f["intercept"], f["r2"]) for v, f in fits.items() if f], ["", ".1f", ".1f", ".4f"])
    result = {"model": {**QWEN25_05B, "num_hidden_layers": layers, "weights": "random, built in code"},
              "prompt_tokens": PROMPT_TOKENS, **common, "memory": "CUDA max_memory_allocated" if gpu else "VmHWM (peak RSS) after clear_refs",
              "points": points, "linear_fits_mib_per_token": fits}
    plot(result, write_result(args.out, result).with_suffix(".png"))


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def run_point(spec: dict) -> dict:
    """One point in a fresh interpreter, so that no allocator cache or earlier peak carries over."""
    proc = subprocess.run([sys.executable, __file__, "--point", json.dumps(spec)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"error": tail[0][:200]}
    return json.loads(lines[-1][len("RESULT "):])


def build_learner(spec: dict):
    """A Learner on a Qwen2.5-0.5B-shaped model built in code (its loaders patched; the rest is the real class)."""
    import tempfile

    import torch
    from peft import get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import actors.learner as learner_module
    from actors.policy_model import DTYPES, lora_config
    from pipeline.config import load_config
    from pipeline.tiny_model import build_tokenizer

    torch.manual_seed(0)
    config = Qwen2Config(**QWEN25_05B, num_hidden_layers=spec["layers"], attention_dropout=0.0)
    base = Qwen2ForCausalLM(config).to(DTYPES[spec["dtype"]])
    learner_module.load_tokenizer = lambda path: build_tokenizer()
    learner_module.load_policy = lambda path, dtype, lora, device: get_peft_model(base, lora_config(lora)).to(device)
    if spec["variant"] == "full-logits":
        learner_module.token_logprobs = full_logits_token_logprobs
    samples = spec["samples"]
    cfg = load_config(None, [f"trainer.minibatch_size={samples}", f"trainer.micro_batch_size={samples}",
                             f"trainer.gradient_checkpointing={spec['variant'] == 'checkpointing'}",
                             f"trainer.cpus_per_learner={spec['threads']}", f"trainer.gpus_per_learner={int(spec['device'] == 'cuda')}",
                             "trainer.lr=1e-4"])
    return learner_module.Learner(tempfile.mkdtemp(prefix="rlpost-memory-"), spec["dtype"], cfg.lora, cfg.algorithm, cfg.trainer,
                                  temperature=1.0, max_new_tokens=spec["length"], seed=0, threads=spec["threads"])


def full_logits_token_logprobs(model, ids, attention, temperature, with_entropy=False, positions=None, prompts=None):
    """The previous token_logprobs (for comparison only): every position of every whole row (no shared prompt
    forward), float32, full-vocabulary log_softmax."""
    import torch

    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logits = logits / (temperature if temperature > 0 else 1.0)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp, None
    detached = logp_all.detach()
    return logp, -(detached.exp() * detached).sum(-1)


def measure(spec: dict) -> dict:
    import torch

    from pipeline.records import TrainBatch

    learner = build_learner(spec)
    generator = torch.Generator().manual_seed(1)
    samples, length = spec["samples"], spec["length"]
    prompt = torch.randint(3, QWEN25_05B["vocab_size"], (PROMPT_TOKENS,), generator=generator).tolist()
    completions = [torch.randint(3, QWEN25_05B["vocab_size"], (length,), generator=generator).tolist() for _ in range(samples)]
    advantages = [1.0 if i % 2 == 0 else -1.0 for i in range(samples)]
    batch = TrainBatch([prompt] * samples, completions, advantages, [0] * samples)
    for _ in range(spec["warmup"]):
        learner.update(batch)
    gpu = spec["device"] == "cuda"
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = learner.update(batch)
    if gpu:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated() if gpu else peak_rss()
    return {"peak_mib": (peak - before) / MiB, "resident_before_mib": before / MiB, "update_s": seconds,
            "update_cpu_s": cpu_seconds, "loss": metrics["loss"], "grad_norm": metrics["grad_norm"]}


def _status(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_rss() -> int:
    """Reset the resident high-water mark (Linux >= 4.0) and return the resident set now, in bytes."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def linear_fit(points: list[tuple[float, float]]) -> dict | None:
    """Least-squares line through (length, MiB) and how well a line explains it (R^2)."""
    if len(points) < 2:
        return None
    xs, ys = zip(*points)
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    total = sum((y - my) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"slope": slope, "intercept": intercept, "r2": 1.0 - residual / total if total else 1.0, "points": n}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    measured = [p for p in result["points"] if "peak_mib" in p]
    cpu = result["device"] == "cpu" and all("update_cpu_s" in p for p in measured)  # CPU seconds: steadier on a shared machine
    for variant in dict.fromkeys(p["variant"] for p in measured):
        rows = [p for p in measured if p["variant"] == variant]
        left.plot([p["length"] for p in rows], [p["peak_mib"] for p in rows], "o-", label=variant)
        right.plot([p["length"] for p in rows], [p["update_cpu_s" if cpu else "update_s"] for p in rows], "o-", label=variant)
    time_label = "update CPU time (s, all threads)" if cpu else "update time (s)"
    for ax, label in ((left, "peak memory of the update (MiB)"), (right, time_label)):  # linear axes: a line is linear
        ax.set_xlabel("completion tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Learner update, Qwen2.5-0.5B shape with {result['model']['num_hidden_layers']} layer(s), "
                 f"{result['samples']} sample(s), {result['device']} {result['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
