"""Real-browser test of the emotion-clip page: `streamlit run app.py` + Playwright driving Debian's Chromium (no
`playwright install`), the same server fixture, browser and skip conditions as ``test_browser.py``.

Uploads a generated MP4 (a drawn face, a tone as its sound track) and a transcript file on /clips and waits for
the per-emotion probabilities and DynMM's gate decision. Waits are bounded; the server is always stopped.
"""
from __future__ import annotations

import os

import pytest

from clip_media import mp4_bytes
from test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, _no_errors, _wait_idle, server  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not found (apt-get install chromium)"),
]


def test_upload_a_clip_and_see_the_gate_decision(server, tmp_path):  # noqa: F811 (the imported fixture)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    video, words = tmp_path / "talk.mp4", tmp_path / "words.txt"
    video.write_bytes(mp4_bytes())
    words.write_text("I can't believe we actually won, this is the best day ever!\n", encoding="utf-8")

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            page.set_default_timeout(int(os.environ.get("BROWSER_WAIT_MS", WAIT_MS)))
            page.goto(server + "/clips", wait_until="domcontentloaded")
            try:
                page.get_by_text("Emotion clips: static fusion vs DynMM").first.wait_for()
                page.get_by_text("Paired by label, not recorded together").first.wait_for()
                uploaders = page.locator('[data-testid="stFileUploader"]')
                # the transcript first (the models already run on it alone), then the video
                uploaders.filter(has_text="transcript file").locator('input[type="file"]').set_input_files(str(words))
                uploaders.filter(has_text="transcript file").get_by_text("words.txt").wait_for()
                page.get_by_text("Decision:").first.wait_for()
                _wait_idle(page)  # an upload during the rerun the first one started can be lost with the old DOM
                uploaders.filter(has_text="Video with its sound track").locator('input[type="file"]').set_input_files(
                    str(video))
                uploaders.filter(has_text="Video with its sound track").get_by_text("talk.mp4").wait_for()
                page.get_by_text("Input · talk.mp4 + words.txt").wait_for()
                page.get_by_text("Per-emotion probabilities").first.wait_for()
                decision = page.locator('[data-testid="stMarkdownContainer"]').filter(has_text="Decision:").first
                decision.wait_for()
                page.get_by_text("Compute, measured on this input").wait_for()
                _wait_idle(page)
            except Exception:
                page.screenshot(path=str(tmp_path / "failed_clips.png"), full_page=True)
                raise
            assert "ran: " in decision.inner_text(), decision.inner_text()
            assert "text" in decision.inner_text()
            # the three inputs (crops, spectrogram, word pieces) and the results (probabilities, gate)
            page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()  # spectrogram, probabilities, gate
            assert page.locator('[data-testid="stImage"]').count() >= 1
            assert page.get_by_text("[CLS]").count() >= 1
            assert page.get_by_text("DynMM FLOPs").count() >= 1
            _no_errors(page)
            page.screenshot(path=str(tmp_path / "clips.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "clips.png").stat().st_size > 10_000
