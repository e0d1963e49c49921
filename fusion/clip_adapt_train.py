"""Train the missing-modality adapters of ``adapted_clips`` and their controls, the ``dedicated_clips`` subset
models (``python -m fusion.train --task clips --model adapted_clips|dedicated_clips ...``).

Adapters (Reza et al., arXiv:2310.03986): the shipped all-modality ``concat_clips`` is loaded and frozen; for each
proper modality subset, that subset's adapter set alone trains on label-paired samples that hold only the subset's
modalities (the cached encoder outputs of :mod:`fusion.clip_train`), best epoch on the val pairing of the same
subset. The three kinds (LoRA, SSF, BitFit) ship as one checkpoint each, holding only adapter tensors and the name
of their base. Dedicated models: the same concat architecture trained from scratch on one subset with the same
epochs, samples per class, learning rate and seed: the control the recovered accuracy is measured against.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from fusion.checkpoints import ASSETS, read_weights, save_checkpoint, load_matching
from fusion.clip_train import (DATA, LICENCE, SPLIT, FeatureCache, branch_predictions, pairing, scores,
                               train_fusion)
from fusion.data.emotion import EMOTIONS, PAIRING_NOTE
from fusion.methods.adapters import adapter_parameters
from fusion.models.clip_adapted import BASE_CHECKPOINT, CLIP_SUBSETS, AdaptedClipClassifier
from fusion.models.clips import ENCODER_CHECKPOINTS
from fusion.registry import create
from fusion.types import FusionError


def dedicated_name(export: str, subset: str) -> str:
    """``dedicated_clips`` + ``face+audio`` -> ``dedicated_clips_face_audio``."""
    return f"{export}_{subset.replace('+', '_')}"


@torch.no_grad()
def base_val(model: AdaptedClipClassifier, cache: FeatureCache, pairs, subset: tuple[str, ...]) -> dict[str, float]:
    """The frozen base (adapters off) on ``subset`` of the val pairing."""
    model.eval()
    logits, ys = [], []
    for a in range(0, len(pairs), 256):
        enc, y = cache.batch(pairs[a: a + 256])
        logits.append(model.fuse_base({m: enc[m] for m in subset}))
        ys.append(y)
    return scores(torch.cat(logits).argmax(1), torch.cat(ys))


def card_base(args: argparse.Namespace, cmd: str) -> dict[str, Any]:
    return {"task": "emotion_clips", "registry": args.model, "data": DATA, "pairing_note": PAIRING_NOTE,
            "licence": LICENCE, "split": SPLIT, "labels": list(EMOTIONS), "encoders": dict(ENCODER_CHECKPOINTS),
            "command": cmd}


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    return {"epochs": args.epochs, "per_class": args.per_class, "batch_size": args.batch_size, "lr": args.lr,
            "seed": args.seed, "hardware": f"CPU, {torch.get_num_threads()} torch threads"}


def adapt_main(args: argparse.Namespace, cmd: str) -> int:
    """The ``adapted_clips`` / ``dedicated_clips`` branch of ``python -m fusion.train --task clips``."""
    subsets = tuple(args.subsets or CLIP_SUBSETS)
    bad = [s for s in subsets if s not in CLIP_SUBSETS]
    if bad:
        raise FusionError(f"unknown subsets {bad}; choose from {CLIP_SUBSETS}")
    export_dir = Path(args.export_dir)
    val_pairs = pairing("val", args.seed, args.data).pairs
    if args.model == "dedicated_clips":
        train_cache = val_cache = None
        for s in subsets:
            mods = tuple(s.split("+"))
            model = create("dedicated_clips", modalities=list(mods))
            if train_cache is None:
                train_cache = FeatureCache.load_or_build(model, "train", args.data, Path(args.cache_dir))
                val_cache = FeatureCache.load_or_build(model, "val", args.data, Path(args.cache_dir))
            t0 = time.process_time()
            result = train_fusion(model, train_cache=train_cache, val_cache=val_cache, root=args.data,
                                  epochs=args.epochs, per_class=args.per_class, batch_size=args.batch_size,
                                  lr=args.lr, seed=args.seed, subset=mods)
            name = dedicated_name(args.export, s)
            card = {**card_base(args, cmd), "name": name, "method": "dedicated", "trained_on": s,
                    "training": {**result, **recipe(args), "cpu_seconds": round(time.process_time() - t0, 1)},
                    "trainable_params": sum(v.numel() for v in model.trainable_state_dict().values()
                                            if v.is_floating_point())}
            save_checkpoint(model, export_dir / name, card, tensors=model.trainable_state_dict())
            print(f"{s}: val accuracy {result['val']['all']['accuracy']:.2f} (epoch {result['selected_epoch']}) "
                  f"-> {name}", flush=True)
        return 0
    # adapters on the frozen base
    model = create("adapted_clips", adapter={"kind": args.adapter_kind, "rank": args.rank, "alpha": args.alpha})
    base_card = export_dir / f"{args.base}.json"
    if not base_card.exists():
        raise FusionError(f"no base checkpoint {args.base!r} in {export_dir}")
    got = load_matching(model, read_weights(export_dir / f"{args.base}.safetensors"))
    if got["unused"]:
        raise FusionError(f"the base {args.base!r} does not fit adapted_clips: {got['unused'][:3]}")
    train_cache = FeatureCache.load_or_build(model, "train", args.data, Path(args.cache_dir))
    val_cache = FeatureCache.load_or_build(model, "val", args.data, Path(args.cache_dir))
    per_subset: dict[str, Any] = {}
    t_all = time.process_time()
    if args.merge:
        return merge_parts(model, args, cmd)
    for s in subsets:
        mods = tuple(s.split("+"))
        before = base_val(model, val_cache, val_pairs, mods)
        t0 = time.process_time()
        result = train_fusion(model, train_cache=train_cache, val_cache=val_cache, root=args.data,
                              epochs=args.epochs, per_class=args.per_class, batch_size=args.batch_size, lr=args.lr,
                              seed=args.seed, subset=mods, params=adapter_parameters(model, s))
        per_subset[s] = {**result, "base_val": before, "cpu_seconds": round(time.process_time() - t0, 1)}
        print(f"{args.adapter_kind} {s}: base {before['accuracy']:.2f} -> adapted "
              f"{result['val']['all']['accuracy']:.2f} (epoch {result['selected_epoch']})", flush=True)
        # saved after every subset, so a run cut short keeps the subsets it finished
        export_adapters(model, args, cmd, per_subset, round(time.process_time() - t_all, 1))
    print(f"exported {args.export}")
    return 0


def export_adapters(model: AdaptedClipClassifier, args: argparse.Namespace, cmd: str, per_subset: dict[str, Any],
                    cpu_seconds: float, export: str | None = None) -> None:
    """Save the adapter tensors of ``model`` with a card for the subsets in ``per_subset`` (trained so far)."""
    subsets = [s for s in CLIP_SUBSETS if s in per_subset]
    counts = model.param_counts()
    card = {**card_base(args, cmd), "name": export or args.export, "method": "adapted", "base": args.base,
            "adapter_kind": args.adapter_kind, "subsets": subsets,
            "adapter_params": {s: counts[s]["params"] for s in subsets},
            "adapter_share_percent": {s: counts[s]["share_of_model_percent"] for s in subsets},
            "adapter_share_of_fusion_percent": {s: counts[s]["share_of_fusion_percent"] for s in subsets},
            "adapted_layers": list(model.adapted_layers),
            "training": {**recipe(args), "selected_on": "val", "per_subset": per_subset,
                         "cpu_seconds": cpu_seconds}}
    save_checkpoint(model, Path(args.export_dir) / (export or args.export), card, tensors=model.trainable_state_dict())


def merge_parts(model: AdaptedClipClassifier, args: argparse.Namespace, cmd: str) -> int:
    """``--merge PART ...``: one checkpoint from adapter checkpoints of the same kind trained on different subsets
    (the subsets' runs are independent: each trains only its own set on the frozen base, so running them in
    parallel processes and joining the sets gives what one sequential run would)."""
    from fusion.checkpoints import read_card
    from fusion.methods.adapters import adapter_state_dict

    export_dir = Path(args.export_dir)
    per_subset: dict[str, Any] = {}
    state = adapter_state_dict(model)
    commands = []
    for part in args.merge:
        card = read_card(export_dir / f"{part}.json")
        if card.get("adapter_kind") != args.adapter_kind or card.get("base") != args.base:
            raise FusionError(f"{part} is not a {args.adapter_kind} adapter set on {args.base}")
        if card["training"]["epochs"] != args.epochs or card["training"]["lr"] != args.lr:
            raise FusionError(f"{part} was trained with another recipe")
        weights = read_weights(export_dir / card["weights"])
        for s in card["subsets"]:
            if s in per_subset:
                raise FusionError(f"subset {s} is in two parts")
            per_subset[s] = card["training"]["per_subset"][s]
            keys = {k for k in state if k.endswith(f".{s}")}
            state.update({k: weights[k] for k in keys})
        commands.append(card["command"])
    model.load_state_dict(state)
    cmd = " && ".join(commands + [cmd])
    export_adapters(model, args, cmd, per_subset, round(sum(v["cpu_seconds"] for v in per_subset.values()), 1))
    print(f"merged {', '.join(args.merge)} -> {args.export} ({', '.join(per_subset)})")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The adapter / dedicated options of the clip trainer."""
    p.add_argument("--adapter-kind", choices=("lora", "ssf", "bitfit"), default="lora", help="adapted_clips")
    p.add_argument("--rank", type=int, default=4, help="adapted_clips, LoRA rank")
    p.add_argument("--alpha", type=float, default=4.0, help="adapted_clips, LoRA alpha (update scaled by alpha/rank)")
    p.add_argument("--base", default=BASE_CHECKPOINT, help="adapted_clips: the frozen all-modality checkpoint")
    p.add_argument("--merge", nargs="*", default=None, metavar="PART",
                   help="adapted_clips: join adapter checkpoints of one kind trained on different --subsets")
    p.add_argument("--subsets", nargs="*", default=None,
                   help="adapted_clips / dedicated_clips: which modality subsets (default: all six proper ones)")
