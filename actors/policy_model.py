"""Loading the policy (base model + LoRA) and per-token log-probs: shared by learner and HF rollout."""
from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.config import LoraSection
from pipeline.errors import RlpostError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class ModelLoadError(RlpostError, ValueError):
    pass


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def set_threads(threads: int) -> None:
    """Torch threads as placement decided (actors/placement.py `threads`): oversubscribed threads slow 2-core
    machines 10x."""
    torch.set_num_threads(max(1, int(threads)))


@contextlib.contextmanager
def threads_at(threads: int | None):
    """Torch threads for one call, restored after it (None: as they are). A weight sync's two sides run at once at
    their own CPU shares where the rest of a step has each side, in turn, use both (`placement.threads`)."""
    if threads is None:  # not even set back: vLLM's CPU build refuses torch.set_num_threads
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{model_path}: the tokenizer has no EOS token; generation could never stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


GENERATION_TOKEN_FIELDS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
                           "_from_model_config"}


def checkpoint_generation_config(model_path: str) -> dict[str, Any]:
    """The checkpoint's generation_config.json ({} when it ships none)."""
    import json

    path = Path(model_path) / "generation_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def eos_token_ids(tokenizer, model_path: str) -> frozenset[int]:
    """Every id that ends a completion: the tokenizer's EOS and those generation_config.json lists
    (Qwen: <|im_end|> and <|endoftext|>); both backends stop on exactly this set."""
    listed = checkpoint_generation_config(model_path).get("eos_token_id")
    listed = [] if listed is None else [listed] if isinstance(listed, int) else listed
    return frozenset({tokenizer.eos_token_id, *listed})


def derive_seed(*parts: int) -> int:
    """A 62-bit seed from (step seed, group ids...): streams of different groups never overlap in practice."""
    import hashlib

    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


def ignore_generation_defaults(model_path: str) -> list[str]:
    """Log (once per engine) the checkpoint's generation_config.json defaults that rollouts ignore: samples
    must come from exactly the distribution whose log-probs are trained, set by rollout.* alone."""
    ignored = sorted(set(checkpoint_generation_config(model_path)) - GENERATION_TOKEN_FIELDS)
    if ignored:
        logging.getLogger(__name__).warning("%s: ignoring generation_config.json %s; rollout.* alone sets sampling",
                                            model_path, ", ".join(ignored))
    return ignored


_ADAPTER_MAPS: "weakref.WeakKeyDictionary[Any, dict[str, torch.nn.Parameter] | None]" = weakref.WeakKeyDictionary()


def adapter_parameters(model) -> dict[str, torch.nn.Parameter] | None:
    """peft state-dict key -> the model's LoRA parameter (exactly the keys `get_peft_model_state_dict` gives),
    found once per model by a walk over its parameters: peft's call builds the whole state dict and remaps every
    key, ten times the cost, on every weight sync. None when the walk does not give peft's keys (LoRA on
    embeddings, DoRA, modules_to_save): then peft's own call is the one to use."""
    if model not in _ADAPTER_MAPS:
        from peft import get_peft_model_state_dict

        name = getattr(model, "active_adapter", "default")
        walk = {k.replace(f".{name}", ""): p for k, p in model.named_parameters() if "lora_" in k and f".{name}." in k}
        _ADAPTER_MAPS[model] = walk if walk.keys() == get_peft_model_state_dict(model).keys() else None
    return _ADAPTER_MAPS[model]


def load_policy(model_path: str, dtype: str, lora: LoraSection | None, device: torch.device):
    """The base causal LM wrapped with a fresh LoRA adapter (weights come from the learner); lora=None: the bare LM."""
    from peft import get_peft_model
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
    if lora.init == "eva":  # lora_A is filled in later by `initialize_eva` (it stays on the meta device until then)
        from peft import EvaConfig

        eva = EvaConfig(rho=lora.eva_rho, tau=lora.eva_tau, use_label_mask=False)  # RL batches have no labels
        return get_peft_model(base.to(device), lora_config(lora, init_lora_weights="eva", eva_config=eva), low_cpu_mem_usage=True)
    return get_peft_model(base, lora_config(lora)).to(device)


