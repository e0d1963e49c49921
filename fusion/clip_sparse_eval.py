"""The sparse-fusion ablation on emotion clips (``python -m fusion.evaluate --task clips --sparse-ablation``).

On every sample of a split's fixed label pairing (a face, a speech clip, an utterance; paired by label, see
:data:`fusion.data.emotion.PAIRING_NOTE`) the three frozen encoders run once, their FLOPs counted with
``FlopCounterMode``; then every row's fusion stage (everything after the encoders: projections, scoring,
pooling, cross-modal layers, head) runs on those encoder outputs under its own ``FlopCounterMode``. Rows:

* the dense control, ``concat_clips`` (same transformer, every token; trained with the same recipe);
* the shipped learned sparse model at its keep ratio, and at other keep ratios (the page's live control);
* the learned model with random / strided-random pooling swapped in (mean and spread over seeds) and with
  pooling off (every token through the sparse-trained transformer);
* the controls trained with random and strided-random pooling at the same keep ratio (mean and spread over
  the same seeds);
* the learned model with its pooled tokens zeroed (the block's output removed: nothing reaches [CLS]).

Tokens are the modality tokens entering the cross-modal transformer per clip (its [CLS] is counted apart).
``--split val`` is for choices; ``--split test`` is read once, for the README table ``results:clips_sparse``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fusion.checkpoints import ASSETS, load_checkpoint
from fusion.clip_train import pairing, scores
from fusion.data.emotion import PAIRING_NOTE, log_mel
from fusion.inference import clips_inputs
from fusion.models.clip_sparse import counted_fusion
from fusion.models.clips import CLIP_MODALITIES
from fusion.types import FACE, TEXT, FusionError

FIGURES = ASSETS.parent / "figures"
RANDOM_SEEDS = 5  # draws of the random pooling swapped into the learned model
SWEEP = (0.05, 0.1, 0.2, 0.5)  # keep ratios of the learned model's live-control sweep (besides its own)


def dense_tokens(enc: dict[str, Any]) -> int:
    """Modality tokens ``concat_clips`` feeds its transformer: one face token (the crops averaged), every
    speech frame token and every word piece."""
    return sum(1 if m == FACE else int(e.mask.sum()) for m, e in enc.items())


@torch.no_grad()
def sparse_ablation(learned: str = "sparse_clips", *, dense: str = "concat_clips",
                    random_control: str | None = "sparse_clips_random",
                    strided_control: str | None = "sparse_clips_strided", split: str = "val",
                    root: str | None = None, limit: int = 0, threads: int = 1, export_dir: Path = ASSETS,
                    log: Any = print) -> dict[str, Any]:
    """Score the ablation rows (see the module docstring) on ``split``'s fixed pairing."""
    torch.set_num_threads(threads)
    model, card = load_checkpoint(learned, export_dir)
    if getattr(model, "kind", None) != "sparse":
        raise FusionError(f"{learned} is not a sparse clip model")
    dense_model, _ = load_checkpoint(dense, export_dir)
    controls = {}
    for nm in (random_control, strided_control):
        if nm:
            controls[nm] = load_checkpoint(nm, export_dir)[0]
    pool, ratio = model.cfg.sparse.pool, model.cfg.sparse.keep_ratio
    rows: dict[str, dict[str, Any]] = {}

    def row(key: str, **meta: Any) -> dict[str, Any]:
        return rows.setdefault(key, {**meta, "pred": [], "flops": [], "tokens": [], "kept": {}})

    pairs = pairing(split, 0, root)
    n = len(pairs) if not limit else min(limit, len(pairs))
    labels, enc_flops, dense_tok = [], [], []
    tokenizer = model.encoders[TEXT].tokenize
    t0 = time.time()
    for i in range(n):
        item = pairs[i]
        labels.append(int(item["label"]))
        inputs = clips_inputs(faces=item["face"][None], log_mel=log_mel(item["audio"]), text=item["text"],
                              tokenizer=tokenizer)
        enc, fl = counted_fusion(lambda: {m: model.encode(m, inputs) for m in CLIP_MODALITIES})
        enc_flops.append(fl)
        dense_tok.append(dense_tokens(enc))

        def add(key: str, logits: torch.Tensor, flops: float, trace: Any = None, **meta: Any) -> None:
            r = row(key, **meta)
            r["pred"].append(int(logits.argmax(1)[0]))
            r["flops"].append(flops)
            if trace is None:
                r["tokens"].append(dense_tok[-1])
                return
            r["tokens"].append(sum(int(k.sum()) for k in trace.kept_mask.values()))
            for m, k in trace.kept_mask.items():
                r["kept"].setdefault(m, []).append(int(k.sum()))

        lg, fl = counted_fusion(lambda: dense_model.fuse(enc))
        add("dense", lg, fl, model=dense, pool="none", keep_ratio=1.0, trained_with="dense")
        for r in (ratio, *[s for s in SWEEP if s != ratio]):
            (lg, tr), fl = counted_fusion(lambda: model.fuse_with(enc, keep_ratio=r))
            add(f"learned@{r:g}", lg, fl, tr, model=learned, pool=pool, keep_ratio=r, trained_with=pool)
        (lg, tr), fl = counted_fusion(lambda: model.fuse_with(enc, pool="none"))
        add("learned, pooling off", lg, fl, tr, model=learned, pool="none", keep_ratio=1.0, trained_with=pool)
        for swap in ("random", "strided_random"):
            for s in range(RANDOM_SEEDS):
                (lg, tr), fl = counted_fusion(lambda: model.fuse_with(enc, pool=swap, seed=s))
                add(f"learned, {swap} swapped in #{s}", lg, fl, tr, model=learned, pool=swap, keep_ratio=ratio,
                    trained_with=pool, seed=s)
        for nm, ctl in controls.items():
            for s in range(RANDOM_SEEDS):  # a control's random pooling: the same seeds as the swapped-in rows
                (lg, tr), fl = counted_fusion(lambda: ctl.fuse_with(enc, seed=s))
                add(f"control {ctl.cfg.sparse.pool} #{s}", lg, fl, tr, model=nm, pool=ctl.cfg.sparse.pool,
                    keep_ratio=ctl.cfg.sparse.keep_ratio, trained_with=ctl.cfg.sparse.pool, seed=s)
        (lg, tr), fl = counted_fusion(lambda: model.fuse_with(enc, zero=True))
        add("learned, block zeroed", lg, fl, tr, model=learned, pool=pool, keep_ratio=ratio, trained_with=pool,
            zeroed=True)
        if (i + 1) % 25 == 0:
            log(f"  {i + 1}/{n} samples, {time.time() - t0:.0f} s")
    y = torch.tensor(labels)
    enc_mean = float(np.mean(enc_flops))
    dense_fl = float(np.mean(rows["dense"]["flops"]))
    dense_t = float(np.mean(dense_tok))
    out_rows: dict[str, dict[str, Any]] = {}
    for key, r in rows.items():
        fl, tok = float(np.mean(r["flops"])), float(np.mean(r["tokens"]))
        out_rows[key] = {**{k: v for k, v in r.items() if k not in ("pred", "flops", "tokens", "kept")},
                         **scores(torch.tensor(r["pred"]), y), "tokens": round(tok, 2),
                         "token_reduction": round(dense_t / tok, 2), "fusion_mflops": round(fl / 1e6, 3),
                         "fusion_flops_reduction": round(dense_fl / fl, 2),
                         "total_gflops": round((enc_mean + fl) / 1e9, 4),
                         "kept_per_modality": {m: round(float(np.mean(v)), 2) for m, v in r["kept"].items()}}
    for prefix in [f"learned, {m} swapped in" for m in ("random", "strided_random")] + sorted(
            {k.rsplit(" #", 1)[0] for k in out_rows if k.startswith("control ")}):  # the seeds summarised in one row
        keys = [k for k in out_rows if k.startswith(f"{prefix} #")]
        accs = [out_rows[k]["accuracy"] for k in keys]
        f1s = [out_rows[k]["macro_f1"] for k in keys]
        summary = {**out_rows[keys[0]], "accuracy": round(float(np.mean(accs)), 2),
                   "accuracy_sd": round(float(np.std(accs)), 2), "macro_f1": round(float(np.mean(f1s)), 2),
                   "seeds": len(keys)}
        summary.pop("seed", None)
        for k in keys:
            out_rows.pop(k)
        out_rows[prefix] = summary
    order = ["dense", f"learned@{ratio:g}", "learned, random swapped in", "learned, strided_random swapped in",
             *[k for k in out_rows if k.startswith("control ")], "learned, block zeroed", "learned, pooling off",
             *[k for k in out_rows if k.startswith("learned@") and k != f"learned@{ratio:g}"]]
    return {"split": split, "samples": n, "pairing_note": PAIRING_NOTE, "learned": learned, "dense": dense,
            "pool": pool, "keep_ratio": ratio, "selected_on": card.get("selected_on", "val"),
            "encoder_gflops": round(enc_mean / 1e9, 4), "dense_tokens": round(dense_t, 2),
            "dense_tokens_note": "modality tokens into the cross-modal transformer per clip ([CLS] not counted): "
                                 "concat_clips averages a clip's face crops into one token",
            "rows": {k: out_rows[k] for k in order if k in out_rows}, "seconds": round(time.time() - t0, 1)}


