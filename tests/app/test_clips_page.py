"""AppTest (headless, no browser) for the emotion-clip page, and unit tests of its pure helpers.

Inputs are tiny synthetic media made in memory (``clip_media``); the test-triple case runs only when the shared
copy of FER2013, RAVDESS and MELD is present. Models are the shipped clip checkpoints, or untrained registry
models when there are none yet (the page says so), so these tests check the page's wiring, not accuracy. The
models load once per process (``st.cache_resource``) and every AppTest here reuses them.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import ROOT, open_page, page_texts
from clip_media import face_image, jpg_bytes, mp4_bytes, tone, wav_bytes

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fusion.data.clips import ClipInput  # noqa: E402
from fusion.data.emotion import EMOTIONS, PAIRING_NOTE  # noqa: E402
from pages import _clips_input as clips_input  # noqa: E402
from pages import _clips_views as views  # noqa: E402

TIMEOUT = 180  # seconds per script run: the first one loads three clip models on a small, shared machine
TRANSCRIPT = "I can't believe we actually won, this is the best day ever!"


@pytest.fixture(scope="module")
def media() -> dict[str, bytes]:
    return {"mp4": mp4_bytes(), "wav": wav_bytes(tone(1.2)), "silent": wav_bytes(np.zeros(16_000, np.float32)),
            "jpg": jpg_bytes(face_image()), "long_wav": wav_bytes(tone(61.0, amp=0.2))}


def _clips_page() -> AppTest:
    return open_page("pages/clips.py", TIMEOUT)


def _upload(at: AppTest, *, video=None, audio=None, transcript_file=None, typed: str | None = None) -> AppTest:
    ups = {u.key: u for u in at.file_uploader}
    for key, value in (("clips_video", video), ("clips_audio", audio), ("clips_transcript_file", transcript_file)):
        if value is not None:
            ups[key].set_value(value)
    if typed is not None:
        at.text_area(key="clips_text").input(typed)
    return at.run()


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]


def _warnings(at: AppTest) -> str:
    return "\n".join(str(w.value) for w in at.warning)


def _shows_results(at: AppTest) -> str:
    """Assert the probabilities and DynMM's decision are on the page; return its texts."""
    text = page_texts(at)
    assert "Per-emotion probabilities" in text
    assert "**Decision:**" in text
    assert "Compute, measured on this input" in text
    metrics = {m.label: m.value for m in at.metric}
    assert {views.CONCAT, views.LATE, views.DYNMM} <= set(metrics), metrics
    assert all(metrics[t] in EMOTIONS for t in (views.CONCAT, views.LATE, views.DYNMM))
    tables = at.dataframe
    assert tables and list(tables[0].value.index)[:7] == list(EMOTIONS)
    assert PAIRING_NOTE in _warnings(at)  # said plainly at the top
    return text


# --------------------------------------------------------------------------- the page


def test_without_data_offers_upload_and_live_only(app_cwd, no_emotion_data):
    at = _clips_page()
    _clean(at)
    assert list(at.radio(key="clips_source").options) == ["Upload", "Live"]
    assert at.warning[0].value == PAIRING_NOTE
    text = page_texts(at)
    assert "Upload a video" in text and "Test triples unavailable" in text
    assert {u.key for u in at.file_uploader} >= {"clips_video", "clips_audio", "clips_transcript_file"}
    assert at.get("expander"), "the model cards are drawn even before an input"


def test_uploaded_clip_shows_probabilities_gate_and_compute(app_cwd, no_emotion_data, media):
    at = _upload(_clips_page(), video=("talk.mp4", media["mp4"], "video/mp4"), typed=TRANSCRIPT)
    _clean(at)
    text = _shows_results(at)
    assert "ran: " in text  # the gate's decision, e.g. "ran: audio + text"
    assert "all-modality branch" in text
    assert all(at.checkbox(key=f"clips_use_{m}").value for m in ("face", "audio", "text"))
    assert len(at.get("image")) >= 1  # the face crops
    assert len(at.get("plotly_chart")) >= 3  # spectrogram, probabilities, gate
    assert "[CLS]" in text and "won" in text  # the word pieces

    # switch the transcript off: the gate (which reads it) cannot run; the other two modalities still do
    at.checkbox(key="clips_use_text").uncheck().run()
    _clean(at)
    text = page_texts(at)
    assert "Per-emotion probabilities" in text
    assert "**Decision:** none" in text
    assert "Transcript: switched off" in text

    # an audio file longer than a minute replaces the video's sound: cut to its first 60 s, with a note
    at.checkbox(key="clips_use_text").check()
    at.file_uploader(key="clips_audio").set_value(("long.wav", media["long_wav"], "audio/wav"))
    at.run()
    _clean(at)
    infos = " ".join(str(i.value) for i in at.info)
    assert "the first 60 s are analysed" in infos and "not from the sound track of talk.mp4" in infos
    _shows_results(at)


