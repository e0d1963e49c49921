"""RGB-D segmentation page: static fusion vs DynMM on an uploaded frame or an NYUv2 test frame.

Thin by design: read widgets -> call ``fusion`` -> draw what it returns. Every widget has a key
(prefix ``rgbd_``); models sit behind ``st.cache_resource`` (eval mode), pure transforms and the
per-input forwards behind ``st.cache_data``.
"""
from __future__ import annotations

import streamlit as st

from pages._nav import ensure_navigation_mode
from pages._rgbd_input import (TASK, Run, class_names, draw_legend, draw_prediction, gt_targets, metrics_line,
                               overlay, prepare, read_input, run_page, segment, show_cards, show_input, sidebar)

from fusion import inference, viz


ensure_navigation_mode()

STATIC, DYNMM = "Static fusion", "DynMM"


def card_kind(c: dict) -> str | None:
    """"static" or "dynmm" for a model card (by its registry name, else its method text)."""
    if inference.is_dedicated(c):
        return None
    reg = str(c.get("registry") or "")
    if reg in ("static_rgbd", "dynmm_rgbd"):
        return reg.split("_")[0]
    method = str(c.get("method") or "").lower()
    return "dynmm" if "dynmm" in method else "static" if "static" in method else None


def pick_models() -> list[tuple[str, str, bool]]:
    """[(title, checkpoint or registry name, trained)] for static fusion and DynMM."""
    cards = inference.list_checkpoints(TASK)
    static = [c for c in cards if card_kind(c) == "static"]
    dyn = [c for c in cards if card_kind(c) == "dynmm"]
    chosen: list[tuple[str, str, bool]] = []
    chosen.append((STATIC, static[0]["name"], True) if static else (STATIC, "static_rgbd", False))
    if dyn:
        labels = {c["name"]: card_label(c) for c in dyn}
        pick = st.sidebar.selectbox(
            "DynMM budget", list(labels), format_func=labels.get, key="rgbd_budget",
            help="DynMM checkpoints trained with different resource-loss weights λ: a higher λ makes the "
                 "gate prefer cheaper branches (less depth).")
        chosen.append((DYNMM, pick, True))
    else:
        chosen.append((DYNMM, "dynmm_rgbd", False))
    if not (static and dyn):
        missing = " and ".join(n for n, have in (("static fusion", static), ("DynMM", dyn)) if not have)
        st.info(f"No trained checkpoint for {missing} in `assets/checkpoints/` yet. Showing **randomly "
                "initialised** models in its place, so you can see the mechanics (gate, compute, depth "
                "ablation) — their predictions mean nothing.")
    return chosen


def card_label(c: dict) -> str:
    """``dynmm_rgbd_b1 · λ=0.2 · 1.23 GFLOPs · mIoU 30.1%`` from whatever the card holds."""
    parts = [str(c.get("title") or c["name"])]
    lam = (c.get("training") or {}).get("resource_weight") if isinstance(c.get("training"), dict) else None
    if isinstance(lam, (int, float)):
        parts.append(f"λ={lam:g}")
    m = c.get("metrics") if isinstance(c.get("metrics"), dict) else {}
    if isinstance(m.get("mean_gflops"), (int, float)):
        parts.append(f"{m['mean_gflops']:.2f} GFLOPs")
    if isinstance(m.get("miou"), (int, float)):  # fusion.evaluate writes percent
        parts.append(f"test mIoU {m['miou']:.1f}%")
    return " · ".join(parts)


def decision_text(r: Run) -> str:
    if r.branch is None:
        return "n/a"
    n_stages = len(r.gate_probs) - 1 if r.gate_probs else None
    return f"k={r.branch} — {viz.branch_description(r.branch, n_stages)}"


