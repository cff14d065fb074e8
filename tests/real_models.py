"""Small models shaped like real checkpoints, built in code (no downloads), for backend tests.

Each variant is a byte-level BPE tokenizer trained on the synthetic task texts and a tiny random
Qwen2 LM (head size 32, which the vLLM CPU kernels support) given a few dozen supervised steps, so
that greedy and sampled completions end in EOS tokens and contain multi-token stop strings:

- "qwen":   chat template, EOS <|im_end|>, pad <|endoftext|>, and generation_config.json listing both
            as EOS ids (the model is trained to end with either);
- "llama":  the tokenizer adds a BOS (post-processor "<s> $A"), no pad token (pad falls back to EOS);
- "gencfg": generation_config.json carries non-neutral sampling defaults that the engines must ignore.

Use the session fixture `real_model` (a factory: `real_model("qwen")` -> model directory) and
`encode_prompts(tokenizer, texts)`.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from pipeline.tasks import TASK_FAMILIES, generate_split

CONTEXT_LEN = 64  # small, so tests can reach the context limit
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GENCFG_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.8, "repetition_penalty": 1.3,
                   "no_repeat_ngram_size": 2}


@dataclass(frozen=True)
class Variant:
    specials: list[str]
    eos: list[str]  # the first is the tokenizer's EOS; all are listed in generation_config.json
    pad: str | None
    bos: str | None = None
    chat: bool = False
    defaults: dict = field(default_factory=dict)


VARIANTS = {
    "qwen": Variant(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ["<|im_end|>", "<|endoftext|>"], "<|endoftext|>",
                    chat=True),
    "llama": Variant(["<unk>", "<s>", "</s>"], ["</s>"], None, bos="<s>"),
    "gencfg": Variant(["<pad>", "</s>"], ["</s>"], "<pad>", defaults=GENCFG_DEFAULTS),
}


def task_examples(per_family: int = 60) -> list[tuple[str, str]]:
    return [ex for name in sorted(TASK_FAMILIES) for ex in generate_split(name, per_family, 0, seed=0)[0]]


def build_tokenizer(variant: Variant):
    """Byte-level BPE (a few hundred merges) trained on the task texts, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + len(variant.specials) + 300, special_tokens=variant.specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([p + a for p, a in task_examples()], trainer)
    if variant.bos:
        bpe.post_processor = processors.TemplateProcessing(single=f"{variant.bos} $A",
                                                           special_tokens=[(variant.bos, bpe.token_to_id(variant.bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=variant.eos[0], pad_token=variant.pad,
                                        bos_token=variant.bos, unk_token="<unk>" if "<unk>" in variant.specials else None)
    if variant.chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Prompt ids the way a run encodes them (pipeline.data): through the chat template when there is one."""
    from pipeline.data import Row, encode_prompt, prompt_text

    return [encode_prompt(tokenizer, *prompt_text(Row("task", t, ""), tokenizer, "auto")) for t in texts]


def build_model(variant: Variant, tokenizer, target: Path) -> Path:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in variant.eos]
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=CONTEXT_LEN,
                         tie_word_embeddings=True, eos_token_id=eos_ids[0], pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, dtype="float32")
    model = _warm_up(Qwen2ForCausalLM(config), tokenizer, eos_ids)
    model.generation_config = GenerationConfig(eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
                                               pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                               **variant.defaults)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _warm_up(model, tokenizer, eos_ids: list[int], steps: int = 60):
    """A few supervised steps on prompt -> answer<eos> (alternating EOS ids): completions then end,
    mostly in an answer-like string, but stay varied when sampled."""
    rng = random.Random(0)
    examples = task_examples()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    model.train()
    for step in range(steps):
        batch = rng.sample(examples, 32)
        prompts = encode_prompts(tokenizer, [p for p, _ in batch])
        rows = [p + tokenizer(f"{a} {a}.", add_special_tokens=False)["input_ids"] + [eos_ids[(step + i) % len(eos_ids)]]
                for i, (p, (_, a)) in enumerate(zip(prompts, batch))]
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        labels = torch.tensor([[-100] * len(p) + r[len(p):] + [-100] * (width - len(r)) for p, r in zip(prompts, rows)])
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def real_model(tmp_path_factory):
    """Factory: variant name -> model directory, each built once per session."""
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            variant = VARIANTS[name]
            built[name] = str(build_model(variant, build_tokenizer(variant), tmp_path_factory.mktemp(f"real-{name}")))
        return built[name]

    return get


def generation_config(path: str) -> dict:
    return json.loads((Path(path) / "generation_config.json").read_text())
