"""Fixtures for the app tests."""
from __future__ import annotations

import pytest

from app_helpers import ROOT


@pytest.fixture
def no_data_env(tmp_path, monkeypatch):
    """Point FUSION_NYUV2 at an empty folder so the page runs as if no data set were installed."""
    empty = tmp_path / "no_nyuv2"
    empty.mkdir()
    monkeypatch.setenv("FUSION_NYUV2", str(empty))
    return empty


@pytest.fixture
def no_emotion_data(tmp_path, monkeypatch):
    """Point the three corpus variables at an empty folder: the clip pages run as if no data set were installed."""
    empty = tmp_path / "no_corpora"
    empty.mkdir()
    for var in ("FUSION_FER2013", "FUSION_RAVDESS", "FUSION_MELD"):
        monkeypatch.setenv(var, str(empty))
    return empty


@pytest.fixture
def app_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)
    return ROOT


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run the models on one thread while these tests run (restored afterwards).

    On a small machine shared with another job, two intra-op threads fighting for two busy cores made a
    240x320 forward ~100x slower than one thread; these tests check wiring, not speed.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
