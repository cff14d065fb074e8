"""What the learner will hold in memory for a config, before anything is loaded: `--dry-run` prints
it so a run that cannot fit is caught before the cluster job starts, not at the first update.

The model is built on the `meta` device from its config (exact parameter and LoRA counts, no
weights read). Activations follow the usual decoder accounting: per token and layer a backward
pass keeps about 10 hidden-sized and 4 intermediate-sized tensors (norms, q/k/v/o inputs, MLP
gate/up/act/product); with gradient checkpointing only each layer's input plus one layer's full
set. Log-probs are taken over response positions in chunks, so the logits cost one chunk. Under
FSDP each learner holds 1/N of the weights. `benchmarks/memory.py` measures the real curve.
"""
from __future__ import annotations

from dataclasses import dataclass

ADAPTER_BYTES = 4 * 4  # fp32 LoRA weight, gradient and two Adam moments (peft keeps adapters in fp32)
SAVED_HIDDEN, SAVED_INTERMEDIATE = 10, 4  # tensors per token and layer a backward pass keeps
LOGITS_CHUNK_COPIES = 3  # a chunk's fp32 logits, their exponentials and their gradient


@dataclass(frozen=True)
class LearnerMemory:
    params: int
    adapter_params: int
    weights: int  # bytes
    adapter_state: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter_state + self.activations + self.logits


def estimate_learner_memory(model_path: str, dtype_bytes: int, lora_rank: int, target_modules: list[str],
                            tokens_per_micro_batch: int, gradient_checkpointing: bool, shards: int = 1) -> LearnerMemory:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from actors.policy_model import LOGIT_CHUNK_ELEMENTS

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    adapter = sum(lora_rank * (m.in_features + m.out_features) for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in target_modules and "lm_head" not in name)
    text = config.get_text_config()
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * text.hidden_size
    per_token_layer = (SAVED_HIDDEN * text.hidden_size + SAVED_INTERMEDIATE * intermediate) * dtype_bytes
    layers = text.num_hidden_layers
    if gradient_checkpointing:
        activations = tokens_per_micro_batch * (layers * text.hidden_size * dtype_bytes + per_token_layer)
    else:
        activations = tokens_per_micro_batch * layers * per_token_layer
    logits = min(tokens_per_micro_batch * text.vocab_size, LOGIT_CHUNK_ELEMENTS) * 4 * LOGITS_CHUNK_COPIES
    return LearnerMemory(params, adapter, params * dtype_bytes // shards, adapter * ADAPTER_BYTES // shards, activations, logits)


def size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
