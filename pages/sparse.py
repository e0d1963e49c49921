"""Sparse token fusion page (SFT, Ding et al.): which tokens of each modality survive the pooling before
cross-modal attention, and what that saves — live, for a pooling mode and keep ratio the user picks; and,
with the block switched off (its output zeroed), what the block contributes on this input.

Thin: widgets -> ``fusion`` -> drawing. Widget keys start with ``sft_``.
"""
from __future__ import annotations

import streamlit as st

from pages._common import run_page, show_card_tables, task_cards, time_metric
from pages._nav import ensure_navigation_mode
from pages._rgbd_input import (TASK, checkpoint_or_untrained, class_names, depth_picture, gt_targets, no_depth_words,
                               prepare, read_input, segment, show_input, sidebar)
from pages._rgbd_views import Timed, block_off_comparison, change_table, draw_map, show_attribution, time_calls

from fusion import compute, inference, viz
from fusion.methods.sparse import POOL_MODES, SparseConfig

ensure_navigation_mode()

POOL_HELP = {
    "none": "dense: every token goes into cross-modal attention (the reference)",
    "max": "max over each non-overlapping window of the token grid",
    "avg": "mean over each window",
    "topk": "the k tokens a learned scorer rates highest",
    "attn_avg": "attention-weighted mean within each window",
    "topk_attn": "the k tokens that receive the most unimodal attention (shipped default)",
    "random": "k random tokens (a control)",
    "strided_random": "one random token per window (a control)",
}
POOL_SHORT = {  # what the sidebar box shows: short enough not to be cut off
    "none": "none — dense", "max": "max — window max", "avg": "avg — window mean", "topk": "topk — learned",
    "attn_avg": "attn_avg — weighted", "topk_attn": "topk_attn — attention", "random": "random — control",
    "strided_random": "strided_random — control",
}
STAGE_TEXT = (
    "**Where depth enters.** At stride 16 depth reaches the RGB stream **only through this block**: that "
    "stage's output is SE_rgb(rgb) + block(rgb, depth), where SE_rgb re-weights the RGB channels and never sees "
    "depth; there is no SE-add of depth beside the block. The other three stages (strides 4, 8 and 32) fuse "
    "depth with the static model's SE-add, SE_rgb(rgb) + SE_depth(depth). Switch the block off in the sidebar "
    "to see what it contributes on this input.")
ZERO_HELP = ("Zero the token-fusion block's output: the stride-16 stage is then SE_rgb(rgb) alone, so depth does "
             "not reach the RGB stream at that stage (and the RGB tokens get no cross-modal refinement). The "
             "other stages keep their SE-add fusion. The page then shows the segmentation with the block off next "
             "to the normal one, and what changed into what.")
KEEP = {"1/4": 0.25, "1/8": 0.125, "1/10": 0.1, "1/16": 0.0625, "1/32": 0.03125}


def _mb(b: float | None) -> float | None:
    return None if b is None else b / 1e6


