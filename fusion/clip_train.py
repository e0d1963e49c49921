"""Train and score the emotion-clip fusion models on frozen encoders (``python -m fusion.train --task clips``).

The three encoders are frozen, so their outputs for every corpus item are computed once and cached
(:class:`FeatureCache`, in ``runs/clip_features`` by default: derived from the corpora, never committed). Each
epoch draws a fresh label-paired training set (:class:`fusion.data.emotion.TrimodalPairs`, class-balanced, with
replacement) and the fusion parts train on the cached outputs through the same :meth:`ClipClassifier.fuse` the
full forward calls. Validation chooses the epoch; the test pairing is read once by ``fusion.evaluate --task clips``.

Methods: ``late`` and ``concat`` (static baselines, all three modalities), ``sparse`` (``--pool`` / ``--keep-ratio``:
the pooling it trains with), ``dynmm`` (the shared token-fusion
network trained on every branch subset for the same epochs, then the gate trained on the frozen branches at a
resource weight, see :func:`train_gate`).
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fusion.checkpoints import ASSETS, save_checkpoint
from fusion.data.emotion import EMOTIONS, FER2013, MELD, NUM_EMOTIONS, PAIRING_NOTE, RAVDESS, TrimodalPairs, log_mel
from fusion.encoders.audio import pad_spectrograms
from fusion.encoders.common import EncoderOutput, masked_mean
from fusion.methods.dynmm import routing_target_loss
from fusion.models.clips import ENCODER_CHECKPOINTS, ClipClassifier
from fusion.registry import create, list_models
from fusion.types import AUDIO, FACE, TEXT, FusionError

CACHE_DIR = Path("runs/clip_features")
LICENCE = ("Trained on FER2013 (no formal licence, research and teaching use only), RAVDESS speech (CC BY-NC-SA "
           "4.0) and MELD (GPL-3.0 repository, research use): non-commercial research and teaching use. Encoders: "
           "EfficientNet-Lite0 ImageNet weights (Apache-2.0), all-MiniLM-L6-v2 (MIT).")
DATA = ("Label-paired trimodal samples: a FER2013 face, a RAVDESS speech clip and a MELD utterance that share an "
        "emotion label (fusion.data.emotion.TrimodalPairs, class-balanced).")
SPLIT = ("train: FER2013 Training / RAVDESS actors 01-18 / MELD train, re-paired every epoch (with replacement); "
         "val: PublicTest / actors 19-20 / dev, a fixed seeded pairing, chooses epochs and settings; test: "
         "PrivateTest / actors 21-24 / test, a fixed seeded pairing, read once")


# ---------------------------------------------------------------------------
# Cached encoder outputs
# ---------------------------------------------------------------------------


class FeatureCache:
    """Every item's frozen-encoder output for one split of each corpus: face ``pooled`` + ``logits`` (one crop,
    one token), audio and text token sequences (float16) with ``pooled`` and ``logits``."""

    def __init__(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data

    @classmethod
    def build(cls, model: ClipClassifier, split: str, root: str | None = None, *, batch: int = 128,
              log: Any = print) -> "FeatureCache":
        r = corpus_roots(root)
        readers = {FACE: FER2013(r[FACE], split), AUDIO: RAVDESS(r[AUDIO], split), TEXT: MELD(r[TEXT], split)}
        data: dict[str, dict[str, Any]] = {}
        for m, r in readers.items():
            t0 = time.time()
            enc = model.encoders[m]
            tokens, pooled, logits = [], [], []
            for a in range(0, len(r), batch):
                idx = range(a, min(a + batch, len(r)))
                with torch.no_grad():
                    if m == FACE:
                        x = torch.from_numpy(np.stack([r.face(i) for i in idx])).float().div(255)[:, None]
                        out = enc(x, blur=split != "train")  # the shared Training faces are blurred already
                    elif m == AUDIO:
                        x, mask = pad_spectrograms([log_mel(r.wave(i)) for i in idx])
                        out = enc(x, mask)
                    else:
                        out = enc([r.rows[i].text for i in idx])
                for j in range(len(idx)):
                    if m != FACE:
                        tokens.append(out.tokens[j, out.mask[j]].half())
                pooled.append(out.pooled.half())
                logits.append(out.logits.float())
            data[m] = {"ids": list(r.ids), "labels": list(r.labels), "pooled": torch.cat(pooled),
                       "logits": torch.cat(logits), "tokens": tokens}
            log(f"  {split} {m}: {len(r)} items encoded in {time.time() - t0:.0f} s")
        return cls(data)

    @classmethod
    def load_or_build(cls, model: ClipClassifier, split: str, root: str | None = None,
                      cache_dir: Path = CACHE_DIR, log: Any = print) -> "FeatureCache":
        path = Path(cache_dir) / f"{split}.pt"
        if path.exists():
            return cls(torch.load(path, weights_only=False))
        log(f"encoding the {split} splits once (frozen encoders) -> {path}")
        cache = cls.build(model, split, root, log=log)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cache.data, path)
        return cache

    def batch(self, pairs: Sequence[tuple[int, int, int, int]], modalities: Sequence[str] | None = None
              ) -> tuple[dict[str, EncoderOutput], torch.Tensor]:
        """Encoder outputs of ``pairs`` (label, face, audio, text item indices) and the labels; ``modalities``:
        only these (default all three)."""
        out: dict[str, EncoderOutput] = {}
        cols = {FACE: 1, AUDIO: 2, TEXT: 3}
        for m, c in cols.items():
            if modalities is not None and m not in modalities:
                continue
            idx = [p[c] for p in pairs]
            d = self.data[m]
            logits = d["logits"][idx]
            pooled = d["pooled"][idx].float()
            if m == FACE:
                tokens, mask = pooled[:, None], torch.ones(len(idx), 1, dtype=torch.bool)
            else:
                seqs = [d["tokens"][i].float() for i in idx]
                n = max(s.shape[0] for s in seqs)
                tokens = torch.zeros(len(idx), n, seqs[0].shape[1])
                mask = torch.zeros(len(idx), n, dtype=torch.bool)
                for j, s in enumerate(seqs):
                    tokens[j, : s.shape[0]], mask[j, : s.shape[0]] = s, True
                pooled = masked_mean(tokens, mask)
            out[m] = EncoderOutput(tokens=tokens, mask=mask, pooled=pooled, logits=logits, modality=m)
        return out, torch.tensor([p[0] for p in pairs], dtype=torch.long)


def corpus_roots(data: str | Path | None) -> dict[str, Path | None]:
    """The corpus folders under ``data`` (``fer2013/``, ``ravdess/``, ``meld/``); None = each corpus' default."""
    names = {FACE: "fer2013", AUDIO: "ravdess", TEXT: "meld"}
    return {m: (None if data is None else Path(data) / n) for m, n in names.items()}


