"""fusion.compute timing: interleaved rounds, median with its spread, and honest words when it is noisy."""
from __future__ import annotations

import pytest

from fusion import compute


class FakeClock:
    """A clock whose every call to a timed function advances it by that function's next duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fns(clock: FakeClock, durations: dict[str, list[float]], log: list[str]) -> dict:
    def make(name: str):
        def fn() -> None:
            log.append(name)
            clock.now += durations[name].pop(0) / 1e3
        return fn
    return {n: make(n) for n in durations}


def test_time_interleaved_alternates_after_warmup_and_keeps_round_order():
    clock, log = FakeClock(), []
    durs = {"a": [99.0, 10, 11, 12, 13], "b": [99.0, 20, 21, 22, 23]}  # first entry: the warm-up
    t = compute.time_interleaved(_fns(clock, durs, log), warmup=1, repeats=4, clock=clock)
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then A B, B A, A B, B A
    assert t["a"].samples_ms == pytest.approx((10, 11, 12, 13))
    assert t["b"].samples_ms == pytest.approx((20, 21, 22, 23))
    assert t["a"].median_ms == pytest.approx(11.5) and t["a"].warmup == 1


def test_steady_timing_gives_a_percentage():
    ref = compute.Timing((20.0, 20.5, 19.8, 20.2, 20.1))
    other = compute.Timing((15.0, 15.2, 14.9, 15.1, 15.0))
    assert not ref.noisy and not other.noisy
    assert "noisy" not in ref.text() and "20 ms" in ref.text() and "5 runs" in ref.text()
    ratio = compute.time_ratio(ref, other)
    assert not ratio.noisy
    assert ratio.delta_text("static") == "-25% vs static"


def test_busy_machine_never_gives_a_precise_percentage():
    """A load spike (one model's runs 17x slower half the time) must read as noisy, not '+1600% vs static'."""
    ref = compute.Timing((20.0, 21.0, 20.0, 22.0, 20.0))
    other = compute.Timing((340.0, 20.0, 330.0, 21.0, 350.0))
    assert other.noisy and "noisy" in other.text()
    ratio = compute.time_ratio(ref, other)
    assert ratio.noisy
    text = ratio.delta_text("static")
    assert "%" not in text and text.startswith("noisy")
    note = compute.timing_note({"static": ref, "dynmm": other})
    assert "noisy" in note and "FLOPs" in note


def test_spread_statistics():
    t = compute.Timing((10.0, 12.0, 14.0, 16.0, 18.0))
    assert (t.q1_ms, t.median_ms, t.q3_ms) == (12.0, 14.0, 16.0)
    assert (t.min_ms, t.max_ms) == (10.0, 18.0)
    assert t.spread == pytest.approx(4 / 14) and t.noisy  # IQR 29% of the median
    assert compute.Timing((10.0, 10.0)).noisy  # too few runs to tell
    assert compute.Timing(()).text() == "not timed"


def test_flop_count_sees_the_fused_transformer_layers() -> None:
    """In eval mode without gradients nn.TransformerEncoder takes a fused kernel that FlopCounterMode cannot see;
    the core's count switches it off, so the concat-token transformer's layers are counted (they were 0 before),
    and the switch is restored afterwards."""
    import torch

    from fusion.registry import create
    from fusion.types import AUDIO, FACE, TEXT

    torch.manual_seed(0)
    concat, late = create("concat_clips", encoders=False).eval(), create("late_clips", encoders=False).eval()
    ids, mask = concat.encoders[TEXT].tokenize(["i can not believe you did that"])
    x = {FACE: torch.rand(1, 1, 1, 48, 48), AUDIO: torch.randn(1, 64, 120) * 15 - 45, TEXT: ids, "text_mask": mask}
    before = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        extra = float(concat(x, count_flops=True).flops[0]) - float(late(x, count_flops=True).flops[0])
    n = 1 + 1 + 15 + int(mask.sum())  # [CLS], the face token, 15 speech tokens (120 frames / 8), the word pieces
    d = concat.cfg.dim
    per_layer_linear = 2 * n * (4 * d * d + 2 * d * 4 * d)  # q, k, v, out projections and the 4x MLP, 2 FLOPs per MAC
    assert extra > concat.cfg.layers * per_layer_linear
    assert torch.backends.mha.get_fastpath_enabled() == before
