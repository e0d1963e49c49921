"""AppTest (headless) for the sparse-fusion, DEQ and missing-modality pages: each runs with no data, with an
upload, with its controls moved, and (when the shared NYUv2 copy is there) on a test frame.

Models are the shipped checkpoints, or the untrained registry models when none is shipped (the page says
so): these tests check wiring and traces, not accuracy.
"""
from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import ROOT, SHARED_NYUV2, shared_data_present, upload_rgbd

TIMEOUT = 180


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.subheader]
    parts += [e.value for e in at.info] + [e.value for e in at.warning] + [e.value for e in at.error]
    parts += [f"{m.label} {m.value} {m.delta}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def _assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]


def _page(path: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(path)
    at.run()
    return at


def _legends(at: AppTest) -> list[str]:
    """The per-map legends on the page (one ``fx-legend`` block per segmentation map)."""
    return [str(m.value) for m in at.markdown if 'class="fx-legend"' in str(m.value)]


def _image_captions(at: AppTest) -> str:
    return "\n".join(c for im in at.image for c in im.captions)


def _assert_cards_are_tables(at: AppTest) -> None:
    """Where a page shows model cards, they are (field, value) tables, not raw JSON."""
    if any("Model cards" in e.label for e in at.expander):
        assert not at.json, "model cards must not be JSON dumps"
        fields = [f for t in at.table for f in (t.value["field"] if "field" in t.value else [])]
        assert "checkpoint" in fields and "licence" in fields and "reproduce with" in fields


@pytest.mark.parametrize("path,prefix", [("pages/sparse.py", "sft"), ("pages/deq.py", "deq"),
                                         ("pages/adapters.py", "miss")])
def test_page_without_data_asks_for_anupload_rgbd(app_cwd, no_data_env, path, prefix):
    at = _page(path)
    _assert_clean(at)
    assert "Upload an RGB image" in _texts(at)
    assert {u.key for u in at.file_uploader} >= {f"{prefix}_rgb_file", f"{prefix}_depth_file"}


def test_sparse_page_shows_kept_tokens_and_reruns_on_controls(app_cwd, no_data_env):
    at = upload_rgbd(_page("pages/sparse.py"), "sft")
    _assert_clean(at)
    text = _texts(at)
    assert "Which tokens survive" in text
    # 96x128 upload -> 240x320 model input -> 2 x (15 x 20) stride-16 tokens -> 2 x 30 kept (ratio 1/10)
    assert "tokens into fusion 60 10.0× fewer" in text
    assert "fewer FLOPs" in text
    assert len(at.get("image")) >= 6  # rgb, depth, 2 token maps, sparse, dense, difference
    assert len(_legends(at)) == 2 and all("%" in lg for lg in _legends(at))  # sparse and dense: one legend each
    metrics = [m.label for m in at.metric]
    assert metrics.index("whole model") < metrics.index("whole-model time")  # FLOPs lead, time second
    assert "the models alternating" in _texts(at)  # the timing says how it was measured
    _assert_cards_are_tables(at)
    assert not at.select_slider(key="sft_keep").disabled  # top-k mode: the keep ratio is used
    at.selectbox(key="sft_pool").set_value("max").run()
    _assert_clean(at)
    assert "sparse · max" in _texts(at) and "tokens into fusion 50" in _texts(at)  # 3x4 windows: 5x5 per modality
    assert at.select_slider(key="sft_keep").disabled  # a fixed-window mode ignores the keep ratio
    at.selectbox(key="sft_pool").set_value("none").run()
    assert at.select_slider(key="sft_keep").disabled
    at.selectbox(key="sft_pool").set_value("random").run()
    _assert_clean(at)
    assert not at.select_slider(key="sft_keep").disabled
    at.select_slider(key="sft_keep").set_value("1/4").run()
    at.selectbox(key="sft_pool").set_value("topk_attn").run()
    _assert_clean(at)
    assert "topk_attn" in _texts(at) and "tokens into fusion 150" in _texts(at)  # 1/4 of 2 x 300 tokens
    at.toggle(key="sft_remove_depth").set_value(True).run()
    _assert_clean(at)
    assert "only RGB tokens go into the fusion layer" in _texts(at)


def test_deq_page_shows_convergence_and_resolves_live(app_cwd, no_data_env):
    at = upload_rgbd(_page("pages/deq.py"), "deq")
    _assert_clean(at)
    text = _texts(at)
    assert "Convergence on this input" in text
    assert "RGB + depth" in text and "depth removed" in text
    assert "final relative residual" in text
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # residual curve + settling curve
    _assert_cards_are_tables(at)
    assert len(_legends(at)) == 2  # one legend per map: with depth, depth removed
    at.selectbox(key="deq_solver").set_value("fixed_point").run()
    at.slider(key="deq_max_iter").set_value(4).run()
    _assert_clean(at)
    text = _texts(at)
    assert "fixed_point" in text
    assert "after **4** iteration(s)" in text or "converged after" in text
    steps = re.findall(r"after \*\*(\d+)\*\* iteration", text)
    its = _iter_slider(at)
    assert its.key == "deq_iter_4_" + str(max(map(int, steps)))  # keyed on the cap and the steps run
    assert [int(o) for o in its.options][-1] == max(map(int, steps)) <= 4  # only steps the solver ran
    its.set_value(its.options[0]).run()
    _assert_clean(at)
    assert "iteration 1" in _texts(at)
    at.slider(key="deq_max_iter").set_value(3).run()  # a new cap resets the slider to its last step
    _assert_clean(at)
    its = _iter_slider(at)
    assert its.key.startswith("deq_iter_3_") and int(its.value) == int(its.options[-1]) <= 3


def _iter_slider(at: AppTest):
    sliders = [s for s in at.select_slider if (s.key or "").startswith("deq_iter")]
    assert len(sliders) == 1, [s.key for s in at.select_slider]
    return sliders[0]


def test_adapters_page_switches_modalities(app_cwd, no_data_env):
    at = upload_rgbd(_page("pages/adapters.py"), "miss")
    _assert_clean(at)
    assert "Both modalities are on" in _texts(at)
    at.toggle(key="miss_use_depth").set_value(False).run()
    _assert_clean(at)
    text = _texts(at)
    assert "Prediction with RGB only" in text and "adapters" in text
    assert "No depth used" in text and "held back" in _image_captions(at)  # the map is there but not given
    assert "drawn over the depth map" not in _image_captions(at)  # RGB-only models are drawn over the photo
    at.toggle(key="miss_use_depth").set_value(True).run()
    at.toggle(key="miss_use_rgb").set_value(False).run()
    _assert_clean(at)
    assert "Prediction with depth only" in _texts(at)
    # every model that ran on depth alone is drawn over the depth map; the RGB + depth reference is not;
    # every map has its own legend
    assert _image_captions(at).count("drawn over the depth map") == len(_legends(at)) - 1 >= 2
    _assert_cards_are_tables(at)
    at.toggle(key="miss_use_depth").set_value(False).run()
    _assert_clean(at)
    assert "Switch at least one modality on" in _texts(at)


def test_adapters_page_depth_only_without_depth_map_is_explained(app_cwd, no_data_env):
    at = upload_rgbd(_page("pages/adapters.py"), "miss", depth=False)
    at.toggle(key="miss_use_rgb").set_value(False).run()
    _assert_clean(at)
    assert "no depth map to run on" in _texts(at)


@pytest.mark.skipif(not shared_data_present(), reason=f"NYUv2 shared copy not found at {SHARED_NYUV2}")
@pytest.mark.parametrize("path,prefix", [("pages/sparse.py", "sft"), ("pages/deq.py", "deq"),
                                         ("pages/adapters.py", "miss")])
def test_page_on_a_test_frame(app_cwd, monkeypatch, path, prefix):
    monkeypatch.setenv("FUSION_NYUV2", str(SHARED_NYUV2))
    at = _page(path)
    at.radio(key=f"{prefix}_source").set_value("NYUv2 test frame").run()
    _assert_clean(at)
    text = _texts(at)
    assert "NYUv2 test frame" in text and "pixel acc" in text


@pytest.mark.parametrize("path,prefix", [("pages/sparse.py", "sft"), ("pages/deq.py", "deq"),
                                         ("pages/adapters.py", "miss")])
def test_sidebar_labels_and_choices_fit(app_cwd, no_data_env, path, prefix):
    """Sidebar labels and the shown choice of each select box are short enough not to be cut off (details
    go into the help texts)."""
    at = _page(path)
    _assert_clean(at)
    widgets = [w for kind in ("selectbox", "select_slider", "slider", "toggle", "text_input", "radio")
               for w in getattr(at.sidebar, kind)]
    assert any((w.key or "").startswith(prefix) for w in widgets)
    for w in widgets:
        assert len(w.label) <= 24, w.label
    for box in at.sidebar.selectbox:
        for option in box.options:
            assert len(option) <= 28, (box.label, option)


@pytest.mark.parametrize("path,prefix", [("pages/sparse.py", "sft"), ("pages/deq.py", "deq"),
                                         ("pages/adapters.py", "miss")])
def test_attribution_on_demand(app_cwd, no_data_env, path, prefix):
    at = upload_rgbd(_page(path), prefix)
    _assert_clean(at)
    assert "Which modality drove this prediction?" in [t.label for t in at.toggle]
    assert "contributed" not in _texts(at)  # computed only when asked for
    at.toggle(key=f"{prefix}_attr_on").set_value(True).run()
    _assert_clean(at)
    text = _texts(at)
    assert "contributed" in text and "% of the " in text and "forwards" in text
