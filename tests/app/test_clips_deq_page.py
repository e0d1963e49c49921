"""AppTest (headless) for the clip DEQ page: a typed transcript and an uploaded sound are enough to solve; the
page draws one residual curve per state, the prediction at every iterate, takes live solver options, switches the
block off and modalities off, and says how the corpora were paired. Pure view helpers are tested on plain data."""
from __future__ import annotations

import sys

from streamlit.testing.v1 import AppTest

from app_helpers import ROOT, page_texts
from clip_media import tone, wav_bytes

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fusion.data.emotion import PAIRING_NOTE  # noqa: E402
from pages import _clips_deq_views as views  # noqa: E402

TIMEOUT = 180
TRANSCRIPT = "I can't believe we actually won, this is the best day ever!"


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error] + [c.value for c in at.code]


def _page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/clips_deq.py")
    at.run()
    return at


def test_page_solves_a_typed_transcript_and_shows_each_state() -> None:
    at = _page()
    _clean(at)
    assert PAIRING_NOTE[:40] in "\n".join(str(w.value) for w in at.warning)
    at.radio(key="clips_source").set_value("Upload").run()
    at.text_area(key="clips_text").input(TRANSCRIPT).run()
    ups = {u.key: u for u in at.file_uploader}
    ups["clips_audio"].set_value(("voice.wav", wav_bytes(tone(1.2)), "audio/wav"))
    at.run()
    _clean(at)
    text = page_texts(at)
    assert "Convergence of each state on this clip" in text
    assert "Speech" in text and "Transcript" in text and "Fused state" in text
    assert "The prediction at each solver iterate vs the fixed point" in text
    assert len(at.get("plotly_chart")) >= 2
    assert {m.label for m in at.metric} >= {"Prediction (fixed point)", "Solver", "FLOPs (measured)"}
    # live solver controls: plain iteration capped at 2 steps, an absolute stop rule
    at.selectbox(key="clipdeq_solver").set_value("fixed_point")
    at.slider(key="clipdeq_max_iter").set_value(2)
    at.run()
    _clean(at)
    solver = next(m for m in at.metric if m.label == "Solver")
    assert solver.value.startswith(("1 ", "2 "))
    assert "plain iteration" in page_texts(at)
    at.radio(key="clipdeq_stop_mode").set_value("abs").run()
    _clean(at)
    # the block switched off
    at.toggle(key="clipdeq_zero_block").set_value(True).run()
    _clean(at)
    assert "Block switched off" in page_texts(at)
    assert any(m.label.startswith("Block off") for m in at.metric)
    # a modality switched off leaves the fixed point
    at.checkbox(key="clipdeq_use_audio").uncheck().run()
    _clean(at)
    assert "audio absent" in page_texts(at).lower()
    at.checkbox(key="clipdeq_use_text").uncheck().run()
    _clean(at)
    assert "Switch at least one usable modality on" in page_texts(at)


def test_page_without_input_prompts_cleanly() -> None:
    at = _page()
    at.radio(key="clips_source").set_value("Upload").run()
    _clean(at)
    assert "Upload a video" in page_texts(at)


def _run(nstep: int = 3, names=("audio", "text", "fused")) -> views.Run:
    probs = [0.1, 0.0, 0.0, 0.6, 0.1, 0.1, 0.1]
    return views.Run(probs=probs, label="happy", solver={
        "nstep": nstep, "tol": 1e-3, "stop_mode": "rel", "residuals": [1e-1, 1e-2, 1e-4, 1e-4],
        "state_names": names, "state_residuals": [[1e-1, 1e-2, 1e-4, 1e-4]] * len(names)},
        iterates={1: [0.5, 0, 0, 0.2, 0.1, 0.1, 0.1], 2: [0.1, 0, 0, 0.5, 0.2, 0.1, 0.1], 8: probs})


def test_views_draw_one_curve_per_state_and_the_iterates() -> None:
    run = _run()
    traces = views.state_traces(run)
    assert [t["name"] for t in traces] == ["Speech", "Transcript", "Fused state", "all states (the stop rule)"]
    fig = views.state_residual_figure(run)
    assert len(fig.data) == 4 and fig.layout.yaxis.type == "log"
    its, probs = views.iterate_probs(run)
    assert its == [1, 2, 3] and probs[-1] == run.probs  # iteration 8 is after the stop: not offered
    rows = views.iterate_rows(run)
    assert [r["prediction"] for r in rows] == ["angry", "happy", "happy"]
    assert [r["same as returned state"] for r in rows] == ["no", "yes", "yes"]


def test_control_cards_are_not_offered() -> None:
    assert views.is_control({"config": {"deq": {"unroll": 1}}})
    assert not views.is_control({"config": {"deq": {"unroll": 0}}}) and not views.is_control({})
