"""Views and runs of the clip missing-modality page (``pages/clips_adapters.py``): which adapter / dedicated
checkpoints there are, one cached forward per (model, input, modalities, adapters on/off), the probability
comparison, the added-parameter line and the robustness matrix read from the stored figures. Nothing is kept on a
model: models are shared by every session (per-call settings go in the forward's arguments).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import streamlit as st

from pages._clips_views import prob_figure, prob_table
from pages._common import Run, load_model, task_cards

from fusion import inference, viz
from fusion.data.clips import CLIP_MODALITIES, ClipInput
from fusion.data.emotion import EMOTIONS
from fusion.results import ADAPTER_KINDS, clip_robustness

TASK = "emotion_clips"
FIGURES = Path(__file__).resolve().parents[1] / "assets" / "figures"
KIND_HELP = {"lora": "LoRA: rank-4 update of every Linear layer of the fusion network",
             "ssf": "SSF: per-feature scale and shift after every Linear and LayerNorm",
             "bitfit": "BitFit: a bias delta after every Linear and LayerNorm"}
KIND_SHORT = {"lora": "LoRA", "ssf": "SSF", "bitfit": "BitFit"}


def adapter_cards() -> dict[str, dict]:
    """The shipped ``adapted_clips`` checkpoints by adapter kind (LoRA, SSF, BitFit order)."""
    cards = task_cards(TASK, lambda c: c.get("registry") == "adapted_clips")
    rank = {k: i for i, k in enumerate(ADAPTER_KINDS)}
    cards.sort(key=lambda c: rank.get(c.get("adapter_kind"), len(rank)))
    return {c.get("adapter_kind", c["name"]): c for c in cards}


def dedicated_card(subset: str) -> dict | None:
    """The shipped dedicated model of ``subset`` (e.g. "face+text"), if any."""
    return next(iter(task_cards(TASK, lambda c: c.get("registry") == "dedicated_clips"
                                and c.get("trained_on") == subset)), None)


@st.cache_data(show_spinner=False, max_entries=64)
def _forward(_model: Any, model_key: str, input_digest: str, toggles: tuple[str, ...], adapter: bool,
             _clip: ClipInput) -> dict:
    """One clip through one model with only ``toggles`` on (adapters on or off), as plain data."""
    import torch

    inputs = inference.clip_inputs(_model, _clip, toggles)
    with torch.no_grad():
        out = _model(inputs, count_flops=True, **({} if adapter else {"adapter": False}))
    probs, _ = inference.clip_probabilities(out)
    return {"probs": probs, "label": EMOTIONS[max(range(len(probs)), key=probs.__getitem__)],
            "notes": list(out.notes), "adapter": out.adapter, "flops": float(out.flops[0]),
            "present": list(out.present)}


def forward(name: str, trained: bool, clip: ClipInput, input_digest: str, toggles: Sequence[str], *,
            adapter: bool = True) -> Run:
    net, _ = load_model(name, trained)
    key = tuple(m for m in CLIP_MODALITIES if m in set(toggles))
    return Run(_forward(net, f"{name}:{trained}", input_digest, key, adapter, clip))


def probability_view(runs: Mapping[str, Run], key: str) -> None:
    """Metric per model, grouped bars and the table of per-emotion probabilities."""
    cols = st.columns(len(runs))
    for col, (title, r) in zip(cols, runs.items()):
        col.metric(title, r.label, f"p = {max(r.probs) * 100:.0f}%", delta_color="off", delta_arrow="off")
    sources = {title: list(r.probs) for title, r in runs.items()}
    st.plotly_chart(prob_figure(sources), key=f"{key}_probs_chart", width="stretch")
    table = prob_table(sources).map(lambda v: f"{v:.1f}")
    st.dataframe(table, width="stretch")


def params_text(card: Mapping[str, Any], subset: str) -> str:
    """"3,527 parameters: 0.013% of the model (encoders included), 0.67% of the fusion network"."""
    n = (card.get("adapter_params") or {}).get(subset)
    if n is None:
        return "no adapter set for this subset in the checkpoint"
    share = (card.get("adapter_share_percent") or {}).get(subset)
    fus = (card.get("adapter_share_of_fusion_percent") or {}).get(subset)
    return (f"{n:,} parameters" + (f": {share:.3f}% of the model a user runs (frozen encoders included)" if share
                                   is not None else "") + (f", {fus:.2f}% of the fusion network alone" if fus is not
                                                            None else ""))


def matrix_view(key: str) -> None:
    """The robustness matrix (every clip model x every modality subset) from the stored figures."""
    for split in ("test", "val"):
        matrix = clip_robustness(FIGURES, split)
        if matrix["rows"]:
            break
    if not matrix["rows"]:
        st.info("No evaluated clip models yet: run `python -m fusion.evaluate --task clips --adapters --split test`.")
        return
    rows = matrix["rows"]
    st.plotly_chart(viz.robustness_figure([r["name"] for r in rows], matrix["columns"],
                                          [[r["cells"][c] for c in matrix["columns"]] for r in rows],
                                          metric="accuracy %"),
                    key=f"{key}_matrix_chart", width="stretch")
    st.caption(f"Accuracy (%) on the {matrix['split']} pairing ({matrix['samples']} label-paired samples) with "
               f"only the column's modalities given, read from {', '.join(matrix['sources'])}. Blank: a dedicated model cannot run without a modality it was built "
               "for. Adapted models switch on the column's adapter set; with all three modalities they are the "
               "frozen base.")


def table_view() -> None:
    """The per-subset adapter table (base, each kind, dedicated, recovered) from the stored figure."""
    import json

    for split in ("test", "val"):
        path = FIGURES / f"clips_adapters_{split}.json"
        if path.exists():
            break
    else:
        return
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        st.caption(f"{path.name} could not be read.")
        return
    rows = []
    for r in res.get("rows", []):
        row = {"subset": r["subset"], "frozen base": r["base"]}
        for k, a in r["adapters"].items():
            row[f"+ {KIND_SHORT.get(k, k)}"] = a["accuracy"]
        row["dedicated"] = r["dedicated"]
        for k, a in r["adapters"].items():
            rec = a["recovered_percent"]
            row[f"{KIND_SHORT.get(k, k)} recovered"] = "-" if rec is None else f"{rec:.0f}%"
        rows.append(row)
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        st.caption(f"{path.name}: accuracy (%) on the {res['split']} pairing ({res['samples']} samples). Recovered = "
                   "(adapted − base) / (dedicated − base); '-' where the dedicated model is not at least one point "
                   "above the base (nothing to recover).")
