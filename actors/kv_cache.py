"""A KV cache for HF `generate` whose decode steps write in place.

HF's DynamicCache grows each layer's keys and values with `torch.cat`, a copy of the whole cache per layer
and token: O(length^2) memory traffic, 5-12% of a small model's CPU generate time (benchmarks/
kv_cache.py). Here each layer keeps a buffer with room for the tokens still to come and hands attention a
view of its filled part: the same values, so the same samples, bit for bit.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views into a buffer with room for `reserve` more tokens. When
    HF replaces the tensors (beam reordering, batch selection) the next update starts a new buffer from them."""

    def __init__(self, reserve: int):
        super().__init__()
        self.reserve = reserve
        self.buffers: list[torch.Tensor | None] = [None, None]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = self._append(0, self.keys, key_states)
        self.values = self._append(1, self.values, value_states)
        return self.keys, self.values

    def _append(self, which: int, held: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        length = held.shape[-2] if held.numel() else 0
        end = length + new.shape[-2]
        buffer = self.buffers[which]
        fits = (buffer is not None and buffer.shape[-2] >= end and buffer.shape[:2] == new.shape[:2]
                and (length == 0 or held.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()))
        if not fits:
            buffer = new.new_empty((*new.shape[:2], end + self.reserve, new.shape[-1]))
            if length:
                buffer[..., :length, :] = held
            self.buffers[which] = buffer
        buffer[..., length:end, :] = new
        return buffer[..., :end, :]


def reserved_kv_cache(model, reserve: int) -> DynamicCache | None:
    """A cache of ReservedLayers for `model`, with room for `reserve` tokens past the prompt; None (HF builds its
    own) where the model's layers need another kind (sliding windows, linear attention) or no Cache at all."""
    if not model._supports_default_dynamic_cache():
        return None
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [ReservedLayer(reserve) for _ in cache.layers]
    return cache
