"""Helpers for the app tests: tiny synthetic inputs made in memory (never data-set files)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SHARED_NYUV2 = ROOT.parent / "shared" / "data" / "nyuv2"


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_rgbd(h: int = 96, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small indoor-ish scene: RGB gradient with a box, and an 8-bit NYU-style depth (m * 25.5) with a hole."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 120)], -1).astype(np.uint8)
    rgb[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = (200, 60, 40)
    rgb = np.clip(rgb.astype(int) + rng.integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)
    depth_m = 1.0 + 3.0 * yy / h
    depth_m[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 1.2
    depth8 = np.clip(np.rint(depth_m * 25.5), 0, 255).astype(np.uint8)
    depth8[:4, :4] = 0  # a hole
    return rgb, depth8


def shared_data_present() -> bool:
    return (SHARED_NYUV2 / "test.txt").exists() and (SHARED_NYUV2 / "images").is_dir()


def page_texts(at) -> str:
    """Every text an AppTest run shows: markdown, captions, subheaders, messages and metrics."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.subheader]
    parts += [e.value for e in at.info] + [e.value for e in at.warning] + [e.value for e in at.error]
    parts += [f"{m.label} {m.value} {m.delta}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def assert_clean(at) -> None:
    """No exception and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]


def upload_rgbd(at, prefix: str, depth: bool = True, seed: int = 0):
    """Upload the synthetic RGB (and, unless ``depth`` is False, its depth PNG) into the page's ``prefix``
    uploaders and rerun."""
    rgb, depth8 = synthetic_rgbd(seed=seed)
    ups = {u.key: u for u in at.file_uploader}
    ups[f"{prefix}_rgb_file"].set_value(("scene.png", png_bytes(rgb), "image/png"))
    if depth:
        ups[f"{prefix}_depth_file"].set_value(("depth.png", png_bytes(depth8), "image/png"))
    at.run()
    return at


def plotly_chart(at, key: str):
    """The ``st.plotly_chart`` element of ``key`` (AppTest has no typed element for it) and its figure (dict)."""
    import json

    hits = [c for c in at.get("plotly_chart") if c.key == key]
    assert hits, f"no plotly chart with key {key!r}"
    return hits[0], json.loads(hits[0].proto.spec)


def select_plotly_points(at, key: str, points: list[dict]):
    """Rerun as the browser does after a click on the ``key`` chart (``on_select``): AppTest cannot click a plotly
    chart, so the selection event is sent the way the frontend sends it — the chart's widget state set to
    ``{"selection": {"points": …}}`` as a JSON string — along with every other widget's current value (AppTest's private
    ``_run``: the one way to hand it a widget state it has no setter for)."""
    import json

    from streamlit.proto.WidgetStates_pb2 import WidgetState

    chart, _fig = plotly_chart(at, key)
    states = at._tree.get_widget_states()
    selection = {"points": points, "point_indices": [p.get("point_index", i) for i, p in enumerate(points)],
                 "box": [], "lasso": []}
    ws = WidgetState(id=chart.proto.id, string_value=json.dumps({"selection": selection}))  # as the frontend sends it
    kept = [w for w in states.widgets if w.id != chart.proto.id]
    del states.widgets[:]
    states.widgets.extend(kept + [ws])
    return at._run(states)


def open_page(page: str, timeout: float = 240):
    """An AppTest of app.py switched to ``page`` (e.g. "pages/clips.py") and run once."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    at.run()
    at.switch_page(page)
    return at.run()
