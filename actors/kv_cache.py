"""A KV cache for HF `generate` whose decode steps write in place.

HF's DynamicCache grows each layer's keys and values with `torch.cat`, a copy of the whole cache per layer
and token: O(length^2) memory traffic, about a tenth of a 6.3M-parameter model's CPU generate time with 75
new tokens (benchmarks/kv_cache.py). Here each layer keeps a buffer with room to grow and hands attention a
view of its filled part: the same values, so the same samples, bit for bit.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

MIN_GROWTH = 64  # tokens of room added at least, each time a buffer fills


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views into a buffer. A full buffer is replaced by one with room
    for as many tokens again (at least MIN_GROWTH), never more than the prefill plus `reserve` (the most that
    generate can add): a few copies per call instead of one per token, and at most about twice the memory
    DynamicCache holds, however early the completions end. When HF replaces the tensors (beam reordering,
    batch selection) the next update starts a new buffer from them. After `crop`, the next update overwrites
    positions that views handed out before it still show (HF keeps none of them)."""

    def __init__(self, reserve: int):
        super().__init__()
        self.reserve = reserve
        self.most = 0  # the longest this layer can get: set by the first update (the prefill)
        self.buffers: list[torch.Tensor | None] = [None, None]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.most = key_states.shape[-2] + self.reserve
        self.keys = self._append(0, self.keys, key_states)
        self.values = self._append(1, self.values, value_states)
        return self.keys, self.values

    def reset(self) -> None:
        super().reset()
        self.buffers = [None, None]

    def _append(self, which: int, held: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        length = held.shape[-2] if held.numel() else 0
        end = length + new.shape[-2]
        buffer = self.buffers[which]
        fits = (buffer is not None and buffer.shape[-2] >= end and buffer.shape[:2] == new.shape[:2]
                and (length == 0 or held.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()))
        if not fits:
            room = max(end, min(self.most, end + max(MIN_GROWTH, end)))
            buffer = new.new_empty((*new.shape[:2], room, new.shape[-1]))
            if length:
                buffer[..., :length, :] = held
            self.buffers[which] = buffer
        buffer[..., length:end, :] = new
        return buffer[..., :end, :]


def reserved_kv_cache(model, reserve: int) -> DynamicCache | None:
    """A cache of ReservedLayers for `model`, for at most `reserve` new tokens; None (HF builds its own) where
    the model's layers need another kind (sliding windows, linear attention) or no Cache at all."""
    supports = getattr(model, "_supports_default_dynamic_cache", None)  # HF's own test (private: absent = unsure)
    if supports is None or not supports():
        return None
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [ReservedLayer(reserve) for _ in cache.layers]
    return cache