def lora_config(lora: LoraSection, **extra: Any):
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM", **extra)


def reshape_lora(model, lora: LoraSection, layout: dict[str, Any]):
    """The same base model with a fresh adapter of the given per-layer shape (EVA's rank pattern)."""
    from peft import get_peft_model

    base = model.unload()
    shaped = lora.model_copy(update={"target_modules": layout["target_modules"]})
    return get_peft_model(base, lora_config(shaped, rank_pattern=layout["rank_pattern"], alpha_pattern=layout["alpha_pattern"]))


def layout_of(adapter_dir) -> dict[str, Any]:
    """The per-layer LoRA layout stored in a saved adapter's adapter_config.json."""
    import json

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return {"target_modules": sorted(config["target_modules"]), "rank_pattern": config.get("rank_pattern") or {},
            "alpha_pattern": config.get("alpha_pattern") or {}}


def lora_layout(peft_config) -> dict[str, Any]:
    return {"target_modules": sorted(peft_config.target_modules), "rank_pattern": dict(peft_config.rank_pattern),
            "alpha_pattern": dict(peft_config.alpha_pattern)}


def initialize_eva(model, sequences: list[list[int]], pad_id: int, batch_size: int, max_steps: int) -> dict[str, Any]:
    """Run peft's EVA on these token sequences, stopping after max_steps SVD batches; return the layout."""
    from peft import initialize_lora_eva_weights
    from peft.tuners.lora.eva import SVDHook

    device = next(p for p in model.parameters() if p.device.type != "meta").device
    batches = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        ids, attention, _ = pad_sequences(chunk, [[] for _ in chunk], pad_id, device)
        batches.append({"input_ids": ids, "attention_mask": attention})
    calls = 0

    def forward_with_guard(model, inputs):
        nonlocal calls
        out = model(**inputs)
        calls += 1
        if calls >= max_steps:  # declare every layer converged: the loop then stops with the components it has
            for module in model.modules():
                for hook in module._forward_hooks.values():
                    if isinstance(hook, SVDHook):
                        hook.converged[:] = True
        return out

    initialize_lora_eva_weights(model, dataloader=batches, forward_fn=forward_with_guard, show_progress_bar=False)
    return lora_layout(model.peft_config["default"])


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


LOGIT_CHUNK_ELEMENTS = 2 ** 24  # vocabulary-sized rows per chunk: 64 MiB of float32 logits at a time


def token_logprobs(model, ids: torch.Tensor, attention: torch.Tensor, temperature: float, with_entropy: bool = False,
                   positions: torch.Tensor | None = None, prompts: PromptRows | None = None):
    """log pi(token_{t+1} | prefix) at the sampling temperature (and the entropy there, as a detached metric).

    Returns (B, L-1) tensors aligned with next-token prediction (position t predicts token t+1), filled
    only at `positions` (a (B, L-1) mask; default: every real next token) and 0 elsewhere. The model runs
    with its output head swapped out, so only the selected positions ever meet the vocabulary: their
    log-probs are `logits[token] - logsumexp(logits)`, computed a chunk of rows at a time, and the
    gradient needs no (tokens x vocabulary) tensor either (see `_HeadLogprobs`): memory is linear in
    the sequence length. A plain callable (not a module with an output head) gets the logits path.
    With `prompts` (which rows share a prompt; `positions` within the completions), each distinct prompt
    runs once when that saves compute (`_shared_prompt_states`).
    """
    if positions is None:
        positions = attention[:, 1:]
    positions = positions.bool()
    targets = ids[:, 1:][positions]
    parts = _output_head(model)
    head = None if parts is None else parts[2]
    with _head_removed(parts):  # without a separable head the model's outputs are logits
        plan = None if prompts is None else _prompt_plan(attention, positions, prompts)
        if plan is None:
            states = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1][positions]
        else:
            states = _shared_prompt_states(model, ids, plan)
    if head is None:
        picked, entropy = _logprobs_of_logits(states, targets, temperature, with_entropy)
    else:
        picked, entropy = _head_logprobs(head, states, targets, temperature, with_entropy)
    shape = positions.shape
    logp = torch.zeros(shape, dtype=picked.dtype, device=picked.device).masked_scatter(positions, picked)
    if not with_entropy:
        return logp, None
    return logp, torch.zeros(shape, dtype=entropy.dtype, device=entropy.device).masked_scatter(positions, entropy)


