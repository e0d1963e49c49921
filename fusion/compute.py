"""Measured compute: FLOPs with ``torch.utils.flop_counter.FlopCounterMode``, parameters, wall time.

FLOPs, not MACs (1 multiply-accumulate = 2 FLOPs); the DynMM paper reports MACs.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
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


class AllocationCounter(TorchDispatchMode):
    """Sum the bytes of every tensor the ops inside the ``with`` block produce (activation memory
    allocated, not peak: what the block asks the allocator for). Counting is what FlopCounterMode does
    for FLOPs; CPU has no per-block peak-memory counter, so this is the honest measurable stand-in."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and func not in _VIEW_OPS and not t._is_view():
                self.bytes += t.numel() * t.element_size()
        return out


_VIEW_OPS = {torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.t.default,
             torch.ops.aten.transpose.int, torch.ops.aten.permute.default, torch.ops.aten.expand.default,
             torch.ops.aten.slice.Tensor, torch.ops.aten.select.int, torch.ops.aten.unsqueeze.default,
             torch.ops.aten.squeeze.dim, torch.ops.aten.detach.default, torch.ops.aten.alias.default}
