"""`rlpost train CONFIG --dry-run`: everything a run decides before its first step, shown, with no Ray
and no training: the model and data resolved, three prompts exactly as the policy sees them, where
each actor would run, and what the learner will hold in memory. A wrong template, a missing
model or an impossible memory budget shows here in seconds instead of after a cluster job starts.
"""
from __future__ import annotations

from itertools import islice, zip_longest
from statistics import mean

from pipeline.config import Config
from pipeline.data import load_prompts
from pipeline.memory_estimate import estimate_learner_memory, size


def dry_run(cfg: Config, shown: int = 3) -> str:
    from actors.cluster_fit import label
    from actors.placement import demands
    from actors.policy_model import DTYPES, load_tokenizer
    from actors.rollout import engine_context
    from pipeline.train import resolve_inputs

    _, model_path, checkpoint = resolve_inputs(cfg)
    tokenizer = load_tokenizer(model_path)
    train_prompts, test_prompts = load_prompts(cfg, tokenizer, engine_context(cfg.rollout, model_path))
    lengths = [len(p.ids) for prompts in train_prompts.values() for p in prompts]
    lines = [f"model: {cfg.model.path or 'built-in tiny model'} -> {model_path}",
             f"resume: {checkpoint or 'no (a fresh run)'}",
             "data: " + ", ".join(f"{s} {len(p)} train / {len(test_prompts.get(s, []))} test" for s, p in train_prompts.items()),
             f"prompt tokens: max {max(lengths)}, mean {mean(lengths):.1f}; completions up to {cfg.rollout.max_new_tokens} "
             "new tokens", ""]
    interleaved = (p for row in zip_longest(*train_prompts.values()) for p in row if p is not None)
    for i, prompt in enumerate(islice(interleaved, shown), start=1):
        lines += [f"--- prompt {i} (source {prompt.source}, {len(prompt.ids)} tokens, exactly as the policy sees it) ---",
                  tokenizer.decode(prompt.ids, skip_special_tokens=False), ""]
    lines += [f"placement ({cfg.placement.mode}; what each actor asks of the cluster):",
              *(f"  {label(r)}" for r in demands(cfg, cfg.trainer.num_learners)), ""]
    longest = max(lengths) + cfg.rollout.max_new_tokens
    tokens = cfg.trainer.micro_batch_size * longest
    if cfg.trainer.max_tokens_per_micro_batch:  # a sample longer than the budget goes alone
        tokens = min(tokens, max(cfg.trainer.max_tokens_per_micro_batch, longest))
    shards = cfg.trainer.num_learners if cfg.trainer.fsdp else 1
    memory = estimate_learner_memory(model_path, DTYPES[cfg.model.dtype].itemsize, cfg.lora.rank, cfg.lora.target_modules,
                                     tokens, cfg.trainer.gradient_checkpointing, shards)
    lines += [f"learner memory (estimate, per learner, micro-batch of {tokens} tokens): {size(memory.total)} = "
              f"weights {size(memory.weights)} ({memory.params / 1e6:.1f}M params) + LoRA state "
              f"{size(memory.adapter_state)} ({memory.adapter_params / 1e6:.2f}M params) + activations "
              f"{size(memory.activations)}{' (gradient checkpointing)' if cfg.trainer.gradient_checkpointing else ''} + "
              f"logits {size(memory.logits)}", "", "dry run: nothing was trained"]
    return "\n".join(lines)
