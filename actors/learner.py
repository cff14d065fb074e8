"""LearnerWorker: the LoRA policy, its optimizer, and the clipped GRPO-family update."""
from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.policy_model import (initialize_eva, layout_of, load_policy, load_tokenizer, pad_sequences, pick_device,
                                 reshape_lora, set_threads, token_logprobs, unpad)
from actors.sharding import Sharding
from pipeline import core_algos
from pipeline.config import AlgorithmConfig, LoraSection, TrainerConfig
from pipeline.records import TrainBatch


class Learner:
    def __init__(self, model_path: str, dtype: str, lora: LoraSection, algorithm: AlgorithmConfig, trainer: TrainerConfig,
                 temperature: float, max_new_tokens: int, seed: int):
        set_threads(trainer.cpus_per_learner)
        torch.manual_seed(seed)
        self.device = pick_device(trainer.gpus_per_learner)
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_policy(model_path, dtype, lora, self.device).eval()  # peft adds its LoRA dropout in train mode
        self.lora, self.algo, self.trainer = lora, algorithm, trainer
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self._build_optimizer()
        self.shuffle = torch.Generator().manual_seed(seed)  # the same on every rank: all see the same mini-batches
        self.ranks = Sharding()

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
        single-learner gradient (spec §1.7)."""
        ids, attention, mask = pad_sequences(batch.prompt_ids, batch.completion_ids, self.tokenizer.pad_token_id, self.device)
        behaviour_mask = mask
        if batch.loss_mask:
            mask = mask * torch.tensor(batch.loss_mask, dtype=mask.dtype, device=self.device).unsqueeze(-1)
        advantages = torch.tensor(batch.advantages, dtype=torch.float32, device=self.device).unsqueeze(-1)
        mine = self._my_rows(batch.group_ids)
        self._idle_row = (ids[:1], attention[:1])  # what a rank with fewer rows feeds FSDP's collective forwards
        recomputed = self._logprobs_no_grad(ids, attention, rows=mine)  # as pi_old, the ratio is exactly 1 at first
        behaviour = self._as_tensor(batch.behaviour_logprobs, behaviour_mask, like=recomputed)
        old = behaviour if batch.old_from_behaviour else recomputed
        kl_in_loss = self.algo.kl_coef > 0 and self.algo.kl_in == "loss"
        ref = self._logprobs_no_grad(ids, attention, adapter=False, rows=mine) if kl_in_loss else None
        weights = self._tis_weights(recomputed, behaviour, behaviour_mask) if self.algo.tis_cap and behaviour is not None else None
        metrics: dict[str, list[float]] = {}
        for _ in range(self.algo.ppo_epochs):
            order = torch.randperm(len(ids), generator=self.shuffle)
            for mb in order.split(self.trainer.minibatch_size):
                counted = (mask[mb].sum(-1) > 0).sum().item()  # overlong filtering may mask whole sequences out
                totals = core_algos.Totals(tokens=max(mask[mb].sum().item(), 1.0), seqs=max(float(counted), 1.0),
                                           max_len=float(self.max_new_tokens))
                local = mb[mine[mb]]
                pick = lambda values: None if values is None else values[local]  # noqa: E731
                step_metrics = self._optimizer_step(ids[local], attention[local], mask[local], advantages[local], old[local],
                                                    pick(ref), pick(weights), totals)
                for k, v in step_metrics.items():
                    metrics.setdefault(k, []).append(v)
        summary = {k: float(np.mean(v)) for k, v in metrics.items()}
        summary["skipped_steps"] = float(sum(metrics["skipped_steps"]))
        summary["all_skipped"] = float(all(metrics["skipped_steps"]))
        summary.update(self._behaviour_gap(recomputed[mine], behaviour_mask[mine], batch.behaviour_logprobs, mine))
        return summary

    @torch.no_grad()
    def reference_kl(self, prompts: list[list[int]], completions: list[list[int]]) -> list[float]:
        """Per sample, the summed KL estimate between the current policy and the reference (kl_in=reward)."""
        ids, attention, mask = pad_sequences(prompts, completions, self.tokenizer.pad_token_id, self.device)
        kl = core_algos.kl_penalty(self._logprobs_no_grad(ids, attention), self._logprobs_no_grad(ids, attention, adapter=False),
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

    def _optimizer_step(self, ids, attention, mask, advantages, old, ref, weights, totals: core_algos.Totals) -> dict[str, float]:
        """One optimizer step on this rank's rows of a mini-batch; `totals` are the whole mini-batch's."""
        policy_loss = core_algos.POLICY_LOSSES[self.algo.policy_loss]
        self.optimizer.zero_grad(set_to_none=True)
        sums = dict(loss=0.0, pg_loss=0.0, kl=0.0, clipfrac=0.0, entropy=0.0)
        micros = torch.arange(len(ids), device=ids.device).split(self.trainer.micro_batch_size)
        idle = self.ranks.forwards_to_run(len(micros)) - len(micros)  # agreed before any forward: it is a collective too
        self.model.train()  # LoRA dropout, if any, only where gradients flow; every no-grad pass runs in eval mode
        for micro in micros:
            logp, entropy = token_logprobs(self.model, ids[micro], attention[micro], self.temperature, with_entropy=True)
            m = mask[micro]
            pick = lambda values: None if values is None else values[micro]  # noqa: E731
            loss, stats = policy_loss(logp, old[micro], advantages[micro], m, totals, self.algo, pick(weights), pick(ref))
            self.ranks.backward(loss)
            sums["loss"] += loss.item()
            sums["entropy"] += (entropy * m).sum().item() / totals.tokens
            for k, v in stats.items():
                sums[k] += v
        for _ in range(idle):
            self.ranks.backward(token_logprobs(self.model, *self._idle_row, self.temperature)[0].sum() * 0)
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
    def _logprobs_no_grad(self, ids, attention, adapter: bool = True, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token log-probs in micro-batches (of `rows` only; zeros elsewhere); adapter=False gives the reference policy."""
        out = torch.zeros((len(ids), ids.shape[1] - 1), device=ids.device, dtype=torch.promote_types(self.model.dtype, torch.float32))
        selected = torch.arange(len(ids), device=ids.device) if rows is None else rows.nonzero().squeeze(-1)
        micros = selected.split(self.trainer.micro_batch_size)
        idle = self.ranks.forwards_to_run(len(micros)) - len(micros)
        with contextlib.nullcontext() if adapter else self.model.disable_adapter():
            for micro in micros:
                out[micro] = token_logprobs(self.model, ids[micro], attention[micro], self.temperature)[0]
            for _ in range(idle):
                token_logprobs(self.model, ids[:1], attention[:1], self.temperature)
        return out

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
            logp, _ = token_logprobs(lambda **inputs: functional_call(base, params, args=(), kwargs=inputs), ids, attention, temperature)
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

    @torch.no_grad()
    def sequence_logprobs(self, prompts: list[list[int]], completions: list[list[int]], temperature: float | None = None) -> list[list[float]]:
        """Per-token log-probs of given completions, at the rollout temperature unless one is given."""
        ids, attention, mask = pad_sequences(prompts, completions, self.tokenizer.pad_token_id, self.device)
        return unpad(token_logprobs(self.model, ids, attention, temperature or self.temperature)[0], mask)

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
