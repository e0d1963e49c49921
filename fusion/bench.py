"""Speed and memory benchmarks (never timed assertions in tests).

    python -m fusion.bench                       # every shipped RGB-D checkpoint, 240x320, batch 1
    python -m fusion.bench --size 480 640 --repeats 20

Per model and variant (DynMM: each branch; sparse: config pooling vs dense; DEQ: each solver; adapters: each
subset, unmerged and merged): measured FLOPs (FlopCounterMode), median/min CPU wall time after
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
from fusion.registry import create, list_models
from fusion.types import DEPTH, RGB


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _variants(model: torch.nn.Module) -> list[tuple[str, dict, tuple[str, ...]]]:
    """(label, forward kwargs, modalities given) to bench for each kind of model."""
    kind = getattr(model, "kind", "static")
    both = (RGB, DEPTH)
    if model.dynamic:
        return [(f"branch {k}", {"force_branch": k}, both) for k in range(model.num_stages + 1)]
    if kind == "sparse":
        return [("sparse (config pooling)", {}, both), ("dense (pool=none)", {"pool": "none"}, both)]
    if kind == "deq":
        return [(f"{s}", {"solver": s}, both) for s in ("anderson", "broyden", "fixed_point")]
    if kind == "adapted":
        return [("both (no adapter)", {}, both), ("rgb only + adapters", {}, (RGB,)),
                ("rgb only, merged adapters", {"_merge": RGB}, (RGB,)), ("depth only + adapters", {}, (DEPTH,))]
    return [("full", {}, both)]


def bench_model(name: str, model: torch.nn.Module, size: tuple[int, int], repeats: int) -> list[dict]:
    from fusion.methods.adapters import merge_adapters, unmerge_adapters

    model.eval()
    full = {RGB: torch.rand(1, 3, *size), DEPTH: torch.rand(1, 1, *size) * 4 + 0.5}
    rows = []
    for label, kw, mods in _variants(model):
        kw = dict(kw)
        merge = kw.pop("_merge", None)
        if merge:  # adapters folded into the weights: no extra cost at inference
            merge_adapters(model, merge)
        x = {m: full[m] for m in mods}
        with torch.no_grad():
            flops, _ = count_flops(lambda: model(x, **kw))
            before = _maxrss_mb()
            t = time_ms(lambda: model(x, **kw), warmup=3, repeats=repeats)
        if merge:
            unmerge_adapters(model)
        rows.append({"model": name, "variant": label, "size": list(size), "gflops": round(flops / 1e9, 4),
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
        pairs = [(n, create(n, pretrained=False)) for n in list_models("rgbd_seg")]
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
