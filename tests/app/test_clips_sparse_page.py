"""AppTest (headless) for the sparse-fusion clip page, and unit tests of its pure views.

Synthetic media made in memory (``clip_media``); the test-triple case runs only when the shared copy of the three
corpora is present. Models: the shipped ``sparse_clips`` / ``concat_clips`` checkpoints, or untrained registry
models when there are none (the page says so): these tests check the page's wiring, not accuracy.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import ROOT, open_page, page_texts
from clip_media import mp4_bytes, wav_bytes, tone

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fusion.data.emotion import EMOTIONS, PAIRING_NOTE  # noqa: E402
from pages import _clips_sparse_views as views  # noqa: E402

TIMEOUT = 240
TRANSCRIPT = "I can't believe we actually won, this is the best day ever!"


@pytest.fixture(scope="module")
def media() -> dict[str, bytes]:
    return {"mp4": mp4_bytes(), "wav": wav_bytes(tone(1.2))}


def _page() -> AppTest:
    return open_page("pages/clips_sparse.py", TIMEOUT)


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]


def _results(at: AppTest) -> str:
    text = page_texts(at)
    assert "What the pooling kept" in text and "Prediction and compute" in text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics.get("Sparse (sparse_clips)") in EMOTIONS and metrics.get("Dense (concat_clips)") in EMOTIONS
    assert PAIRING_NOTE in " ".join(str(w.value) for w in at.warning)
    return text


def _compute(at: AppTest):
    return next(d.value for d in at.dataframe if "dense (concat_clips)" in d.value.columns)


def test_without_input_prompts_and_shows_cards(app_cwd, no_emotion_data):
    at = _page()
    _clean(at)
    assert at.warning[0].value == PAIRING_NOTE
    assert "Upload a video" in page_texts(at)
    assert at.selectbox(key="clips_sparse_pool").value in views.POOL_HELP
    assert at.get("expander"), "the model cards are drawn even before an input"


def test_upload_strip_controls_and_ablation(app_cwd, no_emotion_data, media):
    at = _page()
    at.file_uploader(key="clips_audio").set_value(("talk.wav", media["wav"], "audio/wav"))
    at.text_area(key="clips_text").input(TRANSCRIPT)
    at.run()
    _clean(at)
    _results(at)
    assert len(at.get("plotly_chart")) >= 2  # the time-aligned strip and the probabilities
    table = _compute(at)
    assert "fewer" in table["saving"].iloc[0]  # the default pooling keeps fewer tokens than the dense model
    # pooling off: as many tokens as the dense control reads (no face here: one token each way is not involved)
    at.selectbox(key="clips_sparse_pool").set_value("none").run()
    _clean(at)
    table = _compute(at)
    assert table["dense (concat_clips)"].iloc[0] == table["sparse"].iloc[0]
    # a control mode and another keep ratio, then the ablation
    at.selectbox(key="clips_sparse_pool").set_value("strided_random")
    at.slider(key="clips_sparse_ratio").set_value(0.25).run()
    _clean(at)
    _results(at)
    at.checkbox(key="clips_sparse_zero").check().run()
    _clean(at)
    assert any("pooled tokens are zeroed" in str(w.value) for w in at.warning)


def test_video_face_crops_are_marked(app_cwd, no_emotion_data, media):
    at = _page()
    at.file_uploader(key="clips_video").set_value(("talk.mp4", media["mp4"], "video/mp4"))
    at.text_area(key="clips_text").input(TRANSCRIPT)
    at.run()
    _clean(at)
    text = _results(at)
    assert "[CLS]" in text
    assert len(at.get("image")) >= 1


@pytest.mark.skipif(not all((ROOT.parent / "shared" / "data" / n).is_dir() for n in ("fer2013", "ravdess", "meld")),
                    reason="needs ../shared/data (FER2013, RAVDESS, MELD)")
def test_test_triple(app_cwd):
    at = _page()
    if "Test triple from the data" not in at.radio(key="clips_source").options:
        pytest.skip("the three corpora are not all installed")
    at.radio(key="clips_source").set_value("Test triple from the data").run()
    _clean(at)
    assert "True label:" in _results(at)


# --------------------------------------------------------------------------- pure views


def test_kept_chips_mark_only_the_kept_pieces():
    out = views.kept_chips_html(["[CLS]", "hi", "<b>", "[SEP]"], kept=[1], scores=[0.1, 0.9, 0.2, 0.3])
    assert out.count(views.KEPT) == 1 and "&lt;b&gt;" in out and "score 0.900" in out


def test_marked_crop_frames_kept_and_dropped_differently():
    crop = np.full((48, 48), 128, np.uint8)
    kept, dropped = views.marked_crop(crop, True), views.marked_crop(crop, False)
    assert kept.shape == (48, 48, 3) and not np.array_equal(kept[0, 0], dropped[0, 0])
    assert np.array_equal(kept[24, 24], [128, 128, 128])  # the face itself is untouched


def test_strip_shades_each_kept_speech_span():
    trace = {"audio": {"kept": [2, 7], "scores": [0.1] * 10, "spans": [[0.16, 0.24], [0.56, 0.64]], "length": 10,
                       "windows": None},
             "face": {"kept": [0], "scores": [1.0], "spans": [[0, 1]], "length": 1, "windows": None}}
    fig = views.strip_figure(np.zeros((64, 80), np.float32), [0.3], trace)
    assert len(fig.layout.shapes) == 2
    bars = next(t for t in fig.data if t.type == "bar")
    assert [c == views.KEPT for c in bars.marker.color].count(True) == 2