def test_live_photo_recording_and_text(app_cwd, no_emotion_data, media):
    at = _clips_page()
    at.radio(key="clips_source").set_value("Live").run()
    at.camera_input(key="clips_camera").set_value(("shot.jpg", media["jpg"], "image/jpeg"))
    at.audio_input(key="clips_mic").set_value(("recording.wav", media["wav"], "audio/wav"))
    at.text_area(key="clips_live_text").input(TRANSCRIPT)
    at.run()
    _clean(at)
    text = _shows_results(at)
    assert "ran: " in text
    assert "Input · live: photo + recording + typed text" in text
    assert not [w for w in at.warning if "cannot be used" in str(w.value)]


def test_bad_inputs_give_messages_and_the_usable_ones_still_run(app_cwd, no_emotion_data, media):
    # a corrupt video and an empty transcript: nothing is usable -> one clear error naming each reason
    at = _upload(_clips_page(), video=("broken.mp4", b"\x00\x01not a video at all" * 20, "video/mp4"), typed="   ")
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(str(e.value) for e in at.error)
    assert "Nothing in this clip can be used" in errors
    assert "broken.mp4 cannot be read" in errors and "typed transcript is empty" in errors
    assert "Traceback" not in errors and not at.code

    # a silent recording and a good transcript: the speech is refused with its reason, the words still run
    at.file_uploader(key="clips_video").set_value(None)
    at.file_uploader(key="clips_audio").set_value(("quiet.wav", media["silent"], "audio/wav"))
    at.text_area(key="clips_text").input(TRANSCRIPT)
    at.run()
    _clean(at)
    warnings = _warnings(at)
    assert "**Speech cannot be used:**" in warnings and "silent" in warnings
    assert "**Face cannot be used:**" in warnings and "No video was given" in warnings
    assert at.checkbox(key="clips_use_audio_unusable").disabled
    text = _shows_results(at)
    # the words alone: a gate that reads only the transcript decides ("ran: text"); the shipped gate also reads
    # the face, which is missing, so DynMM says it fused what was given
    assert "ran: text" in text or "DynMM fused what was given" in text

    # a good video with a transcript file that is not UTF-8: face and speech run, the words are refused
    at.file_uploader(key="clips_audio").set_value(None)
    at.file_uploader(key="clips_video").set_value(("talk.mp4", media["mp4"], "video/mp4"))
    at.file_uploader(key="clips_transcript_file").set_value(("words.txt", "café déjà".encode("latin-1"), "text/plain"))
    at.run()
    _clean(at)
    warnings = _warnings(at)
    assert "**Transcript cannot be used:**" in warnings and "not UTF-8" in warnings
    text = _shows_results(at)
    assert "**Decision:** none" in text  # the gate reads the transcript
    assert "Face: **ran**" in text and "Speech: **ran**" in text


@pytest.fixture(scope="module")
def shipped_like(tmp_path_factory):
    """Checkpoints written like ``fusion.clip_train`` writes them (untrained weights: the wiring is what is tested),
    in a folder of their own: both static models, DynMM with a trained gate and the shared branches without one."""
    from fusion.checkpoints import save_checkpoint
    from fusion.registry import create

    root = tmp_path_factory.mktemp("clip_checkpoints")
    base = {"task": "emotion_clips", "pairing_note": PAIRING_NOTE, "licence": "research and teaching only"}
    for registry in ("concat_clips", "late_clips", "dynmm_clips"):
        model = create(registry, pretrained=False)
        card = {**base, "registry": registry, "method": registry.split("_")[0]}
        if registry != "dynmm_clips":
            save_checkpoint(model, root / registry, {**card, "name": registry}, tensors=model.trainable_state_dict())
            continue
        card["branches"] = ["+".join(b) for b in model.branches]
        save_checkpoint(model, root / "dynmm_clips_branches", {**card, "name": "dynmm_clips_branches",
                        "gate_trained": False}, tensors=model.trainable_state_dict())
        save_checkpoint(model, root / "dynmm_clips_l0p1", {
            **card, "name": "dynmm_clips_l0p1", "gate_trained": True, "resource_weight": 0.1,
            "metrics": {"val": {"accuracy": 40.0, "relative_flops": 0.5}}}, tensors=model.trainable_state_dict())
    return root


