"""Does the equilibrium matter on emotion clips? (``python -m fusion.evaluate --task clips --deq-ablation NAME``)

On real forwards of a split's fixed label pairing (encoders included; :data:`fusion.data.emotion.PAIRING_NOTE`),
one DEQ clip checkpoint is scored:

* at its fixed point (its own solver settings) with FLOPs measured by ``FlopCounterMode`` on the path that ran
  (total, and the fusion stage alone), convergence (relative residual below the tolerance within the cap, the
  solver's own per-sample stop), steps, and the final residual;
* at the solve's own k-th iterate (k = 1, 2, 4, 8), decoded by the same readout (a sample that stopped earlier
  keeps its final state);
* with the other solvers at the same tolerance and cap;
* with the block's output zeroed (the late-fusion skip alone);
* against the equal-training control (``--control``): the same architecture trained for the same epochs as a
  one-step, weight-tied network (``deq.unroll = 1``), no solve.

``--select NAME ...`` instead scores checkpoints on the cached **val** encoder outputs (fast; used to choose width,
Jacobian weight and cap). ``--split test`` is read once, for the README block ``results:clips_deq``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fusion.checkpoints import ASSETS, load_checkpoint
from fusion.clip_train import CACHE_DIR, FeatureCache, pairing, scores
from fusion.data.emotion import PAIRING_NOTE, log_mel
from fusion.methods.deq import SOLVERS
from fusion.tasks import clips_inputs
from fusion.types import TEXT, FusionError

FIGURES = ASSETS.parent / "figures"
STEPS = (1, 2, 4, 8)


def _conv_stats(nstep: list[int], conv: list[bool], rel: list[float]) -> dict[str, Any]:
    return {"converged_pct": round(100 * float(np.mean(conv)), 2), "mean_steps": round(float(np.mean(nstep)), 2),
            "max_steps": int(max(nstep)), "rel_residual_p99": float(f"{np.percentile(rel, 99):.3g}"),
            "rel_residual_max": float(f"{max(rel):.3g}")}


@torch.no_grad()
def select_on_cache(names: Sequence[str], *, root: str | None = None, cache_dir: Path = CACHE_DIR,
                    export_dir: Path = ASSETS, max_iter: int = 15, log: Any = print) -> dict[str, Any]:
    """Val-pairing scores of DEQ clip checkpoints on the cached encoder outputs: accuracy, macro-F1, convergence
    within ``max_iter`` Anderson steps, accuracy after 1 step, block zeroed."""
    pairs = pairing("val", 0, root).pairs
    cache = FeatureCache(torch.load(Path(cache_dir) / "val.pt", weights_only=False))
    out: dict[str, Any] = {}
    for nm in names:
        model, card = load_checkpoint(nm, export_dir)
        model.eval()
        preds: dict[str, list] = {"fixed": [], "zero": [], **{f"step{k}": [] for k in STEPS}}
        nstep, conv, rel, ys, moved = [], [], [], [], []
        for a in range(0, len(pairs), 256):
            enc, y = cache.batch(pairs[a:a + 256])
            logits, tr, skip = model.fusion(enc, max_iter=max_iter, keep_states_at=STEPS)
            preds["fixed"].append(logits.argmax(1))
            preds["zero"].append(skip.argmax(1))
            for k in STEPS:
                preds[f"step{k}"].append((skip + tr.states[k][:, :, 0, 0]).argmax(1))
            readout = logits - skip  # (B, C) the block's contribution at the fixed point
            first = tr.states[1][:, :, 0, 0]
            moved.append((first - readout).norm(dim=1) / readout.norm(dim=1).clamp_min(1e-12))
            nstep += tr.nstep.tolist()
            conv += tr.converged.tolist()
            rel += tr.rel_residual.tolist()
            ys.append(y)
        y = torch.cat(ys)
        row = {k: scores(torch.cat(v), y) for k, v in preds.items()}
        out[nm] = {"max_iter": max_iter, "val": row["fixed"], "zeroed": row["zero"]["accuracy"],
                   "steps": {k: row[f"step{k}"]["accuracy"] for k in STEPS},
                   "selected_epoch": card.get("training", {}).get("selected_epoch"),
                   "config": card.get("config", {}).get("deq"), **_conv_stats(nstep, conv, rel),
                   # how far the block's logits move from the first iterate to the fixed point, relative
                   "readout_change_step1_median": round(float(torch.cat(moved).median()), 4)}
        if card["config"]["deq"].get("unroll"):
            out[nm]["note"] = "unrolled control: no solve (convergence columns not meaningful)"
        log(f"{nm} (cap {max_iter}): val {row['fixed']['accuracy']:.2f} / F1 {row['fixed']['macro_f1']:.2f}, zeroed {row['zero']['accuracy']:.2f}, "
            f"steps {[row[f'step{k}']['accuracy'] for k in STEPS]}, converged {out[nm]['converged_pct']}% "
            f"(mean {out[nm]['mean_steps']}, max {out[nm]['max_steps']}) epoch {out[nm]['selected_epoch']}, readout "
            f"change step 1 -> fixed point {out[nm]['readout_change_step1_median']:.3f} (median, relative)")
    return out


@torch.no_grad()
def deq_ablation(name: str, split: str, *, control: str | None = None, root: str | None = None, limit: int = 0,
                 threads: int = 1, export_dir: Path = ASSETS, log: Any = print) -> dict[str, Any]:
    """The ablation of one DEQ clip checkpoint on ``split``'s fixed pairing (see the module docstring)."""
    torch.set_num_threads(threads)
    model, card = load_checkpoint(name, export_dir)
    model.eval()
    if getattr(model, "kind", None) != "deq":
        raise FusionError(f"{name} is not a DEQ clip model (kind {getattr(model, 'kind', None)!r})")
    ctrl = None if control is None else load_checkpoint(control, export_dir)
    cfg = model.cfg.deq
    pairs = pairing(split, 0, root)
    n = len(pairs) if not limit else min(limit, len(pairs))
    tokenizer = model.encoders[TEXT].tokenize
    others = [s for s in SOLVERS if s != cfg.solver]
    rec: dict[str, list] = {"fixed": [], "zero": [], "control": [], **{f"step{k}": [] for k in STEPS},
                            **{s: [] for s in others}}
    flops, fusion_flops, zero_flops, ctrl_flops, ctrl_fusion = [], [], [], [], []
    nstep, conv, rel, labels = [], [], [], []
    other_stats: dict[str, dict[str, list]] = {s: {"nstep": [], "conv": [], "rel": []} for s in others}
    t0 = time.time()
    for i in range(n):
        item = pairs[i]
        labels.append(int(item["label"]))
        inputs = clips_inputs(faces=item["face"][None], log_mel=log_mel(item["audio"]), text=item["text"],
                              tokenizer=tokenizer)
        out = model(inputs, count_flops=True, keep_states_at=STEPS)  # iterates decoded after the count
        rec["fixed"].append(int(out.labels[0]))
        flops.append(float(out.flops[0]))
        fusion_flops.append(float(out.block.fusion_flops))
        s = out.solver
        nstep.append(int(s.nstep[0]))
        conv.append(bool(s.converged[0]))
        rel.append(float(s.rel_residual[0]))
        for k in STEPS:
            rec[f"step{k}"].append(int(out.iterate_logits[k].argmax(1)[0]))
        for sv in others:
            o = model(inputs, solver=sv)
            rec[sv].append(int(o.labels[0]))
            other_stats[sv]["nstep"].append(int(o.solver.nstep[0]))
            other_stats[sv]["conv"].append(bool(o.solver.converged[0]))
            other_stats[sv]["rel"].append(float(o.solver.rel_residual[0]))
        z = model(inputs, count_flops=True, zero_block=True)
        rec["zero"].append(int(z.labels[0]))
        zero_flops.append(float(z.flops[0]))
        if ctrl is not None:
            c = ctrl[0](inputs, count_flops=True)
            rec["control"].append(int(c.labels[0]))
            ctrl_flops.append(float(c.flops[0]))
            ctrl_fusion.append(float(c.block.fusion_flops))
        if (i + 1) % 25 == 0:
            log(f"  {i + 1}/{n} samples, {time.time() - t0:.0f} s")
    y = torch.tensor(labels)
    sc = {k: scores(torch.tensor(v), y) for k, v in rec.items() if v}
    res: dict[str, Any] = {
        "model": name, "split": split, "samples": n, "pairing_note": PAIRING_NOTE,
        "solver": {"solver": cfg.solver, "tol": cfg.tol, "max_iter": cfg.max_iter, "stop_mode": cfg.stop_mode},
        "fixed_point": {**sc["fixed"], "gflops": round(float(np.mean(flops)) / 1e9, 4),
                        "fusion_mflops": round(float(np.mean(fusion_flops)) / 1e6, 3),
                        **_conv_stats(nstep, conv, rel)},
        "steps": {str(k): sc[f"step{k}"] for k in STEPS},
        "solvers": {sv: {**sc[sv], **_conv_stats(**other_stats[sv])} for sv in others},
        "zeroed": {**sc["zero"], "gflops": round(float(np.mean(zero_flops)) / 1e9, 4)},
        "trainable_params": card.get("trainable_params"), "selected_epoch": card.get("training", {}).get("selected_epoch"),
        "env": f"{platform.machine()}, torch {torch.__version__}, {threads} thread(s)",
    }
    if ctrl is not None:
        res["control"] = {"name": control, **sc["control"], "gflops": round(float(np.mean(ctrl_flops)) / 1e9, 4),
                          "fusion_mflops": round(float(np.mean(ctrl_fusion)) / 1e6, 3),
                          "selected_epoch": ctrl[1].get("training", {}).get("selected_epoch")}
    res["seconds"] = round(time.time() - t0, 1)
    return res


