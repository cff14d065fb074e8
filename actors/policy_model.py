"""Loading the policy (base model + LoRA) and per-token log-probs: shared by learner and HF rollout."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    pass


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def set_threads(cpus: float) -> None:
    """Threads = this actor's CPU share: oversubscribed torch threads slow 2-core machines 10x."""
    torch.set_num_threads(max(1, int(cpus)))


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{model_path}: the tokenizer has no EOS token; generation could never stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(model_path: str, dtype: str, lora: dict[str, Any] | None, device: torch.device):
    """The base causal LM wrapped with a fresh LoRA adapter (weights come from the learner); lora=None: the bare LM."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (Path(model_path) / "config.json").exists():
        raise ModelLoadError(f"model.path={model_path!r} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(model_path)
    try:
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[dtype])
    except ValueError as err:
        raise ModelLoadError(f"model.path={model_path!r} ({config.model_type}) is not a causal LM: {err}") from None
    if lora is None:
        return base.to(device)
    peft_config = LoraConfig(
        r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"], task_type="CAUSAL_LM",
    )
    return get_peft_model(base, peft_config).to(device)


def pad_sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device: torch.device):
    """Right-padded prompt+completion ids, attention mask, and a mask over the completion tokens.

    The completion mask is aligned with next-token log-probs (position t predicts token t+1).
    """
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    response = torch.zeros((len(prompts), width - 1), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention[i, : len(p) + len(c)] = 1
        response[i, len(p) - 1 : len(p) + len(c) - 1] = 1.0
    return ids.to(device), attention.to(device), response.to(device)


def token_logprobs(model, ids: torch.Tensor, attention: torch.Tensor, temperature: float, with_entropy: bool = False):
    """log pi(token_{t+1} | prefix) at the sampling temperature for every position (and entropy)."""
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    logits = logits / (temperature if temperature > 0 else 1.0)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp, None
    detached = logp_all.detach()
    entropy = -(detached.exp() * detached).sum(-1)
    return logp, entropy


def unpad(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    return [row[m.bool()].tolist() for row, m in zip(values.detach().cpu(), mask.cpu())]
