"""Evaluate RGB-D checkpoints on the official NYUv2 test split and write the README table.

    python -m fusion.evaluate static_rgbd dynmm_rgbd_b1 dynmm_rgbd_b2 --readme README.md

    python -m fusion.evaluate sparse_rgbd deq_rgbd --dense --no-depth --readme README.md
    python -m fusion.evaluate --robustness adapters_lora adapters_ssf adapters_bitfit \
        --dedicated rgb_only_rgbd depth_only_rgbd --readme README.md

Per model: mIoU over the 39 classes (class 39, otherprop + void, ignored), pixel accuracy, mean FLOPs per
frame (FlopCounterMode on the path each frame actually took), mean CPU latency per frame (a separate timed
forward per frame, batch 1, after warm-up), and the DynMM branch histogram. Predictions are upsampled to
the labels' 480x640 resolution before scoring. Results go into each model card (``metrics``) and, with
``--readme``, into the table between the README's ``<!-- results:rgbd -->`` markers.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fusion.checkpoints import ASSETS, card_path, list_cards, load_checkpoint, read_card
from fusion.data.nyuv2 import NYUv2, find_root
from fusion.metrics import ConfusionMatrix
from fusion.results import adapter_row, base_row, dedicated_row, robustness_from_cards
from fusion.types import DEPTH, RGB


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds, *, drop: str | None = None, limit: int = 0, timing: bool = True,
             flops: bool = True, opts: dict | None = None, adapter: str | bool = "auto", desc: str = "eval") -> dict:
    """Score ``model`` on ``ds`` (items at model resolution with full-resolution labels in ``label_full``).

    ``drop``: modality removed from every input ("depth" or "rgb"). ``opts``: per-call method settings
    (sparse ``pool`` / ``keep_ratio``, DEQ ``solver`` / ``max_iter`` / ``tol``). ``adapter=False`` runs an
    adapted model's frozen base alone."""
    opts = opts or {}
    kw = dict(opts)
    if getattr(model, "kind", None) == "adapted":
        kw["adapter"] = adapter
    cm = ConfusionMatrix(model.cfg.num_classes)
    flop_list, ms, branches, steps, conv, fusion_flops, tokens = [], [], [], [], [], [], []
    n = len(ds) if not limit else min(limit, len(ds))
    for i in tqdm(range(n), desc=desc, mininterval=10):
        item = ds[i]
        inputs = {m: item[m][None] for m in (RGB, DEPTH) if m != drop}
        out = model(inputs, count_flops=flops, **kw)
        if flops:
            flop_list.append(float(out.flops[0]))
        if out.branch is not None:
            branches.append(int(out.branch[0]))
        if out.solver is not None:
            steps.append(int(out.solver.nstep[0]))
            conv.append(bool(out.solver.converged[0]))
        if out.tokens is not None:
            tokens.append((out.tokens.tokens_before, out.tokens.tokens_after))
        if out.block is not None and out.block.fusion_flops is not None:
            fusion_flops.append(out.block.fusion_flops)
        if timing:
            if i == 0:
                for _ in range(2):
                    model(inputs, **kw)
            t = time.perf_counter()
            model(inputs, **kw)
            ms.append((time.perf_counter() - t) * 1e3)
        target = item["label_full"]
        logits = F.interpolate(out.logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1)[0], target)
    res = {"miou": round(100 * cm.miou(), 2), "pixel_acc": round(100 * cm.pixel_accuracy(), 2), "frames": n,
           "per_class_iou": [round(100 * float(v), 2) for v in cm.iou()]}
    if flop_list:
        res["mean_gflops"] = round(float(np.mean(flop_list)) / 1e9, 4)
    if ms:
        res["mean_ms"] = round(float(np.mean(ms)), 2)
        res["median_ms"] = round(float(np.median(ms)), 2)
    if branches:
        res["branch_hist"] = np.bincount(branches, minlength=model.num_stages + 1).tolist()
    if steps:
        res["deq"] = {"mean_steps": round(float(np.mean(steps)), 2), "max_steps": int(max(steps)),
                      "converged_percent": round(100 * float(np.mean(conv)), 2),
                      "solver": out.solver.solver, "tol": out.solver.tol, "max_iter": out.solver.max_iter,
                      "stop_mode": out.solver.stop_mode}
    if tokens:
        res["tokens"] = {"before": tokens[0][0], "after": tokens[0][1], "pool": out.tokens.pool,
                         "keep_ratio": out.tokens.keep_ratio}
    if fusion_flops:
        res["fusion_gflops"] = round(float(np.mean(fusion_flops)) / 1e9, 5)
    return res


