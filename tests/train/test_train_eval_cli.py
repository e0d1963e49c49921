"""Training / evaluation entry points on tiny data the tests write themselves, DDP with 2 gloo processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _tiny_nyu(root: Path, n: int = 6, h: int = 48, w: int = 64) -> Path:
    """A folder in the NYUv2 layout with n random frames (not data-set files)."""
    rng = np.random.default_rng(0)
    for d in ("images", "depths", "labels40"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        Image.fromarray(rng.integers(20, 200, (h, w), dtype=np.uint8)).save(root / "depths" / f"{i}.png")
        lab = np.zeros((h, w), np.uint8)
        lab[:, w // 2:] = 1
        lab[: h // 4] = 39
        Image.fromarray(lab).save(root / "labels40" / f"{i}.png")
    (root / "train.txt").write_text("\n".join(str(i) for i in range(n - 2)) + "\n")
    (root / "test.txt").write_text("\n".join(str(i) for i in range(n - 2, n)) + "\n")
    return root


def _run(args: list[str], tmp: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model", ["static_rgbd", "dynmm_rgbd"])
def test_train_resume_export_then_evaluate(tmp_path, model):
    data = _tiny_nyu(tmp_path / "nyu")
    out, assets = tmp_path / "run", tmp_path / "assets"
    base = [sys.executable, "-m", "fusion.train", "--model", model, "--data", str(data), "--size", "32", "64",
            "--batch-size", "2", "--workers", "0", "--no-pretrained", "--out", str(out), "--threads", "1"]
    r = _run(base + ["--epochs", "1"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run(base + ["--epochs", "2", "--resume", "--export", "tiny", "--export-dir", str(assets)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 4  # resumed, not restarted
    card = json.loads((assets / "tiny.json").read_text())
    assert card["registry"] == model and "licence" in card and card["command"].startswith("python -m fusion.train")

    from fusion.checkpoints import load_checkpoint
    from fusion.evaluate import _FullLabels, evaluate
    m, _ = load_checkpoint(assets / "tiny.json")
    res = evaluate(m, _FullLabels(data, 40, (32, 64)), timing=False)
    assert 0 <= res["miou"] <= 100 and res["frames"] == 2 and res["mean_gflops"] > 0
    if model == "dynmm_rgbd":
        assert sum(res["branch_hist"]) == 2


def _static_base(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Tiny data, a static model trained one epoch on it and exported as ``assets/base``, and the common
    training arguments."""
    data = _tiny_nyu(tmp_path / "nyu")
    assets = tmp_path / "assets"
    common = ["--data", str(data), "--size", "32", "64", "--batch-size", "2", "--workers", "0", "--no-pretrained",
              "--threads", "1", "--epochs", "1", "--export-dir", str(assets)]
    r = _run([sys.executable, "-m", "fusion.train", "--model", "static_rgbd", "--out", str(tmp_path / "s"),
              "--export", "base", *common], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    return data, assets, common


@pytest.mark.parametrize("model", ["sparse_rgbd", "deq_rgbd"])
def test_method_models_train_from_static_and_evaluate(tmp_path, model):
    """Sparse and DEQ fusion start from a static checkpoint (their fusion block new), train, export, evaluate."""
    data, assets, common = _static_base(tmp_path)
    r = _run([sys.executable, "-m", "fusion.train", "--model", model, "--init", str(assets / "base.json"),
              "--out", str(tmp_path / "m"), "--export", "tiny", *common], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "learnt from scratch: fusions." in r.stdout
    from fusion.checkpoints import load_checkpoint
    from fusion.evaluate import _FullLabels, evaluate
    m, card = load_checkpoint(assets / "tiny.json")
    assert card["registry"] == model
    res = evaluate(m, _FullLabels(data, 40, (32, 64)), timing=False)
    assert 0 <= res["miou"] <= 100 and res["fusion_gflops"] > 0
    assert ("tokens" in res) == (model == "sparse_rgbd") and ("deq" in res) == (model == "deq_rgbd")


def test_adapters_train_frozen_and_ship_without_their_base(tmp_path):
    data, assets, common = _static_base(tmp_path)
    r = _run([sys.executable, "-m", "fusion.train", "--model", "adapted_rgbd", "--init", str(assets / "base.json"),
              "--adapter-kind", "ssf", "--out", str(tmp_path / "a"), "--export", "ad", *common], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((assets / "ad.json").read_text())
    assert card["base"] == "base" and set(card["adapter_params"]) == {"rgb", "depth"}
    assert all(v < 0.5 for v in card["adapter_share_percent"].values())
    assert (assets / "ad.safetensors").stat().st_size < 100_000  # adapters only, not the base

    import torch

    from fusion.checkpoints import load_checkpoint
    from fusion.evaluate import robustness
    m, _ = load_checkpoint(assets / "ad.json")
    base, _ = load_checkpoint(assets / "base.json")
    x = {"rgb": torch.rand(1, 3, 32, 64), "depth": torch.rand(1, 1, 32, 64) * 4}
    assert torch.allclose(m(x).logits, base(x).logits, atol=1e-5)  # both present: no adapter, the frozen base
    matrix, frames = robustness([str(assets / "ad.json")], [], data, 0)
    assert frames == 2 and [r["method"] for r in matrix] == ["base", "ad"]
    assert all(0 <= matrix[1][s] <= 100 for s in ("rgb", "depth"))
    ep = card["training"]["epochs"]  # rows of one table may be trained for different lengths: the label says
    assert matrix[1]["label"] == f"`ad` (ssf, {ep} epoch{'s' if ep != 1 else ''})"


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    data = _tiny_nyu(tmp_path / "nyu", n=10)
    r = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
              "-m", "fusion.train", "--model", "static_rgbd", "--data", str(data), "--size", "32", "64",
              "--batch-size", "2", "--workers", "0", "--no-pretrained", "--epochs", "1", "--threads", "1",
              "--out", str(tmp_path / "ddp")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    # 8 training frames, 2 processes x batch 2 -> 2 optimiser steps, logged by rank 0 only
    assert len(logs) == 2
