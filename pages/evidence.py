"""Evidence page: does each method do what it claims? Reads the ablation results `fusion.evaluate` wrote
(nothing is computed here: the numbers are the test-split measurements behind the README)."""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from pages._nav import ensure_navigation_mode

from fusion import viz

ensure_navigation_mode()

FIGURES = Path(__file__).resolve().parents[1] / "assets" / "figures"

st.title("Does each method do what it claims?")
st.caption("Every number here was measured by `python -m fusion.evaluate` on the NYUv2 test split (read once, "
           "after every setting was chosen on the validation split); this page only draws it.")

st.header("DynMM: does the gate decide?")
path = FIGURES / "dynmm_pareto.json"
try:
    res = json.loads(path.read_text())
except (OSError, json.JSONDecodeError):
    res = None
if not res:
    st.info("No DynMM evidence yet: run `python -m fusion.evaluate --pareto ...` (see the README).")
else:
    st.markdown(
        "A gate that really decides must beat **routing that ignores the input**: each fixed branch *k* "
        "(depth fused into the first *k* stages) forced for every frame, and a **random router** that uses "
        "the gate's own mix of branches (the same compute, assigned at random). Below the line, the gate would "
        "be no better than a fixed choice.")
    st.plotly_chart(viz.pareto_figure(res), key="evidence_pareto", width="stretch")
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
                     "decisions changed by another frame's depth": f"{100 * g['decisions_changed_by_other_depth']:.0f}%"})
    st.dataframe(rows, hide_index=True, key="evidence_dynmm_table")
    ref = [res[k] for k in ("static", "control") if k in res]
    st.markdown("References: " + "; ".join(f"`{r['name']}` {r['miou']:.2f} mIoU at {r['mean_gflops']:.3f} GFLOPs"
                                             for r in ref) + f" ({res['frames']} test frames, {res.get('env', '')}).")
