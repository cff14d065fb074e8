"""The built-in tiny policy: a character tokenizer and a small Qwen2 LM, warmed up on the tasks.

Nothing is downloaded. The model gets a short supervised warm-up on the synthetic train splits so
that RL starts from a non-trivial but imperfect policy, and is saved as an ordinary Hugging Face
model directory, cached under a hash of its recipe (rebuilt only when the recipe changes).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipeline.config import TinyModelConfig
from pipeline.tasks import TASK_FAMILIES, generate_split

RECIPE_VERSION = 2
CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz +-=*/()<>.,:;?!'\"\n"
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
SFT_SEED = 1234


def build_tokenizer():
    """A character-level Qwen2 tokenizer: a byte-level BPE with no merges, one token per character.

    Using the architecture's own tokenizer class means `AutoTokenizer` reloads it unchanged.
    """
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_to_char = bytes_to_unicode()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + [byte_to_char[ord(c)] for c in CHARACTERS])}
    return Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<unk>", eos_token="<eos>", pad_token="<pad>", bos_token=None)


def ensure_tiny_model(cfg: TinyModelConfig, log=print) -> Path:
    """Path of the cached tiny model for this recipe, building it first if needed."""
    recipe = {**cfg.model_dump(exclude={"cache_dir"}), "version": RECIPE_VERSION, "tasks": sorted(TASK_FAMILIES)}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(cfg.cache_dir).expanduser() / f"tiny-{digest}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log(f"building the tiny model ({cfg.sft_steps} warm-up steps) into {target} ...")
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        tokenizer = build_tokenizer()
        model = _warm_up(_fresh_model(cfg, tokenizer), tokenizer, cfg)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "rlpost_recipe.json").write_text(json.dumps(recipe, indent=2))
        os.replace(staging, target)  # atomic: a crash mid-build never leaves a half-written cache
    except OSError:
        if not (target / "config.json").exists():  # lost a race with another builder only if it finished
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"tiny model ready in {time.perf_counter() - start:.0f}s")
    return target


def _fresh_model(cfg: TinyModelConfig, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SFT_SEED)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * 4,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(config)


def _warm_up(model, tokenizer, cfg: TinyModelConfig):
    """Short supervised training on prompt -> answer<eos>, loss on the answer tokens only."""
    examples = [ex for name in sorted(TASK_FAMILIES) for ex in generate_split(name, 400, 40, seed=0)[0]]
    rng = random.Random(SFT_SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    model.train()
    for _ in range(cfg.sft_steps):
        batch = rng.sample(examples, cfg.sft_batch_size)
        input_ids, labels = _sft_batch(batch, tokenizer)
        loss = model(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model


def _sft_batch(batch, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    rows, label_rows = [], []
    for prompt, answer in batch:
        p = tokenizer(prompt)["input_ids"]
        a = tokenizer(answer)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + a)
        label_rows.append([-100] * len(p) + a)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in label_rows])
    return input_ids, labels