def readme_lines(res: dict[str, Any]) -> list[str]:
    """The README block ``results:clips_deq``."""
    fp, sv = res["fixed_point"], res["solver"]
    ref = fp["accuracy"]
    solver_name = {"anderson": "Anderson", "broyden": "Broyden", "fixed_point": "plain iteration"}

    def d(a: float) -> str:
        return f"{a - ref:+.2f}"

    lines = [f"*{res['split']} pairing, {res['samples']} label-paired samples; {PAIRING_NOTE}*", "",
             "| what predicts | accuracy | macro-F1 | vs fixed point | GFLOPs / clip (fusion stage MFLOPs) |",
             "|---|---|---|---|---|"]
    for k, r in res["steps"].items():
        lines.append(f"| `{res['model']}` after {k} {solver_name[sv['solver']]} step{'s' if k != '1' else ''} | "
                     f"{r['accuracy']:.2f} | {r['macro_f1']:.2f} | {d(r['accuracy'])} | - |")
    lines.append(f"| **`{res['model']}` at the fixed point** ({solver_name[sv['solver']]}, rel. tol {sv['tol']:g}, "
                 f"cap {sv['max_iter']}) | **{ref:.2f}** | **{fp['macro_f1']:.2f}** | - | {fp['gflops']:.3f} "
                 f"({fp['fusion_mflops']:.2f}) |")
    for s, r in res["solvers"].items():
        lines.append(f"| same model, {solver_name.get(s, s)}, same tol and cap ({r['converged_pct']:.1f}% converged, "
                     f"mean {r['mean_steps']:.1f} steps) | {r['accuracy']:.2f} | {r['macro_f1']:.2f} | "
                     f"{d(r['accuracy'])} | - |")
    z = res["zeroed"]
    lines.append(f"| same model, block output zeroed (late-fusion skip alone) | {z['accuracy']:.2f} | "
                 f"{z['macro_f1']:.2f} | {d(z['accuracy'])} | {z['gflops']:.3f} (0) |")
    if "control" in res:
        c = res["control"]
        lines.append(f"| control `{c['name']}`: same architecture trained as a one-step weight-tied network "
                     f"(same epochs and recipe) | {c['accuracy']:.2f} | {c['macro_f1']:.2f} | {d(c['accuracy'])} | "
                     f"{c['gflops']:.3f} ({c['fusion_mflops']:.2f}) |")
    lines += ["", f"Converged (relative residual < {sv['tol']:g} within {sv['max_iter']} {solver_name[sv['solver']]} "
                  f"steps): **{fp['converged_pct']:.2f}%** of samples; mean {fp['mean_steps']:.2f} steps, max "
                  f"{fp['max_steps']}; 99th percentile of the final relative residual {fp['rel_residual_p99']:.2g} "
                  f"(max {fp['rel_residual_max']:.2g}).", "",
              f"_Generated by `python -m fusion.evaluate --task clips --deq-ablation {res['model']}"
              + (f" --control {res['control']['name']}" if "control" in res else "")
              + f" --split {res['split']}` ({res['env']}, {res['seconds']:.0f} s). Real forwards, encoders included; "
                "FLOPs (not MACs) counted by FlopCounterMode on the path that ran; fusion stage = the equilibrium "
                "solve, its readout and the late-fusion skip. 'After k steps': the solve's own k-th iterate decoded "
                "by the same readout (decoded outside the FLOP count; a sample that stopped earlier keeps its final "
                "state)._"]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    from fusion.evaluate import _replace_block

    p = argparse.ArgumentParser(prog="python -m fusion.evaluate --task clips --deq-ablation",
                                description=__doc__.split("\n")[0])
    p.add_argument("--task", default="clips")
    p.add_argument("--deq-ablation", default=None, metavar="NAME", help="the DEQ clip checkpoint to ablate")
    p.add_argument("--control", default=None, help="the one-step (unroll=1) control checkpoint")
    p.add_argument("--select", nargs="*", default=None, metavar="NAME",
                   help="instead: score these DEQ checkpoints on the cached val encoder outputs")
    p.add_argument("--max-iter", type=int, default=15, help="--select: the solver cap to score at")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--data", default=None)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file (default assets/figures/clips_deq_SPLIT.json)")
    p.add_argument("--readme", default=None, help="test split: write the results:clips_deq block of this README")
    p.add_argument("--models-json", default=None,
                   help="with --readme: also render this `fusion.evaluate --task clips NAME --out F` result (the standard "
                        "row with per-subset columns) into the results:clips_deq_models block")
    p.add_argument("--no-write-cards", action="store_true", help="do not record the metrics in the model cards")
    p.add_argument("--from-json", default=None,
                   help="render the README blocks from this saved result (no forwards; the split is not read again)")
    p.add_argument("--export-dir", default=str(ASSETS))
    p.add_argument("--cache-dir", default=str(CACHE_DIR))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.select is not None:
            res = select_on_cache(args.select, root=args.data, cache_dir=Path(args.cache_dir),
                                  export_dir=Path(args.export_dir), max_iter=args.max_iter)
            if args.out:
                Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
            return 0
        if not args.deq_ablation:
            print("error: give --deq-ablation NAME or --select NAME ...")
            return 2
        if args.from_json:
            res = json.loads(Path(args.from_json).read_text())
        else:
            res = deq_ablation(args.deq_ablation, args.split, control=args.control, root=args.data, limit=args.limit,
                               threads=args.threads, export_dir=Path(args.export_dir))
    except FusionError as e:
        print(f"error: {e}")
        return 2
    out = Path(args.out or FIGURES / f"clips_deq_{res['split']}.json")
    if not args.from_json:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
    lines = readme_lines(res)
    print("\n".join(lines))
    if args.readme and res["split"] == "test":
        _replace_block(Path(args.readme), "clips_deq", lines)
        if args.models_json:
            from fusion.clip_eval import readme_lines as model_lines

            _replace_block(Path(args.readme), "clips_deq_models",
                           model_lines(json.loads(Path(args.models_json).read_text())))
    if not args.no_write_cards and not args.from_json:
        record_metrics(res, Path(args.export_dir))
    return 0


