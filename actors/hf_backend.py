"""The `hf` rollout backend: transformers `generate` on the policy with the current LoRA adapter."""
from __future__ import annotations

from typing import Any

import torch

from actors.policy_model import load_policy, load_tokenizer, pad_sequences, pick_device, reshape_lora, token_logprobs, unpad
from pipeline.records import Completion, PromptSpec, SamplingSpec


class HFEngine:
    def __init__(self, model_path: str, dtype: str, lora: dict[str, Any] | None, gpus: float):
        self.device = pick_device(gpus)
        self.tokenizer = load_tokenizer(model_path)
        self.lora = lora
        self.model = load_policy(model_path, dtype, None if lora is None else {**lora, "init": "default"}, self.device).eval()

    def reshape_lora(self, layout: dict[str, Any]) -> None:
        self.model = reshape_lora(self.model, self.lora, layout).to(self.device).eval()

    def sleep(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        self.model.to(self.device)

    def load_adapter(self, adapter: dict[str, Any], version: int) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, {k: torch.tensor(v) for k, v in adapter.items()})

    def load_merged(self, weights: dict[str, torch.Tensor], version: int) -> None:
        """Full weights, in place (the engine runs the bare model: rollout.weight_sync=merged)."""
        self.model.load_state_dict(weights)

    @torch.no_grad()
    def generate(self, prompts: list[PromptSpec], sampling: SamplingSpec, version: int) -> list[Completion]:
        expanded = [p for p in prompts for _ in range(sampling.n)]
        ids, attention = self._left_pad([p.prompt_ids for p in expanded])
        torch.manual_seed(sampling.seed)  # generate draws from the global RNG; seeded per call
        greedy = sampling.temperature == 0
        out = self.model.generate(
            input_ids=ids,
            attention_mask=attention,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else sampling.top_k,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            stop_strings=list(sampling.stop) or None,
            tokenizer=self.tokenizer if sampling.stop else None,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new_tokens = out.sequences[:, ids.shape[1] :].cpu()
        logits = torch.stack(out.logits, dim=1).float() / (sampling.temperature if not greedy else 1.0)
        logprobs = torch.log_softmax(logits, -1).gather(-1, new_tokens.unsqueeze(-1).to(logits.device)).squeeze(-1).cpu()
        return [self._completion(p, new_tokens[i], logprobs[i], sampling, version) for i, p in enumerate(expanded)]

    def _completion(self, prompt: PromptSpec, tokens: torch.Tensor, logprobs: torch.Tensor, sampling: SamplingSpec, version: int) -> Completion:
        token_ids = tokens.tolist()
        eos = self.tokenizer.eos_token_id
        length, finish = len(token_ids), "length"
        if eos in token_ids:
            length, finish = token_ids.index(eos) + 1, "stop"
        token_ids = token_ids[:length]
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        for stop in sampling.stop:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return Completion(prompt.group_id, prompt.prompt_ids, token_ids, text, logprobs[:length].tolist(), finish, version)

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
