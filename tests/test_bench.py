"""The benchmark entry point runs over every registered RGB-D model (numbers are not asserted as speed)."""
from __future__ import annotations

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
