"""Tiny FER2013 / RAVDESS / MELD folders written by the tests (random faces, tones, made-up sentences), in the
layouts the readers of fusion.data.emotion expect."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from fusion.data.emotion import EMOTIONS, MELD_EMOTION, MELD_FILES, RAVDESS_EMOTION, SAMPLE_RATE

FER_PER_CLASS = {"Training": 2, "PublicTest": 1, "PrivateTest": 1}
RAVDESS_ACTORS = {"train": 1, "val": 19, "test": 21}
MELD_PER_CLASS = {"train": 2, "val": 1, "test": 1}


def write_fer(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(EMOTIONS):
        for prefix, n in FER_PER_CLASS.items():
            folder = root / ("train" if prefix == "Training" else "test") / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                face = np.clip(rng.normal(30 * label + 20, 20, (48, 48)), 0, 255).astype(np.uint8)
                Image.fromarray(face).save(folder / f"{prefix}_{label}{k:02d}.png")
    return root


def write_ravdess(root: Path, seconds: float = 0.3) -> Path:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    for actor in RAVDESS_ACTORS.values():
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for code, (_, name) in RAVDESS_EMOTION.items():
            tone = 200.0 * (EMOTIONS.index(name) + 1)
            wave = (0.2 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
            sf.write(folder / f"03-01-{code:02d}-01-01-01-{actor:02d}.flac", wave, SAMPLE_RATE)
    return root


def write_meld(root: Path) -> Path:
    root.mkdir(parents=True)
    names = {v: k for k, v in MELD_EMOTION.items()}
    for split, fname in MELD_FILES.items():
        with open(root / fname, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"])
            for label, name in enumerate(EMOTIONS):
                for k in range(MELD_PER_CLASS[split]):
                    text = f"I feel {names[name]} today, number {k}" + " really" * label
                    w.writerow([label * 10 + k, text, "Rachel", names[name], "neutral", label, k])
    return root


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of the three tiny corpora, keyed by modality."""
    base = tmp_path_factory.mktemp("emotion_corpora")
    return {"face": write_fer(base / "fer2013"), "audio": write_ravdess(base / "ravdess"),
            "text": write_meld(base / "meld")}


@pytest.fixture(autouse=True)
def _no_corpus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FUSION_FER2013", "FUSION_RAVDESS", "FUSION_MELD"):
        monkeypatch.delenv(var, raising=False)
