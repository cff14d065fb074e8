"""The `hf` rollout backend: transformers `generate` on the policy with the current LoRA adapter."""
from __future__ import annotations

from typing import Any

import torch
from tokenizers.decoders import DecodeStream
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from actors.kv_cache import reserved_kv_cache
from actors.policy_model import (adapter_parameters, derive_seed, eos_token_ids, ignore_generation_defaults, load_policy,
                                 load_tokenizer, pad_sequences, pick_device, reshape_lora, token_logprobs, unpad)
from pipeline.config import LoraSection
from pipeline.records import Completion, PromptSpec, SamplingSpec


class TextStream:
    """A completion's text exactly as vLLM's detokenizer builds it: a tokenizers DecodeStream primed with
    the prompt, so a SentencePiece leading space or a character split across tokens decodes the same on
    both backends, and an incomplete character is held back. One step per token: O(length)."""

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.backend = tokenizer.backend_tokenizer
        self.stream = DecodeStream(ids=prompt_ids, skip_special_tokens=True)
        self.text = ""

    def step(self, token: int) -> int:
        """Append one token; the number of characters it added."""
        piece = self.stream.step(self.backend, token) or ""
        self.text += piece
        return len(piece)


def stop_string_start(text: str, new_chars: int, stop: tuple[str, ...]) -> int | None:
    """Where a stop string completed by the last `new_chars` characters starts; the one that ends first
    wins, ties by list order (vLLM's check_stop_strings)."""
    hits = [(at + len(s), k, at) for k, s in enumerate(stop) if (at := text.find(s, max(0, len(text) - new_chars - len(s) + 1))) >= 0]
    return min(hits)[2] if new_chars and hits else None


def completion_end(tokens: list[int], eos: frozenset[int], stop: tuple[str, ...], stream: TextStream) -> tuple[int, str, str]:
    """(tokens kept, text, finish reason), ending a completion exactly where vLLM does: at the first EOS-set
    token (kept in the ids, not decoded) or at the token that completes a stop string (kept; the text is
    cut where the stop string starts), whichever comes first; otherwise it was cut ("length")."""
    for i, token in enumerate(tokens):
        if token in eos:
            return i + 1, stream.text, "stop"
        new_chars = stream.step(token)
        start = stop_string_start(stream.text, new_chars, stop) if stop else None
        if start is not None:
            return i + 1, stream.text[:start], "stop"
    return len(tokens), stream.text, "length"


class NewTextStop(StoppingCriteria):
    """Ends a row once its generated text holds a stop string (HF's StopStringCriteria also matches one
    that starts inside the prompt, which vLLM never does). Each row's text grows one token per step."""

    def __init__(self, stop: tuple[str, ...], eos: frozenset[int], prompts: list[list[int]], tokenizer):
        self.stop, self.eos = stop, eos
        self.streams = [TextStream(tokenizer, p) for p in prompts]
        self.done = [False] * len(prompts)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if not self.done[row]:
                stream = self.streams[row]
                self.done[row] = token in self.eos or stop_string_start(stream.text, stream.step(token), self.stop) is not None
        return torch.tensor(self.done, device=input_ids.device)


