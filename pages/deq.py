"""Deep-equilibrium fusion page (Ni et al.): the fused state is the fixed point of a recursive block; watch
the solver converge on this input, change solver / tolerance / iteration cap live, see the prediction at
chosen iterations, and the same with depth removed.

Thin: widgets -> ``fusion`` -> drawing. Widget keys start with ``deq_``.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from pages._nav import ensure_navigation_mode
from pages._rgbd_input import (checkpoint_or_untrained, class_names, draw_legend, gt_targets, metrics_line, overlay,
                               prepare, read_input, run_page, segment, show_cards, show_input, sidebar)

from fusion import viz
from fusion.methods.deq import SOLVERS, DEQConfig

ensure_navigation_mode()

TOLS = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5]
SOLVER_HELP = {"anderson": "Anderson acceleration (mixes the last few iterates; default)",
               "broyden": "limited-memory Broyden quasi-Newton",
               "fixed_point": "plain iteration z ← f(z)"}


def kept_iterations(max_iter: int) -> tuple[int, ...]:
    """Iterations whose prediction the page decodes: 1, 2, 3, 5, 8, ... up to the cap."""
    its, a, b = [1, 2, 3], 2, 3
    while a + b <= max_iter:
        a, b = b, a + b
        its.append(b)
    return tuple(sorted({i for i in its if i <= max_iter} | {max_iter}))


def main() -> None:
    st.title("Deep-equilibrium fusion: watch it converge")
    st.caption(
        "After Ni et al., *Deep Equilibrium Multimodal Fusion* (2023). At stride 32 the RGB and depth features "
        "are injected into a recursive block — a residual block per modality and a fused state that each "
        "modality gates (*purify*) before they are summed and projected (*combine*) — and the fusion is its "
        "**fixed point** z* = f(z*; x), found by a root solver rather than by stacking layers. The residual "
        "‖f(z) − z‖ / ‖f(z)‖ below is this input's own, measured at every solver step.")
    opts = sidebar("deq")
    cfg = DEQConfig()
    sb = st.sidebar
    sb.header("Solver")
    solver = sb.selectbox("Solver", list(SOLVERS), index=list(SOLVERS).index(cfg.solver), key="deq_solver",
                          format_func=lambda s: SOLVER_HELP.get(s, s), help=DEQConfig.__doc__ or None)
    tol = sb.select_slider("Tolerance (relative residual)", TOLS, value=cfg.tol, key="deq_tol",
                           format_func=lambda t: f"{t:g}", help="A solve stops once its residual is below this.")
    max_iter = sb.slider("Max iterations", 2, 60, cfg.max_iter, key="deq_max_iter",
                         help="The cap: the solver stops here even if the residual is still above tolerance.")
    frame = read_input(opts)
    if frame is None:
        return
    rgb, depth, label40, notes = prepare(frame.rgb, frame.depth, frame.label40)
    show_input(frame, rgb, depth, frame.notes + notes, "No depth map: the equilibrium is solved on RGB alone.")
    name, trained = checkpoint_or_untrained("deq_rgbd", "DEQ-fusion")[0]
    its = kept_iterations(max_iter)
    kw = dict(solver=solver, tol=float(tol), max_iter=int(max_iter), stop_mode="rel", keep_states_at=its)
    with st.spinner("Solving for the fixed point…"):
        runs = {"RGB + depth" if depth is not None else "RGB only": segment(name, trained, rgb, depth, **kw)}
        if depth is not None:
            runs["depth removed"] = segment(name, trained, rgb, None, **kw)
    main_run = next(iter(runs.values()))
    n_cls = main_run.num_classes
    gt = None if label40 is None else gt_targets(label40, n_cls)

    st.subheader("Convergence on this input")
    traces = [{"name": k, "residuals": r.solver["residuals"], "nstep": r.solver["nstep"]} for k, r in runs.items()]
    st.plotly_chart(viz.residual_figure(traces, tol=float(tol)), key="deq_residual_chart", width="stretch")
    mcols = st.columns(len(runs))
    for col, (k, r) in zip(mcols, runs.items()):
        s = r.solver
        verdict = "converged" if s["converged"] else "**stopped at the cap, not converged**"
        col.markdown(f"**{k}** — {s['solver']}: {verdict} after **{s['nstep']}** iteration(s); final relative "
                     f"residual {s['rel']:.2e} (absolute {s['abs']:.2e}). Fusion block "
                     f"{viz.format_flops(r.fusion_flops)} of {viz.format_flops(r.flops)}; {r.ms:.0f} ms.")

    st.subheader("Does the segmentation settle as the residual falls?")
    t = st.select_slider("Prediction at solver iteration", list(its), value=its[-1], key="deq_iter",
                         help="The fused state after this many solver steps, decoded by the same decoder.")
    cols = st.columns(len(runs) + 1)
    for col, (k, r) in zip(cols, runs.items()):
        lab = r.iter_labels.get(t, r.labels)
        with col:
            st.markdown(f"**{k}**, iteration {t}")
            st.image(overlay(rgb, lab, opts["alpha"]), width="stretch")
            diff = viz.changed_mask(lab, r.labels).mean()
            st.caption(f"{diff * 100:.1f}% of pixels differ from the final prediction")
            line = metrics_line(lab, gt, n_cls)
            if line:
                st.markdown(line)
    with cols[-1]:
        if gt is not None:
            st.markdown("**Ground truth**")
            st.image(overlay(rgb, gt, opts["alpha"]), width="stretch")
        draw_legend([r.labels for r in runs.values()] + ([gt] if gt is not None else []), class_names(n_cls))
    ks = sorted(main_run.iter_labels)
    frac = [float(np.mean(main_run.iter_labels[i] != main_run.labels)) for i in ks]
    st.plotly_chart(viz.settling_figure(ks, frac), key="deq_settle_chart", width="stretch")
    for r in runs.values():
        for note in r.notes:
            st.caption(note)
    if trained:
        show_cards([("DEQ fusion", name)])


run_page(main)
