"""Emotion clips, deep-equilibrium fusion (Ni et al. 2023): one state per modality plus the fused state, solved
jointly as a fixed point. Watch each state's residual fall, change the solver live, see the prediction at every
solver iterate against the fixed point, switch modalities and the block off.

Thin: widgets -> ``fusion`` -> drawing. Inputs from ``pages/_clips_input.py``; views in
``pages/_clips_deq_views.py``. Widget keys start with ``clipdeq_`` (the input widgets keep the clip page's
``clips_`` keys, so a clip carries over between the two pages).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._clips_deq_views import (STATE_LABEL, deq_checkpoints, iterate_figure, iterate_rows, solve,
                                    state_residual_figure)
from pages._clips_input import LABEL, choose_source, digest, read_source, sentence, show_source
from pages._common import load_model, run_and_show, run_page, show_cards, show_modality_attribution
from pages._nav import ensure_navigation_mode

from fusion import inference, viz
from fusion.data.clips import CLIP_MODALITIES
from fusion.data.emotion import EMOTIONS, PAIRING_NOTE
from fusion.methods.deq import SOLVERS, STOP_MODES
from fusion.models.clip_deq import REGISTRY_NAME, clip_deq_defaults
from fusion.types import AUDIO, FACE, TEXT, FusionError

ensure_navigation_mode()

TOLS = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6]
SOLVER_SHORT = {"anderson": "Anderson", "broyden": "Broyden", "fixed_point": "plain iteration"}
SOLVER_HELP = {"anderson": "Anderson acceleration (mixes the last few iterates; the trained setting)",
               "broyden": "limited-memory Broyden quasi-Newton",
               "fixed_point": "plain iteration z ← f(z)"}
ZERO_HELP = ("Zero the equilibrium block's readout: no fixed point is solved and the prediction is the model's "
             "late-fusion skip alone (the encoders' own heads, averaged with this model's learned weights). The "
             "page then shows both predictions side by side.")


def pick() -> tuple[str, bool, dict]:
    """The DEQ checkpoint to show (the one-step control is not offered), or the untrained model with a note."""
    models, _controls = deq_checkpoints()
    if not models:
        st.info("No trained DEQ clip checkpoint in `assets/checkpoints/` yet: showing a **randomly initialised** "
                "fusion on the shipped encoders — its predictions mean nothing.")
        return REGISTRY_NAME, False, {"name": REGISTRY_NAME, "title": "deq_clips (untrained)"}
    by = {c["name"]: c for c in models}
    name = st.sidebar.selectbox("Checkpoint", list(by), key="clipdeq_model") if len(by) > 1 else next(iter(by))
    return name, True, by[name]


def toggles_for(clip) -> list[str]:
    """One checkbox per modality (disabled with the reason when the input cannot be used); what each reads."""
    on = []
    for col, m in zip(st.columns(3), CLIP_MODALITIES):
        with col:
            if m in clip.problems:
                st.checkbox(LABEL[m], value=False, disabled=True, key=f"clipdeq_use_{m}_unusable")
                st.warning(f"**{LABEL[m]} cannot be used:** {sentence(clip.problems[m])}")
                continue
            if st.checkbox(LABEL[m], value=True, key=f"clipdeq_use_{m}",
                           help=f"Give the model the {LABEL[m].lower()}; off: its state leaves the fixed point."):
                on.append(m)
            if m == FACE and clip.face_crops is not None:
                st.image(list(clip.face_crops[:6]), width=56)
                st.caption(f"{len(clip.face_crops)} face crop(s), averaged by the face encoder")
            elif m == AUDIO and clip.audio is not None:
                st.caption(f"{clip.audio.size / 16000:.2f} s of speech")
            elif m == TEXT and clip.transcript:
                st.markdown(f"“{clip.transcript}”")
    return on


def main() -> None:
    st.title("Emotion clips: deep-equilibrium fusion")
    st.warning(PAIRING_NOTE, icon=":material/link:")
    st.caption(
        "After Ni et al., *Deep Equilibrium Multimodal Fusion* (2023). Each present modality gets a **state**, "
        "injected with its frozen encoder's pooled embedding and its own head's log-probabilities; a **fused "
        "state** is purified by every modality state and receives a weighted sum of the injections. All states "
        "are one fixed point z* = f(z*; x), found by a root solver; the prediction is the late fusion of the "
        "encoders' heads plus a readout of the fused state. A modality switched off has no state at all.")
    cfg = clip_deq_defaults()
    sb = st.sidebar
    sb.header("Input")
    input_box = sb.container()
    sb.header("Model")
    name, trained, card = pick()
    sb.header("Solver (live)")
    solver = sb.selectbox("Solver", list(SOLVERS), index=list(SOLVERS).index(cfg.solver), key="clipdeq_solver",
                          format_func=lambda s: SOLVER_SHORT.get(s, s),
                          help="\n".join(f"- **{SOLVER_SHORT[k]}**: {h}" for k, h in SOLVER_HELP.items()))
    stop_mode = sb.radio("Stop rule", list(STOP_MODES), index=list(STOP_MODES).index(cfg.stop_mode), horizontal=True,
                         key="clipdeq_stop_mode", format_func=lambda s: {"rel": "relative", "abs": "absolute"}[s],
                         help="relative: ‖f(z) − z‖ / ‖f(z)‖ < tol; absolute: ‖f(z) − z‖ < tol.")
    tol = sb.select_slider("Tolerance", TOLS, value=cfg.tol, key="clipdeq_tol", format_func=lambda t: f"{t:g}",
                           help="A clip's solve stops once its residual is below this.")
    max_iter = sb.slider("Max iterations", 1, 60, cfg.max_iter, key="clipdeq_max_iter",
                         help="The cap: the solver stops here even if the residual is still above tolerance.")
    sb.header("Ablation")
    zero_block = sb.toggle("Switch the block off", value=False, key="clipdeq_zero_block", help=ZERO_HELP)
    source, roots = choose_source(input_box)
    try:
        src = read_source(source, roots)
    except FusionError as e:
        st.error(sentence(str(e)))
        show_cards([("DEQ fusion", card)])
        return
    if src.clip is None:
        st.info(src.prompt)
        show_cards([("DEQ fusion", card)])
        return
    clip = src.clip
    key = digest(clip)
    show_source(src)
    toggles = toggles_for(clip)
    if not toggles:
        st.info("Switch at least one usable modality on to solve.")
        show_cards([("DEQ fusion", card)])
        return

    its = tuple(range(1, int(max_iter) + 1))
    solve_kw = dict(solver=solver, tol=float(tol), max_iter=int(max_iter), stop_mode=stop_mode)
    with st.spinner("Solving for the fixed point…"):
        run = run_and_show(solve, name, trained, clip, key, toggles, keep_states_at=its, what="The solve",
                           **solve_kw)
        off = run_and_show(solve, name, trained, clip, key, toggles, zero_block=True, what="The block-off run") \
            if zero_block else None
    if run is None:
        return
    s = run.solver
    c1, c2, c3 = st.columns(3)
    c1.metric("Prediction (fixed point)", run.label, f"p = {max(run.probs) * 100:.0f}%", delta_color="off",
              delta_arrow="off")
    verdict = "converged" if s["converged"] else "not converged"
    c2.metric("Solver", f"{s['nstep']} iteration(s)", verdict, delta_color="normal" if s["converged"] else "inverse",
              delta_arrow="off")
    c3.metric("FLOPs (measured)", viz.format_flops(run.flops),
              f"fusion stage {viz.format_flops(run.fusion_flops)}", delta_color="off", delta_arrow="off")
    if src.true_label:
        st.caption(f"True label of this test triple: **{src.true_label}**.")

    st.subheader("Convergence of each state on this clip")
    st.plotly_chart(state_residual_figure(run), key="clipdeq_residual_chart", width="stretch")
    st.caption(
        f"{SOLVER_SHORT.get(s['solver'], s['solver'])}: {verdict} after **{s['nstep']}** iteration(s); final "
        f"relative residual {s['rel']:.2e} (absolute {s['abs']:.2e}). One curve per state: "
        + ", ".join(STATE_LABEL.get(n, n) for n in s["state_names"])
        + ". The solver stops on the joint residual of all states (dashed); a state's own curve can sit above or "
          "below it. FLOPs: FlopCounterMode on the path that ran, encoders included.")

    st.subheader("The prediction at each solver iterate vs the fixed point")
    st.plotly_chart(iterate_figure(run), key="clipdeq_iterate_chart", width="stretch")
    st.dataframe(pd.DataFrame(iterate_rows(run)), hide_index=True, width="stretch")
    st.caption("Each iterate's fused state decoded by the same readout, plus the same late-fusion skip "
               "(decoded after the FLOP count: an explanation, not part of the model's path).")

    if off is not None:
        st.subheader("Block switched off")
        a, b = st.columns(2)
        a.metric("Fixed point", run.label, f"p = {max(run.probs) * 100:.0f}%", delta_color="off", delta_arrow="off")
        b.metric("Block off (late-fusion skip alone)", off.label, f"p = {max(off.probs) * 100:.0f}%",
                 delta_color="off", delta_arrow="off")
        st.dataframe(pd.DataFrame({"fixed point (%)": [round(100 * p, 1) for p in run.probs],
                                   "block off (%)": [round(100 * p, 1) for p in off.probs]}, index=list(EMOTIONS)),
                     width="stretch")
        same = "the same emotion" if off.label == run.label else "a different emotion"
        st.caption(f"Without the equilibrium block the model predicts {same}.")

    net, _ = load_model(name, trained)
    inputs = inference.clip_inputs(net, clip, toggles)
    show_modality_attribution(net, f"{name}:{trained}:{key}", inputs, class_names=EMOTIONS, key="clipdeq",
                              options=solve_kw, element_names={m: LABEL[m] for m in CLIP_MODALITIES})
    for note in run.notes:
        st.caption(sentence(note))
    show_cards([("DEQ fusion", card)])


run_page(main)