def sparse_lines(res: dict[str, Any]) -> list[str]:
    """The README table of a :func:`sparse_ablation` result."""
    lines = [f"*{res['split']} pairing, {res['samples']} label-paired samples; {PAIRING_NOTE}* Frozen encoders: "
             f"{res['encoder_gflops']:.3f} GFLOPs per clip (measured), the same for every row.", "",
             "| row | pooling (trained with) | keep ratio | accuracy | macro-F1 | tokens into cross-modal attention "
             "(fewer) | fusion-stage MFLOPs (fewer) | total GFLOPs / clip |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in res["rows"].items():
        acc = f"{r['accuracy']:.2f}" + (f" ± {r['accuracy_sd']:.2f}" if "accuracy_sd" in r else "")
        name = f"`{r['model']}`" if key == "dense" or key.startswith("control") else key
        if key == f"learned@{res['keep_ratio']:g}":
            name = f"**`{r['model']}`** (shipped)"
        lines.append(f"| {name} | {r['pool']} ({r['trained_with']}) | {r['keep_ratio']:g} | {acc} | "
                     f"{r['macro_f1']:.2f} | {r['tokens']:.2f} ({r['token_reduction']:.1f}×) | "
                     f"{r['fusion_mflops']:.2f} ({r['fusion_flops_reduction']:.1f}×) | {r['total_gflops']:.3f} |")
    lines += ["", "Tokens: modality tokens entering the cross-modal transformer per clip, mean over the samples "
              "([CLS] not counted; dense = one face token + every speech frame token + every word piece). "
              "Fusion stage: everything after the frozen encoders (projections, scoring, pooling, the two "
              "transformer layers, head), FLOPs counted with FlopCounterMode on each row's own forward. "
              "Rows with random pooling (swapped into the learned model, or the controls trained with it): "
              f"mean ± sd over {RANDOM_SEEDS} seeds of the pooling."]
    return lines


def sparse_main(argv: Sequence[str] | None = None) -> int:
    from fusion.clip_eval import publish

    p = argparse.ArgumentParser(prog="python -m fusion.evaluate --task clips --sparse-ablation",
                                description=__doc__.split("\n")[0])
    p.add_argument("--task", default="clips")
    p.add_argument("--sparse-ablation", action="store_true")
    p.add_argument("models", nargs="*", help="the learned sparse checkpoint (default sparse_clips)")
    p.add_argument("--dense", default="concat_clips", help="the dense control")
    p.add_argument("--random-control", default="sparse_clips_random")
    p.add_argument("--strided-control", default="sparse_clips_strided")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--data", default=None)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file (default assets/figures/clips_sparse_SPLIT.json)")
    p.add_argument("--readme", default=None, help="write the table into this README's results:clips_sparse block "
                                                  "(test) or results:clips_sparse_val (val)")
    p.add_argument("--export-dir", default=str(ASSETS))
    args = p.parse_args(argv)
    learned = args.models[0] if args.models else "sparse_clips"
    try:
        res = sparse_ablation(learned, dense=args.dense, random_control=args.random_control or None,
                              strided_control=args.strided_control or None, split=args.split, root=args.data,
                              limit=args.limit, threads=args.threads, export_dir=Path(args.export_dir))
    except FusionError as e:
        print(f"error: {e}")
        return 2
    publish(res, Path(args.out or FIGURES / f"clips_sparse_{args.split}.json"), sparse_lines(res), args.readme,
            "clips_sparse" if args.split == "test" else "clips_sparse_val")
    return 0
