"""Missing-modality page (Reza et al.): switch RGB or depth off and compare the frozen static model with
the same model plus the tiny adapter set trained for that missing subset (LoRA, SSF or BitFit), and a model
trained on the remaining modality alone; the subset x method robustness matrix from the evaluation.

Thin: widgets -> ``fusion`` -> drawing. Widget keys start with ``miss_``.
"""
from __future__ import annotations

import streamlit as st

from pages._common import run_and_show, run_page, show_card_tables, task_cards
from pages._nav import ensure_navigation_mode
from pages._rgbd_input import (TASK, checkpoint_or_untrained, class_names, depth_picture, gt_targets, prepare,
                               read_input, segment, show_input, sidebar)
from pages._rgbd_views import draw_ground_truth, draw_map, show_attribution

from fusion import inference, viz
from fusion.results import robustness_from_cards, sort_adapter_cards

ensure_navigation_mode()

KIND_HELP = {"lora": "LoRA: low-rank update of convolutions", "ssf": "SSF: per-channel scale and shift",
             "bitfit": "BitFit: bias terms only"}
KIND_SHORT = {"lora": "LoRA", "ssf": "SSF", "bitfit": "BitFit"}  # what the sidebar box shows


def robustness_section(cards: list[dict], adapters: list[dict]) -> None:
    """The subset x method robustness matrix read from the evaluated cards (nothing is computed here)."""
    matrix = robustness_from_cards(cards)
    if not matrix:
        st.info("No evaluated adapter checkpoints yet: run `python -m fusion.evaluate --robustness ...`.")
        return
    st.plotly_chart(viz.robustness_figure([r["label"].replace("`", "") for r in matrix],
                                          ["RGB + depth", "RGB only", "depth only"],
                                          [[r.get(k) for k in ("both", "rgb", "depth")] for r in matrix]),
                    key="miss_matrix_chart", width="stretch")
    shares = {c["config"]["adapter"]["kind"]: c.get("adapter_share_percent") for c in adapters}
    st.caption("mIoU (%) over 39 classes from `python -m fusion.evaluate --robustness`. Adapter share of the "
               "model's parameters per subset: " + "; ".join(
                   f"{k}: " + ", ".join(f"{s} {v:.2f}%" for s, v in (p or {}).items()) for k, p in shares.items()))


def main() -> None:
    st.title("Missing modalities: adapters")
    st.caption(
        "After Reza, Prater-Bennette & Asif, *Robust Multimodal Learning with Missing Modalities via "
        "Parameter-Efficient Adaptation* (2023). The trained static RGB-D model stays **frozen**; for each "
        "missing subset a tiny adapter set (well under 0.5% of its parameters) was trained with that modality "
        "zero-filled. Switch a modality off and the matching adapters switch on.")
    opts = sidebar("miss")
    sb = st.sidebar
    sb.header("Modalities")
    use_rgb = sb.toggle("RGB", value=True, key="miss_use_rgb")
    use_depth = sb.toggle("Depth", value=True, key="miss_use_depth")
    cards = task_cards(TASK)
    adapters = [c for c in cards if c.get("registry") == "adapted_rgbd"]
    dedicated = [c for c in cards if inference.is_dedicated(c)]
    if adapters:
        by_kind = {c["config"]["adapter"]["kind"]: c for c in sort_adapter_cards(adapters)}
        kind = sb.selectbox("Adapter kind", list(by_kind), key="miss_kind", format_func=lambda k: KIND_SHORT.get(k, k),
                            help="The adapter set that switches on for the missing subset:\n"
                                 + "\n".join(f"- {KIND_HELP.get(k, k)}" for k in by_kind))
        a_name, a_trained = by_kind[kind]["name"], True
    else:
        a_name, a_trained = checkpoint_or_untrained("adapted_rgbd", "adapter")[0]
    frame = read_input(opts)
    if frame is None:
        return
    rgb, depth, label40, notes = prepare(frame.rgb, frame.depth, frame.label40)
    show_input(frame, rgb, depth, frame.notes + notes,
               "No depth map: only the RGB-only case can run." if use_depth else
               "No depth map: depth is switched off in the sidebar, so the RGB-only adapters run.",
               held_back=not use_depth)
    if not use_rgb and not use_depth:
        st.warning("Switch at least one modality on.")
        return
    if not use_rgb and depth is None:
        st.warning("There is no depth map to run on: upload one, or switch RGB back on.")
        return
    d_in = depth if use_depth else None
    present = [m for m, on in (("RGB", use_rgb), ("depth", use_depth and depth is not None)) if on]
    subset = "+".join(present)
    with st.spinner("Running the base and the adapted model…"):
        full = segment(a_name, a_trained, rgb, depth, repeats=0, adapter=False) if depth is not None else None
        base = segment(a_name, a_trained, rgb, d_in, repeats=0, drop_rgb=not use_rgb, adapter=False)
        adapted = segment(a_name, a_trained, rgb, d_in, repeats=0, drop_rgb=not use_rgb)
        ded_card = next((c for c in dedicated if c["trained_without"] == ("depth" if d_in is None else "rgb")), None)
        ded = (segment(ded_card["name"], True, rgb, d_in, repeats=0, drop_rgb=not use_rgb)
               if ded_card is not None and len(present) == 1 else None)
    n_cls = adapted.num_classes
    names = class_names(n_cls)
    gt = None if label40 is None else gt_targets(label40, n_cls)
    # a model that saw depth alone is drawn over the depth map, not over a photo it never saw
    depth_only = not use_rgb and d_in is not None
    pred_bg = depth_picture(depth)[0] if depth_only else rgb
    bg_note = "drawn over the depth map: this model never saw the photo" if depth_only else None
    st.subheader(f"Prediction with {subset} only" if len(present) == 1 else "Prediction with both modalities")
    shown = [("frozen static, no adapter", base)]
    if len(present) == 1:
        kind_name = kind if adapters else "untrained"
        shown.append((f"+ {kind_name} adapters ('{adapted.adapter or '-'}' set)", adapted))
        if ded is not None:
            shown.append((f"dedicated {subset}-only model", ded))
    if full is not None and len(present) == 1:
        shown.append(("reference: RGB + depth", full))
    cols = st.columns(len(shown) + (1 if gt is not None else 0))
    for col, (title, r) in zip(cols, shown):
        with col:
            both = r is full
            draw_map(title, r.labels, rgb if both else pred_bg, names, opts["alpha"], gt=gt, n_cls=n_cls,
                     notes=r.notes, caption=None if both else bg_note)
    if gt is not None:
        with cols[-1]:
            draw_ground_truth(gt, rgb, names, opts["alpha"])
    if len(present) == 1:
        ch = viz.changed_mask(base.labels, adapted.labels)
        st.caption(f"The adapters change {ch.mean() * 100:.1f}% of the pixels' labels relative to the frozen model.")
    else:
        st.info("Both modalities are on: no adapter is used (the adapted model *is* the static model). Switch one "
                "off in the sidebar.")
    show_attribution(a_name, a_trained, rgb, d_in, names, key="miss", drop_rgb=not use_rgb)

    st.subheader("Robustness matrix (NYUv2 test split)")
    run_and_show(robustness_section, cards, adapters, what="The robustness matrix")  # a bad card: a message
    if a_trained:
        show_card_tables([(f"{KIND_SHORT.get(kind, kind)} adapters" if adapters else "adapters", a_name)])


run_page(main)
