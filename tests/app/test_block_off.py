"""AppTest (headless) for the "Switch the block off" ablation of the sparse-fusion and DEQ pages: the
segmentation with the method block's output zeroed beside the normal one, the share of pixels that changed
and what changed into what; the normal views (tokens, convergence) still there; the stage captions saying
that depth reaches the RGB stream at that stage only through the block; "No depth used" when depth is held
back.

The models are the untrained registry models (no sparse / DEQ card is served), so these tests check the
pages' wiring whichever checkpoints are shipped or being retrained.
"""
from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import ROOT, assert_clean, page_texts, upload_rgbd

TIMEOUT = 180  # seconds per script run; the machine is small and shared


_texts, _assert_clean = page_texts, assert_clean


def _legends(at: AppTest) -> list[str]:
    return [str(m.value) for m in at.markdown if 'class="fx-legend"' in str(m.value)]


def _change_tables(at: AppTest) -> list:
    return [t.value for t in at.table if "block off" in t.value.columns]


@pytest.fixture
def untrained_methods(monkeypatch):
    """No sparse / DEQ checkpoint is offered: the pages run their untrained registry models. Every
    ``fusion.inference.segment`` call's per-call options are recorded (the list this fixture returns).
    Caches are dropped before and after, so nothing leaks between tests."""
    import streamlit as st

    from fusion import inference

    real_list, real_segment = inference.list_checkpoints, inference.segment
    calls: list[dict] = []

    def without_methods(*a, **k):
        return [c for c in real_list(*a, **k) if c.get("registry") not in ("sparse_rgbd", "deq_rgbd")]

    def recorded(model, rgb, depth, **kw):
        calls.append({k: v for k, v in kw.items() if k not in ("count_flops", "drop_rgb", "size", "repeats")})
        return real_segment(model, rgb, depth, **kw)

    monkeypatch.setattr(inference, "list_checkpoints", without_methods)
    monkeypatch.setattr(inference, "segment", recorded)
    st.cache_resource.clear()
    st.cache_data.clear()
    yield calls
    st.cache_resource.clear()
    st.cache_data.clear()


def _page_with_upload(path: str, prefix: str, depth: bool = True) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(path)
    at.run()
    return upload_rgbd(at, prefix, depth=depth)


def _assert_block_off_shown(at: AppTest, n_legends: int) -> None:
    text = _texts(at)
    share = re.search(r"Block on → off\*\*: (\d+\.\d)% of pixels change label", text)
    assert share, text
    tables = _change_tables(at)
    if float(share.group(1)) > 0:  # what changed into what, as a table
        assert len(tables) == 1 and list(tables[0].columns)[:3] == ["block on", "→", "block off"]
    else:
        assert not tables and "No pixel changed label." in text
    assert "block off (its output zeroed)" in text
    assert len(_legends(at)) == n_legends  # each map keeps its own legend
    # the block-off run really skipped the block: the whole model costs less (exact FLOPs of both runs)
    flops = re.search(r"whole model ([\d.]+) GFLOPs → ([\d.]+) GFLOPs with the block off", text)
    assert flops and float(flops.group(2)) < float(flops.group(1)), text


@pytest.mark.parametrize("path,prefix,stride,others", [("pages/sparse.py", "sft", 16, "strides 4, 8 and 32"),
                                                       ("pages/deq.py", "deq", 32, "strides 4, 8 and 16")])
def test_stage_caption_says_depth_enters_only_through_the_block(app_cwd, no_data_env, untrained_methods, path,
                                                                  prefix, stride, others):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(path)
    at.run()
    _assert_clean(at)
    text = _texts(at)
    assert f"At stride {stride} depth reaches the RGB stream **only through this block**" in text
    assert "SE_rgb(rgb) + block(rgb, depth)" in text and f"({others}) fuse depth with the static model's SE-add" in text
    toggle = at.toggle(key=f"{prefix}_zero_block")
    assert toggle.label == "Switch the block off" and toggle.value is False
    assert "does not reach the RGB stream" in toggle.help and "output" in toggle.help


def test_sparse_block_off_beside_the_normal_run(app_cwd, no_data_env, untrained_methods):
    at = _page_with_upload("pages/sparse.py", "sft")
    _assert_clean(at)
    assert "Block switched off" not in _texts(at)  # off by default: no extra run, no extra section
    assert len(_legends(at)) == 2
    assert not any("zero_block" in c for c in untrained_methods)
    at.toggle(key="sft_zero_block").set_value(True).run()
    _assert_clean(at)
    assert {"zero_block": True} in untrained_methods  # the option reaches the model, alone (no pooling options)
    text = _texts(at)
    assert "Block switched off: what the token fusion contributes" in text
    assert "block on · topk_attn" in text
    _assert_block_off_shown(at, n_legends=4)  # sparse, dense, block on, block off
    # the normal views still come from the normal run
    assert "Which tokens survive" in text and "tokens into fusion 60 10.0× fewer" in text
    at.selectbox(key="sft_pool").set_value("max").run()  # the comparison follows the pooling chosen
    _assert_clean(at)
    assert "block on · max" in _texts(at) and "tokens into fusion 50" in _texts(at)
    _assert_block_off_shown(at, n_legends=4)