@contextlib.contextmanager
def _head_removed(parts):
    """The output head swapped for Identity (the model's "logits" are then its last hidden states)."""
    if parts is None:
        yield
        return
    base, name, head = parts
    setattr(base, name, torch.nn.Identity())
    try:
        yield
    finally:
        setattr(base, name, head)


@dataclass
class PromptRows:
    """Per row of a batch: its prompt's token count and an id equal for the rows of one prompt."""

    lengths: torch.Tensor
    keys: torch.Tensor

    def __getitem__(self, rows: torch.Tensor) -> "PromptRows":
        return PromptRows(self.lengths[rows], self.keys[rows])


@dataclass
class _PromptPlan:
    index: torch.Tensor  # row -> its distinct prompt
    first: torch.Tensor  # distinct prompt -> a row holding it
    lengths: torch.Tensor  # rows' prompt lengths
    totals: torch.Tensor  # rows' prompt + completion lengths
    at: tuple[torch.Tensor, torch.Tensor]  # (row, column) of each position asked for, row-major
    width: int  # longest prompt
    span: int  # longest completion


def _prompt_plan(attention: torch.Tensor, positions: torch.Tensor, prompts: PromptRows) -> _PromptPlan | None:
    """How to run each distinct prompt once, or None when that would not save tokens: prompts x longest prompt
    plus rows x longest completion must be fewer than rows x longest row (distinct prompts whose lengths run
    against their completions' would cost more)."""
    lengths = prompts.lengths.to(attention.device)
    row, column = positions.nonzero(as_tuple=True)
    if bool((column + 1 < lengths[row]).any()):
        raise ValueError("shared prompt forwards give log-probs of completion tokens only; a position lies in a prompt")
    keys, index = torch.unique(prompts.keys.to(attention.device), return_inverse=True)
    first = torch.full((len(keys),), len(index), device=attention.device).scatter_reduce(
        0, index, torch.arange(len(index), device=attention.device), "amin")
    totals = attention.sum(-1)
    width, span = int(lengths.max()), max(int((totals - lengths).max()), 1)
    if len(keys) * width + len(index) * span >= len(index) * int(totals.max()):
        return None
    return _PromptPlan(index, first, lengths, totals, (row, column), width, span)


def _shared_prompt_states(model, ids: torch.Tensor, plan: _PromptPlan) -> torch.Tensor:
    """The model's outputs at the plan's positions (row-major), each distinct prompt run once: GRPO's n samples of a
    prompt differ only after it, so its keys/values are computed once, copied to its rows, and the
    completions run on top of them (the same numbers up to float rounding, and the gradient reaches the
    prompt through the copies). Prompts and completions are right-padded; pads in between are masked,
    and position ids count real tokens only, so every row sees exactly its own unpadded sequence."""
    device, plen, steps = ids.device, plan.lengths, torch.arange(max(plan.width, plan.span), device=ids.device)
    prompt_mask = (steps[:plan.width] < plen[plan.first].unsqueeze(1)).long()
    prompt_ids = ids[plan.first, :plan.width] * prompt_mask
    prompt = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True,
                   position_ids=steps[:plan.width].expand(len(plan.first), -1))
    cache = prompt.past_key_values
    cache.reorder_cache(plan.index)  # one copy of its prompt's keys/values per row (differentiable)
    columns = plen.unsqueeze(1) + steps[:plan.span]  # each row's completion tokens
    completion_mask = columns < plan.totals.unsqueeze(1)
    completion_ids = ids.gather(1, columns.clamp(max=ids.shape[1] - 1)).masked_fill(~completion_mask, 0)
    completion = model(input_ids=completion_ids, attention_mask=torch.cat([prompt_mask[plan.index], completion_mask.long()], 1),
                       position_ids=columns, past_key_values=cache, use_cache=True)
    # the output predicting completion token j: the prompt's last position for j = 0, completion position j-1 after
    last = prompt.logits[plan.index, plen - 1].unsqueeze(1)
    states = torch.cat([last, completion.logits[:, :-1]], 1)
    row, column = plan.at  # column t predicts token t+1 = completion token t+1-prompt length
    return states[row, column + 1 - plen[row]]


