"""The shipped clip adapters do what the README says, on a few fixed validation samples (real forwards through the
shipped encoders): each subset's adapter set switches on from the modalities present and changes predictions, and
summed over the six subsets the adapters are right at least as often as the frozen base. Needs the shared copy of
FER2013, RAVDESS and MELD (skipped without it) and the shipped adapter checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusion.checkpoints import ASSETS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KINDS = ("lora", "ssf", "bitfit")
N = 30  # the first N samples of the fixed val pairing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all((DATA / d).is_dir() for d in ("fer2013", "ravdess", "meld")),
                       reason="needs the shared FER2013, RAVDESS and MELD copies (../shared/data)"),
    pytest.mark.skipif(not all((ASSETS / f"adapted_clips_{k}.json").exists() for k in KINDS),
                       reason="needs the shipped adapter checkpoints"),
]


@pytest.fixture(scope="module")
def predictions() -> dict:
    from fusion.checkpoints import load_checkpoint
    from fusion.clip_train import pairing
    from fusion.data.emotion import log_mel
    from fusion.models.clip_adapted import CLIP_SUBSETS
    from fusion.tasks import clips_inputs

    torch.set_num_threads(1)
    models = {k: load_checkpoint(f"adapted_clips_{k}")[0] for k in KINDS}
    pairs = pairing("val", 0, None)
    some = next(iter(models.values()))
    out: dict = {"label": [], "base": {s: [] for s in CLIP_SUBSETS}, "adapter": []}
    out.update({k: {s: [] for s in CLIP_SUBSETS} for k in KINDS})
    with torch.no_grad():
        for i in range(N):
            item = pairs[i]
            x = clips_inputs(faces=item["face"][None], log_mel=log_mel(item["audio"]), text=item["text"],
                             tokenizer=some.encoders["text"].tokenize)
            out["label"].append(int(item["label"]))
            for s in CLIP_SUBSETS:
                xi = {k: v for k, v in x.items() if k.split("_")[0] in s.split("+")}
                out["base"][s].append(int(some(xi, adapter=False).logits.argmax(1)))
                for k, m in models.items():
                    o = m(xi)
                    out[k][s].append(int(o.logits.argmax(1)))
                    out["adapter"].append(o.adapter == s)
    return out


def _correct(preds: dict, labels: list[int]) -> int:
    return sum(p == y for s in preds for p, y in zip(preds[s], labels))


def test_each_subset_switches_its_own_adapter_set_on(predictions: dict) -> None:
    assert all(predictions["adapter"])


def test_adapters_change_predictions(predictions: dict) -> None:
    for k in KINDS:
        changed = sum(a != b for s in predictions[k] for a, b in zip(predictions[k][s], predictions["base"][s]))
        assert changed > 0, k  # a set that never changes a prediction could be zeroed at no cost


def test_adapters_are_right_at_least_as_often_as_the_frozen_base(predictions: dict) -> None:
    y = predictions["label"]
    base = _correct(predictions["base"], y)
    for k in KINDS:
        assert _correct(predictions[k], y) >= base, k
