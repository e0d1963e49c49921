"""DynMM stage 2: learn the gate on frozen branches, sweep the budget knob, choose budgets on validation.

    python -m fusion.train_gate --init runs/export/dynmm_branches.json \
        --lambdas 0 0.02 0.05 0.1 0.2 0.3 0.5 --budgets 0.9 0.8 0.7 --export-prefix dynmm_rgbd_b

Stage 1 (``python -m fusion.train --model dynmm_rgbd --branches-only``) trained every branch k = 0..4 of
the network (depth fused into the first k stages). Here the branches are frozen and evaluated once per
frame: on the ``fit`` frames (the original frame plus ``--views - 1`` augmented views) we keep what the
gate sees (RGB stage-1 summary, depth statistics) and each branch's own cross-entropy; on the validation
frames, each branch's confusion matrix. For each resource weight lambda a fresh gate is trained towards
each frame's best branch under the DynMM objective, CE + lambda * cost
(:func:`fusion.methods.dynmm.routing_target_loss`), and
scored on validation by the mIoU and the measured FLOPs of the branches it picks. For each FLOPs budget
(a fraction of the all-branch path's FLOPs) the lambda with the best validation mIoU within the budget is
exported as ``PREFIX{i}``. The test split is never read here.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fusion.checkpoints import ASSETS, card_path, load_matching, read_card, read_weights, save_checkpoint
from fusion.data.nyuv2 import IGNORE_INDEX, NYUv2, find_root
from fusion.methods.dynmm import routing_target_loss
from fusion.metrics import ConfusionMatrix
from fusion.registry import create
from fusion.types import DEPTH, RGB, FusionError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fusion.train_gate", description=__doc__.split("\n")[0])
    p.add_argument("--init", required=True, help="the stage-1 DynMM checkpoint (card .json, or a name in assets/)")
    p.add_argument("--data", default=None, help="NYUv2 folder (default: $FUSION_NYUV2 or ../shared/data/nyuv2)")
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--views", type=int, default=3, help="per fit frame: the frame + (views - 1) augmented views")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
                   help="resource weights to sweep (the budget knob)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.9, 0.8, 0.7],
                   help="FLOPs budgets as fractions of the all-branch path; one exported gate per budget")
    p.add_argument("--epochs", type=int, default=150, help="gate training epochs over the cached features")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--target-temperature", type=float, default=0.02,
                   help="sharpness of the per-input routing target, in units of the branches' CE")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="first N fit / val frames only (smoke tests)")
    p.add_argument("--export-prefix", default="dynmm_rgbd_b")
    p.add_argument("--export-dir", default=str(ASSETS))
    p.add_argument("--cache", default=None, help="store / reuse the cached branch outputs here (a .pt file)")
    return p.parse_args(argv)


def load_branches(init: str) -> tuple[torch.nn.Module, dict]:
    """The stage-1 model with a fresh gate of the current design (the stage-1 gate was never trained)."""
    path = card_path(init)
    card = read_card(path)
    if card.get("registry") != "dynmm_rgbd":
        raise FusionError(f"{path} is not a DynMM checkpoint")
    model = create("dynmm_rgbd", **card["config"])
    sd = read_weights(path.with_name(card["weights"]))
    got = load_matching(model, {k: v for k, v in sd.items() if not k.startswith("gate.")})
    missing = [k for k in got["new"] if not k.startswith("gate.") and k != "branch_cost"]
    if missing:
        raise FusionError(f"{path} lacks {missing[:3]}")
    return model.eval(), card


@torch.no_grad()
def cache_split(model: torch.nn.Module, ds, *, confusion: bool, desc: str) -> dict[str, torch.Tensor]:
    """Per frame: the gate's inputs and each branch's CE (and confusion matrix when ``confusion``)."""
    summ, dfeat, ce, conf = [], [], [], []
    n_cls = model.cfg.num_classes
    for i in tqdm(range(len(ds)), desc=desc, mininterval=15, file=sys.stdout):
        item = ds[i]
        s, d, logits = model.gate_data(item[RGB][None], item[DEPTH][None])  # logits (K, 1, C, H, W)
        target = item["label"][None].long()
        summ.append(s.half())
        dfeat.append(d)
        ce.append(torch.stack([F.cross_entropy(lg, target, ignore_index=IGNORE_INDEX) for lg in logits]))
        if confusion:
            mats = []
            for lg in logits:
                cm = ConfusionMatrix(n_cls)
                cm.update(lg.argmax(1)[0], item["label"])
                mats.append(cm.mat.to(torch.int32))
            conf.append(torch.stack(mats))
    out = {"summary": torch.cat(summ), "depth": torch.cat(dfeat), "ce": torch.stack(ce)}
    if confusion:
        out["conf"] = torch.stack(conf)  # (N, K, C, C)
    return out


def miou_of(conf: torch.Tensor, branch: torch.Tensor) -> float:
    """mIoU of routing frame i to ``branch[i]``, from per-frame per-branch confusion matrices."""
    return 100 * ConfusionMatrix.from_matrix(conf[torch.arange(len(branch)), branch].sum(0)).miou()


def train_gate(model: torch.nn.Module, fit: dict, costs: torch.Tensor, lam: float, args) -> torch.nn.Module:
    """A fresh gate (same init seed for every lambda) trained on the cached fit features."""
    torch.manual_seed(args.seed)
    gate = copy.deepcopy(model.gate)
    for m in gate.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    gate.train()
    opt = torch.optim.AdamW(gate.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    n = len(fit["ce"])
    steps = args.epochs * max(1, (n + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for idx in torch.randperm(n, generator=g).split(128):
            logits = gate.head(fit["summary"][idx].float(), fit["depth"][idx])
            loss = routing_target_loss(logits, fit["ce"][idx], costs, resource_weight=lam,
                                       temperature=args.target_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return gate.eval()


@torch.no_grad()
def decide(gate: torch.nn.Module, data: dict) -> torch.Tensor:
    return gate.head(data["summary"].float(), data["depth"]).argmax(1)


@torch.no_grad()
def fp16_agreement(gate: torch.nn.Module, data: dict) -> float:
    """Share of frames whose decision is the same with the trained fp32 weights and with the weights
    rounded to fp16 as shipped."""
    rounded = copy.deepcopy(gate)
    for p in rounded.state_dict().values():
        if p.is_floating_point():
            p.copy_(p.half().float())
    return float((decide(gate, data) == decide(rounded, data)).float().mean())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    model, card = load_branches(args.init)
    flops = model.calibrate_costs(tuple(args.size))  # measured FLOPs per branch, gate included
    costs = model.branch_cost.clone()
    root = find_root(args.data)
    if root is None:
        raise SystemExit("NYUv2 not found: pass --data or set FUSION_NYUV2")
    cache_path = Path(args.cache) if args.cache else None
    if cache_path is not None and cache_path.exists():
        cached = torch.load(cache_path, weights_only=True)
        fit, val = cached["fit"], cached["val"]
    else:
        views = []
        for v in range(args.views):
            ds = NYUv2(root, "fit", size=tuple(args.size), augment=v > 0, cache=True)
            if args.limit:
                ds.ids = ds.ids[:args.limit]
            torch.manual_seed(1000 + v)
            views.append(cache_split(model, ds, confusion=False, desc=f"fit view {v}"))
        fit = {k: torch.cat([vw[k] for vw in views]) for k in views[0]}
        vds = NYUv2(root, "val", size=tuple(args.size), augment=False)
        if args.limit:
            vds.ids = vds.ids[:args.limit]
        val = cache_split(model, vds, confusion=True, desc="val")
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"fit": fit, "val": val}, cache_path)
    full = flops[-1]
    fixed = [{"branch": k, "val_miou": round(miou_of(val["conf"], torch.full((len(val["ce"]),), k)), 2),
              "gflops": round(flops[k] / 1e9, 4), "flops_ratio": round(flops[k] / full, 3)}
             for k in range(len(flops))]
    print("fixed branches on val:", json.dumps(fixed), flush=True)
    sweep, gates = [], {}
    for lam in args.lambdas:
        gate = train_gate(model, fit, costs, lam, args)
        b = decide(gate, val)
        mean_flops = float(np.mean([flops[k] for k in b.tolist()]))
        row = {"lambda": lam, "val_miou": round(miou_of(val["conf"], b), 2),
               "flops_ratio": round(mean_flops / full, 3), "gflops": round(mean_flops / 1e9, 4),
               "val_hist": torch.bincount(b, minlength=len(flops)).tolist(),
               "fit_hist": torch.bincount(decide(gate, fit), minlength=len(flops)).tolist(),
               "fp16_agreement": round(fp16_agreement(gate, {k: torch.cat([fit[k], val[k]]) for k in ("summary", "depth")}), 4)}
        sweep.append(row)
        gates[lam] = gate
        print("lambda sweep:", json.dumps(row), flush=True)
    results = {"fixed": fixed, "sweep": sweep, "selected": []}
    chosen: set[float] = set()
    for i, budget in enumerate(sorted(args.budgets, reverse=True), start=1):
        ok = [r for r in sweep if r["flops_ratio"] <= budget and r["lambda"] not in chosen]
        if not ok:
            print(f"budget {budget}: no lambda within it on val", flush=True)
            continue
        best = max(ok, key=lambda r: (r["val_miou"], -r["flops_ratio"]))
        chosen.add(best["lambda"])
        name = f"{args.export_prefix}{i}"
        out_model = copy.deepcopy(model)
        out_model.gate.load_state_dict(gates[best["lambda"]].state_dict())
        out_model.cfg = replace(out_model.cfg, gate=replace(out_model.cfg.gate, resource_weight=best["lambda"]))
        save_checkpoint(out_model, Path(args.export_dir) / name, {
            "name": name, "task": "rgbd_seg", "registry": "dynmm_rgbd", "method": "DynMM (fusion level)",
            "data": card["data"], "licence": card["licence"],
            "split": "branches and gate trained on the official train frames minus the 109 validation frames "
                     "(686); resource weight chosen on the validation split; evaluated on the official 654 test "
                     "frames",
            "selected_on": "val",
            "input_size": list(args.size), "num_classes": card.get("num_classes", 40),
            "budget": {"flops_ratio_max": budget, "resource_weight": best["lambda"], "val": best},
            "training": {**card["training"], "branches_from": card["name"],
                         "gate": {"epochs": args.epochs, "lr": args.lr, "views": args.views,
                                  "objective": "routing target softmax(-(CE_k + lambda cost_k) / T) on frozen branches", "target_temperature": args.target_temperature,
                                  "lambdas_swept": args.lambdas, "seconds": round(time.time() - t0, 1)}},
            "command": "python -m fusion.train_gate " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                           else sys.argv[1:])),
            "params": sum(p.numel() for p in out_model.parameters()),
            "gate_sweep_val": {"fixed": fixed, "sweep": sweep},
        })
        results["selected"].append({"name": name, "budget": budget, **best})
        print(f"budget {budget}: exported {name} (lambda {best['lambda']}, val {best})", flush=True)
    return results


if __name__ == "__main__":
    main()