def pairing(split: str, seed: int, root: str | Path | None, per_class: int | None = None) -> TrimodalPairs:
    """The label pairing of ``split`` (train: with replacement, ``per_class`` per emotion); ``root``: the folder
    holding the three corpora (None: their defaults)."""
    r = corpus_roots(root)
    kw = {"fer_root": r[FACE], "ravdess_root": r[AUDIO], "meld_root": r[TEXT]}
    if split == "train":
        return TrimodalPairs("train", seed, per_class, replacement=True, **kw)
    return TrimodalPairs(split, seed, **kw)


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 (percent) of class predictions."""
    cm = torch.zeros(NUM_EMOTIONS, NUM_EMOTIONS, dtype=torch.long)
    cm.index_put_((target, pred), torch.ones_like(target), accumulate=True)
    tp = cm.diag().double()
    f1 = 2 * tp / (cm.sum(0) + cm.sum(1)).double().clamp_min(1)
    return {"accuracy": round(100 * float(tp.sum() / cm.sum().clamp_min(1)), 2),
            "macro_f1": round(100 * float(f1.mean()), 2), "items": int(cm.sum())}


@torch.no_grad()
def branch_predictions(model: ClipClassifier, cache: FeatureCache, pairs: Sequence[tuple[int, int, int, int]],
                       subset: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every branch's logits ``(K, N, C)`` (the model's branches; one for static models), the gate's logits
    ``(N, K)`` (zeros for static models) and the labels, on cached outputs, in eval mode. ``subset``: only these
    modalities' outputs are given to the model (static models)."""
    was = model.training
    model.eval()
    outs, gates, ys = [], [], []
    for a in range(0, len(pairs), 256):
        enc, y = cache.batch(pairs[a : a + 256], subset)
        outs.append(model.branch_logits(enc) if model.kind == "dynmm" else model.fuse(enc)[None])
        gates.append(model.gate(enc) if model.kind == "dynmm"
                     else torch.zeros(len(y), 1))
        ys.append(y)
    model.train(was)
    return torch.cat(outs, 1), torch.cat(gates), torch.cat(ys)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def train_fusion(model: ClipClassifier, *, train_cache: FeatureCache, val_cache: FeatureCache, root: str | None,
                 epochs: int, per_class: int, batch_size: int, lr: float, seed: int, log: Any = print,
                 subset: Sequence[str] | None = None, params: list[torch.nn.Parameter] | None = None
                 ) -> dict[str, Any]:
    """Train the fusion parts (not the gate) for ``epochs``; keep the best-val epoch. DynMM: the loss is the mean
    cross-entropy over every branch (each modality subset), so every branch learns. ``subset``: train and validate
    on only these modalities (adapters, dedicated models); ``params``: what to train (default: every trainable
    parameter outside the encoders and the gate)."""
    torch.manual_seed(seed)
    if params is None:
        params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("encoders.", "gate."))]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    train_pairs = pairing("train", seed, root, per_class)
    val_pairs = pairing("val", seed, root).pairs
    steps_per_epoch = (len(train_pairs) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    best: tuple[float, int, dict[str, torch.Tensor], dict[str, float]] | None = None
    history = []
    t0 = time.time()
    for epoch in range(epochs):
        train_pairs.reshuffle(epoch)
        order = torch.randperm(len(train_pairs), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        model.train()
        losses = []
        for a in range(0, len(order), batch_size):
            enc, y = train_cache.batch([train_pairs.pairs[int(i)] for i in order[a : a + batch_size]], subset)
            loss = model.fusion_loss(enc, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        bl, _, y = branch_predictions(model, val_cache, val_pairs, subset)
        val = {"all": scores(bl[-1].argmax(1), y)}
        if model.kind == "dynmm":
            val.update({"+".join(s): scores(bl[k].argmax(1), y) for k, s in enumerate(model.branches)})
        metric = float(np.mean([v["accuracy"] for v in val.values()])) if model.kind == "dynmm" \
            else val["all"]["accuracy"]
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "val_accuracy": round(metric, 2),
                        "t": round(time.time() - t0, 1)})
        log(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.3f}, val accuracy {metric:.2f}")
        if best is None or metric > best[0]:
            best = (metric, epoch + 1, copy.deepcopy(model.trainable_state_dict()), val)
    assert best is not None
    model.load_state_dict(best[2])
    return {"selected_on": "val", "selected_epoch": best[1], "val": best[3], "val_history": history,
            "seconds": round(time.time() - t0, 1), "train_pairs_per_epoch": len(train_pairs)}


def train_gate(model: ClipClassifier, *, train_cache: FeatureCache, root: str | None, resource_weight: float,
               epochs: int, seed: int, per_class: int, lr: float = 3e-3, log: Any = print) -> dict[str, Any]:
    """DynMM gate on the frozen branches: cross-entropy towards each input's best branch under the budget,
    ``argmin_k CE_k + lambda * cost_k`` (:func:`fusion.methods.dynmm.routing_target_loss`); ``cost_k`` is the
    measured FLOPs of branch k (its encoders included), normalised to the all-modality branch."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.gate.parameters(), lr=lr, weight_decay=1e-2)
    pairs = pairing("train", seed + 1, root, per_class)  # a pairing the branches were not trained on
    t0 = time.time()
    for epoch in range(epochs):
        pairs.reshuffle(epoch)
        bl, _, y = branch_predictions(model, train_cache, pairs.pairs)
        losses = torch.stack([F.cross_entropy(lg, y, reduction="none") for lg in bl], 1)  # (N, K)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + epoch))
        model.gate.train()
        for a in range(0, len(order), 128):
            idx = order[a : a + 128]
            enc, _ = train_cache.batch([pairs.pairs[int(i)] for i in idx])
            loss = routing_target_loss(model.gate(enc), losses[idx], model.branch_cost,
                                       resource_weight=resource_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return {"resource_weight": resource_weight, "epochs": epochs, "seconds": round(time.time() - t0, 1)}


def reference_clip(model: ClipClassifier) -> dict[str, torch.Tensor]:
    """The clip the branch costs are measured on: one face crop, 2.39 s of speech (the median RAVDESS clip) and
    an utterance of 12 word pieces (the median MELD train utterance)."""
    ids, mask = model.encoders[TEXT].tokenize(["oh my god , i can not believe you did that"])
    return {FACE: torch.rand(1, 1, 1, 48, 48), AUDIO: torch.randn(1, 64, 239) * 15 - 45, TEXT: ids, "text_mask": mask}


def train_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion.train --task clips",
                                description="Train an emotion-clip fusion model on the frozen encoders.")
    p.add_argument("--task", default="clips")
    p.add_argument("--model", required=True, choices=list_models("emotion_clips"))
    p.add_argument("--data", default=None, help="folder holding fer2013/, ravdess/, meld/ (default ../shared/data)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--per-class", type=int, default=300, help="train samples per emotion drawn each epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gate-modality", default=TEXT,
                   help="the encoder(s) that always run and feed the gate: text, face, audio or e.g. face+text")
    p.add_argument("--resource-weights", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.4],
                   help="DynMM: one gate per lambda (budget); each is exported as NAME_lambda")
    p.add_argument("--gate-epochs", type=int, default=20)
    p.add_argument("--branch-fusion", default="tokens", choices=("tokens", "late"),
                   help="DynMM: the branches' shared fusion (concat-token transformer or late fusion)")
    p.add_argument("--init", default=None, help="DynMM: start from this exported dynmm_clips card (skip branch training)")
    p.add_argument("--config", default=None, metavar="JSON",
                   help="model settings for the registry, e.g. '{\"deq\": {\"hidden\": 64, \"jac_reg_weight\": 1}}'")
    p.add_argument("--pool", default=None,
                   help="sparse_clips: the pooling mode it trains (and ships) with (fusion.methods.sparse.POOL_MODES)")
    p.add_argument("--keep-ratio", type=float, default=None, help="sparse_clips: fraction of each modality's tokens kept")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache-dir", default=str(CACHE_DIR))
    p.add_argument("--export", required=True, metavar="NAME")
    p.add_argument("--export-dir", default=str(ASSETS))
    from fusion.clip_adapt_train import adapt_main, add_arguments

    add_arguments(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cmd = "python -m fusion.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.model in ("adapted_clips", "dedicated_clips"):
        try:
            return adapt_main(args, cmd)
        except FusionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        cfg: dict[str, Any] = ({"gate_modality": args.gate_modality, "branch_fusion": args.branch_fusion}
                               if args.model == "dynmm_clips" else {})
        if args.config:
            try:
                cfg.update(json.loads(args.config))
            except (json.JSONDecodeError, TypeError) as e:
                raise FusionError(f"--config must be a JSON object: {e}") from e
        sparse = {k: v for k, v in (("pool", args.pool), ("keep_ratio", args.keep_ratio)) if v is not None}
        if sparse and args.model != "sparse_clips":
            raise FusionError("--pool / --keep-ratio are sparse_clips settings")
        if sparse:
            cfg["sparse"] = sparse
        if args.init:
            from fusion.checkpoints import load_checkpoint

            model, init_card = load_checkpoint(args.init, Path(args.export_dir))
        else:
            model, init_card = create(args.model, **cfg), None
        train_cache = FeatureCache.load_or_build(model, "train", args.data, Path(args.cache_dir))
        val_cache = FeatureCache.load_or_build(model, "val", args.data, Path(args.cache_dir))
        if init_card is None:
            result = train_fusion(model, train_cache=train_cache, val_cache=val_cache, root=args.data,
                                  epochs=args.epochs, per_class=args.per_class, batch_size=args.batch_size, lr=args.lr,
                                  seed=args.seed)
        else:
            result = {k: init_card[k] for k in ("selected_on", "selected_epoch") if k in init_card}
            result["init"] = init_card["name"]
        card = {"task": "emotion_clips", "registry": args.model, "method": args.model.split("_")[0],
                "data": DATA, "pairing_note": PAIRING_NOTE, "licence": LICENCE, "split": SPLIT,
                "labels": list(EMOTIONS), "encoders": dict(ENCODER_CHECKPOINTS), "command": cmd,
                "training": {**result, "epochs": args.epochs, "per_class": args.per_class,
                             "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                             "hardware": f"CPU, {torch.get_num_threads()} torch threads"},
                "trainable_params": sum(v.numel() for k, v in model.trainable_state_dict().items()
                                        if v.is_floating_point())}
        if args.model != "dynmm_clips":
            save_checkpoint(model, Path(args.export_dir) / args.export, {**card, "name": args.export},
                            tensors=model.trainable_state_dict())
            print(f"exported {args.export}")
            return 0
        flops = model.calibrate_costs(reference_clip(model))
        card["branches"] = ["+".join(s) for s in model.branches]
        card["branch_flops"] = flops
        card["branch_flops_input"] = ("one face crop, 2.39 s of speech, 12 word pieces; FLOPs (not MACs) counted "
                                      "with FlopCounterMode on each branch's path, gate and encoders included")
        if init_card is None:
            save_checkpoint(model, Path(args.export_dir) / f"{args.export}_branches",
                            {**card, "name": f"{args.export}_branches", "gate_trained": False},
                            tensors=model.trainable_state_dict())
        val_pairs = pairing("val", args.seed, args.data).pairs
        for lam in args.resource_weights:
            m = copy.deepcopy(model)
            g = train_gate(m, train_cache=train_cache, root=args.data, resource_weight=lam, epochs=args.gate_epochs,
                           seed=args.seed, per_class=args.per_class)
            bl, gl, y = branch_predictions(m, val_cache, val_pairs)
            choice = gl.argmax(1)
            pred = bl[choice, torch.arange(len(y))].argmax(1)
            cost = float(torch.tensor(flops)[choice].mean() / max(flops))
            val = {**scores(pred, y), "relative_flops": round(cost, 3),
                   "branch_share": {card["branches"][k]: round(float((choice == k).float().mean()), 3)
                                    for k in range(len(flops))}}
            name = f"{args.export}_l{lam:g}".replace(".", "p")
            save_checkpoint(m, Path(args.export_dir) / name,
                            {**card, "name": name, "gate_training": g, "resource_weight": lam,
                             "metrics": {"val": val}, "gate_trained": True}, tensors=m.trainable_state_dict())
            print(f"lambda {lam:g}: val accuracy {val['accuracy']:.2f}, relative FLOPs {cost:.3f} -> {name}")
    except FusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
