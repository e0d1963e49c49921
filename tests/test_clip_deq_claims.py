"""The shipped clip DEQ's claims on a few fixed validation samples (real forwards, encoders included): every sample
converges within the 15-step Anderson cap, and zeroing the equilibrium block changes predictions (the block is
not free to remove). Needs the shared FER2013 / RAVDESS / MELD copies and the shipped checkpoint; skipped without.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusion.checkpoints import ASSETS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
N = 24  # the first N samples of the fixed val pairing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all((DATA / c).is_dir() for c in ("fer2013", "ravdess", "meld")),
                       reason="needs the shared FER2013, RAVDESS and MELD copies (../shared/data)"),
    pytest.mark.skipif(not (ASSETS / "deq_clips.json").exists(), reason="needs the shipped deq_clips checkpoint"),
]


@pytest.fixture(scope="module")
def runs() -> dict:
    from fusion.checkpoints import load_checkpoint
    from fusion.clip_train import pairing
    from fusion.data.emotion import log_mel
    from fusion.tasks import clips_inputs
    from fusion.types import TEXT

    torch.set_num_threads(1)
    model, _ = load_checkpoint("deq_clips")
    pairs = pairing("val", 0, str(DATA))
    out: dict[str, list] = {"conv": [], "nstep": [], "pred": [], "zero": [], "logits": [], "zero_logits": []}
    with torch.no_grad():
        for i in range(N):
            item = pairs[i]
            x = clips_inputs(faces=item["face"][None], log_mel=log_mel(item["audio"]), text=item["text"],
                             tokenizer=model.encoders[TEXT].tokenize)
            o = model(x)
            z = model(x, zero_block=True)
            out["conv"].append(bool(o.solver.converged[0]) and float(o.solver.rel_residual[0]) < 1e-3)
            out["nstep"].append(int(o.solver.nstep[0]))
            out["pred"].append(int(o.labels[0]))
            out["zero"].append(int(z.labels[0]))
    return out


def test_every_sample_converges_within_the_cap(runs: dict) -> None:
    assert all(runs["conv"]) and max(runs["nstep"]) <= 15


def test_zeroing_the_block_changes_predictions(runs: dict) -> None:
    changed = sum(a != b for a, b in zip(runs["pred"], runs["zero"]))
    assert changed >= 1
