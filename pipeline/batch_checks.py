"""A cheap check of every generated batch before it is trained on: a rollout engine bug that would
silently change the gradient (a pad inside a completion, a log-prob per token missing, a finish
reason that contradicts the tokens) stops the run instead, naming the sample."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from actors.policy_model import eos_token_ids
from pipeline.config import RolloutConfig
from pipeline.errors import RlpostError
from pipeline.records import Completion


class BatchInvariantError(RlpostError):
    """A completion is not what the policy sampled; training on it would give wrong gradients."""


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    eos: frozenset[int]  # every id that ends a completion (tokenizer and generation_config)


def special_tokens(tokenizer: Any, model_path: str) -> SpecialTokens:
    """The ids the checks need, read the way the rollout engines read them."""
    return SpecialTokens(tokenizer.pad_token_id, eos_token_ids(tokenizer, model_path))


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
    if c.finish_reason == "stop" and special.pad not in special.eos and ids[-1] == special.pad:
        return f"padding (token {special.pad}) after the end of a stopped completion"  # a pad the policy sampled mid-way is real
    if c.finish_reason == "length":  # the engine may derive a context shorter than the config says: trust it unless given
        cut_by_context = rollout.max_model_len is None or len(c.prompt_ids) + n >= rollout.max_model_len
        if ids[-1] in special.eos or not (n == rollout.max_new_tokens or cut_by_context):
            return "finish reason 'length' but the completion ended before the token and context limits"
    elif c.finish_reason == "stop":
        if ids[-1] not in special.eos and not rollout.stop:
            return "finish reason 'stop' without an end-of-sequence token or a stop string"
    else:
        return f"unknown finish reason {c.finish_reason!r}"
    return None
