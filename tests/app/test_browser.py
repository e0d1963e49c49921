"""Real-browser test: `streamlit run app.py` + Playwright driving Debian's Chromium (no `playwright install`).

Uploads a synthetic RGB PNG and depth PNG on the RGB-D page and waits for the segmentation and the
DynMM gate decision. Waits are bounded; the server is always stopped.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_helpers import ROOT, png_bytes, synthetic_rgbd

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not found (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit not healthy after {timeout:.0f} s")


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    empty = tmp_path / "no_nyuv2"
    empty.mkdir()
    # one intra-op thread: on a small shared machine oversubscribed threads make each forward crawl
    env = {**os.environ, "FUSION_NYUV2": str(empty), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_upload_and_see_gate_decision(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    rgb, depth8 = synthetic_rgbd(h=120, w=160)
    rgb_path, depth_path = tmp_path / "scene.png", tmp_path / "depth.png"
    rgb_path.write_bytes(png_bytes(rgb))
    depth_path.write_bytes(png_bytes(depth8))

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.set_default_timeout(int(os.environ.get("BROWSER_WAIT_MS", WAIT_MS)))
            page.goto(server + "/rgbd", wait_until="domcontentloaded")
            page.get_by_text("RGB-D segmentation: static fusion vs DynMM").wait_for()

            uploaders = page.locator('[data-testid="stFileUploader"]')
            # depth first (nothing to segment yet), then the RGB image that triggers the models
            uploaders.filter(has_text="Depth map").locator('input[type="file"]').set_input_files(str(depth_path))
            uploaders.filter(has_text="Depth map").get_by_text("depth.png").wait_for()
            _wait_idle(page)
            uploaders.filter(has_text="RGB image").locator('input[type="file"]').set_input_files(str(rgb_path))
            page.get_by_text("Depth read as").first.wait_for()
            page.get_by_text("Decision:").first.wait_for()

            assert page.get_by_role("heading", name="Segmentation").count() >= 1
            page.locator('[data-testid="stImage"]').nth(3).wait_for()  # rgb, depth, 2 segmentations
            assert page.locator('[data-testid="stImage"]').count() >= 4
            decision = page.locator('[data-testid="stMarkdownContainer"]').filter(has_text="Decision:").first
            assert re.search(r"k=\d", decision.inner_text()), decision.inner_text()
            page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for()  # gate + compute charts
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            page.screenshot(path=str(tmp_path / "rgbd.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "rgbd.png").stat().st_size > 10_000


def _open_with_upload(browser, url: str, tmp_path, title: str):
    """Open a page, upload the synthetic RGB-D pair (depth first, then RGB), return the page."""
    rgb, depth8 = synthetic_rgbd(h=120, w=160, seed=3)
    rgb_path, depth_path = tmp_path / "scene.png", tmp_path / "depth.png"
    rgb_path.write_bytes(png_bytes(rgb))
    depth_path.write_bytes(png_bytes(depth8))
    page = browser.new_page(viewport={"width": 1400, "height": 2600})
    page.set_default_timeout(int(os.environ.get("BROWSER_WAIT_MS", WAIT_MS)))
    page.goto(url, wait_until="domcontentloaded")
    try:
        page.get_by_text(title).first.wait_for()
        uploaders = page.locator('[data-testid="stFileUploader"]')
        uploaders.filter(has_text="Depth map").locator('input[type="file"]').set_input_files(str(depth_path))
        uploaders.filter(has_text="Depth map").get_by_text("depth.png").wait_for()
        _wait_idle(page)  # an upload during the rerun the first one started can be lost with the old DOM
        uploaders.filter(has_text="RGB image").locator('input[type="file"]').set_input_files(str(rgb_path))
        uploaders.filter(has_text="RGB image").get_by_text("scene.png").wait_for()
        page.get_by_text("Depth read as").first.wait_for()
    except Exception:
        page.screenshot(path=str(tmp_path / "failed_upload.png"), full_page=True)
        raise
    return page


def _wait_idle(page) -> None:
    """Wait until the app has no script run in progress (Streamlit's running indicator is gone)."""
    page.wait_for_timeout(500)
    page.locator('[data-testid^="stStatusWidgetRunning"]').first.wait_for(state="hidden")


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the sidebar selectbox labelled ``label``."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def _no_errors(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0


def test_method_views_and_their_controls(server, tmp_path):
    """Sparse fusion: change the pooling mode; DEQ: change the solver; adapters: switch depth off."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = _open_with_upload(browser, server + "/sparse", tmp_path, "Sparse token fusion")
            page.get_by_text("Which tokens survive").first.wait_for()
            page.get_by_text("sparse · topk_attn").first.wait_for()
            _choose(page, "Pooling mode", "max — ")
            page.get_by_text("sparse · max").first.wait_for()
            assert page.get_by_text("fewer FLOPs").count() >= 1
            _no_errors(page)
            page.screenshot(path=str(tmp_path / "sparse.png"), full_page=True)
            page.close()

            page = _open_with_upload(browser, server + "/deq", tmp_path, "Deep-equilibrium fusion")
            page.get_by_text("final relative residual").first.wait_for()
            _choose(page, "Solver", "plain iteration")
            page.get_by_text("fixed_point:").first.wait_for()
            page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for()  # residual + settling curves
            _no_errors(page)
            page.screenshot(path=str(tmp_path / "deq.png"), full_page=True)
            page.close()

            page = _open_with_upload(browser, server + "/adapters", tmp_path, "Missing modalities")
            page.get_by_text("Both modalities are on").first.wait_for()
            page.locator('[data-testid="stSidebar"]').get_by_text("Depth", exact=True).click()
            page.get_by_text("Prediction with RGB only").first.wait_for()
            _no_errors(page)
            page.screenshot(path=str(tmp_path / "adapters.png"), full_page=True)
        finally:
            browser.close()
    for name in ("sparse", "deq", "adapters"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_attribution_class_picked_by_a_click(server, tmp_path):
    """RGB-D page: switch the attribution on, click a pixel of the prediction; the picked pixel and its class are
    shown, the class list shows that class, and the explanation is about it."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = _open_with_upload(browser, server + "/rgbd", tmp_path, "RGB-D segmentation")
            page.get_by_text("Decision:").first.wait_for()
            _wait_idle(page)
            page.get_by_text("Which modality drove this prediction?").first.click()
            page.get_by_text("Click the prediction").first.wait_for()
            page.get_by_text("Exact Shapley values").first.wait_for()
            _wait_idle(page)
            # the picker: the plotly figure with the clickable grid of pixels
            index = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
                .findIndex(d => (d.data || []).some(t => t.name === 'pixels'))""")
            assert index >= 0
            plot = page.locator(".js-plotly-plot").nth(index)
            plot.scroll_into_view_if_needed()
            box = plot.locator(".nsewdrag").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.7)
            page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.7)
            picked = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="Picked pixel").first
            picked.wait_for()
            m = re.search(r"Picked pixel x = (\d+), y = (\d+) \(of 320×240\): (.+)\.", picked.inner_text())
            assert m, picked.inner_text()
            x, y, name = int(m.group(1)), int(m.group(2)), m.group(3).strip()
            assert 60 <= x <= 130 and 130 <= y <= 200, (x, y)  # near where the click landed (0.3, 0.7)
            _wait_idle(page)
            listed = page.locator('[data-testid="stSelectbox"]').filter(has_text="pick the class from the list")
            inputs = listed.first.locator("input")  # the shown choice: text, or the combobox input's value
            shown = listed.first.inner_text() + " " + " ".join(inputs.nth(k).input_value() or ""
                                                               for k in range(inputs.count()))
            assert f"{name} (" in shown, shown
            page.get_by_text(f"of the {name} score").first.wait_for()
            _no_errors(page)
            page.screenshot(path=str(tmp_path / "attribution_click.png"), full_page=True)
        finally:
            browser.close()
