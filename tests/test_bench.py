"""The benchmark entry point runs over every registered RGB-D model (numbers are not asserted as speed)."""
from __future__ import annotations

import json

import torch

from fusion import bench


def test_bench_untrained_models_small_input():
    torch.set_num_threads(1)
    rows = bench.main(["--untrained", "--size", "64", "96", "--repeats", "1", "--threads", "1"])
    by = {(r["model"], r["variant"]): r for r in rows}
    assert by[("dynmm_rgbd", "branch 0")]["gflops"] < by[("dynmm_rgbd", "branch 4")]["gflops"]
    assert by[("sparse_rgbd", "sparse (config pooling)")]["gflops"] < by[("sparse_rgbd", "dense (pool=none)")]["gflops"]
    # merged adapters cost exactly the base model's FLOPs; unmerged ones a little more
    merged = by[("adapted_rgbd", "rgb only, merged adapters")]["gflops"]
    assert merged == by[("static_rgbd", "full")]["gflops"]
    assert by[("adapted_rgbd", "rgb only + adapters")]["gflops"] >= merged
    assert {r["variant"] for r in rows if r["model"] == "deq_rgbd"} == {"anderson", "broyden", "fixed_point"}
    assert all(r["median_ms"] > 0 for r in rows)


def test_bench_attribution_untrained_small(tmp_path):
    """``python -m fusion.bench attribution`` on untrained models, a small frame: rows for Shapley and the maps at
    each batch size and thread count, batched maps equal to the unbatched ones, the JSON and the README block."""
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:attribution_bench -->\nold\n<!-- /results:attribution_bench -->\nafter\n")
    out = tmp_path / "attr.json"
    rows = bench.main(["attribution", "--untrained", "--rgbd", "dynmm_rgbd", "--clips", "late_clips", "--size", "64",
                       "96", "--grid", "2", "3", "--repeats", "1", "--threads", "1", "--batches", "1", "4",
                       "--json", str(out), "--readme", str(readme)])
    keys = {(r["model"], r["what"], r["batch"], r["threads"]) for r in rows}
    assert keys == {(m, w, b, 1) for m in ("dynmm_rgbd", "late_clips")
                    for w, b in (("shapley", 1), ("maps", 1), ("maps", 4))}
    by = {(r["model"], r["what"], r["batch"]): r for r in rows}
    assert by[("dynmm_rgbd", "shapley", 1)]["forwards"] == 2  # rgb+depth and rgb: DynMM refuses depth alone
    assert by[("late_clips", "shapley", 1)]["forwards"] == 7  # every non-empty subset of the three
    one, four = by[("dynmm_rgbd", "maps", 1)], by[("dynmm_rgbd", "maps", 4)]
    assert one["forwards"] == one["evaluations"] == 2 * (1 + 6) == four["evaluations"]  # 2x3 cells, two modalities
    assert four["forwards"] == 2 * (1 + 2)  # the full input, then 6 cells in batches of 4
    assert four["max_abs_diff_vs_unbatched"] < 1e-5 and one["max_abs_diff_vs_unbatched"] == 0
    clip = by[("late_clips", "maps", 4)]
    assert clip["forwards"] < clip["evaluations"] and "12 word pieces" in clip["input"]
    assert all(r["median_ms"] > 0 for r in rows)
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["meta"]["repeats"] == 1
    text = readme.read_text()
    assert "old" not in text and text.endswith("after\n") and "`dynmm_rgbd`" in text and "`late_clips`" in text
