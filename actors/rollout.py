"""RolloutWorker: generates completions with a named backend and tracks the adapter version."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from actors.policy_model import set_threads, threads_at
from pipeline.config import LoraSection, RolloutConfig
from pipeline.data import encode_prompt
from pipeline.hub import resolve_model
from pipeline.records import Completion, PromptSpec, SamplingSpec
from actors.worker_pool import StaleWorker

BACKENDS = {"hf": "actors.hf_backend:HFEngine", "vllm": "actors.vllm_backend:VLLMEngine"}


def resolve_backend(name: str) -> str:
    """`auto` = vllm when it can be imported here, else hf."""
    if name != "auto":
        return name
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def engine_context(rollout: RolloutConfig, model_path: str) -> tuple[int, str] | None:
    """The context the rollout engine generates within, and what sets it: hf the model config's; vLLM
    rollout.max_model_len when set (None otherwise: vLLM derives its own, rope scaling included, and checks it;
    None too for a config that names none)."""
    if resolve_backend(rollout.backend) == "vllm":
        return (rollout.max_model_len, "rollout.max_model_len") if rollout.max_model_len else None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError):  # no readable config: loading the model says what is wrong, more clearly
        return None
    config = getattr(config, "get_text_config", lambda: config)()
    tokens = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "max_sequence_length")
                   if isinstance(getattr(config, k, None), int)), None)
    return (tokens, "the model's context") if tokens else None


def make_engine(backend: str, **kwargs: Any):
    module, _, cls = BACKENDS[resolve_backend(backend)].partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


class RolloutWorker:
    def __init__(self, model_path: str, dtype: str, lora: LoraSection | None, backend: str, threads: int, gpus: float,
                 engine_options: dict[str, Any] | None = None, revision: str | None = None):
        set_threads(threads)
        self.backend = resolve_backend(backend)
        self.engine = make_engine(self.backend, model_path=resolve_model(model_path, revision), dtype=dtype, lora=lora, gpus=gpus,
                                  **(engine_options or {}))
        self.version, self.uses_lora = -1, lora is not None

    def load_weights(self, weights: dict[str, Any], version: int, probe: tuple[list[int], list[int]],
                     threads: int | None = None) -> tuple[list[float], int]:
        """Install policy `version` (a LoRA adapter, or merged full weights when the worker runs no adapter);
        return the probe completion's log-probs (temperature 1), for verification, and the bytes received.
        `threads`: see `threads_at` (vLLM's CPU build keeps its own: it refuses torch.set_num_threads)."""
        with threads_at(None if self.backend == "vllm" else threads):
            (self.engine.load_adapter if self.uses_lora else self.engine.load_merged)(weights, version)
            self.version = version
            return self.engine.sequence_logprobs([probe[0]], [probe[1]], 1.0)[0], sum(v.nbytes for v in weights.values())

    def sleep(self) -> float:
        """Free the engine's GPU memory while the learner trains; returns the GiB it gave back."""
        free_before = _free_gpu_bytes()
        self.engine.sleep()
        return (_free_gpu_bytes() - free_before) / 2**30

    def wake_up(self) -> None:
        self.engine.wake_up()

    def reshape_lora(self, layout: dict[str, Any]) -> None:
        """Adopt the learner's per-layer LoRA shape (after EVA) before its weights arrive; an engine that
        runs no adapter (merged weight sync, a scoring model) has no shape to adopt."""
        if self.uses_lora:
            self.engine.reshape_lora(layout)

    def generate(self, prompts: list[PromptSpec], sampling: SamplingSpec, version: int | None = None) -> list[Completion]:
        """Sample completions; refuses (StaleWorker) when it is not running policy `version`."""
        self._check(version)
        return self.engine.generate(prompts, sampling, self.version)

    def score_texts(self, prompts: list[str], continuations: list[str], version: int | None = None) -> list[float]:
        """log P(continuation | prompt) summed over the continuation's tokens (temperature 1)."""
        self._check(version)
        tokenizer = self.engine.tokenizer
        rows = self.engine.sequence_logprobs([encode_prompt(tokenizer, p, templated=False) for p in prompts],
                                             [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations], 1.0)
        return [sum(row) for row in rows]

    def _check(self, version: int | None) -> None:
        if version is not None and version != self.version:  # e.g. Ray restarted this actor: base weights only
            raise StaleWorker(f"asked for policy v{version}, running v{self.version}")

    def sequence_logprobs(self, prompts: list[list[int]], completions: list[list[int]], temperature: float) -> list[list[float]]:
        return self.engine.sequence_logprobs(prompts, completions, temperature)


def _free_gpu_bytes() -> int:
    import torch

    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