def test_trained_checkpoints_are_offered_with_their_cards(app_cwd, no_emotion_data, media, shipped_like,
                                                          monkeypatch):
    from fusion import checkpoints, inference
    from pages._common import load_model

    monkeypatch.setattr(inference, "list_cards", lambda task=None, root=None: checkpoints.list_cards(task, shipped_like))
    monkeypatch.setattr(inference, "_load", lambda name, root=None: checkpoints.load_checkpoint(name, shipped_like))
    load_model.clear()
    views._analyse.clear()
    try:
        at = _upload(_clips_page(), video=("talk.mp4", media["mp4"], "video/mp4"), typed=TRANSCRIPT)
        _clean(at)
        assert list(at.selectbox(key="clips_budget").options) == ["λ=0.1 · val 50% of the FLOPs · val acc 40.0%"]
        assert not [i for i in at.info if "randomly initialised" in str(i.value)]
        _shows_results(at)
        notes = [str(w.value) for w in at.warning if PAIRING_NOTE in str(w.value)]
        assert notes == [PAIRING_NOTE, f"**{views.CONCAT}**: {PAIRING_NOTE}"]  # at the top, then once at the cards
        assert [t.value["value"].iloc[0] for t in at.table] == ["concat_clips", "late_clips", "dynmm_clips_l0p1"]
    finally:  # the next tests get the real assets again
        load_model.clear()
        views._analyse.clear()


def test_test_triple_from_the_data(app_cwd):
    roots, why = clips_input.data_roots()
    if roots is None:
        pytest.skip(f"FER2013 / RAVDESS / MELD not installed: {why}")
    at = _clips_page()
    assert "Test triple from the data" in at.radio(key="clips_source").options
    at.radio(key="clips_source").set_value("Test triple from the data").run()
    at.number_input(key="clips_triple").set_value(3).run()
    _clean(at)
    text = _shows_results(at)
    assert "True label:" in text and "Input · test triple 3" in text


# --------------------------------------------------------------------------- pure helpers


DYN_CARDS = [
    {"name": "dynmm_clips_branches", "task": "emotion_clips", "registry": "dynmm_clips", "gate_trained": False,
     "pairing_note": PAIRING_NOTE},
    {"name": "dynmm_clips_l0p1", "task": "emotion_clips", "registry": "dynmm_clips", "gate_trained": True,
     "resource_weight": 0.1, "metrics": {"val": {"accuracy": 51.25, "relative_flops": 0.423}},
     "pairing_note": PAIRING_NOTE},
    {"name": "dynmm_clips_l1", "task": "emotion_clips", "registry": "dynmm_clips", "gate_trained": True,
     "resource_weight": 1.0},
    {"name": "concat_clips", "task": "emotion_clips", "registry": "concat_clips", "pairing_note": PAIRING_NOTE},
]


def test_dynmm_budget_cards_leave_out_the_untrained_gate():
    offered = [c["name"] for c in DYN_CARDS if views.is_offered_dynmm(c)]
    assert offered == ["dynmm_clips_l0p1", "dynmm_clips_l1"]
    assert views.budget_label(DYN_CARDS[1]) == "λ=0.1 · val 42% of the FLOPs · val acc 51.2%"
    assert views.budget_label(DYN_CARDS[2]) == "λ=1"
    assert views.budget_label({**DYN_CARDS[2], "config": {"branch_fusion": "late"}}) == "λ=1"
    assert views.budget_label({"name": "x"}) == "x"


def _picker_script(root: str) -> None:
    import sys

    sys.path.insert(0, root)
    import streamlit as st

    from pages._clips_views import pick_models

    for m in pick_models(st.sidebar):
        st.write(f"{m.title} = {m.name} trained={m.trained}")