def main() -> None:
    st.title("RGB-D segmentation: static fusion vs DynMM")
    st.caption(
        "Two networks with the same RGB and depth encoders (EfficientNet-Lite0) label every pixel of an indoor "
        "scene with an NYUv2 class. **Static fusion** adds depth features into the RGB stream at all four stages. "
        "**DynMM** (Xue & Marculescu 2023) first runs a small gate that picks branch *k*: depth fused into the "
        "first *k* stages; *k* = 0 means the depth encoder never runs, so easy inputs cost less."
    )
    opts = sidebar("rgbd")
    frame = read_input(opts)
    if frame is None:
        return
    rgb, depth, label40, notes = prepare(frame.rgb, frame.depth, frame.label40)
    show_input(frame, rgb, depth, frame.notes + notes,
               "No depth map: static fusion gets an all-zero depth, DynMM runs RGB only.")

    models = pick_models()
    st.sidebar.header("Ablation")
    remove_depth = st.sidebar.toggle(
        "Remove depth", value=False, key="rgbd_remove_depth", disabled=depth is None,
        help="Re-run both models without the depth map and show which pixels change.")

    with st.spinner("Segmenting (each model: one counted forward, a warm-up and three timed runs)…"):
        runs = {title: segment(name, trained, rgb, depth) for title, name, trained in models}
    stat, dyn = runs[STATIC], runs[DYNMM]
    n_cls = dyn.num_classes
    names = class_names(n_cls)
    gt = None if label40 is None else gt_targets(label40, n_cls)

    # ---- segmentations, side by side with the ground truth
    st.subheader("Segmentation")
    cols = st.columns(3)
    for col, (title, r) in zip(cols, runs.items()):
        with col:
            draw_prediction(title + (f" · branch k={r.branch}" if r.branch is not None else ""), r.labels, rgb, gt,
                            n_cls, opts["alpha"], r.notes)
    with cols[2]:
        if gt is not None:
            st.markdown("**Ground truth**")
            st.image(overlay(rgb, gt, opts["alpha"]), width="stretch",
                     caption="untinted = otherprop/unlabelled (ignored in the scores)")
        st.markdown("**Classes**")
        draw_legend([r.labels for r in runs.values()] + ([gt] if gt is not None else []), names)

    # ---- the gate and the compute it saves
    g1, g2 = st.columns(2)
    with g1:
        st.subheader("DynMM gate")
        st.markdown(f"**Decision:** {decision_text(dyn)}")
        if dyn.gate_probs is not None:
            st.plotly_chart(viz.gate_probs_figure(dyn.gate_probs, dyn.branch, n_stages=len(dyn.gate_probs) - 1),
                            key="rgbd_gate_chart", width="stretch")
    with g2:
        st.subheader("Compute spent")
        rows = [{"name": t, "flops": r.flops, "ms": r.ms} for t, r in runs.items()]
        st.plotly_chart(viz.compute_figure(rows), key="rgbd_compute_chart", width="stretch")
        save_f = viz.saving_percent(stat.flops, dyn.flops)
        save_t = viz.saving_percent(stat.ms, dyn.ms)
        m1, m2 = st.columns(2)
        m1.metric("DynMM FLOPs", viz.format_flops(dyn.flops), delta_color="inverse",
                  delta=None if save_f is None else f"{-save_f:+.1f}% vs static")
        m2.metric("DynMM time", f"{dyn.ms:.0f} ms", delta_color="inverse",
                  delta=None if save_t is None else f"{-save_t:+.1f}% vs static")
        if save_f is not None:
            verb = "saves" if save_f >= 0 else "spends"
            st.caption(
                f"On this input DynMM {verb} **{abs(save_f):.1f}%** {'of' if save_f >= 0 else 'more than'} static "
                f"fusion's FLOPs ({viz.format_flops(stat.flops)} → {viz.format_flops(dyn.flops)}, gate included). "
                "FLOPs are counted with torch's FlopCounterMode on the path that ran; times are the median of "
                "three forwards on this machine's CPU, at the models' 240×320 input.")

    # ---- what the checkpoints say about themselves
    trained = [(title, name) for title, name, ok in models if ok]
    if trained:
        show_cards(trained)

    # ---- ablation: remove depth
    if remove_depth and depth is not None:
        st.subheader("Without depth: what changes")
        st.caption("Both models re-run on the same photo with the depth map removed. Magenta pixels changed label.")
        acols = st.columns(3)
        for col, m in zip(acols, models):
            title = m[0]
            r0, r1 = runs[title], segment(m[1], m[2], rgb, None)
            mask = viz.changed_mask(r0.labels, r1.labels)
            with col:
                st.markdown(f"**{title}**: {mask.mean() * 100:.1f}% of pixels change label")
                st.image(viz.change_image(rgb, mask), width="stretch", caption=f"{int(mask.sum()):,} pixels changed")
                if r0.branch is not None:
                    same = " (unchanged)" if r0.branch == r1.branch else ""
                    st.markdown(f"Gate decision: k={r0.branch} → **k={r1.branch}**{same}")
                    st.caption(decision_text(r1))
                st.caption(f"compute {viz.format_flops(r0.flops)} → {viz.format_flops(r1.flops)}")
                line = metrics_line(r1.labels, gt, n_cls)
                if line:
                    st.markdown("without depth: " + line)
                for note in r1.notes:
                    st.caption(note)


run_page(main)
