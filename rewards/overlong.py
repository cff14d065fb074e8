"""DAPO's soft overlong punishment (spec §1.4, eq. 13), added to the correctness reward."""
from __future__ import annotations


def soft_overlong_penalty(length: int, max_len: int, buffer_len: int, factor: float = 1.0) -> float:
    """0 up to max_len - buffer_len tokens, then a linear ramp down to -factor at max_len (and beyond)."""
    if buffer_len <= 0:
        return 0.0
    expected = max_len - buffer_len
    return min(-(length - expected) / buffer_len * factor, 0.0) if length <= max_len else -factor
