"""Views of the clip DEQ page (``pages/clips_deq.py``): which checkpoint, one cached solve on a clip as plain data,
the residual curve of each modality state, and the prediction at every solver iterate against the fixed point.

Solves sit behind ``st.cache_data`` keyed by model, input digest, modality toggles and solver options; the model
(``st.cache_resource``, shared by every session) gets the options as forward arguments and stores nothing.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from pages._clips_input import LABEL
from pages._common import Run, load_model, task_cards

from fusion import inference
from fusion.data.clips import CLIP_MODALITIES, ClipInput
from fusion.data.emotion import EMOTIONS

REGISTRY = "deq_clips"
STATE_LABEL = {**LABEL, "fused": "Fused state"}
STATE_COLOR = {"face": "#5b8def", "audio": "#e4572e", "text": "#76b041", "fused": "#333333"}


def is_control(card: Mapping[str, Any]) -> bool:
    """The equal-training control (the same architecture unrolled once, no solve): not offered as the model."""
    return inference.is_control(dict(card)) or bool((card.get("config") or {}).get("deq", {}).get("unroll"))


def deq_checkpoints() -> tuple[list[dict], list[dict]]:
    """(the shipped DEQ clip checkpoints, their one-step controls)."""
    cards = task_cards("emotion_clips", lambda c: c.get("registry") == REGISTRY)
    return [c for c in cards if not is_control(c)], [c for c in cards if is_control(c)]


@st.cache_data(show_spinner=False, max_entries=64)
def _solve(_model: Any, model_key: str, input_digest: str, toggles: tuple[str, ...], options: tuple,
           _clip: ClipInput) -> dict:
    """One clip through the DEQ model with ``options`` (solver settings, ``zero_block``), as plain data: the
    probabilities, each encoder's own, the trace (joint and per-state residuals), the prediction at every kept
    iterate, measured FLOPs (total and the fusion stage)."""
    inputs = inference.clip_inputs(_model, _clip, toggles)
    opts = dict(options)
    with torch.no_grad():
        out = _model(inputs, count_flops=True, **opts)
    probs, per = inference.clip_probabilities(out)
    res: dict[str, Any] = {"probs": probs, "label": EMOTIONS[int(np.argmax(probs))], "per_modality": per,
                           "present": tuple(out.present), "notes": list(out.notes), "flops": float(out.flops[0]),
                           "fusion_flops": out.block.fusion_flops if out.block is not None else None,
                           "zeroed": bool(out.block is not None and out.block.zeroed), "solver": None,
                           "iterates": {}}
    s = out.solver
    if s is not None:
        res["solver"] = {"solver": s.solver, "tol": s.tol, "max_iter": s.max_iter, "stop_mode": s.stop_mode,
                         "nstep": int(s.nstep[0]), "converged": bool(s.converged[0]),
                         "rel": float(s.rel_residual[0]), "abs": float(s.abs_residual[0]),
                         "residuals": s.residuals[0].tolist(), "state_names": tuple(s.state_names),
                         "state_residuals": s.state_residuals[0].T.tolist() if s.state_residuals is not None else []}
        res["iterates"] = {int(k): torch.softmax(v[0].float(), 0).tolist() for k, v in out.iterate_logits.items()}
    return res


def solve(name: str, trained: bool, clip: ClipInput, input_digest: str, toggles: Sequence[str], **options: Any) -> Run:
    """:func:`_solve` for the cached model ``name`` with only ``toggles`` on."""
    net, _ = load_model(name, trained)
    key = tuple(m for m in CLIP_MODALITIES if m in set(toggles))
    return Run(_solve(net, f"{name}:{trained}", input_digest, key, tuple(sorted(options.items())), clip))


def state_traces(run: Run) -> list[dict]:
    """The residual curve of each state (``fusion.viz.residual_figure`` traces), the joint residual last."""
    s = run.solver
    traces = [{"name": STATE_LABEL.get(n, n), "residuals": r, "nstep": s["nstep"]}
              for n, r in zip(s["state_names"], s["state_residuals"])]
    return traces + [{"name": "all states (the stop rule)", "residuals": s["residuals"], "nstep": s["nstep"]}]


def state_residual_figure(run: Run) -> go.Figure:
    """Residual of every modality state and the fused state per solver iteration (log scale), the joint residual
    the solver stops on dashed, and the tolerance."""
    s = run.solver
    fig = go.Figure()
    n = max(1, int(s["nstep"]))
    for t in state_traces(run):
        r = np.maximum(np.asarray(t["residuals"], np.float64)[:n], 1e-12)
        joint = t["name"].startswith("all states")
        color = "#999999" if joint else STATE_COLOR.get(next((k for k, v in STATE_LABEL.items() if v == t["name"]), ""))
        fig.add_trace(go.Scatter(x=np.arange(1, len(r) + 1), y=r, mode="lines+markers", name=t["name"],
                                 line=dict(color=color, dash="dash" if joint else "solid", width=2 if joint else 2.5),
                                 hovertemplate=t["name"] + ", iteration %{x}: %{y:.2e}<extra></extra>"))
    fig.add_hline(y=float(s["tol"]), line_dash="dot", line_color="#333",
                  annotation_text=f"tolerance {float(s['tol']):g} ({s['stop_mode']})")
    measure = "‖f(z)−z‖ / ‖f(z)‖" if s["stop_mode"] == "rel" else "‖f(z)−z‖"
    fig.update_layout(yaxis=dict(type="log", title=f"residual {measure}", exponentformat="power"),
                      xaxis=dict(title="solver iteration", dtick=1), height=340,
                      margin=dict(l=60, r=10, t=30, b=40), legend=dict(orientation="h", y=1.15))
    return fig


def iterate_probs(run: Run) -> tuple[list[int], list[list[float]]]:
    """The iterations the solver ran (1 … nstep) and the probabilities at each (the last one = the fixed point)."""
    n = max(1, int(run.solver["nstep"]))
    its = [k for k in sorted(run.iterates) if k < n] + [n]
    return its, [run.iterates.get(k, run.probs) if k < n else run.probs for k in its]


def iterate_figure(run: Run) -> go.Figure:
    """Probability of each emotion after every solver iteration; the last point is the returned state."""
    its, probs = iterate_probs(run)
    p = np.asarray(probs) * 100  # (n_its, 7)
    fig = go.Figure()
    top = set(np.argsort(-p[-1])[:3].tolist()) | {int(np.argmax(row)) for row in p}
    for c, name in enumerate(EMOTIONS):
        fig.add_trace(go.Scatter(x=its, y=p[:, c], mode="lines+markers", name=name, visible=True if c in top else
                                 "legendonly", hovertemplate=name + ", iteration %{x}: %{y:.1f}%<extra></extra>"))
    fig.update_layout(yaxis=dict(title="probability (%)", range=[0, 100]),
                      xaxis=dict(title="solver iteration (last = returned state)", dtick=1), height=300,
                      margin=dict(l=50, r=10, t=30, b=40), legend=dict(orientation="h", y=1.18))
    return fig


def iterate_rows(run: Run) -> list[dict[str, Any]]:
    """One row per iteration: the predicted emotion, its probability, and whether it is the fixed point's."""
    its, probs = iterate_probs(run)
    final = int(np.argmax(run.probs))
    rows = []
    for k, p in zip(its, probs):
        c = int(np.argmax(p))
        rows.append({"iteration": k, "prediction": EMOTIONS[c], "p (%)": round(100 * p[c], 1),
                     f"p({EMOTIONS[final]}) (%)": round(100 * p[final], 1),
                     "same as returned state": "yes" if c == final else "no",
                     "joint residual": f"{run.solver['residuals'][k - 1]:.2e}" if k <= len(run.solver["residuals"])
                     else "-"})
    return rows