class _FullLabels(torch.utils.data.Dataset):
    """Wraps a split (the test split by default): inputs at model size, labels at 480x640 for scoring."""

    def __init__(self, root: Path, num_classes: int, size: tuple[int, int], split: str = "test") -> None:
        self.small = NYUv2(root, split, num_classes=num_classes, size=size, augment=False)
        self.full = NYUv2(root, split, num_classes=num_classes, size=(480, 640), augment=False)

    def __len__(self) -> int:
        return len(self.small)

    def __getitem__(self, i: int) -> dict:
        item = self.small[i]
        item["label_full"] = self.full[i]["label"]
        return item


def _replace_block(readme: Path, tag: str, lines: list[str]) -> None:
    """Replace the README block between ``<!-- results:TAG -->`` and ``<!-- /results:TAG -->``."""
    text = readme.read_text()
    block = f"<!-- results:{tag} -->\n" + "\n".join(lines) + f"\n<!-- /results:{tag} -->"
    new, n = re.subn(rf"<!-- results:{tag} -->.*?<!-- /results:{tag} -->", lambda _: block, text, flags=re.S)
    readme.write_text(new if n else text + "\n" + block + "\n")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def write_readme_table(readme: Path, rows: list[dict], env: str) -> None:
    """The main RGB-D table (``results:rgbd``) and, where such rows exist, the sparse-fusion
    (``results:sparse``) and DEQ (``results:deq``) tables."""
    static = next((r["metrics"] for r in rows if r["name"] == "static_rgbd" and "variant" not in r), None)
    lines = ["| model | derived from | mIoU (39 cl.) | pixel acc. | GFLOPs / frame | vs static | CPU ms / frame "
             "| vs static | branch histogram k=0..4 | mIoU, depth removed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        base = f"`{r['base']}`" if r.get("base") else "-"
        lines.append(f"| `{r['name']}`{r.get('variant', '')} | {base} | {m['miou']:.2f} | {m['pixel_acc']:.2f} | "
                     f"{m['mean_gflops']:.3f} | {_ratio(m['mean_gflops'], static and static['mean_gflops'])} | "
                     f"{m['mean_ms']:.1f} | {_ratio(m['mean_ms'], static and static['mean_ms'])} | "
                     f"{m.get('branch_hist', '-')} | {m.get('no_depth', {}).get('miou', '-')} |")
    lines.append("")
    lines.append(f"_Generated by `python -m fusion.evaluate` on {rows[0]['metrics']['frames']} NYUv2 test frames "
                 f"({env}; rows evaluated by separate runs on the same machine). Class 39 (otherprop, merged with void in our copy) is ignored; mIoU over the other 39 "
                 "classes, at 480x640 label resolution, input 240x320. FLOPs: FlopCounterMode on the path each "
                 "frame took; ms: one timed forward per frame, batch 1. \"vs static\": against `static_rgbd`. "
                 "DynMM's Pareto table below times its rows interleaved in one run instead._")
    _replace_block(readme, "rgbd", lines)
    sparse = [r for r in rows if "tokens" in r["metrics"]]
    if sparse:
        dense = next((r["metrics"] for r in sparse if r["metrics"]["tokens"]["pool"] == "none"), None)
        sl = ["| model | pooling | keep ratio | tokens into cross-modal attention | fewer | fusion-stage GFLOPs "
              "| fewer | mIoU | vs dense |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sparse:
            m, t = r["metrics"], r["metrics"]["tokens"]
            fewer_t = f"{dense['tokens']['after'] / t['after']:.1f}x" if dense else "-"
            fewer_f = f"{dense['fusion_gflops'] / m['fusion_gflops']:.1f}x" if dense else "-"
            dm = f"{m['miou'] - dense['miou']:+.2f}" if dense else "-"
            keep = "-" if t["pool"] == "none" else f"{t['keep_ratio']:g}"
            sl.append(f"| `{r['name']}` | {t['pool']} | {keep} | {t['before']} → {t['after']} | "
                      f"{fewer_t} | {m['fusion_gflops']:.4f} | {fewer_f} | {m['miou']:.2f} | {dm} |")
        sl += ["", "_Fusion stage = pooling, the cross-modal attention layer and the read-back into the RGB grid, "
               "FLOPs measured with FlopCounterMode around exactly those ops (the unimodal attention before pooling "
               "is the same in both rows); the dense row is the same checkpoint with pooling off (`pool=none`)._"]
        _replace_block(readme, "sparse", sl)
    deq = [r for r in rows if "deq" in r["metrics"]]
    if deq:
        dl = ["| model | solver | tol (rel.) | max iter | mean steps | converged | mIoU | mIoU, depth removed | "
              "GFLOPs | CPU ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in deq:
            m, q = r["metrics"], r["metrics"]["deq"]
            dl.append(f"| `{r['name']}`{r.get('variant', '')} | {q['solver']} | {q['tol']:g} | {q['max_iter']} | "
                      f"{q['mean_steps']:.1f} | {q['converged_percent']:.1f}% | {m['miou']:.2f} | "
                      f"{m.get('no_depth', {}).get('miou', '-')} | {m['mean_gflops']:.3f} | {m['mean_ms']:.1f} |")
        dl += ["", "_Converged = relative residual ‖f(z)−z‖/‖f(z)‖ below the tolerance within the iteration cap, per "
               "frame, as the solver's own per-sample stop measured it._"]
        _replace_block(readme, "deq", dl)


def write_robustness_table(readme: Path, matrix: list[dict], frames: int) -> None:
    """The subset x method mIoU matrix of the missing-modality study (``results:robustness``)."""
    lines = ["| method | trainable params per subset | RGB + depth | RGB only (depth missing) | recovered "
             "| depth only (RGB missing) | recovered |", "|---|---|---|---|---|---|---|"]
    base = next((r for r in matrix if r["method"] == "base"), None)
    for r in matrix:
        cells = []
        for sub in ("rgb", "depth"):
            v = r.get(sub)
            rec = "-"
            if v is not None and base and r["method"] != "base" and base.get("both") is not None:
                lost = base["both"] - base[sub]
                rec = f"{100 * (v - base[sub]) / lost:.0f}%" if lost > 0 else "-"
            cells += ["-" if v is None else f"{v:.2f}", rec]
        both = "-" if r.get("both") is None else f"{r['both']:.2f}"
        lines.append(f"| {r['label']} | {r.get('params', '-')} | {both} | " + " | ".join(cells) + " |")
    lines += ["", f"_mIoU (39 classes) on the {frames} NYUv2 test frames, generated by `python -m fusion.evaluate "
              "--robustness`. A missing modality is zero-filled (depth: all holes; RGB: mean grey). Recovered = share "
              "of the mIoU the base model loses without that modality that the method wins back._"]
    _replace_block(readme, "robustness", lines)


REGISTRY_ORDER = ("static_rgbd", "dynmm_rgbd", "sparse_rgbd", "deq_rgbd")


def card_rows(root: Path = ASSETS) -> list[dict]:
    """Rows of the README tables from every evaluated full-model card in ``root`` (adapters and the
    dedicated single-modality baselines have their own table), so evaluating one model keeps the others'
    rows; each row's numbers come from the run that evaluated it (its ``env``)."""
    rows = []
    cards = [c for c in list_cards("rgbd_seg", root) if c.get("registry") in REGISTRY_ORDER
             and not c.get("trained_without") and "mean_ms" in c.get("metrics", {})]
    for c in sorted(cards, key=lambda c: (REGISTRY_ORDER.index(c["registry"]), c["name"])):
        base = (c.get("training") or {}).get("branches_from") or (c.get("training") or {}).get("init")
        rows.append({"name": c["name"], "registry": c["registry"], "metrics": c["metrics"], "base": base})
        if "dense_variant" in c["metrics"]:
            rows.append({"name": c["name"], "variant": " (pool=none, dense)", "registry": c["registry"],
                         "metrics": c["metrics"]["dense_variant"], "base": base})
    return rows


def robustness(names: list[str], dedicated: list[str], root: Path, limit: int) -> tuple[list[dict], int]:
    """mIoU of the frozen base without / with each adapter kind, and of the dedicated models, per subset.
    The results go into each card's metrics (written unless ``limit``); the rows are built from them."""
    matrix: list[dict] = []
    datasets: dict = {}

    def ds_for(card: dict):
        key = (card.get("num_classes", 40), tuple(card.get("input_size", (240, 320))))
        if key not in datasets:
            datasets[key] = _FullLabels(root, *key)
        return datasets[key]

    base_miou = None
    for name in names:
        model, card = load_checkpoint(name)
        ds = ds_for(card)
        if base_miou is None:  # the frozen base (adapters off) once, with each modality missing
            base_miou = {sub: evaluate(model, ds, drop=drop, adapter=False, limit=limit, timing=False, flops=False,
                                       desc=f"base {sub}")["miou"]
                         for sub, drop in (("both", None), ("rgb", DEPTH), ("depth", RGB))}
            matrix.append(base_row(card["base"], base_miou))
        for sub, drop in (("rgb", DEPTH), ("depth", RGB)):
            res = evaluate(model, ds, drop=drop, limit=limit, timing=False, flops=False, desc=f"{name} {sub}")
            card.setdefault("metrics", {})[f"{sub}_only"] = {k: res[k] for k in ("miou", "pixel_acc")}
        card["metrics"]["base_no_adapter"] = dict(base_miou)
        if not limit:
            card_path(name).write_text(json.dumps(card, indent=2) + "\n")
        matrix.append(adapter_row(card))
    for name in dedicated:
        model, card = load_checkpoint(name)
        drop = card.get("trained_without")
        sub = {DEPTH: "rgb", RGB: "depth"}[drop]
        res = evaluate(model, ds_for(card), drop=drop, limit=limit, timing=False, flops=False, desc=name)
        card.setdefault("metrics", {})[f"{sub}_only"] = {k: res[k] for k in ("miou", "pixel_acc")}
        if not limit:
            card_path(name).write_text(json.dumps(card, indent=2) + "\n")
        matrix.append(dedicated_row(card, sub))
    return matrix, (limit or (len(next(iter(datasets.values()))) if datasets else 0))


def main(argv: list[str] | None = None) -> list[dict]:
    from fusion.tasks import get_task
    from fusion.train import task_of

    task = get_task(task_of(argv))
    if task.name != "rgbd":
        raise SystemExit(task.evaluate(argv))
    p = argparse.ArgumentParser(prog="python -m fusion.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="rgbd", choices=("rgbd",), help="rgbd (this parser); --task clips: its own")
    p.add_argument("models", nargs="*", help="checkpoint names in assets/checkpoints (or paths)")
    p.add_argument("--data", default=None)
    p.add_argument("--limit", type=int, default=0, help="first N test frames only (smoke tests)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the latency measurement")
    p.add_argument("--no-depth", action="store_true", help="also score every model with depth removed")
    p.add_argument("--dense", action="store_true", help="sparse models: also score with pooling off (pool=none)")
    p.add_argument("--robustness", nargs="*", default=None, metavar="ADAPTED",
                   help="adapter checkpoints: missing-modality matrix (base without adapter, each adapter)")
    p.add_argument("--dedicated", nargs="*", default=[], metavar="MODEL",
                   help="single-modality models trained with --drop, for the robustness matrix")
    p.add_argument("--pareto", nargs="*", default=None, metavar="DYNMM",
                   help="DynMM checkpoints (one per budget, shared branches): gate vs every fixed branch, a random "
                        "router with the same mix, the static model (--static) and its control (--control)")
    p.add_argument("--static", default="static_rgbd", help="--pareto: the static reference model")
    p.add_argument("--control", default=None, help="--pareto: the static model fine-tuned for the same extra epochs")
    p.add_argument("--plot", default="assets/figures/dynmm_pareto.svg", help="--pareto: where the SVG plot goes")
    p.add_argument("--ablate", nargs="*", default=None, metavar="MODEL",
                   help="sparse / DEQ checkpoints: the mechanism's ablation (pooling mode x keep ratio, dense and "
                        "zeroed block; solver iterates, fixed point and zeroed block)")
    p.add_argument("--ratios", type=float, nargs="*", default=None, help="--ablate sparse: keep ratios of the grid")
    p.add_argument("--modes", nargs="*", default=None, help="--ablate sparse: pooling modes of the grid")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="--ablate: the split (val to choose settings; test once, for the README)")
    p.add_argument("--readme", default=None, help="update this README's results tables")
    p.add_argument("--no-write-cards", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = find_root(args.data)
    if root is None:
        raise SystemExit("NYUv2 not found: pass --data or set FUSION_NYUV2")
    env = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads"
    rows = []
    for name in args.models:
        model, card = load_checkpoint(name)
        ds = _FullLabels(root, card.get("num_classes", 40), tuple(card.get("input_size", (240, 320))))
        variants = [("", {})]
        if args.dense and getattr(model, "kind", None) == "sparse":
            variants.append((" (pool=none, dense)", {"pool": "none"}))
        for variant, opts in variants:
            metrics = evaluate(model, ds, limit=args.limit, opts=opts, desc=card["name"] + variant)
            if args.no_depth:
                nd = evaluate(model, ds, drop=DEPTH, limit=args.limit, timing=False, opts=opts,
                              desc=card["name"] + variant + " no depth")
                metrics["no_depth"] = {k: nd[k] for k in ("miou", "pixel_acc", "mean_gflops")}
            metrics["env"] = env
            print(json.dumps({"name": card["name"] + variant,
                              **{k: v for k, v in metrics.items() if k != "per_class_iou"}}))
            if variant:
                card.setdefault("metrics", {})["dense_variant"] = metrics
                rows.append({"name": card["name"], "variant": variant, "registry": card["registry"],
                             "metrics": metrics})
            else:
                # the dense variant (evaluated next) is added to it; an --ablate summary already there is kept
                kept = {k: v for k, v in card.get("metrics", {}).items() if k == "ablation"}
                card["metrics"] = {**metrics, **kept}
                rows.append({"name": card["name"], "registry": card["registry"], "metrics": metrics})
        if not args.no_write_cards and not args.limit:
            card_path(name).write_text(json.dumps(card, indent=2) + "\n")
    if args.readme and not args.limit and rows:
        write_readme_table(Path(args.readme), rows if args.no_write_cards else card_rows(), env)
    if args.pareto:
        from fusion import ablations

        ds = _FullLabels(root, 40, (240, 320))
        res = ablations.dynmm_pareto(args.pareto, static_name=args.static, control_name=args.control, ds=ds,
                                     limit=args.limit)
        res["env"] = env
        print(json.dumps({k: v for k, v in res.items()}, indent=1))
        if not args.limit:
            for g in res["gates"]:
                card = read_card(card_path(g["name"]))  # the card only: the model ran above
                card["metrics"] = {"miou": g["miou"], "pixel_acc": g["pixel_acc"], "frames": res["frames"],
                                   "mean_gflops": g["mean_gflops"], "median_ms": g.get("median_ms"),
                                   "branch_hist": g["branch_hist"], "env": env, "pareto": g,
                                   "measured_by": "python -m fusion.evaluate --pareto (test split, read once)"}
                if not args.no_write_cards:
                    card_path(g["name"]).write_text(json.dumps(card, indent=2) + "\n")
            if args.control and not args.no_write_cards:
                card = read_card(card_path(args.control))
                card["metrics"] = {**res["control"], "frames": res["frames"], "env": env}
                card_path(args.control).write_text(json.dumps(card, indent=2) + "\n")
            if args.plot:
                ablations.write_svg(Path(args.plot), ablations.dynmm_svg(res))
            (Path(args.plot).with_suffix(".json") if args.plot else Path("dynmm_pareto.json")).write_text(
                json.dumps(res, indent=1) + "\n")
            if args.readme:
                _replace_block(Path(args.readme), "dynmm", ablations.dynmm_lines(res, env))
    for name in args.ablate or []:
        from fusion import ablations

        kind = getattr(load_checkpoint(name)[0], "kind", None)
        ds = _FullLabels(root, 40, (240, 320), split=args.split)
        if kind == "sparse":
            grid = {k: tuple(v) for k, v in (("ratios", args.ratios), ("modes", args.modes)) if v}
            res, lines = ablations.sparse_ablation(name, ds, limit=args.limit, **grid), ablations.sparse_lines
        elif kind == "deq":
            res, lines = ablations.deq_ablation(name, ds, limit=args.limit), ablations.deq_lines
        else:
            raise SystemExit(f"--ablate takes sparse_rgbd or deq_rgbd checkpoints; {name} is {kind}")
        res["env"], res["split"] = env, args.split
        print(json.dumps(res, indent=1))
        if not args.limit:
            out = Path("assets/figures") / f"{kind}_ablation_{args.split}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=1) + "\n")
            if args.split == "test" and not args.no_write_cards:
                card = read_card(card_path(name))
                card.setdefault("metrics", {})["ablation"] = {
                    k: v for k, v in res.items() if k not in ("settings",)}
                card_path(name).write_text(json.dumps(card, indent=2) + "\n")
            if args.readme and args.split == "test":
                _replace_block(Path(args.readme), f"{kind}_ablation", lines(res, env, args.split))
    if args.robustness is not None:
        matrix, frames = robustness(args.robustness, args.dedicated, root, args.limit)
        print(json.dumps({"robustness": matrix}))
        if args.readme and not args.limit:  # every evaluated card, so one model can be re-evaluated alone
            table = matrix if args.no_write_cards else robustness_from_cards(list_cards("rgbd_seg"))
            write_robustness_table(Path(args.readme), table, frames)
    return rows


if __name__ == "__main__":
    main()
