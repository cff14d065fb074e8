"""A cheap check of every generated batch before it is trained on: a rollout engine bug that would
silently change the gradient (a pad inside a completion, a log-prob per token missing, a finish
reason that contradicts the tokens) stops the run instead, naming the sample."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.config import RolloutConfig
from pipeline.records import Completion


class BatchInvariantError(RuntimeError):
    """A completion is not what the policy sampled; training on it would give wrong gradients."""


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    eos: frozenset[int]  # every id that ends a completion (tokenizer and generation_config)
    context_len: int | None  # the engine cuts a completion here too (finish reason "length")


def special_tokens(tokenizer: Any, model_path: str, rollout: RolloutConfig) -> SpecialTokens:
    """The ids the checks need, read the way the rollout engines read them."""
    from transformers import AutoConfig, GenerationConfig

    eos = {tokenizer.eos_token_id}
    try:
        listed = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        listed = None
    eos |= set(listed if isinstance(listed, list) else [listed] if listed is not None else [])
    context = rollout.max_model_len or getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    return SpecialTokens(tokenizer.pad_token_id, frozenset(eos), context)


def check_completions(completions: list[Completion], rollout: RolloutConfig, special: SpecialTokens) -> None:
    for k, c in enumerate(completions):
        problem = _problem(c, rollout, special)
        if problem:
            raise BatchInvariantError(
                f"sample {k} (group {c.group_id}) is not a valid completion: {problem}; tokens {c.token_ids[:32]}, "
                f"finish reason {c.finish_reason!r}, text {c.text[:80]!r}. This is a rollout engine bug: the run stops "
                "rather than train on it")


def _problem(c: Completion, rollout: RolloutConfig, special: SpecialTokens) -> str | None:
    ids, n = c.token_ids, len(c.token_ids)
    if n == 0 or n != len(c.logprobs):
        return f"{n} tokens but {len(c.logprobs)} log-probs"
    if n > rollout.max_new_tokens:
        return f"{n} tokens, more than rollout.max_new_tokens={rollout.max_new_tokens}"
    if not all(math.isfinite(v) and v <= 1e-4 for v in c.logprobs):
        return "a log-prob is not finite or is above 0"
    if any(t in special.eos for t in ids[:-1]):
        return "an end-of-sequence token before the last position (generation went on past it)"
    if special.pad not in special.eos and special.pad in ids:
        return f"the pad token {special.pad} inside the completion"
    if c.finish_reason == "length":
        cut_by_context = special.context_len is not None and len(c.prompt_ids) + n >= special.context_len
        if ids[-1] in special.eos or not (n == rollout.max_new_tokens or cut_by_context):
            return "finish reason 'length' but the completion ended before the token and context limits"
    elif c.finish_reason == "stop":
        if ids[-1] not in special.eos and not rollout.stop:
            return "finish reason 'stop' without an end-of-sequence token or a stop string"
    else:
        return f"unknown finish reason {c.finish_reason!r}"
    return None
