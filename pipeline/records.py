"""The small records that cross actor boundaries: plain lists and numbers, groups carried by id."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """A training or test prompt as the policy sees it, with its row for the reward functions."""

    source: str
    ids: list[int]
    columns: dict[str, Any]  # answer, source, prompt (templated), prompts (as given), question, every extra column


@dataclass(frozen=True)
class Group:
    """One prompt drawn for a step, under the id that its completions carry (never a list offset)."""

    group_id: int
    prompt: Prompt

    def spec(self) -> "PromptSpec":
        return PromptSpec(self.group_id, self.prompt.ids)


@dataclass(frozen=True)
class SamplingSpec:
    n: int
    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class PromptSpec:
    group_id: int
    prompt_ids: list[int]


@dataclass
class Completion:
    group_id: int
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens, EOS included when generated
    text: str  # decoded completion, special tokens and stop string removed
    logprobs: list[float]  # behaviour log-probs at the sampling temperature, one per token
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    policy_version: int


@dataclass
class TrainBatch:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    advantages: list[float]
    group_ids: list[int]
    behaviour_logprobs: list[list[float]] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)  # False = sample left out of the loss (overlong filtering)
    old_from_behaviour: bool = False  # clip the ratio against the behaviour log-probs (off-policy samples)