def test_pick_models_offers_trained_gates_and_falls_back_to_untrained(monkeypatch):
    from fusion import inference

    monkeypatch.setattr(inference, "list_cards", lambda task=None, root=None: [
        c for c in DYN_CARDS if task is None or c["task"] == task])
    at = AppTest.from_function(_picker_script, args=(str(ROOT),), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key="clips_budget")
    assert list(box.options) == ["λ=0.1 · val 42% of the FLOPs · val acc 51.2%", "λ=1"]
    lines = [m.value for m in at.markdown]
    assert f"{views.CONCAT} = concat_clips trained=True" in lines
    assert f"{views.LATE} = late_clips trained=False" in lines
    assert f"{views.DYNMM} = dynmm_clips_l0p1 trained=True" in lines
    assert views.LATE in at.info[0].value and "randomly initialised" in at.info[0].value


def test_cards_keep_each_pairing_note_once():
    models = [views.ClipModel(views.CONCAT, "concat_clips", True, DYN_CARDS[3]),
              views.ClipModel(views.DYNMM, "dynmm_clips_l0p1", True, DYN_CARDS[1]),
              views.ClipModel(views.LATE, "late_clips", True, {"name": "late_clips", "pairing_note": "Other words."})]
    shown = views.cards_for_display(models)
    assert [("pairing_note" in c) for _, c in shown] == [True, False, True]
    assert "pairing_note" in DYN_CARDS[1]  # the cards themselves are not edited
    assert views.card_notes(models) == [f"**{views.LATE}** (`late_clips`): Other words."]  # PAIRING_NOTE is at the top


def test_probability_table_chart_and_texts():
    static = views.Run(per_modality={"text": [0.0, 0, 0, 1.0, 0, 0, 0], "face": [1 / 7] * 7}, probs=[0.1] * 7)
    fused = {views.CONCAT: static, views.DYNMM: views.Run(probs=[0.0, 0, 0, 0, 0, 0.9, 0.1])}
    sources = views.prob_sources(static, fused)
    assert list(sources) == ["Face alone", "Transcript alone", views.CONCAT, views.DYNMM]
    table = views.prob_table(sources)
    assert list(table.index) == list(EMOTIONS) and table.loc["happy", "Transcript alone"] == 100.0
    assert views.picks(sources)[views.DYNMM] == "sad"
    fig = views.prob_figure(sources)
    assert [t.name for t in fig.data] == list(sources) and fig.layout.barmode == "group"
    assert views.ratio_text(25.0, 100.0, "FLOPs") == "0.25× (75% fewer FLOPs)"
    assert views.ratio_text(120.0, 100.0, "ms") == "1.20× (20% more time)"
    assert views.ratio_text(None, 100.0, "ms") == "n/a"
    assert views.branch_words("audio+text") == "audio + text"
    run = views.Run(branch_names=("text", "face+text", "audio+text", "face+audio+text"), present=("audio", "text"))
    assert views.full_branch(run) == "audio+text"
    chips = views.chips_html(["[CLS]", "<b>", "won"])
    assert "&lt;b&gt;" in chips and "<b>" not in chips


def test_spectrogram_is_in_seconds_and_averaged_down():
    mel = np.random.default_rng(0).normal(size=(64, 3001)).astype(np.float32)
    fig = views.mel_figure(mel, max_columns=1001)
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (64, 1001)  # 3 frames a column, the last one alone
    assert np.isclose(heat.x[1], 0.03) and np.isclose(heat.x[-1], 30.0)
    assert fig.layout.xaxis.title.text == "time (s)"


def test_digest_follows_what_the_models_read():
    a = ClipInput(face_crops=np.zeros((1, 48, 48), np.uint8), audio=tone(0.5), transcript="hi")
    b = ClipInput(face_crops=np.zeros((1, 48, 48), np.uint8), audio=tone(0.5), transcript="hi", notes=["x"])
    c = ClipInput(face_crops=np.zeros((1, 48, 48), np.uint8), audio=tone(0.5), transcript="hello")
    assert clips_input.digest(a) == clips_input.digest(b) != clips_input.digest(c)


def test_attribution_on_an_uploaded_clip(app_cwd, no_emotion_data, media):
    at = _upload(_clips_page(), video=("talk.mp4", media["mp4"], "video/mp4"), typed=TRANSCRIPT)
    _clean(at)
    at.radio(key="clips_attr_model").set_value(views.LATE)
    at.toggle(key="clips_attr_on").set_value(True).run()
    _clean(at)
    text = page_texts(at)
    assert "contributed" in text and "% of the " in text  # the plain sentence
    assert "forwards" in text  # the measured cost
    assert at.selectbox(key="clips_attr_class").value in range(len(EMOTIONS))