# Architectures whose shared prompt forward was checked against whole rows (log-probs, entropies and gradients
# equal to float rounding; tiny random models, prompts of different lengths). Others run whole rows: a position
# bias counted in cache slots (MPT's ALiBi), local attention described in their own terms (GPT-Neo) or a
# recurrent state (RWKV, Mamba) would not see what a whole row sees.
SHARED_PROMPT_MODELS = frozenset({
    "apertus", "arcee", "bloom", "codegen", "cohere", "deepseek_v2", "deepseek_v3", "diffllama", "ernie4_5", "falcon",
    "gemma", "glm4", "glm4_moe", "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "granite", "helium", "hunyuan_v1_dense",
    "jetmoe", "llama", "mistral", "mixtral", "olmo", "olmo2", "olmoe", "opt", "persimmon", "phi3", "phimoe", "qwen2",
    "qwen2_moe", "qwen3", "qwen3_moe", "seed_oss", "smollm3", "stablelm", "starcoder2", "xglm"})


def shares_prompts(model, trainer, dropout: bool = False) -> bool:
    """Whether a learner runs each distinct prompt once per micro-batch (trainer.share_prompt_forward): for the
    architectures in SHARED_PROMPT_MODELS whose every layer attends to the whole sequence (a sliding window
    counts cache slots, which the padding between prompt and completion would shift); not under gradient
    checkpointing (it turns the key/value cache off) or live dropout (one mask on a prompt would serve all its
    samples). FSDP turns it off when it shards the model (`Learner.join_group`)."""
    if not trainer.share_prompt_forward or trainer.gradient_checkpointing or dropout:
        return False
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "model_type", None) not in SHARED_PROMPT_MODELS:
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is None or not getattr(config, "use_sliding_window", True)


def _output_head(model):
    """(causal LM, attribute name, head module) when the head can be split off the model, else None."""
    if not isinstance(model, torch.nn.Module):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    text_config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if head is None or getattr(text_config, "final_logit_softcapping", None) is not None:  # softcapping follows the head
        return None
    name = next((n for n, child in base.named_children() if child is head), None)
    return None if name is None else (base, name, head)


