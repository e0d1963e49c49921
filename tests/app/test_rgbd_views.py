"""AppTest (headless) for what the RGB-D page shows about its models: which card is the static model,
timings you can believe (FLOPs first, noisy time said in words), the without-depth segmentations beside the
with-depth ones with a change table, a legend per map, model cards as tables, short sidebar labels.

Inputs are tiny synthetic images made in memory. The models are untrained registry stand-ins served under
fixed cards, so the tests check the page's wiring whichever checkpoints are shipped (the shipped ones are
exercised by ``test_rgbd_page.py``, with this page's input-related tests); where a test fixes the timings, the
timer is replaced so the outcome does not depend on how busy the machine is.
"""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import ROOT, png_bytes, synthetic_rgbd

TIMEOUT = 180  # seconds per script run; the machine is small and shared


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.subheader]
    parts += [e.value for e in at.info] + [e.value for e in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def _assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]


def _legends(at: AppTest) -> list[str]:
    return [str(m.value) for m in at.markdown if 'class="fx-legend"' in str(m.value)]


def _page_with_upload(seed: int = 0) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/rgbd.py")
    at.run()
    rgb, depth8 = synthetic_rgbd(seed=seed)
    ups = {u.key: u for u in at.file_uploader}
    ups["rgbd_rgb_file"].set_value(("scene.png", png_bytes(rgb), "image/png"))
    ups["rgbd_depth_file"].set_value(("depth.png", png_bytes(depth8), "image/png"))
    at.selectbox(key="rgbd_depth_units").set_value("u8_nyu")
    at.run()
    return at


@pytest.fixture
def clear_caches():
    """Drop cached models, forwards and timings before and after, so stand-ins and fakes never leak."""
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


STAND_IN_CARDS = [
    {"name": "dynmm_rgbd_b1", "task": "rgbd_seg", "registry": "dynmm_rgbd", "method": "DynMM (fusion level)",
     "training": {"resource_weight": 0.1}, "metrics": {"miou": 30.0, "mean_gflops": 1.8}},
    {"name": "static_rgbd", "task": "rgbd_seg", "registry": "static_rgbd", "method": "static SE-add fusion",
     "metrics": {"miou": 37.55, "mean_gflops": 2.36}},
]


def _stand_in_models(monkeypatch, cards: list[dict]) -> list[str]:
    """Serve ``cards`` as the shipped checkpoints, each loading as an untrained registry model (the page's
    wiring does not depend on which checkpoints are trained or loadable today). Returns the names loaded."""
    from fusion import inference
    from fusion.registry import create

    loaded: list[str] = []

    def fake_load(name, *a, **k):
        loaded.append(name)
        card = next(c for c in cards if c["name"] == name)
        return create(card["registry"], pretrained=False).eval(), card

    monkeypatch.setattr(inference, "list_cards", lambda *a, **k: cards)  # list_checkpoints still filters
    monkeypatch.setattr(inference, "load_checkpoint", fake_load)
    return loaded


def _fake_timer(monkeypatch, samples: list[tuple[float, ...]]) -> list[list[str]]:
    """Replace the interleaved timer: the i-th model named gets ``samples[i]``. Returns the names timed."""
    from fusion import compute, inference

    timed: list[list[str]] = []

    def fake(calls, **kw):
        names = list(calls)
        timed.append(names)
        return {n: compute.Timing(tuple(samples[i % len(samples)])) for i, n in enumerate(names)}

    monkeypatch.setattr(inference, "time_forwards", fake)
    return timed


# --------------------------------------------------------------------------- which model is "static fusion"


def test_static_model_is_the_card_named_static_rgbd_and_controls_are_hidden(app_cwd, no_data_env, monkeypatch,
                                                                            clear_caches):
    cards = [  # sorted by name, as the shipped folder lists them: the older base and a control come first
        {"name": "a_static_control", "task": "rgbd_seg", "registry": "static_rgbd", "method": "static SE-add fusion",
         "control_for": "dynmm_rgbd_b1"},
        {"name": "depth_only_rgbd", "task": "rgbd_seg", "registry": "static_rgbd", "trained_without": "rgb",
         "method": "dedicated depth-only network", "config": {"modalities": ["depth"]}},
        {"name": "dynmm_rgbd_b1", "task": "rgbd_seg", "registry": "dynmm_rgbd", "method": "DynMM (fusion level)",
         "training": {"resource_weight": 0.1}, "metrics": {"miou": 30.0, "mean_gflops": 1.8}},
        {"name": "dynmm_rgbd_ctrl", "task": "rgbd_seg", "registry": "dynmm_rgbd", "method": "DynMM (fusion level)",
         "control_for": "dynmm_rgbd_b1"},
        {"name": "static_rgbd", "task": "rgbd_seg", "registry": "static_rgbd", "method": "static SE-add fusion",
         "licence": "research only", "command": "python -m fusion.train --model static_rgbd",
         "metrics": {"miou": 37.55, "mean_gflops": 2.36, "per_class_iou": [1.0] * 39}},
        {"name": "static_rgbd_cpu15", "task": "rgbd_seg", "registry": "static_rgbd",
         "method": "static SE-add fusion", "superseded": "the first static model"},
    ]
    cards.sort(key=lambda c: c["name"])
    loaded = _stand_in_models(monkeypatch, cards)  # list_checkpoints filters the controls out
    _fake_timer(monkeypatch, [(20.0, 20.0, 20.0, 20.0, 20.0)])
    at = _page_with_upload(seed=7)
    _assert_clean(at)
    assert "static_rgbd" in loaded
    assert not {"static_rgbd_cpu15", "a_static_control", "dynmm_rgbd_ctrl", "depth_only_rgbd"} & set(loaded)
    budget = at.selectbox(key="rgbd_budget")
    assert list(budget.options) == ["λ=0.1 · 1.80 GFLOPs"]  # the control is not offered; short for the sidebar
    assert "`dynmm_rgbd_b1` · test mIoU 30.0%" in [c.value for c in at.sidebar.caption]
    # the model cards are readable tables, not JSON dumps
    assert any("Model cards" in e.label for e in at.expander)
    assert not at.json
    tables = {tuple(t.value["value"])[0]: dict(zip(t.value["field"], t.value["value"]))
              for t in at.table if "field" in t.value}
    assert set(tables) == {"static_rgbd", "dynmm_rgbd_b1"}
    static = tables["static_rgbd"]
    assert static["licence"] == "research only" and static["metrics · mIoU (%)"] == "37.55"
    assert static["reproduce with"].startswith("python -m fusion.train")
    assert not any("per class" in f for f in static)


