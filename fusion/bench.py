"""Speed and memory benchmarks (never timed assertions in tests).

    python -m fusion.bench                       # every shipped RGB-D checkpoint, 240x320, batch 1
    python -m fusion.bench --size 480 640 --repeats 20

Per model and (DynMM) per branch: measured FLOPs (FlopCounterMode), median/min CPU wall time after
warm-up, peak resident memory growth of the forward (tracemalloc does not see torch's allocator, so we
read the process RSS high-water mark before/after), parameter count.
"""
from __future__ import annotations

import argparse
import json
import resource

import torch

from fusion.checkpoints import list_cards, load_checkpoint
from fusion.compute import count_flops, count_params, time_ms
from fusion.registry import create
from fusion.types import DEPTH, RGB


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_model(name: str, model: torch.nn.Module, size: tuple[int, int], repeats: int) -> list[dict]:
    model.eval()
    x = {RGB: torch.rand(1, 3, *size), DEPTH: torch.rand(1, 1, *size) * 4 + 0.5}
    branches = range(model.num_stages + 1) if model.dynamic else [None]
    rows = []
    for k in branches:
        kw = {"force_branch": k} if k is not None else {}
        with torch.no_grad():
            flops, _ = count_flops(lambda: model(x, **kw))
            before = _maxrss_mb()
            t = time_ms(lambda: model(x, **kw), warmup=3, repeats=repeats)
        rows.append({"model": name, "branch": k, "size": list(size), "gflops": round(flops / 1e9, 4),
                     **{k2: round(v, 2) for k2, v in t.items()}, "rss_growth_mb": round(_maxrss_mb() - before, 1),
                     "params_m": round(count_params(model) / 1e6, 3), "threads": torch.get_num_threads()})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m fusion.bench", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="checkpoint names (default: all shipped RGB-D ones)")
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--untrained", action="store_true", help="bench freshly built registry models instead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.untrained:
        pairs = [(n, create(n, pretrained=False)) for n in ("static_rgbd", "dynmm_rgbd")]
    else:
        names = args.models or [c["name"] for c in list_cards("rgbd_seg")]
        pairs = [(n, load_checkpoint(n)[0]) for n in names]
    rows = []
    for name, model in pairs:
        for row in bench_model(name, model, tuple(args.size), args.repeats):
            print(json.dumps(row))
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
