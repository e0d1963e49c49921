"""Score the clip missing-modality adapters (``python -m fusion.evaluate --task clips --adapters --split val|test``).

One run of :func:`fusion.clip_eval.evaluate` (real forwards through the encoders on the split's fixed label
pairing) over the frozen base ``concat_clips``, every shipped ``adapted_clips_*`` checkpoint and every
``dedicated_clips_*`` subset model; each model's per-subset column fuses the same encoder outputs with only that
subset's modalities, the adapted models with that subset's adapter set switched on (:meth:`AdaptedClipClassifier.fuse`).
From it: the per-subset table (:func:`fusion.results.clip_adapter_table`: base, each adapter kind, dedicated,
recovered share, added parameters), the FLOPs each subset's path costs with and without its adapters (measured
with ``FlopCounterMode`` on the reference clip), and, on test, the robustness matrix over every clip model whose
figure file exists (:func:`fusion.results.clip_robustness`). ``--split val`` is for choices; test is read once.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from fusion.checkpoints import load_checkpoint
from fusion.clip_eval import clip_cards, evaluate
from fusion.clip_train import reference_clip
from fusion.data.emotion import PAIRING_NOTE
from fusion.models.clip_adapted import BASE_CHECKPOINT, CLIP_SUBSETS
from fusion.results import clip_adapter_lines, clip_adapter_table, clip_robustness, clip_robustness_lines
from fusion.types import FusionError


def adapter_names(export_dir: Path) -> tuple[list[str], list[str]]:
    """The shipped adapter and dedicated clip checkpoints."""
    cards = clip_cards(export_dir)
    return ([c["name"] for c in cards if c.get("registry") == "adapted_clips"],
            [c["name"] for c in cards if c.get("registry") == "dedicated_clips"])


def subset_inputs(inputs: dict[str, torch.Tensor], subset: str) -> dict[str, torch.Tensor]:
    mods = subset.split("+")
    return {k: v for k, v in inputs.items() if k.split("_")[0] in mods}


@torch.no_grad()
def subset_flops(names: list[str], export_dir: Path) -> dict[str, dict[str, float]]:
    """GFLOPs of each subset's forward on the reference clip: the frozen base (adapters off) and each adapter set."""
    out: dict[str, dict[str, float]] = {}
    for nm in names:
        model, card = load_checkpoint(nm, export_dir)
        x = reference_clip(model)
        for s in CLIP_SUBSETS:
            xi = subset_inputs(x, s)
            row = out.setdefault(s, {})
            if "base" not in row:
                row["base"] = round(float(model(xi, count_flops=True, adapter=False).flops[0]) / 1e9, 5)
            row[card["adapter_kind"]] = round(float(model(xi, count_flops=True).flops[0]) / 1e9, 5)
    return out


def write_card_metrics(res: dict[str, Any], flops: dict[str, dict[str, float]], export_dir: Path, split: str
                       ) -> None:
    """Record the split's measured numbers in the adapter and dedicated cards (``metrics.<split>``): accuracy per
    subset (a dedicated model: on its own subset), GFLOPs per clip; adapters: GFLOPs per subset path."""
    for nm, row in res["models"].items():
        path = export_dir / f"{nm}.json"
        card = json.loads(path.read_text())
        if card.get("registry") not in ("adapted_clips", "dedicated_clips"):
            continue
        m: dict[str, Any] = {"samples": res["samples"], "gflops_all_given": row["gflops"]}
        if card["registry"] == "dedicated_clips":
            m["accuracy"] = row["subsets"][card["trained_on"]]
            m["macro_f1"] = row["macro_f1"]
        else:
            m["accuracy_per_subset"] = {s: row["subsets"][s] for s in CLIP_SUBSETS}
            m["gflops_per_subset"] = {s: f[card["adapter_kind"]] for s, f in flops.items()}
        card.setdefault("metrics", {})[split] = m
        path.write_text(json.dumps(card, indent=2) + "\n")


def adapters_main(args: argparse.Namespace) -> int:
    from fusion.evaluate import _replace_block

    export_dir = Path(args.export_dir)
    adapted, dedicated = adapter_names(export_dir)
    if not adapted:
        print("error: no adapted_clips checkpoints")
        return 2
    names = [BASE_CHECKPOINT, *adapted, *dedicated]
    try:
        res = evaluate(names, args.split, root=args.data, limit=args.limit, threads=args.threads,
                       export_dir=export_dir, full_forwards=args.full_forwards)
        flops = subset_flops(adapted, export_dir)
    except FusionError as e:
        print(f"error: {e}")
        return 2
    res["environment"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads"
    cards = {c["name"]: c for c in clip_cards(export_dir)}
    figures = Path(args.figures_dir)
    models_out = Path(args.out or figures / f"clips_adapters_models_{args.split}.json")
    models_out.parent.mkdir(parents=True, exist_ok=True)
    models_out.write_text(json.dumps(res, indent=2) + "\n")
    rows = clip_adapter_table(res, cards)
    table: dict[str, Any] = {"split": args.split, "samples": res["samples"], "pairing_note": PAIRING_NOTE,
                             "base": BASE_CHECKPOINT, "rows": rows, "subset_gflops": flops,
                             "subset_gflops_input": "reference clip: one face crop, 2.39 s of speech, 12 word pieces",
                             "models_file": models_out.name, "seconds": res["seconds"]}
    (figures / f"clips_adapters_{args.split}.json").write_text(json.dumps(table, indent=2) + "\n")
    lines = clip_adapter_lines(rows, args.split, res["samples"])
    lines += ["", "| subset | GFLOPs, base | " + " | ".join(k for k in next(iter(flops.values())) if k != "base")
              + " |", "|---|---|" + "---|" * (len(next(iter(flops.values()))) - 1)]
    for s, f in flops.items():
        lines.append(f"| {s} | {f['base']:.4f} | " + " | ".join(f"{v:.4f}" for k, v in f.items() if k != "base") + " |")
    print("\n".join(lines))
    write_card_metrics(res, flops, export_dir, args.split)
    if args.split == "test":
        matrix = clip_robustness(figures, "test")
        mlines = clip_robustness_lines(matrix)
        print("\n".join(mlines))
    if args.readme:
        _replace_block(Path(args.readme), "clips_adapters" if args.split == "test" else "clips_adapters_val", lines)
        if args.split == "test":
            _replace_block(Path(args.readme), "clips_robustness", mlines)
    return 0
