"""Deep-equilibrium fusion page (Ni et al.): the fused state is the fixed point of a recursive block; watch
the solver converge on this input, change solver / tolerance / iteration cap live, see the prediction at
chosen iterations, the same with depth removed, and (block switched off: its output zeroed) what the
equilibrium block contributes.

Thin: widgets -> ``fusion`` -> drawing. Widget keys start with ``deq_``.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from pages._common import run_page, show_card_tables
from pages._nav import ensure_navigation_mode
from pages._rgbd_input import (checkpoint_or_untrained, class_names, gt_targets, prepare, read_input, segment,
                               show_input, sidebar)
from pages._rgbd_views import Timed, block_off_comparison, draw_ground_truth, draw_map, show_attribution, time_calls

from fusion import compute, viz
from fusion.methods.deq import SOLVERS, DEQConfig

ensure_navigation_mode()

TOLS = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5]
SOLVER_HELP = {"anderson": "Anderson acceleration (mixes the last few iterates; default)",
               "broyden": "limited-memory Broyden quasi-Newton",
               "fixed_point": "plain iteration z ← f(z)"}
STAGE_TEXT = (
    "**Where depth enters.** At stride 32 depth reaches the RGB stream **only through this block**: that "
    "stage's output is SE_rgb(rgb) + block(rgb, depth), where SE_rgb re-weights the RGB channels and never sees "
    "depth; there is no SE-add of depth beside the block. The other three stages (strides 4, 8 and 16) fuse "
    "depth with the static model's SE-add, SE_rgb(rgb) + SE_depth(depth). Switch the block off in the sidebar "
    "to see what it contributes on this input.")
ZERO_HELP = ("Zero the equilibrium block's output: the stride-32 stage is then SE_rgb(rgb) alone, so depth does "
             "not reach the RGB stream at that stage and no fixed point is solved. The other stages keep their "
             "SE-add fusion. The page then shows the segmentation with the block off next to the normal one "
             "(the fixed point), and what changed into what.")
SOLVER_SHORT = {"anderson": "Anderson", "broyden": "Broyden", "fixed_point": "plain iteration"}  # sidebar box


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
    st.caption(STAGE_TEXT)
    opts = sidebar("deq")
    cfg = DEQConfig()
    sb = st.sidebar
    sb.header("Solver")
    solver = sb.selectbox("Solver", list(SOLVERS), index=list(SOLVERS).index(cfg.solver), key="deq_solver",
                          format_func=lambda s: SOLVER_SHORT.get(s, s),
                          help="The root solver that finds the fixed point:\n"
                               + "\n".join(f"- **{k}**: {h}" for k, h in SOLVER_HELP.items()))
    tol = sb.select_slider("Tolerance", TOLS, value=cfg.tol, key="deq_tol", format_func=lambda t: f"{t:g}",
                           help="Relative residual ‖f(z) − z‖ / ‖f(z)‖ below which a solve stops.")
    max_iter = sb.slider("Max iterations", 2, 60, cfg.max_iter, key="deq_max_iter",
                         help="The cap: the solver stops here even if the residual is still above tolerance.")
    sb.header("Ablation")
    zero_block = sb.toggle("Switch the block off", value=False, key="deq_zero_block", help=ZERO_HELP)
    frame = read_input(opts)
    if frame is None:
        return
    rgb, depth, label40, notes = prepare(frame.rgb, frame.depth, frame.label40)
    show_input(frame, rgb, depth, frame.notes + notes, "No depth map: the equilibrium is solved on RGB alone.")
    name, trained = checkpoint_or_untrained("deq_rgbd", "DEQ-fusion")[0]
    its = kept_iterations(max_iter)
    solve_kw = dict(solver=solver, tol=float(tol), max_iter=int(max_iter), stop_mode="rel")
    with st.spinner("Solving for the fixed point, then timing the solves against each other…"):
        main_title = "RGB + depth" if depth is not None else "RGB only"
        runs = {main_title: segment(name, trained, rgb, depth, repeats=0, keep_states_at=its, **solve_kw)}
        timed = {main_title: Timed(name, trained, opts=tuple(solve_kw.items()))}
        if depth is not None:
            runs["depth removed"] = segment(name, trained, rgb, None, repeats=0, keep_states_at=its, **solve_kw)
            timed["depth removed"] = Timed(name, trained, depth=False, opts=tuple(solve_kw.items()))
        times = time_calls(timed, rgb, depth)
        # zeroed, the block is not run: no solve, so the solver options do not apply (nor split the cache)
        off = segment(name, trained, rgb, depth, repeats=0, zero_block=True) if zero_block else None
    main_run = next(iter(runs.values()))
    n_cls = main_run.num_classes
    names = class_names(n_cls)
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
                     f"{viz.format_flops(r.fusion_flops)} of {viz.format_flops(r.flops)} (exact); "
                     f"time {times[k].text()}.")
    st.caption("FLOPs are counted on the solve that ran and are exact. " + compute.timing_note(times))

    show_attribution(name, trained, rgb, depth, names, key="deq", **solve_kw)

    st.subheader("Does the segmentation settle as the residual falls?")
    n_run = max(int(r.solver["nstep"]) for r in runs.values())
    steps = viz.iterations_run(its, n_run)
    if len(steps) > 1:
        # keyed on the cap and the steps run: a new cap (or a solve that stops elsewhere) resets the slider
        t = st.select_slider("Prediction at solver iteration", steps, value=steps[-1],
                             key=f"deq_iter_{max_iter}_{n_run}",
                             help="The fused state after this many solver steps, decoded by the same decoder. "
                                  f"Only the steps the solver ran (at most {n_run}) are offered.")
    else:
        t = steps[0]
        st.caption(f"The solver stopped after {t} iteration: there is only the final prediction to show.")
    cols = st.columns(len(runs) + 1)
    for col, (k, r) in zip(cols, runs.items()):
        lab = r.iter_labels.get(t, r.labels) if t < r.solver["nstep"] else r.labels
        stopped = "" if t <= r.solver["nstep"] else f" (stopped at {r.solver['nstep']}: final state)"
        with col:
            diff = viz.changed_mask(lab, r.labels).mean()
            draw_map(f"{k}, iteration {t}{stopped}", lab, rgb, names, opts["alpha"], gt=gt, n_cls=n_cls,
                     caption=f"{diff * 100:.1f}% of pixels differ from the final prediction")
    with cols[-1]:
        if gt is not None:
            draw_ground_truth(gt, rgb, names, opts["alpha"])
    n_main = int(main_run.solver["nstep"])
    ks = viz.iterations_run(sorted(main_run.iter_labels), n_main)
    frac = [float(np.mean((main_run.iter_labels.get(i, main_run.labels) if i < n_main else main_run.labels)
                          != main_run.labels)) for i in ks]
    st.plotly_chart(viz.settling_figure(ks, frac), key="deq_settle_chart", width="stretch")
    if off is not None:
        st.subheader("Block switched off: what the equilibrium fusion contributes")
        st.caption("The same model on the same input with the equilibrium block's output zeroed: the stride-32 "
                   "stage is then SE_rgb(rgb) alone and nothing is solved, so "
                   + ("no depth reaches the RGB stream there (the other stages still fuse it with SE-add)."
                      if depth is not None else "the RGB features get no equilibrium refinement there.")
                   + f" Left: the fixed point ({main_title}); middle: block off; right: what changed.")
        block_off_comparison(main_run, off, rgb, names, opts["alpha"], on_title=f"block on · {main_title}", gt=gt,
                             n_cls=n_cls)
    for r in runs.values():
        for note in r.notes:
            st.caption(note)
    if trained:
        show_card_tables([("DEQ fusion", name)])


run_page(main)
