"""Measured compute: FLOPs with ``torch.utils.flop_counter.FlopCounterMode``, parameters, wall time.

FLOPs, not MACs (1 multiply-accumulate = 2 FLOPs); the DynMM paper reports MACs. FLOPs are exact for the
path that ran; wall time is a sample of a noisy process, so :func:`time_interleaved` times the models being
compared in alternating rounds (the same machine load hits all of them) and returns the spread with the
median, and :class:`Timing` / :class:`TimeRatio` say in words when the spread is too large to trust a number.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


_FASTPATH_LOCK = threading.Lock()
_FASTPATH_USERS = [0, True]  # [callers inside counted_kernels(), the flag to restore when the last one leaves]


@contextlib.contextmanager
def counted_kernels() -> Any:
    """Run the enclosed code with PyTorch's fused transformer inference kernel switched off.

    ``nn.TransformerEncoderLayer`` / ``nn.MultiheadAttention`` take a fused "fast path" in eval mode without
    gradients; ``FlopCounterMode`` does not see inside it and counts those layers as zero FLOPs. The layers then
    run as their separate ops instead (the same computation). The switch is process-wide
    (``torch.backends.mha``), so it is reference-counted under a lock: concurrent app sessions that count at the
    same time cannot restore it under each other."""
    with _FASTPATH_LOCK:
        if _FASTPATH_USERS[0] == 0:
            _FASTPATH_USERS[1] = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
        _FASTPATH_USERS[0] += 1
    try:
        yield
    finally:
        with _FASTPATH_LOCK:
            _FASTPATH_USERS[0] -= 1
            if _FASTPATH_USERS[0] == 0:
                torch.backends.mha.set_fastpath_enabled(_FASTPATH_USERS[1])


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


NOISY_SPREAD = 0.2  # interquartile range / median above which a timing is called noisy


def _quartiles(values: tuple[float, ...]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), linear interpolation (NaN for no values)."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    q1, q2, q3 = np.percentile(np.asarray(values, np.float64), [25, 50, 75])
    return float(q1), float(q2), float(q3)


@dataclass(frozen=True)
class Timing:
    """Wall-time samples (milliseconds) of one callable, timed interleaved with the ones it is compared to.

    The median is the number to show; the interquartile range (IQR) is its spread. ``noisy`` is True when
    the IQR exceeds :data:`NOISY_SPREAD` of the median: the machine was busy, so treat the time as rough.
    """

    samples_ms: tuple[float, ...]
    warmup: int = 1  # untimed calls before the timed rounds

    @property
    def repeats(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return _quartiles(self.samples_ms)[1]

    @property
    def q1_ms(self) -> float:
        return _quartiles(self.samples_ms)[0]

    @property
    def q3_ms(self) -> float:
        return _quartiles(self.samples_ms)[2]

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def spread(self) -> float:
        """IQR relative to the median (inf when the median is not positive or there are no samples)."""
        q1, med, q3 = _quartiles(self.samples_ms)
        return (q3 - q1) / med if np.isfinite(med) and med > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        return self.repeats < 3 or self.spread > NOISY_SPREAD

    def text(self) -> str:
        """``"53 ms (IQR 50–57 ms, 5 runs)"``; noisy timings are marked as such, in words."""
        if not self.samples_ms:
            return "not timed"
        q1, med, q3 = _quartiles(self.samples_ms)
        core = f"{med:.0f} ms (IQR {q1:.0f}–{q3:.0f} ms, {self.repeats} runs)"
        return f"≈{core} — noisy, the machine was busy" if self.noisy else core


@dataclass(frozen=True)
class TimeRatio:
    """Paired time ratios ``other / reference``, one per interleaved round (the two calls of a round ran
    back to back, so both saw about the same machine load)."""

    ratios: tuple[float, ...]
    inputs_noisy: bool = False  # either timing on its own was noisy

    @property
    def median(self) -> float:
        return _quartiles(self.ratios)[1]

    @property
    def q1(self) -> float:
        return _quartiles(self.ratios)[0]

    @property
    def q3(self) -> float:
        return _quartiles(self.ratios)[2]

    @property
    def noisy(self) -> bool:
        """True when either timing was noisy or the per-round ratios disagree by more than NOISY_SPREAD."""
        q1, med, q3 = _quartiles(self.ratios)
        if self.inputs_noisy or len(self.ratios) < 3 or not (np.isfinite(med) and med > 0):
            return True
        return (q3 - q1) / med > NOISY_SPREAD

    def delta_text(self, reference: str) -> str:
        """Short text for a metric delta: a percentage when the ratio is steady (``"-23% vs static"``), else
        a coarse range in words (``"noisy: 0.8–1.6× static"``), never a precise percentage."""
        if not self.ratios:
            return f"not timed vs {reference}"
        if self.noisy:
            return f"noisy: {self.q1:.1f}–{self.q3:.1f}× {reference}"
        return f"{(self.median - 1) * 100:+.0f}% vs {reference}"


def time_ratio(reference: Timing, other: Timing) -> TimeRatio:
    """Per-round ratios of two timings from the same :func:`time_interleaved` call (round i of ``other``
    over round i of ``reference``)."""
    pairs = [(r, o) for r, o in zip(reference.samples_ms, other.samples_ms) if r > 0]
    return TimeRatio(tuple(o / r for r, o in pairs), inputs_noisy=reference.noisy or other.noisy)


@torch.no_grad()
def time_interleaved(fns: Mapping[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Wall time of several callables measured against each other, in milliseconds.

    Each callable is called ``warmup`` times untimed, then ``repeats`` rounds run every callable once, back
    to back; the order rotates from round to round (A B, B A, A B, ... for two), so a load spike or a
    first-position effect does not land on one of them only. ``clock`` returns seconds (injectable for
    tests). Returns a :class:`Timing` per name, samples in round order.
    """
    names = list(fns)
    for _ in range(max(0, warmup)):
        for n in names:
            fns[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(max(1, repeats)):
        k = r % len(names) if names else 0
        for n in names[k:] + names[:k]:
            t = clock()
            fns[n]()
            samples[n].append((clock() - t) * 1e3)
    return {n: Timing(tuple(samples[n]), warmup=max(0, warmup)) for n in names}


def timing_note(timings: Mapping[str, Timing]) -> str:
    """One sentence on how the times were measured and whether to believe them."""
    if not timings:
        return "Not timed."
    t0 = next(iter(timings.values()))
    how = (f"Times: median of {t0.repeats} runs per model after {t0.warmup} warm-up"
           + (", the models alternating run by run" if len(timings) > 1 else "")
           + " (no FLOP counter attached), on this machine's CPU; the spread is the interquartile range (IQR).")
    noisy = [n for n, t in timings.items() if t.noisy]
    if noisy:
        return how + (" **The timing is noisy**: the runs spread widely (the machine is busy), so read the "
                      "times as rough and trust the FLOPs, which are exact.")
    return how


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
