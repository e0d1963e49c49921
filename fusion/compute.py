"""Measured compute: FLOPs with ``torch.utils.flop_counter.FlopCounterMode``, parameters, wall time.

FLOPs, not MACs (1 multiply-accumulate = 2 FLOPs); the DynMM paper reports MACs.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn()`` under FlopCounterMode; return (total FLOPs, its result)."""
    with FlopCounterMode(display=False) as fc:
        result = fn()
    return float(fc.get_total_flops()), result


def count_params(module: torch.nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def time_ms(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5) -> dict[str, float]:
    """Wall time of ``fn()`` in milliseconds: median and min over ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "repeats": repeats}
