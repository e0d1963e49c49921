"""RGB-D segmentation page: static fusion vs DynMM on an uploaded frame or an NYUv2 test frame.

Thin by design: read widgets -> call ``fusion`` -> draw what it returns. Every widget has a key
(prefix ``rgbd_``); models sit behind ``st.cache_resource`` (eval mode), pure transforms and the
per-input forwards behind ``st.cache_data``.
"""
from __future__ import annotations

import streamlit as st

from pages._common import Run, pick_model, run_page, show_card_tables, task_cards, time_metric
from pages._nav import ensure_navigation_mode
from pages._rgbd_input import TASK, class_names, gt_targets, prepare, read_input, segment, show_input, sidebar
from pages._rgbd_views import Timed, change_table, draw_ground_truth, draw_map, show_attribution, time_calls

from fusion import compute, inference, viz


ensure_navigation_mode()

STATIC, DYNMM = "Static fusion", "DynMM"


def card_kind(c: dict) -> str | None:
    """"static" or "dynmm" for a model card (by its registry name, else its method text); None for dedicated
    single-modality baselines and controls."""
    if inference.is_dedicated(c) or inference.is_control(c):
        return None
    reg = str(c.get("registry") or "")
    if reg in ("static_rgbd", "dynmm_rgbd"):
        return reg.split("_")[0]
    method = str(c.get("method") or "").lower()
    return "dynmm" if "dynmm" in method else "static" if "static" in method else None


def pick_models() -> list[tuple[str, str, bool]]:
    """[(title, checkpoint or registry name, trained)] for static fusion and DynMM. The static model is the
    card named exactly ``static_rgbd`` when shipped (older static cards such as ``static_rgbd_cpu15`` are
    bases of other models, not the reference)."""
    static = inference.preferred_card(task_cards(TASK, lambda c: card_kind(c) == "static"), inference.STATIC_FUSION)
    chosen: list[tuple[str, str, bool]] = []
    chosen.append((STATIC, static["name"], True) if static else (STATIC, "static_rgbd", False))
    dyn = pick_model(
        TASK, key="rgbd_budget", label="DynMM budget", keep=lambda c: card_kind(c) == "dynmm", format_func=card_label,
        help="DynMM checkpoints trained with different resource-loss weights λ: a higher λ makes the "
             "gate prefer cheaper branches (less depth). GFLOPs: mean over the test split.")
    if dyn:
        st.sidebar.caption(card_detail(dyn))
        chosen.append((DYNMM, dyn["name"], True))
    else:
        chosen.append((DYNMM, "dynmm_rgbd", False))
    if not (static and dyn):
        missing = " and ".join(n for n, have in (("static fusion", static), ("DynMM", dyn)) if not have)
        st.info(f"No trained checkpoint for {missing} in `assets/checkpoints/` yet. Showing **randomly "
                "initialised** models in its place, so you can see the mechanics (gate, compute, depth "
                "ablation) — their predictions mean nothing.")
    return chosen


def card_label(c: dict) -> str:
    """Short enough for the sidebar: ``λ=0.2 · 1.23 GFLOPs`` (the name when the card has neither)."""
    parts = []
    lam = (c.get("training") or {}).get("resource_weight") if isinstance(c.get("training"), dict) else None
    if isinstance(lam, (int, float)):
        parts.append(f"λ={lam:g}")
    m = c.get("metrics") if isinstance(c.get("metrics"), dict) else {}
    if isinstance(m.get("mean_gflops"), (int, float)):
        parts.append(f"{m['mean_gflops']:.2f} GFLOPs")
    return " · ".join(parts) or str(c.get("title") or c["name"])


