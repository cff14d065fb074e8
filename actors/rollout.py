"""RolloutWorker: generates completions with a named backend and tracks the adapter version."""
from __future__ import annotations

from typing import Any

from actors.policy_model import set_threads
from pipeline.records import Completion, PromptSpec, SamplingSpec

BACKENDS = {"hf": "actors.hf_backend:HFEngine"}


def make_engine(backend: str, **kwargs: Any):
    import importlib

    module, _, cls = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


class RolloutWorker:
    def __init__(self, model_path: str, dtype: str, lora: dict[str, Any] | None, backend: str, cpus: float, gpus: float):
        set_threads(cpus)
        self.engine = make_engine(backend, model_path=model_path, dtype=dtype, lora=lora, gpus=gpus)
        self.version = -1

    def load_adapter(self, adapter: dict[str, Any], version: int, probe: tuple[list[int], list[int]], temperature: float) -> list[float]:
        """Install adapter `version`; return the probe completion's log-probs so the driver can verify it."""
        self.engine.load_adapter(adapter)
        self.version = version
        return self.engine.sequence_logprobs([probe[0]], [probe[1]], temperature)[0]

    def generate(self, prompts: list[PromptSpec], sampling: SamplingSpec) -> list[Completion]:
        return self.engine.generate(prompts, sampling, self.version)

    def score_texts(self, prompts: list[str], continuations: list[str]) -> list[float]:
        return self.engine.score_texts(prompts, continuations)

    def sequence_logprobs(self, prompts: list[list[int]], completions: list[list[int]], temperature: float) -> list[list[float]]:
        return self.engine.sequence_logprobs(prompts, completions, temperature)
