"""Evidence page: does each method do what it claims? Reads the ablation results `fusion.evaluate` wrote
(nothing is computed here: the numbers are the test-split measurements behind the README; the tables come
from ``fusion.results``, the same code that writes the README's).

Files read from ``assets/figures/`` (or the folder in ``$FUSION_FIGURES``, e.g. for tests):
``dynmm_pareto.json``, ``sparse_ablation_test.json`` and ``deq_ablation_test.json``. A missing file gives a
note saying which command writes it; a file that cannot be drawn gives a warning, never a traceback.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from pages._common import run_page
from pages._nav import ensure_navigation_mode

from fusion import results, viz

ensure_navigation_mode()

FIGURES = Path(os.environ.get("FUSION_FIGURES") or Path(__file__).resolve().parents[1] / "assets" / "figures")
SPLIT = "test"
BAD_FORMAT = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)


def read_json(path: Path) -> dict | None:
    """The parsed file, or None when it is missing, unreadable or not a JSON object."""
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return res if isinstance(res, dict) and res else None


def missing(what: str, path: Path, command: str) -> None:
    st.info(f"No {what} evidence yet: `{path.name}` is not in `{path.parent}`. It is written by `{command}` "
            "(see the README).")


def unreadable(path: Path, err: Exception, command: str) -> None:
    st.warning(f"`{path.name}` is there but could not be drawn (unexpected format: {type(err).__name__}: {err}). "
               f"Re-create it with `{command}`.")


# --------------------------------------------------------------------------- DynMM


def dynmm_section(res: dict) -> None:
    rows = dynmm_rows(res)  # built first: a broken file draws nothing
    fig = viz.pareto_figure(res)
    ref = [res[k] for k in ("static", "control") if k in res]
    refs = ("References: " + "; ".join(f"`{r['name']}` {r['miou']:.2f} mIoU at {r['mean_gflops']:.3f} GFLOPs"
                                       for r in ref) + f" ({res['frames']} test frames, {res.get('env', '')}).")
    st.markdown(
        "A gate that really decides must beat **routing that ignores the input**: each fixed branch *k* "
        "(depth fused into the first *k* stages) forced for every frame, and a **random router** that uses "
        "the gate's own mix of branches (the same compute, assigned at random). Below the line, the gate would "
        "be no better than a fixed choice.")
    st.plotly_chart(fig, key="evidence_pareto", width="stretch")
    st.dataframe(rows, hide_index=True, key="evidence_dynmm_table")
    st.markdown(refs)


def dynmm_rows(res: dict) -> list[dict]:
    """One table row per gate budget of the DynMM ablation."""
    rows = []
    for g in res["gates"]:
        rr = g["random_router"]
        rows.append({"budget": g["name"], "λ": g["resource_weight"], "mIoU": g["miou"],
                     "GFLOPs": g["mean_gflops"], "vs static FLOPs": f"{g['gflops_ratio_vs_static']:.2f}x",
                     "vs static time": (f"{g['ms_ratio_vs_static']:.2f}x" if "ms_ratio_vs_static" in g else "-"),
                     "random router (same mix)": f"{rr['miou_mean']:.2f} ± {rr['miou_std']:.2f}",
                     "gate − random": f"{g['vs_random_router']:+.2f}",
                     "gate − fixed line": "-" if g["vs_fixed_line"] is None else f"{g['vs_fixed_line']:+.2f}",
                     "frames per branch k=0..4": " / ".join(f"{100 * s:.0f}%" for s in g["branch_share"]),
                     "fp16 = fp32 decisions": f"{100 * g['fp16_agreement']:.1f}%",
                     "decisions changed by another frame's depth":
                         f"{100 * g['decisions_changed_by_other_depth']:.0f}%"})
    return rows


# --------------------------------------------------------------------------- sparse token fusion


def sparse_grid(res: dict) -> tuple[list[str], list[float], dict[tuple[str, float], dict]]:
    """Pooling modes (in the file's order), keep ratios (largest first) and {(mode, ratio): setting} of the
    mode x ratio grid in a sparse ablation."""
    sc = res["settings"]
    grid = {(k.split("@")[0], float(v["keep_ratio"])): v for k, v in sc.items() if "@" in k}
    modes = list(dict.fromkeys(m for m, _ in grid))
    ratios = sorted({r for _, r in grid}, reverse=True)
    return modes, ratios, grid


def sparse_figure(res: dict) -> go.Figure:
    """mIoU of every pooling mode, grouped by keep ratio (one colour per ratio), with the dense tokens, the
    shipped setting and the block switched off as horizontal reference lines."""
    modes, ratios, grid = sparse_grid(res)
    sc = res["settings"]
    fig = go.Figure()
    palette = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00"]
    for i, r in enumerate(ratios):
        ms = [m for m in modes if (m, r) in grid]
        fig.add_trace(go.Scatter(
            x=ms, y=[grid[(m, r)]["miou"] for m in ms], mode="markers", name=f"keep {r:g}",
            marker=dict(size=11, color=palette[i % len(palette)]), customdata=[grid[(m, r)]["tokens_after"] for m in ms],
            hovertemplate=f"%{{x}} · keep {r:g}: %{{y:.2f}} mIoU (%{{customdata}} tokens)<extra></extra>"))
    refs = [("dense", "dense (pool=none)", "#555", "dash"),
            ("shipped", "shipped ({pool} keep {keep_ratio:g})", "#0072b2", "dot"),
            ("zeroed", "block off", "#d62728", "dash")]
    for key, label, color, dash in refs:
        if key in sc:
            v = sc[key]
            text = label.format(pool=v.get("pool", "?"), keep_ratio=float(v.get("keep_ratio") or 0))
            fig.add_hline(y=v["miou"], line_dash=dash, line_color=color, annotation_text=f"{text}: {v['miou']:.2f}",
                          annotation_position="top left")
    fig.update_layout(scattermode="group", xaxis_title="pooling mode", yaxis_title=f"{res.get('split', SPLIT)} mIoU",
                      height=380, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def sparse_summary(res: dict) -> str:
    """The claims the sparse ablation tests, in numbers."""
    sc = res["settings"]
    sh = sc["shipped"]
    parts = [f"Shipped setting (`{sh['pool']}`, keep {float(sh['keep_ratio']):g}): **{sh['miou']:.2f}** mIoU with "
             f"{res['token_reduction']:.1f}x fewer tokens and {res['fusion_flops_reduction']:.1f}x fewer fusion-stage "
             f"FLOPs than dense tokens ({sc['dense']['miou']:.2f} mIoU; shipped − dense "
             f"**{res['shipped_vs_dense']:+.2f}**).",
             f"With the block switched off (no depth at stride 16) the model scores {sc['zeroed']['miou']:.2f}: the "
             f"block is worth **{res['zeroed_cost']:+.2f}** mIoU."]
    per = res.get("per_ratio") or {}
    if per:
        parts.append("Attention-chosen tokens vs the same number chosen at random: "
                     + "; ".join(f"keep {r}: `topk_attn` − `random` **{v['topk_attn_minus_random']:+.2f}**, "
                                 f"− `strided_random` {v['topk_attn_minus_strided']:+.2f}" for r, v in per.items())
                     + ".")
    return " ".join(parts)


def sparse_section(res: dict) -> None:
    summary, fig = sparse_summary(res), sparse_figure(res)  # built first: a broken file draws nothing
    tables = "\n".join(results.sparse_lines(res, res.get("env", ""), res.get("split", SPLIT)))
    st.markdown(
        "Sparse fusion claims that **a few well-chosen tokens per modality** carry what cross-modal attention "
        "needs. So the tokens it keeps must do about as well as keeping **all** of them (dense), better than "
        "the **same number picked at random**, and the block must matter at all: with its output **zeroed** "
        "(depth then does not reach the RGB stream at stride 16) the score should drop.")
    st.markdown(summary)
    st.plotly_chart(fig, key="evidence_sparse_chart", width="stretch")
    st.markdown(tables)


# --------------------------------------------------------------------------- DEQ fusion


def deq_steps(res: dict) -> list[tuple[int, float]]:
    """(solver step k, mIoU after k steps) of a DEQ ablation, in step order."""
    return sorted((int(k[4:]), float(v["miou"])) for k, v in res["settings"].items() if k.startswith("iter"))


def deq_figure(res: dict) -> go.Figure:
    """mIoU of the state after k solver steps, with the fixed point, plain fixed-point iteration and the
    block switched off as horizontal reference lines."""
    sc = res["settings"]
    steps = deq_steps(res)
    fig = go.Figure(go.Scatter(x=[k for k, _ in steps], y=[m for _, m in steps], mode="lines+markers",
                               name=f"after k {res.get('solver', 'solver')} steps", line=dict(color="#0072b2"),
                               hovertemplate="after %{x} step(s): %{y:.2f} mIoU<extra></extra>"))
    refs = [("fixed_point", "fixed point", "#009e73", "solid"),
            ("fixed_point_iteration", "plain fixed-point iteration", "#888", "dot"),
            ("zeroed", "block off", "#d62728", "dash")]
    for key, label, color, dash in refs:
        if key in sc:
            fig.add_hline(y=sc[key]["miou"], line_dash=dash, line_color=color,
                          annotation_text=f"{label}: {sc[key]['miou']:.2f}", annotation_position="top left")
    fig.update_layout(xaxis=dict(title="solver step k", tickvals=[k for k, _ in steps]),
                      yaxis_title=f"{res.get('split', SPLIT)} mIoU", height=340, showlegend=True,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def deq_summary(res: dict) -> str:
    """The claims the DEQ ablation tests, in numbers."""
    sc = res["settings"]
    parts = [f"At the fixed point the model scores **{sc['fixed_point']['miou']:.2f}** mIoU."]
    steps = deq_steps(res)
    if steps:
        k, m = steps[0]
        parts.append(f"After {k} solver step{'s' if k > 1 else ''} it scores {m:.2f}: solving to the fixed point "
                     f"is worth **{sc['fixed_point']['miou'] - m:+.2f}** mIoU.")
    parts.append(f"With the block switched off (no depth at stride 32) it scores {sc['zeroed']['miou']:.2f}: the "
                 f"block is worth **{res['zeroed_cost']:+.2f}** mIoU.")
    parts.append(f"The solve converged on **{res['converged_percent']:.1f}%** of frames (mean "
                 f"{res['mean_steps']:.1f} steps, cap {res['max_iter']}).")
    return " ".join(parts)


def deq_section(res: dict) -> None:
    summary, fig = deq_summary(res), deq_figure(res)  # built first: a broken file draws nothing
    tables = "\n".join(results.deq_lines(res, res.get("env", ""), res.get("split", SPLIT)))
    st.markdown(
        "DEQ fusion claims that the fused state is the **fixed point** of its block, found by a solver. So the "
        "solve must converge, the prediction should improve (or at least settle) as the solver approaches the "
        "fixed point, and the block must matter: with its output **zeroed** (depth then does not reach the RGB "
        "stream at stride 32) the score should drop.")
    st.markdown(summary)
    st.plotly_chart(fig, key="evidence_deq_chart", width="stretch")
    st.markdown(tables)


# --------------------------------------------------------------------------- page


def section(header: str, path: Path, what: str, command: str, draw) -> None:
    """One method's evidence: ``draw(res)`` for the file at ``path``, else a note on how to make it."""
    st.header(header)
    res = read_json(path)
    if res is None:
        missing(what, path, command)
        return
    try:
        draw(res)
    except BAD_FORMAT as e:
        unreadable(path, e, command)


def main() -> None:
    st.title("Does each method do what it claims?")
    st.caption("Every number here was measured by `python -m fusion.evaluate` on the NYUv2 test split (read once, "
               "after every setting was chosen on the validation split); this page only draws it.")
    section("DynMM: does the gate decide?", FIGURES / "dynmm_pareto.json", "DynMM",
            "python -m fusion.evaluate --pareto ...", dynmm_section)
    section("Sparse token fusion: do the kept tokens carry the fusion?", FIGURES / f"sparse_ablation_{SPLIT}.json",
            "sparse-fusion", f"python -m fusion.evaluate --ablate sparse_rgbd --split {SPLIT}", sparse_section)
    section("DEQ fusion: does the fixed point matter?", FIGURES / f"deq_ablation_{SPLIT}.json", "DEQ-fusion",
            f"python -m fusion.evaluate --ablate deq_rgbd --split {SPLIT}", deq_section)


run_page(main)
