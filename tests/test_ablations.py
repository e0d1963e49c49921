"""The DynMM evidence: router scoring from per-frame confusion matrices, the README block, the plots."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from fusion import ablations, viz


def _res() -> dict:
    fixed = [{"branch": k, "miou": m, "pixel_acc": 60.0, "gflops": g}
             for k, (m, g) in enumerate([(20.0, 1.2), (28.0, 1.4), (30.0, 1.6), (31.0, 2.0), (32.0, 2.4)])]
    gate = {"name": "dynmm_rgbd_b1", "resource_weight": 0.1, "miou": 31.5, "pixel_acc": 66.0, "mean_gflops": 1.8,
            "median_ms": 40.0, "iqr_ms": [38.0, 42.0], "ms_ratio_vs_static": 0.8, "ms_ratio_iqr": [0.75, 0.85],
            "gflops_ratio_vs_static": 0.75, "branch_hist": [0, 10, 40, 0, 50],
            "branch_share": [0.0, 0.1, 0.4, 0.0, 0.5],
            "random_router": {"miou_mean": 30.4, "miou_std": 0.2, "gate_beats_share": 1.0, "draws": 200},
            "fixed_line_at_same_gflops": 30.5, "vs_fixed_line": 1.0, "vs_random_router": 1.1, "vs_static": -0.5,
            "fp16_agreement": 1.0, "decision_margin_median": 0.8, "decisions_changed_by_other_depth": 0.3}
    return {"frames": 100, "fixed": fixed, "gates": [gate],
            "static": {"name": "static_rgbd", "miou": 32.0, "pixel_acc": 67.0, "mean_gflops": 2.36,
                       "median_ms": 50.0, "iqr_ms": [48.0, 52.0], "ms_ratio_vs_static": 1.0,
                       "ms_ratio_iqr": [1.0, 1.0]},
            "control": {"name": "static_rgbd_ft3", "miou": 32.5, "pixel_acc": 67.5, "mean_gflops": 2.36}}


def test_fixed_line_interpolates_between_bracketing_branches() -> None:
    pts = [(1.0, 10.0), (2.0, 20.0), (4.0, 22.0)]
    assert ablations.interpolate_line(pts, 1.5) == pytest.approx(15.0)
    assert ablations.interpolate_line(pts, 3.0) == pytest.approx(21.0)
    assert ablations.interpolate_line(pts, 5.0) is None


def test_router_miou_from_per_frame_confusions() -> None:
    import torch

    from fusion.train_gate import miou_of

    # two frames, two branches, two classes: branch 0 is right on frame 0 only, branch 1 on frame 1 only
    conf = torch.zeros(2, 2, 2, 2, dtype=torch.int32)
    conf[0, 0] = torch.tensor([[5, 0], [0, 5]])
    conf[0, 1] = torch.tensor([[0, 5], [5, 0]])
    conf[1, 0] = torch.tensor([[0, 5], [5, 0]])
    conf[1, 1] = torch.tensor([[5, 0], [0, 5]])
    assert miou_of(conf, torch.tensor([0, 1])) == pytest.approx(100.0)  # the right branch per frame
    assert miou_of(conf, torch.tensor([1, 0])) == pytest.approx(0.0)
    assert 0 < miou_of(conf, torch.tensor([0, 0])) < 100


def test_readme_block_and_svg() -> None:
    res = _res()
    lines = ablations.dynmm_lines(res, "test env")
    text = "\n".join(lines)
    assert "`dynmm_rgbd_b1`" in text and "30.40 ± 0.20" in text and "+1.10" in text and "+1.00" in text
    assert "fixed branch k=4" in text and "static_rgbd_ft3" in text
    assert all(line.count("|") == lines[0].count("|") for line in lines if line.startswith("|"))
    root = ET.fromstring(ablations.dynmm_svg(res))  # well-formed
    assert root.tag.endswith("svg") and len(list(root)) > 10


def test_pareto_figure_has_every_series() -> None:
    fig = viz.pareto_figure(_res())
    names = [t.name for t in fig.data]
    assert names == ["fixed branch k (forced)", "random router, same branch mix", "DynMM gate", "static base",
                     "static, same extra epochs"]
    assert list(fig.data[2].y) == [31.5]
