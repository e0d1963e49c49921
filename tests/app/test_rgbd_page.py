"""AppTest (headless, no browser) for the home page and the RGB-D page.

Inputs are tiny synthetic images made here; the NYUv2 test-frame case runs only when the shared copy
of the data set is present. Models are the shipped checkpoints, or untrained registry models when
there are none (the page says so), so these tests check the page's wiring, not accuracy.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import (ROOT, SHARED_NYUV2, plotly_chart, png_bytes, select_plotly_points, shared_data_present,
                         synthetic_rgbd)
from fusion.data.upload import DEPTH_UNITS

TIMEOUT = 120  # seconds per script run; the machine is small and shared


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [e.value for e in at.info] + [e.value for e in at.error] + [s.value for s in at.subheader]
    parts += [w.value for w in at.warning]
    return "\n".join(str(p) for p in parts)


def _warnings(at: AppTest) -> str:
    return "\n".join(str(w.value) for w in at.warning)


def _assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]


def _rgbd_page(monkeypatch=None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/rgbd.py")
    at.run()
    return at


def _upload(at: AppTest, rgb_bytes: bytes | None, depth: tuple[str, bytes] | None, units: str = "auto") -> AppTest:
    ups = {u.key: u for u in at.file_uploader}
    if rgb_bytes is not None:
        ups["rgbd_rgb_file"].set_value(("scene.png", rgb_bytes, "image/png"))
    if depth is not None:
        name, data = depth
        ups["rgbd_depth_file"].set_value((name, data, "application/octet-stream"))
    at.selectbox(key="rgbd_depth_units").set_value(units)
    at.run()
    return at


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (no pixel data): a cheap stand-in for a huge upload."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _images(at: AppTest) -> int:
    return len(at.get("image"))


# --------------------------------------------------------------------------- home


def test_home_page(app_cwd, no_data_env):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    _assert_clean(at)
    text = _texts(at)
    assert "Fusion Explorer" in at.title[0].value
    assert "DynMM" in text and "RGB-D" in text
    assert "paired by label, not recorded together" in text  # honest about how the clip data were made
    assert "all four methods** plus static baselines (late fusion, concat-token transformer)" in text
    links = at.get("page_link")
    assert links, "home links to the model pages"
    pages = {str(link.proto.page) for link in links}
    assert {"clips", "clips-sparse", "clips-deq", "clips-adapters"} <= pages, "home links to every clip page"


# --------------------------------------------------------------------------- RGB-D page


def test_rgbd_page_without_data(app_cwd, no_data_env):
    at = _rgbd_page()
    _assert_clean(at)
    assert [o for o in at.radio(key="rgbd_source").options] == ["Upload"]
    assert "Upload an RGB image" in _texts(at)
    assert {u.key for u in at.file_uploader} >= {"rgbd_rgb_file", "rgbd_depth_file"}


def test_rgbd_upload_shows_segmentation_gate_and_compute(app_cwd, no_data_env):
    rgb, depth8 = synthetic_rgbd()
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(depth8)), units="u8_nyu")
    _assert_clean(at)
    text = _texts(at)
    assert "Segmentation" in text
    assert "**Static fusion**" in text and "**DynMM**" in text
    assert "Decision:" in text and "k=" in text
    assert _images(at) >= 4  # rgb, depth, two segmentations
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # gate probabilities + compute
    metrics = {m.label: m for m in at.metric}
    assert "DynMM FLOPs" in metrics and "vs static" in metrics["DynMM FLOPs"].delta
    assert "FLOPs are counted" in text


def test_rgbd_remove_depth_shows_changes(app_cwd, no_data_env):
    rgb, depth8 = synthetic_rgbd()  # same input as above: cached forwards are reused
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(depth8)))
    at.toggle(key="rgbd_remove_depth").set_value(True).run()
    _assert_clean(at)
    text = _texts(at)
    assert "Without depth" in text
    assert "of pixels change label" in text
    assert "Gate decision:" in text and "k=0" in text  # without depth DynMM runs RGB only


def test_rgbd_rgb_only_upload(app_cwd, no_data_env):
    rgb, _ = synthetic_rgbd()
    at = _upload(_rgbd_page(), png_bytes(rgb), None)
    _assert_clean(at)
    text = _texts(at)
    assert "No depth map" in text and "Decision:" in text


def test_rgbd_npy_depth(app_cwd, no_data_env):
    rgb, depth8 = synthetic_rgbd()
    buf = io.BytesIO()
    np.save(buf, depth8.astype(np.float32) / 25.5)
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.npy", buf.getvalue()), units="m_npy")
    _assert_clean(at)
    assert "Decision:" in _texts(at)


def test_rgbd_large_upload_is_shrunk(app_cwd, no_data_env):
    rgb, depth8 = synthetic_rgbd(h=900, w=1200, seed=5)
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(depth8[::3, ::3].copy())))
    _assert_clean(at)
    text = _texts(at)
    assert "shrunk from 1200×900" in text and "resized" in text
    assert "Decision:" in text


@pytest.mark.parametrize("case", ["not_an_image", "corrupt_png", "huge_image", "colour_depth", "pickled_npy"])
def test_rgbd_bad_input_gives_clean_error(app_cwd, no_data_env, case):
    rgb, depth8 = synthetic_rgbd(seed=4)
    good_rgb = png_bytes(rgb)
    if case == "not_an_image":
        args = (b"this is a text file, not a picture", None)
    elif case == "corrupt_png":
        args = (good_rgb[: len(good_rgb) // 3], None)
    elif case == "huge_image":
        args = (_png_header_only(20_000, 20_000), None)
    elif case == "colour_depth":  # a colour-mapped depth visualisation is not raw depth
        args = (good_rgb, ("depth.png", good_rgb))
    else:  # an object-array .npy needs pickle: must be refused
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        args = (good_rgb, ("depth.npy", buf.getvalue()))
    at = _upload(_rgbd_page(), *args)
    assert not at.exception, [e.value for e in at.exception]
    assert at.error, f"{case}: expected an st.error"
    msg = at.error[0].value
    assert "Traceback" not in msg and len(msg) > 10


# --------------------------------------------------------------------------- RGB-D page: depth inputs


@pytest.fixture
def stand_in_models(monkeypatch, clear_caches_after):
    """Untrained registry models in place of the shipped checkpoints: these tests check the depth input,
    not the models, so they must not depend on which checkpoints are shipped (or being retrained)."""
    from fusion import inference

    monkeypatch.setattr(inference, "list_checkpoints", lambda *a, **k: [])


def test_rgbd_all_black_depth_warns_and_runs_rgb_only(app_cwd, no_data_env, stand_in_models):
    """An all-zero depth image is not an error page: a warning, and the models run on the photo alone."""
    rgb, depth8 = synthetic_rgbd()
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(np.zeros_like(depth8))))
    _assert_clean(at)
    assert "no valid pixel" in _warnings(at) and "colour image only" in _warnings(at)
    assert "Decision:" in _texts(at) and "k=0" in _texts(at)  # DynMM ran RGB only
    assert at.toggle(key="rgbd_remove_depth").disabled  # there is no depth to remove


def test_rgbd_ambiguous_depth_shows_the_choice(app_cwd, no_data_env, stand_in_models):
    """16-bit values 2500..9000 read as millimetres (2.5-9 m) or 0.1 mm (0.25-0.9 m): both look like a room."""
    rgb, _ = synthetic_rgbd()
    raw = np.random.default_rng(7).integers(2500, 9000, size=rgb.shape[:2]).astype(np.uint16)
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(raw)))
    _assert_clean(at)
    assert "can be read in 2 ways" in _warnings(at) and "Now using **16-bit millimetres**" in _warnings(at)
    assert "Depth read as **16-bit millimetres** (auto-detected)" in _texts(at)
    pick = at.radio(key="rgbd_depth_pick")
    assert pick.value == "mm16"
    assert any(o.startswith("16-bit in 0.1 mm steps: 0.25–0.90 m") for o in pick.options), pick.options
    assert not set(pick.options) & set(DEPTH_UNITS)  # people read labels, not internal keys
    pick.set_value("tenth_mm16").run()
    _assert_clean(at)
    assert "Depth read as **16-bit in 0.1 mm steps** (picked from the possible readings)" in _texts(at)
    assert "Now using **16-bit in 0.1 mm steps**" in _warnings(at)
    assert not at.toggle(key="rgbd_remove_depth").disabled  # a plausible reading: the models get it
    assert "Decision:" in _texts(at)
    other = np.random.default_rng(9).integers(2500, 9000, size=rgb.shape[:2]).astype(np.uint16)
    at.file_uploader(key="rgbd_depth_file").set_value(("other.png", png_bytes(other), "image/png")).run()
    _assert_clean(at)  # a new file starts again from the auto-detected reading
    assert at.radio(key="rgbd_depth_pick").value == "mm16"
    assert "Depth read as **16-bit millimetres** (auto-detected)" in _texts(at)


def test_rgbd_implausible_depth_is_held_back_until_confirmed(app_cwd, no_data_env, stand_in_models):
    """Depths of 60-65 m under every encoding: the page says so and runs without depth until told to use it."""
    rgb, _ = synthetic_rgbd()
    raw = np.random.default_rng(8).integers(60000, 65535, size=rgb.shape[:2]).astype(np.uint16)
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(raw)), units="mm16")
    _assert_clean(at)
    warning = _warnings(at)
    assert "not a plausible indoor range" in warning and "colour image only" in warning
    assert "beyond 20 m" in warning  # 65 m is never passed on silently
    assert at.toggle(key="rgbd_remove_depth").disabled  # the models did not get this depth
    assert "No depth map" in _texts(at)  # the page's own words for running without depth
    at.checkbox(key="rgbd_depth_accept").check().run()
    _assert_clean(at)
    assert "use it anyway" in _warnings(at)
    assert not at.toggle(key="rgbd_remove_depth").disabled
    assert "Decision:" in _texts(at)


def test_rgbd_custom_metres_per_unit(app_cwd, no_data_env, stand_in_models):
    rgb, depth8 = synthetic_rgbd()
    raw = (depth8.astype(np.uint16) * 400)  # 0.1 mm steps stored as x 25.5 x 400: metres per unit 1/10200
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(raw)), units="scale")
    at.number_input(key="rgbd_depth_scale").set_value(1 / 10200).run()
    _assert_clean(at)
    text = _texts(at)
    assert "Depth read as **custom metres per unit**" in text
    assert "(0.000098 m per stored unit): 1.02–3.96 m" in text  # 8-bit NYU values x 400 x 1/10200
    assert not at.warning


def test_rgbd_other_aspect_offers_crop_or_resize(app_cwd, no_data_env, stand_in_models):
    rgb, _ = synthetic_rgbd()  # 128 x 96 photo
    square = np.full((96, 96), 60, np.uint8)
    square[:, :48] = 90  # left half farther
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(square)))
    _assert_clean(at)
    fit = at.radio(key="rgbd_depth_fit")
    assert fit.value == "crop" and len(fit.options) == 2
    assert "centre 96x72 was cut out" in _texts(at)
    fit.set_value("resize").run()
    _assert_clean(at)
    assert "was stretched to the colour image's 128x96" in _texts(at)
    assert "Decision:" in _texts(at)


@pytest.mark.skipif(not shared_data_present(), reason=f"NYUv2 shared copy not found at {SHARED_NYUV2}")
def test_rgbd_test_frame_with_ground_truth(app_cwd, monkeypatch):
    monkeypatch.setenv("FUSION_NYUV2", str(SHARED_NYUV2))
    at = _rgbd_page()
    _assert_clean(at)
    src = at.radio(key="rgbd_source")
    assert "NYUv2 test frame" in src.options
    src.set_value("NYUv2 test frame").run()
    _assert_clean(at)
    text = _texts(at)
    assert "NYUv2 test frame" in text
    assert "pixel acc" in text and "mIoU" in text  # per-frame scores against the ground truth
    assert "Decision:" in text
    assert _images(at) >= 5  # rgb, depth, ground truth, two segmentations


@pytest.fixture
def clear_caches_after():
    """Drop the cached models/results before and after, so real and stand-in models never mix across tests."""
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


def test_rgbd_budget_picker_with_checkpoints(app_cwd, no_data_env, monkeypatch, clear_caches_after):
    """With model cards present the page offers a DynMM budget picker and no 'checkpoints missing' note.

    The cards and loader are stand-ins (registry models, untrained) so the test does not depend on
    which checkpoints have been trained yet.
    """
    from fusion import inference
    from fusion.registry import create

    cards = [  # the fields fusion.train writes into a card; the dedicated baselines share static's registry
        {"name": "depth_only_rgbd", "task": "rgbd_seg", "registry": "static_rgbd", "trained_without": "rgb",
         "method": "dedicated depth-only network", "config": {"modalities": ["depth"]}},
        {"name": "a_rgb_only", "task": "rgbd_seg", "registry": "static_rgbd", "method": "static",
         "config": {"modalities": ["rgb"]}},
        {"name": "static_rgbd", "task": "rgbd_seg", "registry": "static_rgbd", "method": "static SE-add fusion",
         "metrics": {"miou": 31.0, "mean_gflops": 2.36}},
        {"name": "dynmm_rgbd_b1", "task": "rgbd_seg", "registry": "dynmm_rgbd", "method": "DynMM (fusion level)",
         "training": {"resource_weight": 0.1}, "metrics": {"miou": 30.0, "mean_gflops": 1.8}},
        {"name": "dynmm_rgbd_b2", "task": "rgbd_seg", "registry": "dynmm_rgbd", "method": "DynMM (fusion level)",
         "training": {"resource_weight": 0.4}, "metrics": {"miou": 28.0, "mean_gflops": 1.2}},
    ]
    loaded = []

    def fake_load(name, *a, **k):
        loaded.append(name)
        card = next(c for c in cards if c["name"] == name)
        return create(card["registry"], pretrained=False).eval(), card

    monkeypatch.setattr(inference, "list_checkpoints", lambda *a, **k: cards)
    monkeypatch.setattr(inference, "load_checkpoint", fake_load)
    rgb, depth8 = synthetic_rgbd(seed=6)
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(depth8)))
    _assert_clean(at)
    assert "No trained checkpoint" not in _texts(at)
    assert any("Model cards" in e.label for e in at.expander)
    budget = at.selectbox(key="rgbd_budget")
    assert list(budget.options) == ["λ=0.1 · 1.80 GFLOPs", "λ=0.4 · 1.20 GFLOPs"]  # short: not cut off
    budget.set_value("dynmm_rgbd_b2").run()
    _assert_clean(at)
    assert "Decision:" in _texts(at)
    assert {"static_rgbd", "dynmm_rgbd_b1", "dynmm_rgbd_b2"} <= set(loaded)
    assert not {"depth_only_rgbd", "a_rgb_only"} & set(loaded)  # a single-modality baseline is not "static fusion"


def test_rgbd_attribution_shows_the_sentence(app_cwd, no_data_env):
    rgb, depth8 = synthetic_rgbd()
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(depth8)), units="u8_nyu")
    _assert_clean(at)
    assert "Which modality drove this prediction?" in [t.label for t in at.toggle]
    n_charts = len(at.get("plotly_chart"))
    at.radio(key="rgbd_attr_model").set_value("Static fusion")
    at.toggle(key="rgbd_attr_on").set_value(True).run()
    _assert_clean(at)
    text = _texts(at)
    assert "contributed" in text and "% of the " in text and " score" in text  # the plain sentence
    assert "forwards" in text and "Exact Shapley values" in text  # the measured cost
    assert len(at.get("plotly_chart")) >= n_charts + 3  # Shapley bars + a region map per modality
    # another class of the prediction: explained without an error
    options = at.selectbox(key="rgbd_attr_class").options
    if len(options) > 1:
        at.selectbox(key="rgbd_attr_class").select_index(1).run()
        _assert_clean(at)


def _array(v) -> np.ndarray:
    """A plotly JSON array: a list, or the typed form ({"dtype", "bdata", "shape"}) plotly writes for numpy."""
    import base64

    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v)


def test_rgbd_attribution_class_picked_by_a_click(app_cwd, no_data_env):
    """Clicking a pixel of the prediction explains the class predicted there: the list follows the click, the
    picked pixel is shown; choosing from the list again forgets the point."""
    rgb, depth8 = synthetic_rgbd()
    at = _upload(_rgbd_page(), png_bytes(rgb), ("depth.png", png_bytes(depth8)), units="u8_nyu")
    at.radio(key="rgbd_attr_model").set_value("Static fusion")
    at.toggle(key="rgbd_attr_on").set_value(True).run()
    _assert_clean(at)
    assert "Click the prediction" in _texts(at) and "Picked pixel" not in _texts(at)
    _chart, fig = plotly_chart(at, "rgbd_attr_pick")
    grid = next(t for t in fig["data"] if t.get("name") == "pixels")
    xs, ys, where = _array(grid["x"]), _array(grid["y"]), [str(t) for t in _array(grid["text"])]

    def shown() -> str:  # the class the list shows, without its pixel count
        box = at.selectbox(key="rgbd_attr_class")
        return box.options[box.index].rsplit(" (", 1)[0]

    before = shown()
    # a point predicted as another class than the one explained now (the first one when all agree)
    i = next((j for j, t in enumerate(where) if t != before), 0)
    point = {"curve_number": 1, "point_number": i, "point_index": i, "x": float(xs[i]), "y": float(ys[i])}
    select_plotly_points(at, "rgbd_attr_pick", [point])
    _assert_clean(at)
    assert shown() == where[i]  # the list follows the click
    text = _texts(at)
    assert f"Picked pixel x = {int(xs[i])}, y = {int(ys[i])}" in text and f"**{where[i]}**" in text
    assert f"of the {where[i]} score" in text or "No modality moved" in text  # the sentence explains that class
    _chart, fig = plotly_chart(at, "rgbd_attr_pick")
    marks = [t for t in fig["data"] if t.get("name") == "picked"]
    assert marks and float(_array(marks[0]["x"])[0]) == float(xs[i])
    # back to the list: the point is forgotten
    box = at.selectbox(key="rgbd_attr_class")
    others = [k for k in range(len(box.options)) if k != box.index]
    if others:
        box.select_index(others[0]).run()
        _assert_clean(at)
        assert "Picked pixel" not in _texts(at) and shown() != where[i]
