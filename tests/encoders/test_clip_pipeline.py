"""The clip task end to end on tiny corpora: ``python -m fusion.train --task clips`` (static and DynMM, cached
encoder outputs, val-chosen epoch, one gate per resource weight) and ``python -m fusion.evaluate --task clips``
(measured FLOPs on the path that ran, fixed branches, random router, README tables)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fusion.checkpoints import load_checkpoint
from fusion.clip_eval import evaluate, readme_lines
from fusion.data.emotion import PAIRING_NOTE
from fusion.evaluate import main as evaluate_main
from fusion.train import main as train_main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clip_models")
    data = corpora["face"].parent
    common = ["--task", "clips", "--data", str(data), "--per-class", "2", "--batch-size", "4", "--threads", "1",
              "--cache-dir", str(out / "cache"), "--export-dir", str(out)]
    with pytest.raises(SystemExit) as e:
        train_main(common + ["--model", "concat_clips", "--epochs", "2", "--export", "concat_clips"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        train_main(common + ["--model", "dynmm_clips", "--epochs", "1", "--resource-weights", "0", "5",
                             "--gate-epochs", "2", "--export", "dyn"])
    assert e.value.code == 0
    return out


def test_cards_say_how_the_data_were_paired(trained: Path) -> None:
    card = json.loads((trained / "concat_clips.json").read_text())
    assert card["task"] == "emotion_clips" and card["pairing_note"] == PAIRING_NOTE
    assert card["training"]["selected_on"] == "val" and card["training"]["selected_epoch"] in (1, 2)
    assert card["command"].startswith("python -m fusion.train --task clips")
    assert card["encoders"] == {"face": "face_fer2013", "audio": "audio_ravdess", "text": "text_meld"}
    assert (trained / "cache" / "train.pt").exists() and (trained / "cache" / "val.pt").exists()
    model, _ = load_checkpoint(trained / "concat_clips.json")
    assert model.kind == "concat"
    gated = json.loads((trained / "dyn_l5.json").read_text())
    base = json.loads((trained / "dyn_branches.json").read_text())
    assert base["gate_trained"] is False and gated["gate_trained"] is True and gated["resource_weight"] == 5
    flops = gated["branch_flops"]
    assert flops[0] < min(flops[1:3]) and max(flops[1:3]) < flops[3]  # text alone < two < all three
    # a heavy resource weight makes the gate cheaper on val than no resource weight
    cheap, free = gated["metrics"]["val"], json.loads((trained / "dyn_l0.json").read_text())["metrics"]["val"]
    assert cheap["relative_flops"] <= free["relative_flops"]


def test_evaluation_measures_the_path_that_ran(trained: Path, corpora: dict[str, Path]) -> None:
    res = evaluate(["concat_clips", "dyn_l0", "dyn_l5"], "val", root=corpora["face"].parent, threads=1,
                   export_dir=trained, log=lambda *_: None)
    assert res["samples"] == 7 and res["pairing_note"] == PAIRING_NOTE
    fixed = res["fixed_branches"]
    assert list(fixed) == ["text", "face+text", "audio+text", "face+audio+text"]
    lo, hi = fixed["text"]["gflops"], fixed["face+audio+text"]["gflops"]
    for name in ("dyn_l0", "dyn_l5"):
        row = res["models"][name]
        assert lo - 1e-4 <= row["gflops"] <= hi + 1e-4
        assert abs(sum(row["branch_share"].values()) - 1) < 1e-6
        assert res["random_router"][name]["gflops"] == pytest.approx(row["gflops"], rel=0.35)
    assert set(res["models"]["concat_clips"]["subsets"]) == {"face", "audio", "text", "face+audio", "face+text",
                                                             "audio+text", "face+audio+text"}
    lines = readme_lines(res)
    assert any("random router" in line for line in lines) and any("fixed: text |" in line for line in lines)


def test_evaluate_command_writes_json_and_readme(trained: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:clips_val -->\nold\n<!-- /results:clips_val -->\n")
    out = tmp_path / "res.json"
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--task", "clips", "concat_clips", "--split", "val", "--data", str(corpora["face"].parent),
                       "--export-dir", str(trained), "--out", str(out), "--readme", str(readme), "--threads", "1"])
    assert e.value.code == 0
    assert json.loads(out.read_text())["models"]["concat_clips"]["items"] == 7
    assert "old" not in readme.read_text() and "concat_clips" in readme.read_text()