def test_deq_block_off_beside_the_fixed_point(app_cwd, no_data_env, untrained_methods):
    at = _page_with_upload("pages/deq.py", "deq")
    _assert_clean(at)
    assert "Block switched off" not in _texts(at)
    assert not any("zero_block" in c for c in untrained_methods)
    at.toggle(key="deq_zero_block").set_value(True).run()
    _assert_clean(at)
    assert {"zero_block": True} in untrained_methods  # the option reaches the model, alone (no solver options)
    text = _texts(at)
    assert "Block switched off: what the equilibrium fusion contributes" in text
    assert "block on · RGB + depth" in text
    _assert_block_off_shown(at, n_legends=4)  # RGB + depth, depth removed, block on, block off
    # convergence still drawn from the solves that ran (two traces: with depth, depth removed)
    assert "Convergence on this input" in text and "final relative residual" in text
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert len(keys) >= 2
    at.selectbox(key="deq_solver").set_value("fixed_point").run()
    _assert_clean(at)
    assert "fixed_point" in _texts(at) and "Block switched off" in _texts(at)


def test_deq_block_off_without_a_depth_map(app_cwd, no_data_env, untrained_methods):
    at = _page_with_upload("pages/deq.py", "deq", depth=False)
    at.toggle(key="deq_zero_block").set_value(True).run()
    _assert_clean(at)
    text = _texts(at)
    assert "No depth map: the equilibrium is solved on RGB alone." in text
    assert "block on · RGB only" in text and "no equilibrium refinement" in text
    _assert_block_off_shown(at, n_legends=3)  # RGB only, block on, block off


def test_sparse_held_back_depth_reads_no_depth_used(app_cwd, no_data_env, untrained_methods):
    at = _page_with_upload("pages/sparse.py", "sft")
    assert "No depth used" not in _texts(at) and "No depth map" not in _texts(at)
    at.toggle(key="sft_remove_depth").set_value(True).run()
    _assert_clean(at)
    text = _texts(at)
    assert "No depth used: only RGB tokens are fused." in text  # the input row
    assert "No depth used: only RGB tokens go into the fusion layer." in text  # the token view
    assert "No depth map" not in text  # there is one: the user held it back
    assert any("held back" in c for im in at.image for c in im.captions)
    at.toggle(key="sft_zero_block").set_value(True).run()
    _assert_clean(at)
    assert "the RGB tokens get no refinement there" in _texts(at)
    _assert_block_off_shown(at, n_legends=4)


def test_sparse_without_a_depth_map_reads_no_depth_map(app_cwd, no_data_env, untrained_methods):
    at = _page_with_upload("pages/sparse.py", "sft", depth=False)
    _assert_clean(at)
    text = _texts(at)
    assert "No depth map: only RGB tokens are fused." in text
    assert "No depth map: only RGB tokens go into the fusion layer." in text
    assert "No depth used" not in text
    at.toggle(key="sft_remove_depth").set_value(True).run()  # nothing to hold back: still "no depth map"
    _assert_clean(at)
    assert "No depth map: only RGB tokens are fused." in _texts(at) and "No depth used" not in _texts(at)


def _draw_comparison(root: str, changed_rows: int) -> None:
    import sys

    sys.path.insert(0, root)
    import numpy as np

    from pages._rgbd_views import block_off_comparison

    on = np.zeros((10, 10), np.int64)
    off = on.copy()
    off[:changed_rows] = 1
    rgb = np.full((10, 10, 3), 128, np.uint8)
    block_off_comparison({"labels": on, "flops": 2e9, "notes": []}, {"labels": off, "flops": 1e9, "notes": ["note of the off run"]},
                         rgb, ["wall", "floor"], 0.5, on_title="block on · test")


@pytest.mark.parametrize("changed_rows,share", [(3, "30.0"), (0, "0.0")])
def test_block_off_comparison_counts_what_changed(untrained_methods, changed_rows, share):
    at = AppTest.from_function(_draw_comparison, args=(str(ROOT), changed_rows), default_timeout=60).run()
    _assert_clean(at)
    text = _texts(at)
    assert f"**Block on → off**: {share}% of pixels change label" in text
    assert "whole model 2.00 GFLOPs → 1.00 GFLOPs with the block off" in text
    tables = _change_tables(at)
    if changed_rows:
        assert len(tables) == 1
        row = tables[0].iloc[0]
        assert (row["block on"], row["block off"], row["share of image"]) == ("wall", "floor", "30.0%")
    else:
        assert not tables and "No pixel changed label." in text
    assert len(_legends(at)) == 2 and "note of the off run" in text  # a legend per map; the off run's notes
