"""LearnerWorker: the LoRA policy, its optimizer, and the clipped GRPO-family update."""
from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.policy_model import (PromptRows, initialize_eva, layout_of, load_policy, load_tokenizer, threads_at,
                                 pad_sequences, pick_device, reshape_lora, set_threads, shares_prompts, token_logprobs,
                                 unpad)
from actors.sharding import Sharding
from pipeline import core_algos
from pipeline.config import AlgorithmConfig, LoraSection, TrainerConfig
from pipeline.hub import resolve_model
from pipeline.records import TrainBatch


class Learner:
    def __init__(self, model_path: str, dtype: str, lora: LoraSection, algorithm: AlgorithmConfig, trainer: TrainerConfig,
                 temperature: float, max_new_tokens: int, seed: int, revision: str | None = None, threads: int = 1):
        set_threads(threads)
        torch.manual_seed(seed)
        self.device = pick_device(trainer.gpus_per_learner)
        model_path = resolve_model(model_path, revision)  # a Hub id: this node's snapshot of it
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_policy(model_path, dtype, lora, self.device).eval()  # peft adds its LoRA dropout in train mode
        self.lora, self.algo, self.trainer = lora, algorithm, trainer
        self._prepare_model()
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self._build_optimizer()
        self.shuffle = torch.Generator().manual_seed(seed)  # the same on every rank: all see the same mini-batches
        self.ranks = Sharding()

    def _prepare_model(self) -> None:
        """Gradient checkpointing if asked (recomputed per decoder layer in the backward; only in train mode,
        so only the gradient pass pays for it), and whether any dropout is live in train mode."""
        if self.trainer.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        config = getattr(self.model, "config", None)
        self._dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.model.modules()) or any(
            isinstance(v, float) and v > 0 for k, v in (config.to_dict() if config is not None else {}).items()
            if k.endswith("dropout") or k.endswith("dropout_prob"))
        self._share_prompts = shares_prompts(self.model, self.trainer, self._dropout)

    def _forwards(self):
        """The context of every learner forward: on CUDA, autocast to a half-precision model's dtype."""
        dtype = self.model.dtype
        if self.device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def _build_optimizer(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.trainer.lr, weight_decay=self.trainer.weight_decay)
        warmup = self.trainer.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))

    def init_eva(self, sequences: list[list[int]]) -> dict[str, Any]:
        """EVA initialisation from prompt+rollout token sequences; returns the per-layer LoRA layout."""
        layout = initialize_eva(self.model, sequences, self.tokenizer.pad_token_id, batch_size=16,
                                max_steps=self.lora.eva_max_steps)
        self.model.eval()
        self._build_optimizer()  # EVA replaced the adapter's parameters
        return layout

    # --- data parallelism ---------------------------------------------------------------------

    def rendezvous(self) -> str:
        """Rank 0: a free TCP address on its node for the process group (no fixed port to collide)."""
        import socket

        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((host, 0))
            return f"tcp://{host}:{sock.getsockname()[1]}"

    def join_group(self, address: str, rank: int, world: int, fsdp: bool = False) -> None:
        import torch.distributed as dist

        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", init_method=address, rank=rank, world_size=world)
        self.ranks = Sharding(rank, world)
        with torch.no_grad():  # start from rank 0's adapter, as DDP does
            for param in self.model.parameters():
                if param.requires_grad:
                    dist.broadcast(param.data, src=0)
        if fsdp:
            self.ranks.shard(self.model, self.device)
            self._build_optimizer()  # the parameters are sharded tensors now
            self._share_prompts = False  # each forward is a collective: every rank must run the same ones

    def _my_rows(self, group_ids: list[int]) -> torch.Tensor:
        """This rank's samples: whole groups, dealt round-robin in order of first appearance."""
        rank_of = {g: i % self.ranks.world for i, g in enumerate(dict.fromkeys(group_ids))}
        return torch.tensor([rank_of[g] == self.ranks.rank for g in group_ids])  # on the CPU, like the shuffle order it indexes

    # --- the update ------------------------------------------------------------------------

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """mu epochs of policy-loss updates over mini-batches of `batch`; returns metrics.

        With data parallelism every rank holds the whole (small) token batch but computes only its
        own groups; each mini-batch is the same global set of samples on every rank, normalised by
        the global token / sequence counts, so summing gradients across ranks gives exactly the
        single-learner gradient (spec §1.7).

        pi_old is the policy before this update: recomputed by a no-grad pass, except when the step is
        one epoch of one mini-batch (and no dropout is live), where it is exactly the detached log-probs
        of the gradient pass itself (the ratio is 1, as verl and TRL do it), so that pass is skipped."""
        ids, attention, response = pad_sequences(batch.prompt_ids, batch.completion_ids, self.tokenizer.pad_token_id, self.device)
        mask = response
        if batch.loss_mask:
            mask = mask * torch.tensor(batch.loss_mask, dtype=mask.dtype, device=self.device).unsqueeze(-1)
        advantages = torch.tensor(batch.advantages, dtype=torch.float32, device=self.device).unsqueeze(-1)
        lengths = attention.sum(-1).cpu()
        prompts = self._prompt_rows(batch.prompt_ids)
        mine = self._my_rows(batch.group_ids)
        first = int(lengths[0])
        self._idle_row = (ids[:1, :first], attention[:1, :first])  # what a rank with fewer rows feeds FSDP's collective forwards
        layout = torch.zeros(response.shape, device=self.device, dtype=torch.promote_types(self.model.dtype, torch.float32))
        behaviour = self._as_tensor(batch.behaviour_logprobs, response, like=layout)
        tis = bool(self.algo.tis_cap) and behaviour is not None
        reuse = self._old_is_current(len(ids))
        if reuse:  # filled by the gradient pass, which sees the policy before its own optimizer step
            recomputed, weights = layout.clone(), None
        else:  # as pi_old, the ratio is exactly 1 at first
            recomputed = self._logprobs_no_grad(ids, attention, response, rows=mine, lengths=lengths, prompts=prompts)
            weights = self._tis_weights(recomputed, behaviour, response) if tis else None
        old = behaviour if batch.old_from_behaviour else (None if reuse else recomputed)  # None: the detached current log-probs
        kl_in_loss = self.algo.kl_coef > 0 and self.algo.kl_in == "loss"
        ref = self._logprobs_no_grad(ids, attention, response, adapter=False, rows=mine, lengths=lengths,
                                     prompts=prompts) if kl_in_loss else None
        data = dict(ids=ids, attention=attention, mask=mask, response=response, advantages=advantages, old=old, ref=ref,
                    weights=weights, lengths=lengths, prompts=prompts, behaviour=behaviour if reuse and tis else None,
                    current=recomputed if reuse else None)
        metrics: dict[str, list[float]] = {}
        for _ in range(self.algo.ppo_epochs):
            order = torch.randperm(len(ids), generator=self.shuffle)
            for mb in order.split(self.trainer.minibatch_size):
                counted = (mask[mb].sum(-1) > 0).sum().item()  # overlong filtering may mask whole sequences out
                totals = core_algos.Totals(tokens=max(mask[mb].sum().item(), 1.0), seqs=max(float(counted), 1.0),
                                           max_len=float(self.max_new_tokens))
                step_metrics = self._optimizer_step(mb[mine[mb]], data, totals)
                for k, v in step_metrics.items():
                    metrics.setdefault(k, []).append(v)
        summary = {k: float(np.mean(v)) for k, v in metrics.items()}
        summary["skipped_steps"] = float(sum(metrics["skipped_steps"]))
        summary["all_skipped"] = float(all(metrics["skipped_steps"]))
        summary.update(self._behaviour_gap(recomputed[mine], response[mine], batch.behaviour_logprobs, mine))
        return summary

    def _old_is_current(self, samples: int) -> bool:
        """Whether pi_old equals the policy of the (only) gradient pass: one epoch, one mini-batch, no dropout."""
        return self.algo.ppo_epochs == 1 and self.trainer.minibatch_size >= samples and not self._dropout

    def _prompt_rows(self, prompt_ids: list[list[int]]) -> PromptRows | None:
        """Which rows share a prompt, for shared prompt forwards (None: every row runs whole)."""
        if not self._share_prompts:
            return None
        ids: dict[tuple[int, ...], int] = {}
        keys = torch.tensor([ids.setdefault(tuple(p), len(ids)) for p in prompt_ids])
        return PromptRows(torch.tensor([len(p) for p in prompt_ids]), keys)

    def _micro_batches(self, rows: torch.Tensor, lengths: torch.Tensor,
                       prompts: PromptRows | None = None) -> list[tuple[torch.Tensor, int]]:
        """`rows` in micro-batches, each with its own padded width (its longest row; rows are right-padded),
        of at most trainer.micro_batch_size rows and, with trainer.max_tokens_per_micro_batch, at most that many
        rows x width tokens (rows then taken longest first; a row over the budget goes alone). With shared
        prompt forwards a prompt's rows are kept together, prompts in the order of their first row (the order
        of rows within a mini-batch does not change its gradient)."""
        budget = self.trainer.max_tokens_per_micro_batch
        if len(rows) == 0:  # a data-parallel rank none of whose groups is in this mini-batch
            return []
        if budget is not None:
            rows = rows[torch.argsort(lengths[rows], descending=True, stable=True)]
        if prompts is not None:  # a prompt's rows together, prompts in the order of their first row
            first: dict[int, int] = {}
            rank = torch.tensor([first.setdefault(k, len(first)) for k in prompts.keys[rows.cpu()].tolist()])
            rows = rows[torch.argsort(rank, stable=True).to(rows.device)]
        micros, current, width = [], [], 0
        for row, length in zip(rows, lengths[rows].tolist()):
            full = len(current) == self.trainer.micro_batch_size
            if current and (full or budget is not None and (len(current) + 1) * max(width, length) > budget):
                micros.append(torch.stack(current))
                current, width = [], 0
            current.append(row)
            width = max(width, length)
        micros.append(torch.stack(current))
        return [(micro, int(lengths[micro].max())) for micro in micros]

    @torch.no_grad()
    def reference_kl(self, prompts: list[list[int]], completions: list[list[int]]) -> list[float]:
        """Per sample, the summed KL estimate between the current policy and the reference (kl_in=reward)."""
        ids, attention, mask = pad_sequences(prompts, completions, self.tokenizer.pad_token_id, self.device)
        prompts_of = self._prompt_rows(prompts)
        kl = core_algos.kl_penalty(self._logprobs_no_grad(ids, attention, mask, prompts=prompts_of),
                                   self._logprobs_no_grad(ids, attention, mask, adapter=False, prompts=prompts_of),
                                   self.algo.kl_type)
        return (kl * mask).sum(-1).tolist()

    @staticmethod
    def _as_tensor(rows: list[list[float]], mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """Per-token values (one row per sample) laid out like the model's log-probs; None when there are none."""
        if not rows:
            return None
        out = torch.zeros_like(like)
        out[mask.bool()] = torch.tensor([v for row in rows for v in row], dtype=like.dtype, device=like.device)
        return out

    def _tis_weights(self, learner: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token min(pi_learner / pi_rollout, algorithm.tis_cap)."""
        return torch.where(mask.bool(), torch.exp(learner - rollout).clamp(max=self.algo.tis_cap), torch.ones_like(learner))

    def _optimizer_step(self, rows: torch.Tensor, data: dict[str, Any], totals: core_algos.Totals) -> dict[str, float]:
        """One optimizer step on this rank's `rows` of a mini-batch; `totals` are the whole mini-batch's.

        data["current"] given: this pass's detached log-probs are written there (the policy before the step),
        serve as pi_old where data["old"] is None and give the truncated-IS weights against data["behaviour"]."""
        policy_loss = core_algos.POLICY_LOSSES[self.algo.policy_loss]
        self.optimizer.zero_grad(set_to_none=True)
        sums = dict(loss=0.0, pg_loss=0.0, kl=0.0, clipfrac=0.0, entropy=0.0)
        micros = self._micro_batches(rows, data["lengths"], data["prompts"])
        idle = self.ranks.forwards_to_run(len(micros)) - len(micros)  # agreed before any forward: it is a collective too
        self.model.train()  # LoRA dropout, if any, only where gradients flow; every no-grad pass runs in eval mode
        for micro, width in micros:
            micro = micro.to(self.device)
            pick = lambda name: None if data[name] is None else data[name][micro, :width - 1]  # noqa: E731
            m, response = pick("mask"), pick("response")
            with self._forwards():
                logp, entropy = token_logprobs(self.model, data["ids"][micro, :width], data["attention"][micro, :width],
                                               self.temperature, with_entropy=True, positions=response,
                                               prompts=self._rows_of(data["prompts"], micro))
            old, weights = pick("old"), pick("weights")
            if data["current"] is not None:  # this pass is the policy before the step: pi_old, the gap, the TIS weights
                current = logp.detach()
                data["current"][micro, :width - 1] = current
                old = current if old is None else old
                if data["behaviour"] is not None:
                    weights = self._tis_weights(current, pick("behaviour"), response)
            loss, stats = policy_loss(logp, old, data["advantages"][micro], m, totals, self.algo, weights, pick("ref"))
            self.ranks.backward(loss)
            sums["loss"] += loss.item()
            sums["entropy"] += (entropy * m).sum().item() / totals.tokens
            for k, v in stats.items():
                sums[k] += v
        for _ in range(idle):
            with self._forwards():
                logp = token_logprobs(self.model, *self._idle_row, self.temperature)[0]
            self.ranks.backward(logp.sum() * 0)
        self.model.eval()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.ranks.sum_gradients(params)  # each rank's loss is its share of the global one: gradients and metrics add up
        sums = dict(zip(sums, self.ranks.all_reduce(torch.tensor(list(sums.values()), dtype=torch.float64)).tolist()))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.trainer.grad_clip))
        threshold = self.trainer.grad_skip_thresh
        skipped = not (math.isfinite(grad_norm) and math.isfinite(sums["loss"])) or (threshold is not None and grad_norm >= threshold)
        if skipped:  # never train on garbage: the weights and the optimizer state stay as they were
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.scheduler.step()
        return {**sums, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0], "skipped_steps": float(skipped)}

    @torch.no_grad()
    def _logprobs_no_grad(self, ids, attention, positions, adapter: bool = True, rows: torch.Tensor | None = None,
                          lengths: torch.Tensor | None = None, prompts: PromptRows | None = None) -> torch.Tensor:
        """Per-token log-probs at `positions`, in micro-batches (of `rows` only; zeros elsewhere); adapter=False
        gives the reference policy."""
        out = torch.zeros(positions.shape, device=ids.device, dtype=torch.promote_types(self.model.dtype, torch.float32))
        lengths = attention.sum(-1).cpu() if lengths is None else lengths
        selected = torch.arange(len(ids)) if rows is None else rows.cpu().nonzero().squeeze(-1)
        micros = self._micro_batches(selected, lengths, prompts)
        idle = self.ranks.forwards_to_run(len(micros)) - len(micros)
        with contextlib.nullcontext() if adapter else self.model.disable_adapter(), self._forwards():
            for micro, width in micros:
                micro = micro.to(ids.device)
                out[micro, :width - 1] = token_logprobs(self.model, ids[micro, :width], attention[micro, :width], self.temperature,
                                                        positions=positions[micro, :width - 1],
                                                        prompts=self._rows_of(prompts, micro))[0]
            for _ in range(idle):
                token_logprobs(self.model, ids[:1, :int(lengths[0])], attention[:1, :int(lengths[0])], self.temperature)
        return out

    @staticmethod
    def _rows_of(prompts: PromptRows | None, micro: torch.Tensor) -> PromptRows | None:
        return None if prompts is None else prompts[micro.cpu()]

    def _behaviour_gap(self, old: torch.Tensor, mask: torch.Tensor, behaviour: list[list[float]], mine: torch.Tensor) -> dict[str, float]:
        """How far the rollout engine's log-probs are from the learner's (a stale or mismatched policy shows here)."""
        if not behaviour:
            return {}
        rows = [row for row, keep in zip(behaviour, mine.tolist()) if keep]
        gaps = [abs(a - b) for learner_row, rollout_row in zip(unpad(old, mask), rows) for a, b in zip(learner_row, rollout_row)]
        total = self.ranks.all_reduce(torch.tensor([sum(gaps), len(gaps)], dtype=torch.float64))
        largest = self.ranks.all_reduce(torch.tensor([max(gaps, default=0.0)], dtype=torch.float64), op="max")
        return {"logprob_gap_mean": float(total[0] / max(total[1], 1)), "logprob_gap_max": float(largest[0])}

    # --- weights, probes and checkpoints --------------------------------------------------------

    def adapter_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.ranks.adapter_tensors(self.model).items()}

    @torch.no_grad()
    def merged_state(self) -> dict[str, torch.Tensor]:
        """Every base weight with the adapter folded in (W + scale * B A), under the base checkpoint's names:
        what a rollout engine without LoRA support (or a merged export) reloads in place. Computed, never
        merged into the model, so no rounding accumulates across steps."""
        return {name: tensor.cpu() for name, tensor in self._merged_weights().items()}

    @torch.no_grad()
    def merged_logprobs(self, prompts: list[list[int]], completions: list[list[int]], temperature: float) -> list[list[float]]:
        """Log-probs under the merged weights themselves: what an engine given `merged_state` must reproduce
        (in bf16 the once-rounded W + BA is not the adapter applied on the fly)."""
        from torch.func import functional_call

        merged, base = self._merged_weights(), self.model.get_base_model()
        params = {name: merged[name.replace(".base_layer", "")] for name, _ in base.named_parameters() if ".lora_" not in name}
        ids, attention, mask = pad_sequences(prompts, completions, self.tokenizer.pad_token_id, self.device)
        with self.model.disable_adapter():
            logp, _ = token_logprobs(lambda **inputs: functional_call(base, params, args=(), kwargs=inputs), ids, attention, temperature,
                                     positions=mask)
        return unpad(logp, mask)

    def _merged_weights(self) -> dict[str, torch.Tensor]:
        from peft.tuners.lora import LoraLayer

        base = self.model.get_base_model()
        deltas = {f"{name}.weight": module.get_delta_weight("default")
                  for name, module in base.named_modules() if isinstance(module, LoraLayer) and "default" in module.lora_A}
        state = {}
        for name, tensor in base.state_dict().items():
            if ".lora_" not in name:
                name = name.replace(".base_layer", "")
                state[name] = (tensor + deltas[name]).to(tensor.dtype) if name in deltas else tensor
        return state

    def probe_logprobs(self, probe: tuple[list[int], list[int]], merged: bool, threads: int | None = None) -> list[float]:
        """The weight sync's check: this policy's log-probs of the fixed probe completion (temperature 1), scored
        while the rollout workers score it under the weights they just loaded (`threads`: see `threads_at`)."""
        with threads_at(threads):
            return (self.merged_logprobs if merged else self.sequence_logprobs)([probe[0]], [probe[1]], 1.0)[0]

    @torch.no_grad()
    def sequence_logprobs(self, prompts: list[list[int]], completions: list[list[int]], temperature: float | None = None) -> list[list[float]]:
        """Per-token log-probs of given completions, at the rollout temperature unless one is given."""
        ids, attention, mask = pad_sequences(prompts, completions, self.tokenizer.pad_token_id, self.device)
        with self._forwards():
            return unpad(token_logprobs(self.model, ids, attention, temperature or self.temperature, positions=mask)[0], mask)

    def save(self, directory: str) -> None:
        """Adapter in peft format plus optimizer, scheduler and RNG state, for exact resume (rank 0 writes)."""
        path = Path(directory)
        optimizer = self.ranks.optimizer_state(self.model, self.optimizer)
        self.ranks.write_adapter(self.model, path / "adapter")
        if self.ranks.rank != 0:
            return
        torch.save({
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "shuffle_rng": self.shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
        }, path / "learner_state.pt")

    def load(self, directory: str) -> None:
        """Restore what `save` wrote: adapter weights, optimizer, scheduler and every RNG."""
        from peft.utils import load_peft_weights

        path = Path(directory)
        if self.lora.init == "eva":  # take the saved per-layer shape before loading the weights
            self.model = reshape_lora(self.model, self.lora, layout_of(path / "adapter")).to(self.device).eval()
            self._prepare_model()
            self._build_optimizer()
        state = torch.load(path / "learner_state.pt", weights_only=False)
        self.ranks.load(self.model, self.optimizer, load_peft_weights(str(path / "adapter"), device=str(self.device)), state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])

    def save_adapter(self, directory: str) -> None:
        self.ranks.write_adapter(self.model, Path(directory))
        if self.ranks.rank == 0:
            self.tokenizer.save_pretrained(directory)