def card_detail(c: dict) -> str:
    """The line under the budget picker: checkpoint name and test mIoU."""
    m = c.get("metrics") if isinstance(c.get("metrics"), dict) else {}
    miou = f" · test mIoU {m['miou']:.1f}%" if isinstance(m.get("miou"), (int, float)) else ""  # percent
    return f"`{c['name']}`{miou}"


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
        "Compare without depth", value=False, key="rgbd_remove_depth", disabled=depth is None,
        help="Re-run both models without the depth map: their segmentations side by side and what changed "
             "into what.")

    with st.spinner("Segmenting, then timing the two models against each other (warm-up, then five "
                    "alternating runs each)…"):
        runs = {title: segment(name, trained, rgb, depth, repeats=0) for title, name, trained in models}
        times = time_calls({title: Timed(name, trained) for title, name, trained in models}, rgb, depth)
    stat, dyn = runs[STATIC], runs[DYNMM]
    n_cls = dyn.num_classes
    names = class_names(n_cls)
    gt = None if label40 is None else gt_targets(label40, n_cls)

    # ---- segmentations, side by side with the ground truth; each map has its own legend
    st.subheader("Segmentation")
    cols = st.columns(3)
    for col, (title, r) in zip(cols, runs.items()):
        with col:
            draw_map(title + (f" · branch k={r.branch}" if r.branch is not None else ""), r.labels, rgb, names,
                     opts["alpha"], gt=gt, n_cls=n_cls, notes=r.notes)
    if gt is not None:
        with cols[2]:
            draw_ground_truth(gt, rgb, names, opts["alpha"])
    explained = st.radio("Model to explain", [t for t, _, _ in models], horizontal=True, key="rgbd_attr_model")
    for title, name, trained_ok in models:
        if title == explained:
            show_attribution(name, trained_ok, rgb, depth, names, key="rgbd")

    # ---- the gate and the compute it saves: FLOPs first (exact), time second (a noisy sample)
    g1, g2 = st.columns(2)
    with g1:
        st.subheader("DynMM gate")
        st.markdown(f"**Decision:** {decision_text(dyn)}")
        if dyn.gate_probs is not None:
            st.plotly_chart(viz.gate_probs_figure(dyn.gate_probs, dyn.branch, n_stages=len(dyn.gate_probs) - 1),
                            key="rgbd_gate_chart", width="stretch")
    with g2:
        st.subheader("Compute spent")
        ratio = compute.time_ratio(times[STATIC], times[DYNMM])
        noisy = ratio.noisy or any(t.noisy for t in times.values())
        save_f = viz.saving_percent(stat.flops, dyn.flops)
        m1, m2 = st.columns(2)
        m1.metric("DynMM FLOPs", viz.format_flops(dyn.flops), delta_color="inverse",
                  delta=None if save_f is None else f"{-save_f:+.1f}% vs static")
        time_metric(m2, "DynMM time", times[DYNMM], ratio, "static")
        rows = [{"name": t, "flops": r.flops, "ms": times[t].median_ms, "ms_lo": times[t].q1_ms,
                 "ms_hi": times[t].q3_ms} for t, r in runs.items()]
        st.plotly_chart(viz.compute_figure(rows, time_noisy=noisy), key="rgbd_compute_chart", width="stretch")
        if save_f is not None:
            verb = "saves" if save_f >= 0 else "spends"
            st.caption(
                f"On this input DynMM {verb} **{abs(save_f):.1f}%** {'of' if save_f >= 0 else 'more than'} static "
                f"fusion's FLOPs ({viz.format_flops(stat.flops)} → {viz.format_flops(dyn.flops)}, gate included). "
                "FLOPs are counted with torch's FlopCounterMode on the path that ran, at the models' 240×320 "
                "input: exact, they lead.")
        st.caption(f"Static {times[STATIC].text()}; DynMM {times[DYNMM].text()}. " + compute.timing_note(times))

    # ---- what the checkpoints say about themselves
    trained = [(title, name) for title, name, ok in models if ok]
    if trained:
        show_card_tables(trained)

    # ---- ablation: remove depth
    if remove_depth and depth is not None:
        st.subheader("Without depth: what changes")
        st.caption("Both models re-run on the same photo with the depth map removed: the two segmentations side "
                   "by side, the pixels that changed label (magenta), and what changed into what.")
        for title, name, trained_ok in models:
            r0, r1 = runs[title], segment(name, trained_ok, rgb, None, repeats=0)
            mask = viz.changed_mask(r0.labels, r1.labels)
            st.markdown(f"**{title}**: {mask.mean() * 100:.1f}% of pixels change label")
            c_with, c_without, c_diff = st.columns(3)
            with c_with:
                draw_map("with depth" + (f" · k={r0.branch}" if r0.branch is not None else ""), r0.labels, rgb,
                         names, opts["alpha"], gt=gt, n_cls=n_cls)
            with c_without:
                draw_map("without depth" + (f" · k={r1.branch}" if r1.branch is not None else ""), r1.labels,
                         rgb, names, opts["alpha"], gt=gt, n_cls=n_cls, notes=r1.notes)
            with c_diff:
                st.markdown("**What changed**")
                st.image(viz.change_image(rgb, mask), width="stretch", caption=f"{int(mask.sum()):,} pixels changed")
                change_table(r0.labels, r1.labels, names)
                if r0.branch is not None:
                    same = " (unchanged)" if r0.branch == r1.branch else ""
                    st.markdown(f"Gate decision: k={r0.branch} → **k={r1.branch}**{same}")
                    st.caption(decision_text(r1))
                st.caption(f"compute {viz.format_flops(r0.flops)} → {viz.format_flops(r1.flops)}")


run_page(main)
