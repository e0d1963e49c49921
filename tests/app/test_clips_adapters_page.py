"""AppTest (headless) for the clip missing-modality page: modality toggles switch the adapter set of what is left,
base / adapted / dedicated probabilities side by side, the robustness matrix, clean messages. Uses the shipped
adapter checkpoints, or the untrained ``adapted_clips`` stand-in when there are none (the page says so)."""
from __future__ import annotations

import numpy as np
from streamlit.testing.v1 import AppTest

from app_helpers import assert_clean, open_page, page_texts
from clip_media import mp4_bytes, tone, wav_bytes

from fusion.data.emotion import PAIRING_NOTE

TIMEOUT = 240
TRANSCRIPT = "I can't believe we actually won, this is the best day ever!"


def _page() -> AppTest:
    return open_page("pages/clips_adapters.py", TIMEOUT)


def test_page_without_input_shows_note_toggles_and_matrix(app_cwd, no_emotion_data):
    at = _page()
    assert_clean(at)
    assert at.warning[0].value == PAIRING_NOTE
    assert {t.key for t in at.toggle} >= {"cad_use_face", "cad_use_audio", "cad_use_text"}
    text = page_texts(at)
    assert "Robustness matrix" in text
    assert at.get("plotly_chart") or "No evaluated clip models yet" in text


def test_switching_modalities_off_switches_their_adapter_set_on(app_cwd, no_emotion_data):
    at = _page()
    at.file_uploader(key="clips_video").set_value(("talk.mp4", mp4_bytes(), "video/mp4"))
    at.text_area(key="clips_text").input(TRANSCRIPT)
    at.run()
    assert_clean(at)
    assert "Every modality is on: no adapter is used" in page_texts(at)
    at.toggle(key="cad_use_face").set_value(False).run()
    assert_clean(at)
    text = page_texts(at)
    assert "Adapter set switched on:** `audio+text`" in text
    titles = [m.label for m in at.metric]
    assert titles[0] == "frozen base (adapters off)" and any(t.endswith("adapters") for t in titles)
    assert "reference: every usable modality" in titles
    at.toggle(key="cad_use_audio").set_value(False).run()
    assert_clean(at)
    assert "Adapter set switched on:** `text`" in page_texts(at)
    at.toggle(key="cad_use_text").set_value(False).run()
    assert_clean(at)
    assert "Switch at least one usable modality on" in page_texts(at)


def test_a_silent_recording_is_refused_with_its_reason(app_cwd, no_emotion_data):
    at = _page()
    at.file_uploader(key="clips_audio").set_value(("quiet.wav", wav_bytes(np.zeros(16_000, np.float32)), "audio/wav"))
    at.text_area(key="clips_text").input(TRANSCRIPT)
    at.run()
    assert not at.exception
    text = page_texts(at)
    assert "Speech cannot be used" in text and "Adapter set switched on:** `text`" in text
