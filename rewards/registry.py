"""Reward functions by name: the built-in components, or any `package.module:function` import path."""
from __future__ import annotations

import importlib
from collections.abc import Callable

from rewards.sandbox import code_tests
from rewards.verifiers import exact_match, length_penalty, math_equivalence, multiple_choice, numeric_match, tag_format

RewardFn = Callable[..., list[float]]

REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "numeric": numeric_match,
    "math": math_equivalence,
    "multiple_choice": multiple_choice,
    "code_tests": code_tests,
    "tag_format": tag_format,
    "length_penalty": length_penalty,
}


class UnknownReward(ValueError):
    pass


def resolve_reward(name: str) -> RewardFn:
    """The reward function a config names; a clear error lists what is registered."""
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise UnknownReward(
            f"unknown reward component {name!r}; registered: {', '.join(REWARD_FUNCTIONS)} "
            "(or give an import path 'package.module:function')"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UnknownReward(f"reward component {name!r} cannot be imported: {err}") from None
    if not callable(fn):
        raise UnknownReward(f"reward component {name!r} is not callable")
    return fn