def model_window(name: str, trained: bool, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """The pooling window the checkpoint was built with (its card's config), else ``default``."""
    card = next((c for c in task_cards(TASK) if c.get("name") == name), {}) if trained else {}
    sparse_cfg = (card.get("config") or {}).get("sparse") or {}
    if "window" not in sparse_cfg:
        return default
    return None if sparse_cfg["window"] is None else (int(sparse_cfg["window"][0]), int(sparse_cfg["window"][1]))


def main() -> None:
    st.title("Sparse token fusion: which tokens survive")
    st.caption(
        "After Ding et al., *Sparse Fusion for Multimodal Transformers* (2021). At stride 16 each modality's "
        "feature map becomes a grid of tokens (15×20 at 240×320); one self-attention layer per modality runs "
        "over them, then a **pooling block keeps only a few tokens per modality** before the cross-modal "
        "attention layer. Segmentation needs every pixel, so the RGB stream's full token grid reads the small "
        "fused set back through one cross-attention (our adaptation of the paper's classifier design). "
        "Change the pooling below: the model re-runs live.")
    st.caption(STAGE_TEXT)
    opts = sidebar("sft")
    cfg = SparseConfig()
    name, trained = checkpoint_or_untrained("sparse_rgbd", "sparse-fusion")[0]
    window = model_window(name, trained, cfg.window)
    st.sidebar.header("Pooling")
    pool = st.sidebar.selectbox(
        "Pooling mode", POOL_MODES, index=POOL_MODES.index(cfg.pool), key="sft_pool",
        format_func=lambda m: POOL_SHORT.get(m, m),
        help="How each modality's tokens are reduced before cross-modal attention:\n"
             + "\n".join(f"- **{m}**: {h}" for m, h in POOL_HELP.items()))
    uses_keep = inference.keep_ratio_applies(pool, window)
    win_text = f"{window[0]}×{window[1]}" if window else "sized from the ratio"
    shipped_keep = next((k for k, v in KEEP.items() if abs(v - cfg.keep_ratio) < 1e-9), "1/10")
    keep_label = st.sidebar.select_slider(
        "Keep ratio", list(KEEP), value=shipped_keep, key="sft_keep", disabled=not uses_keep,
        help=f"Share of each modality's tokens kept by the top-k and random modes (the model's own setting, "
             f"chosen on the validation split: {shipped_keep}). Window modes pool a fixed "
             f"{win_text} window into one token each and ignore it; 'none' keeps every token."
             + ("" if uses_keep else f" **Not used by '{pool}'.**"))
    remove_depth = st.sidebar.toggle("Remove depth", value=False, key="sft_remove_depth",
                                     help="Fuse RGB tokens alone (the depth encoder does not run).")
    st.sidebar.header("Ablation")
    zero_block = st.sidebar.toggle("Switch the block off", value=False, key="sft_zero_block", help=ZERO_HELP)
    frame = read_input(opts)
    if frame is None:
        return
    rgb, depth, label40, notes = prepare(frame.rgb, frame.depth, frame.label40)
    show_input(frame, rgb, depth, frame.notes + notes, "No depth map: only RGB tokens are fused.",
               held_back=remove_depth)
    d_in = None if remove_depth else depth
    sp_opts = {"pool": pool, **({"keep_ratio": KEEP[keep_label]} if uses_keep else {})}
    with st.spinner("Running the sparse and the dense variant, then timing them against each other…"):
        sp = segment(name, trained, rgb, d_in, repeats=0, **sp_opts)
        dn = segment(name, trained, rgb, d_in, repeats=0, pool="none")
        # the block is not run at all when zeroed: pooling options do not apply (and would only split the cache)
        off = segment(name, trained, rgb, d_in, repeats=0, zero_block=True) if zero_block else None
        times = time_calls({"sparse": Timed(name, trained, opts=tuple(sp_opts.items())),
                            "dense": Timed(name, trained, opts=(("pool", "none"),))}, rgb, d_in)
    tk, tkd = sp.tokens, dn.tokens
    n_cls = sp.num_classes
    names = class_names(n_cls)
    gt = None if label40 is None else gt_targets(label40, n_cls)

    st.subheader("Which tokens survive")
    st.caption("Colour = the score the pooling used (attention received, scorer output or window weight; "
               "blue low → red high). Dimmed cells were dropped; white outlines mark the cell that represents "
               "each kept or pooled token; in window modes black lines are window borders (each window becomes "
               "one token).")
    cols = st.columns(2)
    pics = {"rgb": rgb}
    if d_in is not None:
        pics["depth"] = depth_picture(depth)[0]
    for col, (m, pic) in zip(cols, pics.items()):
        grid = tk["grid"][m]
        n_kept = len(tk["kept"][m])
        col.image(viz.token_overlay(pic, grid, tk["scores"][m], tk["kept"][m], tk["windows"][m]), width="stretch",
                  caption=f"{m}: {grid[0]}×{grid[1]} = {grid[0] * grid[1]} tokens → {n_kept} into fusion")
    if d_in is None:
        cols[1].info(no_depth_words("No depth map: only RGB tokens go into the fusion layer.",
                                    held_back=depth is not None))

    st.subheader("What it costs: cross-modal stage, sparse vs dense")
    rows = [{"name": f"{pool} ({tk['after']} tokens)", "tokens": tk["after"], "flops": sp.fusion_flops,
             "mbytes": _mb(sp.fusion_bytes)},
            {"name": f"dense ({tkd['after']} tokens)", "tokens": tkd["after"], "flops": dn.fusion_flops,
             "mbytes": _mb(dn.fusion_bytes)}]
    st.plotly_chart(viz.token_cost_figure(rows), key="sft_cost_chart", width="stretch")
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("tokens into fusion", f"{tk['after']}", f"{tkd['after'] / max(tk['after'], 1):.1f}× fewer",
              delta_color="off")
    if sp.fusion_flops and dn.fusion_flops:
        m2.metric("cross-modal stage", viz.format_flops(sp.fusion_flops),
                  f"{dn.fusion_flops / sp.fusion_flops:.1f}× fewer FLOPs", delta_color="off")
    if sp.fusion_bytes and dn.fusion_bytes:
        m3.metric("allocated there", f"{sp.fusion_bytes / 1e6:.1f} MB",
                  f"{dn.fusion_bytes / sp.fusion_bytes:.1f}× less", delta_color="off")
    m4.metric("whole model", viz.format_flops(sp.flops), f"dense {viz.format_flops(dn.flops)}", delta_color="off")
    time_metric(m5, "whole-model time", times["sparse"], compute.time_ratio(times["dense"], times["sparse"]),
                "dense")
    st.caption("Cross-modal stage = pooling + cross-modal attention layer + read-back, measured with "
               "FlopCounterMode (FLOPs, exact) and by summing the bytes of the tensors its ops produce (MB) on "
               "this input. The unimodal attention before pooling is the same in both variants. "
               f"Sparse {times['sparse'].text()}; dense {times['dense'].text()}. " + compute.timing_note(times))

    st.subheader("Segmentation: sparse vs dense")
    c1, c2, c3 = st.columns(3)
    changed = viz.changed_mask(sp.labels, dn.labels)
    for col, title, r in ((c1, f"sparse · {pool}", sp), (c2, "dense (pool=none)", dn)):
        with col:
            draw_map(title, r.labels, rgb, names, opts["alpha"], gt=gt, n_cls=n_cls, notes=r.notes)
    with c3:
        st.markdown(f"**Where they differ**: {changed.mean() * 100:.1f}% of pixels")
        st.image(viz.change_image(rgb, changed), width="stretch", caption="magenta = label differs")
        change_table(sp.labels, dn.labels, names, before_col="sparse", after_col="dense")
    show_attribution(name, trained, rgb, d_in, names, key="sft", **sp_opts)
    if off is not None:
        st.subheader("Block switched off: what the token fusion contributes")
        st.caption("The same model on the same input with the token-fusion block's output zeroed: the stride-16 "
                   "stage is then SE_rgb(rgb) alone, so "
                   + ("no depth reaches the RGB stream there (the other stages still fuse it with SE-add)."
                      if d_in is not None else "the RGB tokens get no refinement there (depth is off anyway).")
                   + " Left: the normal run with the pooling chosen above; middle: block off; right: what changed.")
        block_off_comparison(sp, off, rgb, names, opts["alpha"], on_title=f"block on · {pool}", gt=gt, n_cls=n_cls)
    if trained:
        show_card_tables([("Sparse token fusion", name)])


run_page(main)
