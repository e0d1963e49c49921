"""Score the emotion-clip models (``python -m fusion.evaluate --task clips``): accuracy, macro-F1, measured
compute, per-subset robustness, and DynMM's accuracy-compute trade-off against every fixed subset and a random
router at the same compute.

Every number is measured on real forwards: each paired sample (a face, a speech clip, an utterance; paired by
label, see :data:`fusion.data.emotion.PAIRING_NOTE`) runs through the encoders and the fusion with
``FlopCounterMode`` on the path that actually ran, so DynMM's FLOPs are those of the encoders its branch ran.
Subset rows fuse the same encoder outputs with modalities left out. The random router draws each sample's
branch from the gate's own branch frequencies on the split (seeded, averaged over 50 draws), so it spends the
same compute on average. ``--split val`` is for choices; ``--split test`` is read once for the tables. ``--sparse-ablation``: the sparse
model's ablation instead (:mod:`fusion.clip_sparse_eval`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fusion.checkpoints import ASSETS, list_cards, load_checkpoint
from fusion.clip_train import pairing, scores
from fusion.data.emotion import PAIRING_NOTE, log_mel
from fusion.models.clips import CLIP_MODALITIES
from fusion.tasks import clips_inputs
from fusion.types import TEXT, FusionError

SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    s for r in (1, 2, 3) for s in itertools.combinations(CLIP_MODALITIES, r))
FIGURES = ASSETS.parent / "figures"


def _subset_name(s: Sequence[str]) -> str:
    return "+".join(s)


def clip_cards(root: Path = ASSETS) -> list[dict[str, Any]]:
    """Cards of the shipped clip models (task emotion_clips)."""
    try:
        return list_cards("emotion_clips", root)
    except FusionError:
        return []


@torch.no_grad()
def evaluate(names: Sequence[str], split: str, *, root: str | None = None, limit: int = 0, threads: int = 2,
             export_dir: Path = ASSETS, log: Any = print, full_forwards: int = 0) -> dict[str, Any]:
    """Score ``names`` on ``split``'s fixed pairing (see the module docstring). ``full_forwards`` > 0: the full
    forward (FLOPs counted, time measured) runs on the first that many samples only; on the others a static
    model's prediction is its fusion of the same encoder outputs (``model.fuse``, what its forward computes with
    every modality given), so accuracy still covers every sample while GFLOPs and ms are means / medians over the
    first ``full_forwards`` (recorded as ``compute_samples``)."""
    torch.set_num_threads(threads)
    pairs = pairing(split, 0, root)
    n = len(pairs) if not limit else min(limit, len(pairs))
    models = {nm: load_checkpoint(nm, export_dir) for nm in names}
    res: dict[str, Any] = {"split": split, "samples": n, "pairing_note": PAIRING_NOTE, "models": {}}
    per: dict[str, dict[str, list]] = {nm: {"pred": [], "flops": [], "ms": [], "branch": [], "ran": [],
                                            "subsets": {_subset_name(s): [] for s in SUBSETS}} for nm in names}
    # every fixed branch is scored once, on the first DynMM model (the branch network is shared by the budgets)
    fixed_by = next((nm for nm, (m, _) in models.items() if m.kind == "dynmm"), None)
    fixed: dict[str, dict[str, list]] = {} if fixed_by is None else {
        _subset_name(b): {"pred": [], "flops": []} for b in models[fixed_by][0].branches}
    alone: dict[str, list[int]] = {m: [] for m in CLIP_MODALITIES}
    labels: list[int] = []
    any_model = next(iter(models.values()))[0]
    tokenizer = any_model.encoders[TEXT].tokenize
    t0 = time.time()
    for i in range(n):
        item = pairs[i]
        labels.append(int(item["label"]))
        inputs = clips_inputs(faces=item["face"][None], log_mel=log_mel(item["audio"]), text=item["text"],
                              tokenizer=tokenizer)
        enc = None
        for nm, (model, card) in models.items():
            if enc is None:
                enc = {m: model.encode(m, inputs) for m in CLIP_MODALITIES}
                for m in CLIP_MODALITIES:
                    alone[m].append(int(enc[m].logits.argmax(1)))
            p = per[nm]
            if full_forwards and i >= full_forwards and model.kind != "dynmm":
                p["pred"].append(int(model.fuse(enc).argmax(1)))
                p["branch"].append(None)
                p["ran"].append(list(getattr(model, "own", CLIP_MODALITIES)))
            else:
                out = model(inputs, count_flops=True)
                p["pred"].append(int(out.labels[0]))
                p["flops"].append(float(out.flops[0]))
                p["branch"].append(None if out.branch is None else int(out.branch[0]))
                p["ran"].append(list(out.ran))
                t1 = time.perf_counter()
                model(inputs)
                p["ms"].append(1000 * (time.perf_counter() - t1))
            needs = set(getattr(model, "own", ()))  # a dedicated subset model runs only with its modalities
            for s in SUBSETS:
                p["subsets"][_subset_name(s)].append(int(model.fuse({m: enc[m] for m in s}).argmax(1))
                                                     if needs <= set(s) else None)
            if nm == fixed_by:
                for k, b in enumerate(model.branches):
                    o = model(inputs, count_flops=True, force_branch=k)
                    fixed[_subset_name(b)]["pred"].append(int(o.labels[0]))
                    fixed[_subset_name(b)]["flops"].append(float(o.flops[0]))
        if (i + 1) % 25 == 0:
            log(f"  {i + 1}/{n} samples, {time.time() - t0:.0f} s")
    y = torch.tensor(labels)
    res["alone"] = {m: scores(torch.tensor(v), y) for m, v in alone.items()}
    if full_forwards:
        res["compute_samples"] = min(full_forwards, n)
    for nm, p in per.items():
        card = models[nm][1]
        row = {**scores(torch.tensor(p["pred"]), y), "gflops": round(float(np.mean(p["flops"])) / 1e9, 4),
               "ms": round(float(np.median(p["ms"])), 1), "method": card.get("method"),
               "subsets": {s: None if None in v else scores(torch.tensor(v), y)["accuracy"]
                           for s, v in p["subsets"].items()}}
        if any(b is not None for b in p["branch"]):
            br = [b for b in p["branch"] if b is not None]
            row["branch_share"] = {card["branches"][k]: round(br.count(k) / len(br), 3)
                                   for k in range(len(card["branches"]))}
            row["resource_weight"] = card.get("resource_weight")
            row["encoders_run"] = {m: round(sum(m in r for r in p["ran"]) / len(p["ran"]), 3) for m in CLIP_MODALITIES}
        res["models"][nm] = row
    if fixed:
        res["fixed_branches"] = {b: {**scores(torch.tensor(v["pred"]), y),
                                     "gflops": round(float(np.mean(v["flops"])) / 1e9, 4)} for b, v in fixed.items()}
        branch_names = list(fixed)
        preds = torch.tensor([fixed[b]["pred"] for b in branch_names])  # (K, N)
        flops = torch.tensor([fixed[b]["flops"] for b in branch_names])  # (K, N)
        res["random_router"] = {}
        for nm, row in res["models"].items():
            if "branch_share" not in row:
                continue
            share = torch.tensor([row["branch_share"][b] for b in branch_names])
            accs, costs = [], []
            for seed in range(50):
                g = torch.Generator().manual_seed(seed)
                k = torch.multinomial(share, len(y), replacement=True, generator=g)
                accs.append(scores(preds[k, torch.arange(len(y))], y)["accuracy"])
                costs.append(float(flops[k, torch.arange(len(y))].mean()) / 1e9)
            res["random_router"][nm] = {"accuracy": round(float(np.mean(accs)), 2),
                                        "accuracy_sd": round(float(np.std(accs)), 2),
                                        "gflops": round(float(np.mean(costs)), 4)}
    res["seconds"] = round(time.time() - t0, 1)
    return res


def readme_lines(res: dict[str, Any]) -> list[str]:
    """The README tables of a result (see ``--readme``)."""
    lines = [f"*{res['split']} pairing, {res['samples']} label-paired samples; {PAIRING_NOTE}*", "",
             "| model | accuracy | macro-F1 | GFLOPs / clip (measured) | ms (CPU) | "
             + " | ".join(_subset_name(s) for s in SUBSETS) + " |",
             "|---|---|---|---|---|" + "---|" * len(SUBSETS)]
    for nm, r in res["models"].items():
        lines.append(f"| `{nm}` | {r['accuracy']:.2f} | {r['macro_f1']:.2f} | {r['gflops']:.3f} | {r['ms']:.0f} | "
                     + " | ".join("-" if r["subsets"][_subset_name(s)] is None else f"{r['subsets'][_subset_name(s)]:.1f}"
                                  for s in SUBSETS) + " |")
    lines += ["", "Each encoder's own head on the same samples: "
              + ", ".join(f"{m} {v['accuracy']:.2f}" for m, v in res["alone"].items()) + " (accuracy)."]
    if "fixed_branches" in res:
        lines += ["", "| DynMM routing | accuracy | macro-F1 | GFLOPs / clip | share of all-modality compute |",
                  "|---|---|---|---|---|"]
        full = res["fixed_branches"][_subset_name(CLIP_MODALITIES)]["gflops"]
        for b, r in res["fixed_branches"].items():
            lines.append(f"| fixed: {b} | {r['accuracy']:.2f} | {r['macro_f1']:.2f} | {r['gflops']:.3f} | "
                         f"{r['gflops'] / full:.2f} |")
        for nm, r in res["models"].items():
            if "branch_share" in r:
                rr = res["random_router"][nm]
                lines.append(f"| gate, λ={r['resource_weight']:g} (`{nm}`) | {r['accuracy']:.2f} | {r['macro_f1']:.2f} | "
                             f"{r['gflops']:.3f} | {r['gflops'] / full:.2f} |")
                lines.append(f"| random router, same branch shares | {rr['accuracy']:.2f} ± {rr['accuracy_sd']:.2f} | "
                             f"- | {rr['gflops']:.3f} | {rr['gflops'] / full:.2f} |")
    return lines


def publish(res: dict[str, Any], out: Path, lines: list[str], readme: str | None, tag: str) -> None:
    """Write a result as JSON to ``out``, print its README lines, and put them into ``readme``'s ``results:TAG``
    block when a README is given."""
    from fusion.evaluate import _replace_block

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("\n".join(lines))
    if readme:
        _replace_block(Path(readme), tag, lines)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    import sys

    from fusion.evaluate import _replace_block

    args_in = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith(("--deq-ablation", "--select")) for a in args_in):  # DEQ fusion's ablation: its own module
        from fusion.clip_deq_eval import main as deq_main

        return deq_main(args_in)
    if "--sparse-ablation" in args_in:
        from fusion.clip_sparse_eval import sparse_main

        return sparse_main(args_in)

    p = argparse.ArgumentParser(prog="python -m fusion.evaluate --task clips", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="clips")
    p.add_argument("models", nargs="*", help="clip checkpoints (default: every shipped one)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--data", default=None)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON file (default assets/figures/clips_SPLIT.json)")
    p.add_argument("--readme", default=None, help="write the tables into this README's results:clips block")
    p.add_argument("--export-dir", default=str(ASSETS))
    p.add_argument("--adapters", action="store_true",
                   help="missing-modality adapters: the frozen base, every adapted_clips and dedicated_clips "
                        "checkpoint per subset, recovery, added parameters, and the robustness matrix")
    p.add_argument("--figures-dir", default=str(FIGURES), help="--adapters: where the JSON figures go")
    p.add_argument("--full-forwards", type=int, default=0,
                   help="--adapters: count FLOPs and time the full forward on the first N samples only (0: all); "
                        "accuracy covers every sample")
    p.add_argument("--matrix", action="store_true",
                   help="only rebuild the README block results:clips_robustness from the figure files that exist "
                        "(no model runs, no data read)")
    args = p.parse_args(argv)
    if args.matrix:
        from fusion.results import clip_robustness, clip_robustness_lines

        lines = clip_robustness_lines(clip_robustness(Path(args.figures_dir), args.split))
        print("\n".join(lines))
        if args.readme:
            _replace_block(Path(args.readme), "clips_robustness", lines)
        return 0
    if args.adapters:
        from fusion.clip_adapt_eval import adapters_main

        return adapters_main(args)
    names = args.models or [c["name"] for c in clip_cards(Path(args.export_dir)) if c.get("gate_trained", True)]
    if not names:
        print("error: no clip checkpoints")
        return 2
    try:
        res = evaluate(names, args.split, root=args.data, limit=args.limit, threads=args.threads,
                       export_dir=Path(args.export_dir))
    except FusionError as e:
        print(f"error: {e}")
        return 2
    publish(res, Path(args.out or FIGURES / f"clips_{args.split}.json"), readme_lines(res), args.readme,
            f"clips_{args.split}" if args.split != "test" else "clips")
    return 0