class HFEngine:
    def __init__(self, model_path: str, dtype: str, lora: LoraSection | None, gpus: float):
        self.device = pick_device(gpus)
        self.tokenizer = load_tokenizer(model_path)
        self.eos = eos_token_ids(self.tokenizer, model_path)
        self.lora = lora
        self.model = load_policy(model_path, dtype, None if lora is None else lora.model_copy(update={"init": "default"}), self.device).eval()
        self.context_len = self.model.config.max_position_embeddings
        ignore_generation_defaults(model_path)
        bare = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        bare.generation_config = GenerationConfig()  # generate() would fill unset options from the checkpoint's
        self._unadapted: dict[Any, torch.Tensor] = {}  # LoRA layer -> its base weight, while the adapter is folded in
        self._folded = self._foldable()

    def reshape_lora(self, layout: dict[str, Any]) -> None:
        self._unfold()
        self.model = reshape_lora(self.model, self.lora, layout).to(self.device).eval()
        self._folded = self._foldable()

    def sleep(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        self.model.to(self.device)

    def load_adapter(self, adapter: dict[str, Any], version: int) -> None:
        """The adapter's tensors copied in place into the LoRA parameters they name (`adapter_parameters`):
        peft's `set_peft_model_state_dict` walks every module and remaps every key on each call, tens of
        milliseconds per sync on a small model for a copy that takes well under one. An adapter that does not
        match the map exactly (other keys or shapes, or no map) goes through peft."""
        params = adapter_parameters(self.model) or {}
        if adapter.keys() == params.keys() and all(tuple(v.shape) == tuple(params[k].shape) for k, v in adapter.items()):
            with torch.no_grad():
                for key, value in adapter.items():
                    params[key].copy_(torch.tensor(value))  # a copy: Ray hands over read-only arrays
        else:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, {k: torch.tensor(v) for k, v in adapter.items()})
        self._fold()

    def _foldable(self) -> list[Any]:
        """The LoRA layers whose adapter can be folded into the weight it adapts: plain linear LoRA (no DoRA, no
        LoRA bias), and only in float32 on the CPU, where W + scale * B A loses nothing that matters (in half
        precision the small update would be rounded away) and where the two extra small matmuls per layer
        and step cost most (about 15% of a small model's decode step). [] = run the adapter as it is."""
        from peft.tuners.lora import Linear, LoraLayer

        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        plain = all(type(m) is Linear and not m.use_dora.get("default") and not m.lora_bias.get("default") for m in layers)
        return layers if plain and self.device.type == "cpu" and self.model.dtype == torch.float32 else []

    @torch.no_grad()
    def _fold(self) -> None:
        """Each base weight set to W + scale * B A in one fused op from the kept original W (nothing accumulates
        across syncs), and the layer's adapter switched off: generation and log-probs run the base layers alone."""
        for layer in self._folded:
            weight = layer.get_base_layer().weight
            if layer not in self._unadapted:
                self._unadapted[layer] = weight.detach().clone()
                layer.enable_adapters(False)
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            mat1, mat2 = (a.T, b.T) if layer.fan_in_fan_out else (b, a)  # Conv1D (GPT-2) stores W transposed
            torch.addmm(self._unadapted[layer], mat1, mat2, alpha=layer.scaling["default"], out=weight)

    @torch.no_grad()
    def _unfold(self) -> None:
        for layer, original in self._unadapted.items():
            layer.get_base_layer().weight.copy_(original)
            layer.enable_adapters(True)
        self._unadapted.clear()

    def load_merged(self, weights: dict[str, torch.Tensor], version: int) -> None:
        """Full weights, in place (the engine runs the bare model: rollout.weight_sync=merged)."""
        self.model.load_state_dict(weights)

    @torch.no_grad()
    def generate(self, prompts: list[PromptSpec], sampling: SamplingSpec, version: int) -> list[Completion]:
        expanded = [p for p in prompts for _ in range(sampling.n)]
        ids, attention = self._left_pad([p.prompt_ids for p in expanded])
        room = [self.context_len - len(p.prompt_ids) for p in expanded]  # vLLM stops at max_model_len too
        if min(room) <= 0:
            raise ValueError(f"a prompt of {max(len(p.prompt_ids) for p in expanded)} tokens fills the model's context "
                             f"({self.context_len}); nothing can be generated")
        # one stream per chunk, from the step seed and the chunk's groups: a chunk redone gives the same samples
        torch.manual_seed(derive_seed(sampling.seed, *(p.group_id for p in prompts)))
        greedy = sampling.temperature == 0
        max_new_tokens = min(sampling.max_new_tokens, max(room))
        out = self.model.generate(
            input_ids=ids,
            attention_mask=attention,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else sampling.top_k,
            max_new_tokens=max_new_tokens,
            past_key_values=reserved_kv_cache(self.model, max_new_tokens),  # None: HF builds its DynamicCache
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos),
            stopping_criteria=StoppingCriteriaList([NewTextStop(sampling.stop, self.eos, [p.prompt_ids for p in expanded],
                                                                self.tokenizer)] if sampling.stop else []),
            output_logits=True,
            return_dict_in_generate=True,
        )
        new_tokens = out.sequences[:, ids.shape[1] :].cpu()
        logits = torch.stack(out.logits, dim=1).float() / (sampling.temperature if not greedy else 1.0)
        logprobs = torch.log_softmax(logits, -1).gather(-1, new_tokens.unsqueeze(-1).to(logits.device)).squeeze(-1).cpu()
        return [self._completion(p, new_tokens[i, : min(room[i], sampling.max_new_tokens)].tolist(), logprobs[i].tolist(),
                                 sampling, version) for i, p in enumerate(expanded)]

    def _completion(self, prompt: PromptSpec, tokens: list[int], logprobs: list[float], sampling: SamplingSpec, version: int) -> Completion:
        length, text, finish = completion_end(tokens, self.eos, sampling.stop, TextStream(self.tokenizer, prompt.prompt_ids))
        return Completion(prompt.group_id, prompt.prompt_ids, tokens[:length], text, logprobs[:length], finish, version)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            attention[i, width - len(row) :] = 1
        return ids.to(self.device), attention.to(self.device)

    @torch.no_grad()
    def sequence_logprobs(self, prompts: list[list[int]], completions: list[list[int]], temperature: float) -> list[list[float]]:
        ids, attention, mask = pad_sequences(prompts, completions, self.tokenizer.pad_token_id, self.device)
        logp, _ = token_logprobs(self.model, ids, attention, temperature)
        return unpad(logp, mask)