def _chunk_rows(vocab: int) -> int:
    return max(1, LOGIT_CHUNK_ELEMENTS // max(vocab, 1))


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Half precision up to float32 (float64 stays), divided by the temperature: exactly the sampling logits."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits / (temperature if temperature > 0 else 1.0)


def _logprobs_of_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
    """Per-row log-prob of `targets` (and entropy) from (N, V) logits, a chunk at a time; differentiable."""
    picked, entropies = [], []
    for rows, tgt in zip(logits.split(_chunk_rows(logits.shape[-1])), targets.split(_chunk_rows(logits.shape[-1]))):
        scaled = _scaled(rows, temperature)
        lse = torch.logsumexp(scaled, dim=-1)
        picked.append(scaled.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - lse)
        if with_entropy:
            entropies.append(_entropy(scaled.detach() - lse.detach().unsqueeze(-1)))
    dtype = torch.promote_types(logits.dtype, torch.float32)
    empty = logits.new_zeros(0, dtype=dtype)
    return (torch.cat(picked) if picked else empty), ((torch.cat(entropies) if entropies else empty) if with_entropy else None)


def _entropy(log_softmax: torch.Tensor) -> torch.Tensor:
    """-sum p log p."""
    return -(log_softmax.exp() * log_softmax).sum(-1)


def _head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
    """Log-probs of `targets` under `head` applied to (N, H) hidden states, never holding (N, V) at once."""
    frozen_linear = isinstance(head, torch.nn.Linear) and not head.weight.requires_grad and (
        head.bias is None or not head.bias.requires_grad)
    if frozen_linear:
        logp, entropy = _HeadLogprobs.apply(hidden, head.weight, head.bias, targets, float(temperature), with_entropy)
        return logp, (entropy if with_entropy else None)
    # a trained head (LoRA on lm_head, modules_to_save): each chunk's logits are recomputed in the backward
    from torch.utils.checkpoint import checkpoint

    vocab = head.weight.shape[0] if hasattr(head, "weight") else 1
    grad = torch.is_grad_enabled()
    picked, entropies = [], []
    for rows, tgt in zip(hidden.split(_chunk_rows(vocab)), targets.split(_chunk_rows(vocab))):
        run = lambda h, t: _logprobs_of_logits(head(h), t, temperature, with_entropy)  # noqa: E731
        logp, entropy = checkpoint(run, rows, tgt, use_reentrant=False) if grad else run(rows, tgt)
        picked.append(logp)
        if with_entropy:
            entropies.append(entropy.detach())
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    empty = hidden.new_zeros(0, dtype=dtype)
    return (torch.cat(picked) if picked else empty), ((torch.cat(entropies) if entropies else empty) if with_entropy else None)


class _HeadLogprobs(torch.autograd.Function):
    """logp_i = log_softmax(z_i)[y_i], z_i = (h_i W^T + b) / T, for a frozen linear head, by chunks of rows.

    The gradient with respect to h_i is (onehot(y_i) - softmax(z_i)) W / T: it does not depend on the
    upstream gradient, so the forward computes it chunk by chunk (the same matmul the backward of the
    plain path does) and keeps only that (N, H) tensor; the backward scales it by dloss/dlogp_i."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, with_entropy):
        rows = hidden.shape[0]
        dtype = torch.promote_types(weight.dtype, torch.float32)
        logp = torch.empty(rows, dtype=dtype, device=hidden.device)
        entropy = torch.empty(rows if with_entropy else 0, dtype=dtype, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        step = _chunk_rows(weight.shape[0])
        for start in range(0, rows, step):  # in place where possible: about three (rows x vocabulary) buffers live at once
            end = min(start + step, rows)
            logits = torch.nn.functional.linear(hidden[start:end], weight, bias)
            scaled = logits.to(dtype) if logits.dtype != dtype else logits
            del logits
            if temperature > 0:
                scaled.div_(temperature)  # the same float division as _scaled
            log_softmax = scaled.sub_(torch.logsumexp(scaled, dim=-1).unsqueeze(-1))  # z - logsumexp(z), in place
            tgt = targets[start:end].unsqueeze(-1)
            logp[start:end] = log_softmax.gather(-1, tgt).squeeze(-1)
            probs = log_softmax.exp()
            if with_entropy:  # -sum p log p, the dot products as one batched matmul (no product buffer)
                entropy[start:end] = -torch.bmm(probs.unsqueeze(1), log_softmax.unsqueeze(2)).view(-1)
            del scaled, log_softmax
            if grad is not None:
                coef = probs.neg_().scatter_add_(-1, tgt, torch.ones_like(tgt, dtype=probs.dtype))
                if temperature > 0:
                    coef.div_(temperature)
                grad[start:end] = (coef.to(weight.dtype) @ weight).to(hidden.dtype)
            del probs
        ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(grad)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None, None
        return grad * grad_logp.unsqueeze(-1).to(grad.dtype), None, None, None, None, None


def unpad(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    return [row[m.bool()].tolist() for row, m in zip(values.detach().cpu(), mask.cpu())]
