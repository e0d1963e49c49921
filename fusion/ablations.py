"""Does each method do what it claims? The ablations behind the README's claims, measured.

DynMM (:func:`dynmm_pareto`): the gate at each shipped budget against every fixed branch k = 0..4 forced
(the fixed-branch line), against a random router with the gate's own branch mix (the same compute, no
input dependence), the static model and its equal-training control. Per frame, every branch's prediction
is computed once (frozen branches shared by all budgets) and scored into a confusion matrix, so any router
can be scored exactly; each gate model also runs for real, FLOPs counted with FlopCounterMode on the path
it took; latency is timed interleaved (models in a fresh random order per repeat) in the same run.

Also: the gate's robustness to fp16 arithmetic (decision in fp16 vs fp32 on the same inputs), and how
much its decisions depend on the depth map (each frame's RGB with another frame's depth).
"""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fusion.checkpoints import load_checkpoint
from fusion.metrics import ConfusionMatrix
from fusion.models.rgbd import _Trace
from fusion.results import SPARSE_BASELINES, SPARSE_LEARNED
from fusion.results import deq_lines, dynmm_lines, sparse_lines  # noqa: F401 (moved there; re-exported)
from fusion.types import DEPTH, RGB, FusionError, RunOptions


def _miou(mat: torch.Tensor) -> float:
    return 100 * ConfusionMatrix.from_matrix(mat).miou()


def _pixacc(mat: torch.Tensor) -> float:
    return 100 * ConfusionMatrix.from_matrix(mat).pixel_accuracy()


