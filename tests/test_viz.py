"""fusion.viz: pure picture/figure helpers, tested without a browser."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from fusion import viz


def test_no_streamlit_import():
    tree = ast.parse(Path(viz.__file__).read_text())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.split(".")[0] == "streamlit" for m in mods)


def test_palette_distinct_and_not_black():
    pal = viz.make_palette(40)
    assert pal.shape == (40, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == 40
    assert (pal.max(axis=1) > 60).all()  # black is reserved for holes / no label
    np.testing.assert_array_equal(pal, viz.make_palette(40))  # deterministic


def test_colorize_and_ignore():
    lab = np.array([[0, 1], [39, 255]], np.uint8)
    img = viz.colorize(lab)
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, 0], viz.PALETTE[0])
    np.testing.assert_array_equal(img[1, 0], viz.PALETTE[39])
    np.testing.assert_array_equal(img[1, 1], [0, 0, 0])
    with pytest.raises(ValueError):
        viz.colorize(np.zeros((2, 2, 2), np.uint8))


def test_overlay_blend_and_shape_check():
    rgb = np.full((4, 6, 3), 100, np.uint8)
    lab = np.zeros((4, 6), np.int64)
    lab[0, 0] = 255
    out = viz.overlay(rgb, lab, alpha=0.0)
    np.testing.assert_array_equal(out, rgb)
    out = viz.overlay(rgb, lab, alpha=1.0)
    np.testing.assert_array_equal(out[1, 1], viz.PALETTE[0])
    np.testing.assert_array_equal(out[0, 0], rgb[0, 0])  # ignored pixel keeps the image
    with pytest.raises(ValueError):
        viz.overlay(rgb, np.zeros((3, 6), np.int64))


def test_depth_to_rgb_holes_black_and_monotone():
    d = np.tile(np.linspace(0.5, 5.0, 64, dtype=np.float32), (4, 1))
    d[0, 0] = 0.0
    d[1, 1] = np.nan
    img = viz.depth_to_rgb(d)
    assert img.shape == (4, 64, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(img[1, 1], [0, 0, 0])
    # near is blue-ish, far is red-ish
    near, far = img[2, 2].astype(int), img[2, -3].astype(int)
    assert near[2] > near[0] and far[0] > far[2]
    # all-hole depth: black image, no crash
    assert viz.depth_to_rgb(np.zeros((3, 3), np.float32)).max() == 0


def test_legend_entries_only_present_classes():
    lab = np.array([[2, 2, 2, 5], [5, 255, 255, 2]])
    names = [f"n{i}" for i in range(40)]
    ents = viz.legend_entries(lab, names)
    assert [e.class_id for e in ents] == [2, 5]
    assert ents[0].name == "n2" and ents[0].color.startswith("#")
    assert abs(sum(e.fraction for e in ents) - 1.0) < 1e-9
    assert viz.legend_entries(np.full((2, 2), 255)) == []
    html = viz.legend_html(viz.legend_entries(lab, ["<b>"] * 40))
    assert "&lt;b&gt;" in html and "<b>" not in html


def test_frame_metrics():
    gt = np.array([[0, 0, 1, 1], [255, 255, 1, 1]])
    assert viz.frame_metrics(gt, gt, 3)["pixel_acc"] == 1.0
    pred = np.array([[0, 1, 1, 1], [2, 2, 1, 1]])
    m = viz.frame_metrics(pred, gt, 3)
    assert m["pixel_acc"] == pytest.approx(5 / 6)
    # IoU class0 = 1/2, class1 = 4/5 -> mean 0.65
    assert m["miou"] == pytest.approx(0.65)
    assert m["n_pixels"] == 6
    assert np.isnan(viz.frame_metrics(pred, np.full_like(gt, 255), 3)["pixel_acc"])


def test_change_mask_and_image():
    a = np.zeros((3, 3), np.int64)
    b = a.copy()
    b[1, 2] = 4
    m = viz.changed_mask(a, b)
    assert m.sum() == 1
    img = viz.change_image(np.full((3, 3, 3), 200, np.uint8), m)
    np.testing.assert_array_equal(img[1, 2], [255, 0, 255])
    assert img[0, 0].max() < 200


def test_saving_and_format():
    assert viz.saving_percent(10.0, 4.0) == pytest.approx(60.0)
    assert viz.saving_percent(None, 4.0) is None
    assert viz.saving_percent(0.0, 4.0) is None
    assert viz.format_flops(2.5e9) == "2.50 GFLOPs"
    assert viz.format_flops(None) == "n/a"


def test_fit_within():
    img = np.zeros((100, 400, 3), np.uint8)
    assert viz.fit_within(img, 200).shape == (50, 200, 3)
    assert viz.fit_within(img, 800) is img
    d = np.arange(400 * 100, dtype=np.float32).reshape(100, 400)
    assert viz.fit_within(d, 200).shape == (50, 200)


def test_gate_probs_figure():
    fig = viz.gate_probs_figure([0.1, 0.6, 0.3], chosen=1, n_stages=2)
    assert isinstance(fig, go.Figure)
    bar = fig.data[0]
    assert list(bar.y) == [0.1, 0.6, 0.3]
    assert bar.x[0].startswith("k=0")
    assert bar.marker.color[1] != bar.marker.color[0]
    assert "never runs" in bar.hovertext[0]
    assert "k=1" in fig.layout.title.text


def test_compute_figure():
    fig = viz.compute_figure([
        {"name": "Static", "flops": 4e9, "ms": 20.0},
        {"name": "DynMM", "flops": 2e9, "ms": None},
    ])
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    assert list(fig.data[0].y) == [4.0, 2.0]
    assert fig.data[1].y[1] is None


def test_token_overlay_dims_dropped_cells_and_outlines_kept_ones():
    img = np.full((60, 80, 3), 200, np.uint8)
    scores = np.arange(12, dtype=np.float32)  # a 3 x 4 token grid, 20 x 20 pixels per cell
    out = viz.token_overlay(img, (3, 4), scores, kept=np.array([11]), dim=0.25)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[10, 10] == 50).all()  # cell 0 dropped: the photo dimmed to 25%
    assert (out[50, 60] != out[10, 10]).any() and (out[40, 60] == 255).all()  # kept cell 11: tinted, outlined
    win = np.repeat(np.arange(6), 2)  # window modes: nothing dimmed, window borders black
    out_w = viz.token_overlay(img, (3, 4), scores, kept=np.arange(0, 12, 2), windows=win)
    assert (out_w[10, 10] != 50).any()


def test_method_figures():
    fig = viz.residual_figure([{"name": "a", "residuals": [1.0, 0.1, 1e-4], "nstep": 3}], tol=1e-3)
    assert fig.layout.yaxis.type == "log" and len(fig.data) == 2  # the curve and its stop marker
    fig = viz.settling_figure([1, 2, 3], [0.5, 0.1, 0.0])
    assert list(fig.data[0].y) == [50.0, 10.0, 0.0]
    fig = viz.robustness_figure(["base", "lora"], ["both", "rgb", "depth"], [[30, 3, 10], [None, 20, 15]])
    assert fig.data[0].z[1][0] is None and fig.data[0].text[0][0] == "30.0"
    fig = viz.token_cost_figure([{"name": "s", "tokens": 60, "flops": 6e7, "mbytes": 3.0},
                                 {"name": "d", "tokens": 600, "flops": 3.6e8, "mbytes": None}])
    assert len(fig.data) == 3 and fig.data[1].y[1] == pytest.approx(0.36)


def test_label_changes_top_pairs_by_pixel_share():
    names = [f"n{i}" for i in range(10)]
    before = np.array([[1, 1, 1, 1], [2, 2, 3, 3]])
    after = np.array([[4, 4, 4, 1], [5, 2, 3, 6]])
    ch = viz.label_changes(before, after, names)
    assert [(c.before, c.after) for c in ch] == [("n1", "n4"), ("n2", "n5"), ("n3", "n6")]
    assert ch[0].fraction == pytest.approx(3 / 8)  # share of the whole image
    assert ch[0].before_id == 1 and ch[0].after_id == 4
    assert len(viz.label_changes(before, after, names, top=1)) == 1
    assert [c.after for c in viz.label_changes(before, after, names, min_fraction=0.2)] == ["n4"]
    assert viz.label_changes(before, before, names) == []  # nothing changed
    assert viz.label_changes(np.array([[255]]), np.array([[1]]), names)[0].before == "unlabelled"
    with pytest.raises(ValueError):
        viz.label_changes(before, after[:1], names)


def test_map_legend_html_one_legend_with_shares_per_map():
    lab = np.array([[0] * 90 + [1] * 8 + [2] * 2])  # 90%, 8%, 2%
    html = viz.map_legend_html(lab, ["wall", "<b>floor", "sofa"], min_fraction=0.05)
    assert html.count('class="fx-legend"') == 1
    assert "wall" in html and "90.0%" in html and "8.0%" in html
    assert "&lt;b&gt;floor" in html and "<b>floor" not in html
    assert "sofa" not in html and "+1 more class (2.0%)" in html  # small classes summed
    capped = viz.map_legend_html(lab, ["wall", "floor", "sofa"], min_fraction=0.0, max_entries=1)
    assert "+2 more classes (10.0%)" in capped
    assert "no labelled pixels" in viz.map_legend_html(np.full((2, 2), 255), ["a"])


def test_iterations_run_limited_to_the_steps_the_solver_ran():
    assert viz.iterations_run((1, 2, 3, 5, 8, 13, 20), 7) == [1, 2, 3, 5, 7]
    assert viz.iterations_run((1, 2, 3, 5, 8), 8) == [1, 2, 3, 5, 8]
    assert viz.iterations_run((1, 2, 3), 1) == [1]
    assert viz.iterations_run((1, 2), 0) == [1]


def test_card_rows_readable_labels_no_bulk():
    card = {"name": "m", "registry": "static_rgbd", "params": 6047507, "input_size": [240, 320],
            "config": {"hidden": 64}, "weights": "m.safetensors", "licence": None,
            "training": {"epochs": 95, "lr": 0.001, "resource_weight": None},
            "metrics": {"miou": 37.55, "per_class_iou": [1.0] * 39, "no_depth": {"miou": 3.77}},
            "control_for": "sparse_rgbd"}
    rows = dict(viz.card_rows(card))
    assert rows["checkpoint"] == "m" and rows["architecture"] == "static_rgbd"
    assert rows["parameters"] == "6,047,507" and rows["input size (H × W)"] == "240 × 320"
    assert rows["training · epochs"] == "95" and rows["training · learning rate"] == "0.001"
    assert rows["metrics · mIoU (%)"] == "37.55" and rows["metrics · without depth · mIoU (%)"] == "3.77"
    assert rows["control for"] == "sparse_rgbd"
    assert not any("config" in k or "weights" in k or "per class" in k or "licence" in k for k in rows)
    assert not any("resource" in k for k in rows)  # None values are skipped
    assert all(isinstance(v, str) for v in rows.values())


def test_compute_figure_time_spread_and_noisy_title():
    fig = viz.compute_figure([{"name": "a", "flops": 2e9, "ms": 20.0, "ms_lo": 18.0, "ms_hi": 25.0},
                              {"name": "b", "flops": 1e9, "ms": 10.0, "ms_lo": 9.0, "ms_hi": 11.0}], time_noisy=True)
    assert "exact" in fig.layout.annotations[0].text  # FLOPs lead
    assert "noisy" in fig.layout.annotations[1].text
    err = fig.data[1].error_y
    assert list(err.array) == [5.0, 1.0] and list(err.arrayminus) == [2.0, 1.0]
    steady = viz.compute_figure([{"name": "a", "flops": 2e9, "ms": 20.0}])
    assert "noisy" not in steady.layout.annotations[1].text