def record_metrics(res: dict[str, Any], export_dir: Path = ASSETS) -> None:
    """Write the ablation's headline numbers into the model's (and the control's) card, under ``metrics[split]``."""
    from fusion.checkpoints import card_path, read_card

    split = res["split"]
    fp = res["fixed_point"]
    rows = {res["model"]: {"accuracy": fp["accuracy"], "macro_f1": fp["macro_f1"], "gflops": fp["gflops"],
                           "fusion_mflops": fp["fusion_mflops"], "converged_pct": fp["converged_pct"],
                           "mean_steps": fp["mean_steps"], "max_steps": fp["max_steps"],
                           "accuracy_after_steps": {k: v["accuracy"] for k, v in res["steps"].items()},
                           "accuracy_block_zeroed": res["zeroed"]["accuracy"], "samples": res["samples"],
                           "command": f"python -m fusion.evaluate --task clips --deq-ablation {res['model']}"
                                      + (f" --control {res['control']['name']}" if "control" in res else "")
                                      + f" --split {split}"}}
    if "control" in res:
        c = res["control"]
        rows[c["name"]] = {"accuracy": c["accuracy"], "macro_f1": c["macro_f1"], "gflops": c["gflops"],
                           "fusion_mflops": c["fusion_mflops"], "samples": res["samples"]}
    for name, m in rows.items():
        path = card_path(name, export_dir)
        card = read_card(path)
        card.setdefault("metrics", {})[split] = m
        path.write_text(json.dumps(card, indent=2) + "\n")