def _confusion(logits: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """(1, C, h, w) logits upsampled to the label's resolution -> (C, C) int32 confusion."""
    up = logits if logits.shape[-2:] == target.shape[-2:] else F.interpolate(
        logits.contiguous(memory_format=torch.channels_last), size=target.shape[-2:], mode="bilinear",
        align_corners=False)
    cm = ConfusionMatrix(n)
    cm.update(up.argmax(1)[0], target)
    return cm.mat.to(torch.int32)


def _same_branches(models: Sequence[torch.nn.Module]) -> bool:
    ref = {k: v for k, v in models[0].state_dict().items() if not k.startswith("gate.") and k != "branch_cost"}
    for m in models[1:]:
        sd = m.state_dict()
        if any(not torch.equal(v, sd[k]) for k, v in ref.items()):
            return False
    return True


def interpolate_line(points: list[tuple[float, float]], x: float) -> float | None:
    """The fixed-branch line at compute ``x``: linear between the neighbouring (FLOPs, mIoU) points, which is
    what a random mix of those two branches spends and (to first order) scores. None outside the range."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


@torch.no_grad()
def dynmm_pareto(gate_names: Sequence[str], *, static_name: str, control_name: str | None, ds,
                 limit: int = 0, timing_every: int = 4, repeats: int = 3, draws: int = 200, seed: int = 0,
                 desc: str = "pareto") -> dict:
    """Score DynMM gates against fixed branches, random routers, the static model and its control on ``ds``
    (items with ``label_full``). Returns a dict with ``fixed``, ``gates``, ``static``, ``control``, ``env``."""
    gates = [load_checkpoint(n) for n in gate_names]
    models = [m for m, _ in gates]
    if not all(getattr(m, "dynamic", False) for m in models):
        raise FusionError("dynmm_pareto needs DynMM checkpoints")
    if not _same_branches(models):
        raise FusionError("the DynMM checkpoints do not share their branches: one fixed-branch line cannot serve all")
    static, static_card = load_checkpoint(static_name)
    control = load_checkpoint(control_name) if control_name else None
    ref = models[0]
    K = ref.num_stages + 1
    n_cls = ref.cfg.num_classes
    n = len(ds) if not limit else min(limit, len(ds))
    branch_conf = torch.zeros(n, K, n_cls, n_cls, dtype=torch.int32)
    named = {"static": static, **({"control": control[0]} if control else {}),
             **{c["name"]: m for m, c in gates}}
    conf = {k: torch.zeros(n_cls, n_cls, dtype=torch.int64) for k in named}
    flops: dict[str, list[float]] = {k: [] for k in named}
    chosen: dict[str, list[int]] = {c["name"]: [] for _, c in gates}
    fp16_same: dict[str, list[bool]] = {c["name"]: [] for _, c in gates}
    margins: dict[str, list[float]] = {c["name"]: [] for _, c in gates}
    times: dict[str, list[float]] = {k: [] for k in named}
    summaries, dfeats = [], []
    half_gates = {c["name"]: copy.deepcopy(m.gate).half().eval() for m, c in gates}
    rng = np.random.default_rng(seed)
    for i in tqdm(range(n), desc=desc, mininterval=15):
        item = ds[i]
        inputs = {RGB: item[RGB][None], DEPTH: item[DEPTH][None]}
        target = item["label_full"]
        summ, dfeat, all_logits = ref.gate_data(inputs[RGB], inputs[DEPTH])
        summaries.append(summ)
        dfeats.append(dfeat)
        for k in range(K):
            branch_conf[i, k] = _confusion(all_logits[k], target, n_cls)
        del all_logits
        for name, model in named.items():
            out = model(inputs, count_flops=True)
            flops[name].append(float(out.flops[0]))
            conf[name] += _confusion(out.logits, target, n_cls).long()
            if name in chosen:
                chosen[name].append(int(out.branch[0]))
                logit32 = model.gate.head(summ, dfeat)[0]
                top2 = logit32.topk(2).values
                margins[name].append(float(top2[0] - top2[1]))
                logit16 = half_gates[name].head(summ.half(), dfeat.half())[0]
                fp16_same[name].append(int(logit16.argmax()) == int(out.branch[0]) == int(logit32.argmax()))
        if timing_every and i % timing_every == 0:
            for name in named:  # warm-up of this frame's path
                named[name](inputs)
            per = {name: [] for name in named}
            for _ in range(repeats):
                for j in rng.permutation(len(named)):
                    name = list(named)[j]
                    t = time.perf_counter()
                    named[name](inputs)
                    per[name].append((time.perf_counter() - t) * 1e3)
            for name in named:
                times[name].append(statistics.median(per[name]))
    branch_flops = ref.branch_flops(tuple(ds[0][RGB].shape[-2:]))  # the forced path of each branch, gate included
    fixed = []
    for k in range(K):
        mat = branch_conf[:, k].sum(0)
        fixed.append({"branch": k, "miou": round(_miou(mat), 2), "pixel_acc": round(_pixacc(mat), 2),
                      "gflops": round(branch_flops[k] / 1e9, 4)})
    line = [(f["gflops"], f["miou"]) for f in fixed]
    st_ms = np.array(times["static"]) if times["static"] else None

    def timing(name: str) -> dict:
        if st_ms is None:
            return {}
        t = np.array(times[name])
        ratio = t / st_ms  # paired: the same frame, the same repeat rounds
        q1, q3 = np.percentile(t, [25, 75])
        return {"median_ms": round(float(np.median(t)), 2), "iqr_ms": [round(float(q1), 2), round(float(q3), 2)],
                "ms_ratio_vs_static": round(float(np.median(ratio)), 3),
                "ms_ratio_iqr": [round(float(v), 3) for v in np.percentile(ratio, [25, 75])],
                "timed_frames": int(len(t)), "repeats": repeats}

    def summary(name: str) -> dict:
        return {"miou": round(_miou(conf[name]), 2), "pixel_acc": round(_pixacc(conf[name]), 2),
                "mean_gflops": round(float(np.mean(flops[name])) / 1e9, 4), **timing(name)}

    res = {"frames": n, "fixed": fixed, "static": {"name": static_name, **summary("static")}, "gates": []}
    if control:
        res["control"] = {"name": control[1]["name"], **summary("control")}
    S, D = torch.cat(summaries), torch.cat(dfeats)
    swap = torch.roll(torch.arange(n), 1)  # frame i's RGB with frame i-1's depth
    idx = torch.arange(n)
    for model, card in gates:
        name = card["name"]
        b = torch.tensor(chosen[name])
        g = summary(name)
        rand = []
        for _ in range(draws):  # the same branch mix, assigned to frames at random
            perm = torch.from_numpy(rng.permutation(n))
            rand.append(_miou(branch_conf[idx, b[perm]].sum(0)))
        rand_arr = np.array(rand)
        fixed_at = interpolate_line(line, g["mean_gflops"])
        swapped = model.gate.head(S, D[swap]).argmax(1)
        hist = torch.bincount(b, minlength=K).tolist()
        res["gates"].append({
            "name": name, "resource_weight": card.get("budget", {}).get("resource_weight"), **g,
            "gflops_ratio_vs_static": round(g["mean_gflops"] / res["static"]["mean_gflops"], 3),
            "branch_hist": hist, "branch_share": [round(h / n, 3) for h in hist],
            "random_router": {"miou_mean": round(float(rand_arr.mean()), 2), "miou_std": round(float(rand_arr.std()), 2),
                              "gate_beats_share": round(float((g["miou"] > rand_arr).mean()), 3), "draws": draws},
            "fixed_line_at_same_gflops": None if fixed_at is None else round(fixed_at, 2),
            "vs_fixed_line": None if fixed_at is None else round(g["miou"] - fixed_at, 2),
            "vs_random_router": round(g["miou"] - float(rand_arr.mean()), 2),
            "vs_static": round(g["miou"] - res["static"]["miou"], 2),
            "fp16_agreement": round(float(np.mean(fp16_same[name])), 4),
            "decision_margin_median": round(float(np.median(margins[name])), 3),
            "decisions_changed_by_other_depth": round(float((swapped != b).float().mean()), 3),
        })
    return res


# --------------------------------------------------------------------------- README figure
#
# The README tables (dynmm_lines, sparse_lines, deq_lines) only read the stored results: fusion.results.


def dynmm_svg(res: dict, *, width: int = 640, height: int = 400) -> str:
    """The Pareto plot (mIoU vs GFLOPs) as a standalone SVG: fixed-branch line, random routers, gates,
    static model and control."""
    pts = [(f["gflops"], f["miou"]) for f in res["fixed"]]
    pts += [(g["mean_gflops"], g["miou"]) for g in res["gates"]]
    pts += [(g["mean_gflops"], g["random_router"]["miou_mean"]) for g in res["gates"]]
    pts += [(res[k]["mean_gflops"], res[k]["miou"]) for k in ("static", "control") if k in res]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x0, x1 = x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0)
    y0, y1 = y0 - 0.08 * (y1 - y0 or 1), y1 + 0.08 * (y1 - y0 or 1)
    L, R, T, B = 60, 170, 20, 50

    def X(v: float) -> float:
        return L + (v - x0) / (x1 - x0 or 1) * (width - L - R)

    def Y(v: float) -> float:
        return height - B - (v - y0) / (y1 - y0 or 1) * (height - T - B)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{L}" y1="{height - B}" x2="{width - R}" y2="{height - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{height - B}" stroke="black"/>']
    for t in np.linspace(x0, x1, 5):
        out.append(f'<text x="{X(t):.1f}" y="{height - B + 16}" text-anchor="middle">{t:.2f}</text>')
    for t in np.linspace(y0, y1, 5):
        out.append(f'<text x="{L - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    out.append(f'<text x="{(L + width - R) / 2}" y="{height - 12}" text-anchor="middle">GFLOPs per frame '
               f'(measured)</text>')
    out.append(f'<text x="14" y="{(T + height - B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(T + height - B) / 2})">test mIoU</text>')
    fx = sorted((f["gflops"], f["miou"], f["branch"]) for f in res["fixed"])
    out.append('<polyline fill="none" stroke="#888" stroke-width="1.5" points="'
               + " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b, _ in fx) + '"/>')
    for a, b, k in fx:
        out.append(f'<circle cx="{X(a):.1f}" cy="{Y(b):.1f}" r="4" fill="#888"/>'
                   f'<text x="{X(a) + 6:.1f}" y="{Y(b) + 14:.1f}" fill="#555">k={k}</text>')
    for g in res["gates"]:
        rr = g["random_router"]
        xa = X(g["mean_gflops"])
        out.append(f'<line x1="{xa:.1f}" y1="{Y(rr["miou_mean"] - rr["miou_std"]):.1f}" x2="{xa:.1f}" '
                   f'y2="{Y(rr["miou_mean"] + rr["miou_std"]):.1f}" stroke="#e69f00"/>'
                   f'<rect x="{xa - 3.5:.1f}" y="{Y(rr["miou_mean"]) - 3.5:.1f}" width="7" height="7" fill="#e69f00"/>')
        out.append(f'<circle cx="{xa:.1f}" cy="{Y(g["miou"]):.1f}" r="5.5" fill="#0072b2"/>'
                   f'<text x="{xa + 8:.1f}" y="{Y(g["miou"]) - 6:.1f}" fill="#0072b2">{g["name"].split("_")[-1]}</text>')
    for key, color in (("static", "#009e73"), ("control", "#cc79a7")):
        if key in res:
            r = res[key]
            out.append(f'<path d="M {X(r["mean_gflops"]):.1f} {Y(r["miou"]) - 6:.1f} l 6 6 l -6 6 l -6 -6 z" '
                       f'fill="{color}"/>')
    legend = [("#888", "fixed branch k (forced)"), ("#0072b2", "DynMM gate"), ("#e69f00", "random router, same mix"),
              ("#009e73", "static base"), ("#cc79a7", "static, same extra epochs")]
    for j, (color, text) in enumerate(legend):
        y = T + 10 + 18 * j
        out.append(f'<rect x="{width - R + 12}" y="{y - 8}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{width - R + 28}" y="{y + 1}">{text}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_svg(path: Path, svg: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(svg + "\n")


# --------------------------------------------------------------------------- sparse and DEQ fusion
#
# Both methods own the depth fusion of one encoder stage. Per frame, everything before that stage (and the
# method-independent encoder outputs at it) is computed once; each setting then runs the block, the rest of
# the network and the decoder, so the settings are scored on exactly the same features. These grids are
# scored at the model's resolution (240x320, labels resized nearest, as the validation score): dozens of
# settings per frame at 480x640 would take the 2-core machine most of an hour. The headline table
# (``results:rgbd``) scores the shipped settings at the full 480x640.



def _stage_prefix(model: torch.nn.Module, rgb: torch.Tensor, depth: torch.Tensor) -> dict:
    """Features up to the method's stage: fused RGB features of the earlier stages, the RGB and depth
    encoder outputs at the method's stage, and the depth features of the later stages (depth stays
    unimodal, so they do not depend on the setting)."""
    s0 = model.method_stage
    x, d, _ = model.normalise(rgb, depth)
    feats = []
    for s in range(s0):
        x = model.rgb_encoder.stages[s](x)
        d = model.depth_encoder.stages[s](d)
        x = model._fuse(s, x, d, _Trace(), RunOptions())
        feats.append(x)
    x = model.rgb_encoder.stages[s0](x)
    ds = []
    for s in range(s0, model.num_stages):
        d = model.depth_encoder.stages[s](d)
        ds.append(d)
    return {"feats": feats, "x": x, "depths": ds, "size": tuple(rgb.shape[-2:])}


def _stage_suffix(model: torch.nn.Module, pre: dict, opts: RunOptions, *, counting: bool = False
                  ) -> tuple[torch.Tensor, _Trace]:
    """Logits with the method's block run under ``opts`` (and the trace of that block); ``counting``: the block
    measures its own FLOPs."""
    s0 = model.method_stage
    trace = _Trace()
    feats = list(pre["feats"])
    x = model._fuse(s0, pre["x"], pre["depths"][0], trace, opts, counting)
    feats.append(x)
    for j, s in enumerate(range(s0 + 1, model.num_stages), start=1):
        x = model._fuse(s, model.rgb_encoder.stages[s](x), pre["depths"][j], trace, RunOptions())
        feats.append(x)
    return model.decoder(feats, pre["size"]), trace


def _zero_cost(scores: dict[str, dict], key: str) -> float:
    return round(scores[key]["miou"] - scores["zeroed"]["miou"], 2)


@torch.no_grad()
def sparse_ablation(name: str, ds, *, ratios: Sequence[float] = (0.25, 0.125, 0.0625),
                    modes: Sequence[str] = SPARSE_LEARNED + ("avg", "max") + SPARSE_BASELINES, limit: int = 0,
                    desc: str = "sparse ablation") -> dict:
    """Sparse token fusion: every pooling mode at every keep ratio, dense tokens (pool "none") and the block
    zeroed, on the same frames. Window modes use a window sized from the keep ratio (about 1/ratio cells),
    so every mode at a ratio feeds about the same number of tokens to the cross-modal layer. Random modes
    are seeded (the block's eval seed): one fixed draw per frame."""
    model, card = load_checkpoint(name)
    if getattr(model, "kind", None) != "sparse":
        raise FusionError(f"{name} is not a sparse_rgbd model")
    model.eval()
    block = model.token_fusion
    shipped = {"pool": block.cfg.pool, "keep_ratio": block.cfg.keep_ratio}
    auto = copy.deepcopy(model)  # window modes: the window follows the keep ratio
    auto.token_fusion.cfg = __import__("dataclasses").replace(block.cfg, window=None)
    settings = {"dense": (model, {"pool": "none"}), "zeroed": (model, {"zero_block": True})}
    for r in ratios:
        for m in modes:
            settings[f"{m}@{r:g}"] = (auto if m in ("avg", "max", "attn_avg", "strided_random") else model,
                                      {"pool": m, "keep_ratio": r})
    settings["shipped"] = (model, dict(shipped))
    n_cls = model.cfg.num_classes
    conf = {k: torch.zeros(n_cls, n_cls, dtype=torch.int64) for k in settings}
    info: dict[str, dict] = {}
    n = len(ds) if not limit else min(limit, len(ds))
    s0 = model.method_stage
    for i in tqdm(range(n), desc=desc, mininterval=15):
        item = ds[i]
        pre = _stage_prefix(model, item[RGB][None], item[DEPTH][None])
        enc = block.encode({RGB: pre["x"], DEPTH: pre["depths"][0]})  # the unimodal layers: the same for all
        for key, (m, opts) in settings.items():
            first = key not in info
            if first or key == "zeroed":  # the full path once per setting (FLOPs measured on it)
                logits, tr = _stage_suffix(m, pre, RunOptions.of(**opts), counting=key != "zeroed")
            else:  # pooling, cross-modal layer and read-back on the cached unimodal tokens, then the rest
                out, _ = m.token_fusion._pool_and_fuse(enc, opts["pool"], opts.get("keep_ratio"))
                x = model.fusions[s0].se_rgb(pre["x"]) + out
                feats = list(pre["feats"]) + [x]
                for j, s in enumerate(range(s0 + 1, model.num_stages), start=1):
                    feats.append(model._fuse(s, model.rgb_encoder.stages[s](feats[-1]), pre["depths"][j], _Trace(),
                                             RunOptions()))
                logits = model.decoder(feats, pre["size"])
            conf[key] += _confusion(logits, item["label"], n_cls).long()
            if first:
                tk = tr.tokens
                info[key] = {"tokens_in": tk.tokens_before if tk else 0, "tokens_after": tk.tokens_after if tk else 0,
                             "fusion_flops": tr.fusion_flops or 0.0}
    res = {"name": name, "frames": n, "shipped": shipped, "settings": {}}
    for key, (m, opts) in settings.items():
        res["settings"][key] = {**opts, "miou": round(_miou(conf[key]), 2), "pixel_acc": round(_pixacc(conf[key]), 2),
                                **info[key]}
    sc = res["settings"]
    dense_flops = sc["dense"]["fusion_flops"]
    for v in sc.values():
        v["fusion_flops_vs_dense"] = round(v["fusion_flops"] / dense_flops, 4) if dense_flops else None
    best = {}
    for r in ratios:
        present = [m for m in SPARSE_LEARNED if f"{m}@{r:g}" in sc]
        learned = max(present, key=lambda m: sc[f"{m}@{r:g}"]["miou"]) if present else None
        base = {m: sc[f"{m}@{r:g}"]["miou"] for m in SPARSE_BASELINES if f"{m}@{r:g}" in sc}
        best[f"{r:g}"] = {"learned": learned, "learned_miou": sc[f"{learned}@{r:g}"]["miou"] if learned else None,
                          "topk_attn_minus_random": round(sc[f"topk_attn@{r:g}"]["miou"] - base.get("random", float("nan")), 2),
                          "topk_attn_minus_strided": round(sc[f"topk_attn@{r:g}"]["miou"]
                                                           - base.get("strided_random", float("nan")), 2)}
    res["per_ratio"] = best
    res["zeroed_cost"] = _zero_cost(sc, "shipped")
    res["shipped_vs_dense"] = round(sc["shipped"]["miou"] - sc["dense"]["miou"], 2)
    res["token_reduction"] = round(sc["dense"]["tokens_after"] / max(sc["shipped"]["tokens_after"], 1), 2)
    res["fusion_flops_reduction"] = round(dense_flops / max(sc["shipped"]["fusion_flops"], 1.0), 2)
    return res


@torch.no_grad()
def deq_ablation(name: str, ds, *, steps: Sequence[int] = (1, 2, 3, 4, 6, 8, 11), limit: int = 0,
                 desc: str = "deq ablation") -> dict:
    """DEQ fusion: the prediction after k Anderson iterations (the solve's own iterates, decoded), at the
    solver's fixed point (the shipped tolerance and cap), with plain fixed-point iteration at the same cap,
    and with the block zeroed; plus per-frame convergence (relative residual below tol within the cap)."""
    model, card = load_checkpoint(name)
    if getattr(model, "kind", None) != "deq":
        raise FusionError(f"{name} is not a deq_rgbd model")
    model.eval()
    cfg = model.deq_fusion.cfg
    n_cls = model.cfg.num_classes
    keys = [f"iter{k}" for k in steps] + ["fixed_point", "fixed_point_iteration", "zeroed"]
    conf = {k: torch.zeros(n_cls, n_cls, dtype=torch.int64) for k in keys}
    nstep, conv, rel = [], [], []
    n = len(ds) if not limit else min(limit, len(ds))
    for i in tqdm(range(n), desc=desc, mininterval=15):
        item = ds[i]
        target = item["label"]
        pre = _stage_prefix(model, item[RGB][None], item[DEPTH][None])
        trace = _Trace()
        s0 = model.method_stage
        x = model._fuse(s0, pre["x"], pre["depths"][0], trace, RunOptions(keep_states_at=tuple(steps)))
        tr = trace.solver
        nstep.append(int(tr.nstep[0]))
        conv.append(bool(tr.converged[0]))
        rel.append(float(tr.rel_residual[0]))
        feats = list(pre["feats"]) + [x]
        for j, s in enumerate(range(s0 + 1, model.num_stages), start=1):
            feats.append(model._fuse(s, model.rgb_encoder.stages[s](feats[-1]), pre["depths"][j], _Trace(),
                                     RunOptions()))
        conf["fixed_point"] += _confusion(model.decoder(feats, pre["size"]), target, n_cls).long()
        for k, logits in model._decode_iterates((feats, trace.deq_out, tr.states, pre["size"])).items():
            conf[f"iter{k}"] += _confusion(logits, target, n_cls).long()
        for key, opts in (("fixed_point_iteration", {"solver": "fixed_point"}), ("zeroed", {"zero_block": True})):
            logits, _ = _stage_suffix(model, pre, RunOptions.of(**opts))
            conf[key] += _confusion(logits, target, n_cls).long()
    sc = {k: {"miou": round(_miou(conf[k]), 2), "pixel_acc": round(_pixacc(conf[k]), 2)} for k in keys}
    return {"name": name, "frames": n, "solver": cfg.solver, "tol": cfg.tol, "max_iter": cfg.max_iter,
            "stop_mode": cfg.stop_mode, "settings": sc,
            "converged_percent": round(100 * float(np.mean(conv)), 2),
            "mean_steps": round(float(np.mean(nstep)), 2), "max_steps": int(max(nstep)),
            "rel_residual_p99": float(np.percentile(rel, 99)),
            "zeroed_cost": _zero_cost(sc, "fixed_point"),
            "one_step_cost": round(sc["fixed_point"]["miou"] - sc[f"iter{steps[0]}"]["miou"], 2)}
