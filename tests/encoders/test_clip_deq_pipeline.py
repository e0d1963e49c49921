"""The clip DEQ commands end to end on tiny corpora: ``fusion.train --task clips --model deq_clips --config``
(the DEQ and its one-step control), ``fusion.evaluate --task clips --select`` (val choices on the cache) and
``--deq-ablation`` (iterates, solvers, zeroed block, control; JSON, cards, README blocks, re-rendered from JSON)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fusion.checkpoints import load_checkpoint
from fusion.evaluate import main as evaluate_main
from fusion.train import main as train_main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clip_deq_models")
    common = ["--task", "clips", "--model", "deq_clips", "--data", str(corpora["face"].parent), "--per-class", "2",
              "--batch-size", "4", "--threads", "1", "--epochs", "1", "--cache-dir", str(out / "cache"),
              "--export-dir", str(out)]
    for name, cfg in (("deq", {"deq": {"jac_reg_weight": 1.0, "hidden": 32}}),
                      ("onestep", {"deq": {"unroll": 1, "hidden": 32}})):
        with pytest.raises(SystemExit) as e:
            train_main(common + ["--config", json.dumps(cfg), "--export", name])
        assert e.value.code == 0
    return out


def test_config_reaches_the_model_and_the_card(trained: Path) -> None:
    m, card = load_checkpoint(trained / "deq.json")
    assert m.kind == "deq" and m.cfg.deq.hidden == 32 and m.cfg.deq.jac_reg_weight == 1.0
    assert card["method"] == "deq" and "--config" in card["command"] and card["pairing_note"]
    c, _ = load_checkpoint(trained / "onestep.json")
    assert c.cfg.deq.unroll == 1


def test_bad_config_is_a_clean_error(trained: Path, corpora: dict[str, Path], capsys) -> None:
    with pytest.raises(SystemExit) as e:
        train_main(["--task", "clips", "--model", "deq_clips", "--config", "{not json", "--export", "x",
                    "--export-dir", str(trained), "--cache-dir", str(trained / "cache"),
                    "--data", str(corpora["face"].parent)])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


def test_ablation_command(trained: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    data = str(corpora["face"].parent)
    out = tmp_path / "abl.json"
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--task", "clips", "--deq-ablation", "deq", "--control", "onestep", "--split", "val",
                       "--data", data, "--export-dir", str(trained), "--out", str(out)])
    assert e.value.code == 0
    res = json.loads(out.read_text())
    n = res["samples"]
    assert n == 7 and set(res["steps"]) == {"1", "2", "4", "8"} and set(res["solvers"]) == {"broyden", "fixed_point"}
    fp = res["fixed_point"]
    assert fp["items"] == n and 0 < fp["fusion_mflops"] and fp["gflops"] > fp["fusion_mflops"] / 1e3
    assert res["zeroed"]["gflops"] < fp["gflops"] and res["control"]["name"] == "onestep"
    card = json.loads((trained / "deq.json").read_text())
    assert card["metrics"]["val"]["accuracy"] == fp["accuracy"]
    assert json.loads((trained / "onestep.json").read_text())["metrics"]["val"]["accuracy"] == res["control"]["accuracy"]
    # the README blocks are rendered from the saved test-style result, with no forward
    res["split"] = "test"
    saved = tmp_path / "abl_test.json"
    saved.write_text(json.dumps(res))
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"split": "test", "samples": n, "alone": {"face": {"accuracy": 1.0}},
                                  "models": {"deq": {"accuracy": 1.0, "macro_f1": 1.0, "gflops": 1.0, "ms": 1.0,
                                                     "subsets": {s: 1.0 for s in ("face", "audio", "text", "face+audio",
                                                                                  "face+text", "audio+text",
                                                                                  "face+audio+text")}}}}))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:clips_deq -->\nold\n<!-- /results:clips_deq -->\n")
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--task", "clips", "--deq-ablation", "deq", "--from-json", str(saved), "--models-json",
                       str(models), "--readme", str(readme), "--export-dir", str(trained)])
    assert e.value.code == 0
    text = readme.read_text()
    assert "old" not in text and "at the fixed point" in text and "block output zeroed" in text
    assert "<!-- results:clips_deq_models -->" in text and "| `deq` |" in text


def test_select_command(trained: Path, corpora: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sel.json"
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--task", "clips", "--select", "deq", "onestep", "--data", str(corpora["face"].parent),
                       "--export-dir", str(trained), "--cache-dir", str(trained / "cache"), "--out", str(out)])
    assert e.value.code == 0
    sel = json.loads(out.read_text())
    assert set(sel) == {"deq", "onestep"} and sel["deq"]["max_iter"] == 15
    assert "note" in sel["onestep"] and 0 <= sel["deq"]["converged_pct"] <= 100