# --------------------------------------------------------------------------- timings you can believe


def test_noisy_timing_is_said_in_words_never_a_precise_percentage(app_cwd, no_data_env, monkeypatch, clear_caches):
    # static steady at ~20 ms; DynMM hit by load spikes in three rounds of five (what gave "+1600% vs static")
    _stand_in_models(monkeypatch, STAND_IN_CARDS)
    timed = _fake_timer(monkeypatch, [(20.0, 21.0, 20.0, 22.0, 20.0), (340.0, 20.0, 330.0, 21.0, 350.0)])
    at = _page_with_upload()
    _assert_clean(at)
    assert timed and timed[0] == ["Static fusion", "DynMM"]  # both models timed in one interleaved call
    labels = [m.label for m in at.metric]
    assert labels.index("DynMM FLOPs") < labels.index("DynMM time")  # FLOPs lead, time second
    metrics = {m.label: m for m in at.metric}
    assert "% vs static" in metrics["DynMM FLOPs"].delta  # FLOPs are exact: a percentage is fine
    delta = metrics["DynMM time"].delta
    assert delta.startswith("noisy") and "%" not in delta
    text = _texts(at)
    assert "The timing is noisy" in text and "trust the FLOPs" in text
    assert "IQR" in text and "noisy, the machine was busy" in text
    assert "1600%" not in text


def test_steady_timing_gives_a_percentage_with_its_spread(app_cwd, no_data_env, monkeypatch, clear_caches):
    _stand_in_models(monkeypatch, STAND_IN_CARDS)
    _fake_timer(monkeypatch, [(20.0, 20.4, 19.8, 20.2, 20.0), (15.0, 15.1, 14.9, 15.2, 15.0)])
    at = _page_with_upload()
    _assert_clean(at)
    metrics = {m.label: m for m in at.metric}
    assert metrics["DynMM time"].value == "15 ms"
    assert metrics["DynMM time"].delta == "-25% vs static"
    text = _texts(at)
    assert "The timing is noisy" not in text
    assert "median of 5 runs per model after 1 warm-up, the models alternating" in text
    assert "IQR" in text


# --------------------------------------------------------------------------- without depth, shown; legends


def test_without_depth_shows_both_segmentations_a_change_table_and_a_legend_per_map(app_cwd, no_data_env,
                                                                                    monkeypatch, clear_caches):
    _stand_in_models(monkeypatch, STAND_IN_CARDS)
    at = _page_with_upload(seed=2)  # the real interleaved timer runs here
    _assert_clean(at)
    legends = _legends(at)
    assert len(legends) == 2 and all("%" in lg for lg in legends)  # static, DynMM: each its own legend
    assert "DynMM time" in [m.label for m in at.metric]
    toggle = at.toggle(key="rgbd_remove_depth")
    assert len(toggle.label) <= 24
    toggle.set_value(True).run()
    _assert_clean(at)
    text = _texts(at)
    assert "Without depth: what changes" in text
    assert text.count("**with depth") == 2 and text.count("**without depth") == 2  # per model, side by side
    assert len(_legends(at)) == 6  # 2 maps above + with/without for each model
    assert "Gate decision:" in text and "k=0" in text
    change_tables = [t.value for t in at.table if "share of image" in t.value]
    n_unchanged = text.count("No pixel changed label.")
    assert len(change_tables) + n_unchanged == 2
    for tab in change_tables:
        assert list(tab.columns) == ["with depth", "→", "without depth", "share of image"]
        shares = [float(s.rstrip("%")) for s in tab["share of image"]]
        assert shares == sorted(shares, reverse=True) and len(shares) <= 5
        assert all(a != b for a, b in zip(tab["with depth"], tab["without depth"]))
    # sidebar labels are short enough not to be cut off; the budget picker's choices too
    for w in list(at.sidebar.selectbox) + list(at.sidebar.toggle) + list(at.sidebar.slider):
        assert len(w.label) <= 24, w.label
    for box in at.sidebar.selectbox:
        assert all(len(o) <= 28 for o in box.options), list(box.options)


def test_without_checkpoints_the_page_still_compares(app_cwd, no_data_env, monkeypatch, clear_caches):
    _stand_in_models(monkeypatch, [])  # nothing shipped: untrained registry models, said on the page
    _fake_timer(monkeypatch, [(20.0, 20.0, 20.0, 20.0, 20.0)])
    at = _page_with_upload(seed=3)
    _assert_clean(at)
    assert "No trained checkpoint for static fusion and DynMM" in _texts(at)
    assert not any("Model cards" in e.label for e in at.expander)
    assert {m.label for m in at.metric} >= {"DynMM FLOPs", "DynMM time"}
    assert len(_legends(at)) == 2
