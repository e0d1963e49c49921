"""Views and model runs of the emotion-clip page: which models to offer, the cached per-input analysis, and the
pure pieces the page draws (face strip, log-mel heatmap, word-piece chips, probability chart and table, gate
chart, decision and compute texts). Nothing here keeps state on a model: the models are shared by every session.
"""
from __future__ import annotations

import dataclasses
import html
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._common import Run, load_model, pick_model, task_cards

from fusion import inference, viz
from fusion.data.clips import CLIP_MODALITIES, ClipInput
from fusion.data.emotion import EMOTIONS, HOP_LENGTH, PAIRING_NOTE, SAMPLE_RATE
from fusion.types import AUDIO, FACE, TEXT

TASK = "emotion_clips"
LABEL = {FACE: "Face", AUDIO: "Speech", TEXT: "Transcript"}
CONCAT, LATE, DYNMM = "Static · concat-token transformer", "Static · late fusion", "DynMM"
STATIC_REGISTRY = {CONCAT: "concat_clips", LATE: "late_clips"}
MAX_CROPS = 16  # face crops drawn in the strip (evenly spaced over the clip when there are more)
MAX_MEL_COLUMNS = 1200  # spectrogram columns drawn (averaged down for long clips)
COLORS = {FACE: "#8e6c8a", AUDIO: "#76b041", TEXT: "#ffc914", CONCAT: "#5b8def", LATE: "#9aa5b1", DYNMM: "#e4572e"}


@dataclass(frozen=True)
class ClipModel:
    """One model the page runs: its title, checkpoint (or registry) name, whether it is trained, its card."""

    title: str
    name: str
    trained: bool
    card: Mapping[str, Any]


# --------------------------------------------------------------------------- which models


def is_offered_dynmm(card: Mapping[str, Any]) -> bool:
    """A DynMM clip card the page offers: a trained gate (``*_branches``, the shared branches with an untrained
    gate, is left out), not a control, not a single-modality baseline."""
    return (card.get("registry") == "dynmm_clips" and card.get("gate_trained") is not False
            and not inference.is_control(dict(card)) and not inference.is_dedicated(dict(card)))


def budget_label(card: Mapping[str, Any]) -> str:
    """How the budget picker shows a DynMM card: ``λ=0.1 · val 42% of the FLOPs · val acc 51.3%`` (the name when
    the card has none of these)."""
    parts = []
    lam = card.get("resource_weight")
    if isinstance(lam, (int, float)) and not isinstance(lam, bool):
        parts.append(f"λ={lam:g}")
    metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    val = metrics.get("val") if isinstance(metrics.get("val"), dict) else {}
    rel = val.get("relative_flops")
    if isinstance(rel, (int, float)) and math.isfinite(rel):
        parts.append(f"val {rel * 100:.0f}% of the FLOPs")
    acc = val.get("accuracy")
    if isinstance(acc, (int, float)) and math.isfinite(acc):
        parts.append(f"val acc {acc:.1f}%")
    return " · ".join(parts) or str(card.get("name") or "?")


def static_card(registry: str) -> dict | None:
    """The shipped card of a static clip model (the one named exactly like the registry model when there)."""
    return inference.preferred_card(task_cards(TASK, lambda c: c.get("registry") == registry), registry)


def pick_models(box: Any) -> list[ClipModel]:
    """The three models of the page: the two static ones and the DynMM budget picked in ``box`` (the
    sidebar), each its shipped checkpoint or — when there is none yet — the untrained registry model, with one
    note on the page saying so."""
    chosen: list[ClipModel] = []
    missing: list[str] = []
    for title, registry in STATIC_REGISTRY.items():
        card = static_card(registry)
        if card is None:
            missing.append(title)
        chosen.append(ClipModel(title, card["name"] if card else registry, card is not None,
                                card or {"name": registry, "title": f"{registry} (untrained)"}))
    dyn = pick_model(TASK, key="clips_budget", label="DynMM budget", keep=is_offered_dynmm, format_func=budget_label,
                     where=box,
                     help="DynMM checkpoints whose gates were trained with different resource-loss weights λ: a "
                          "higher λ makes the gate prefer cheaper subsets. “% of the FLOPs”: the validation "
                          "pairing's mean cost relative to running every encoder.")
    if dyn is None:
        missing.append(DYNMM)
        box.caption("No trained DynMM checkpoint yet: the untrained `dynmm_clips` stands in.")
        chosen.append(ClipModel(DYNMM, "dynmm_clips", False, {"name": "dynmm_clips", "title": "dynmm_clips (untrained)"}))
    else:
        box.caption(f"`{dyn['name']}`")
        chosen.append(ClipModel(DYNMM, dyn["name"], True, dyn))
    if missing:
        st.info(f"No trained checkpoint for {', '.join(missing)} in `assets/checkpoints/` yet: showing "
                "**randomly initialised** fusion in its place so you can see the mechanics (gate, encoders that "
                "run, compute) — its fused predictions mean nothing. The three encoders are the shipped ones.")
    return chosen


def card_notes(models: Sequence[ClipModel]) -> list[str]:
    """The cards' pairing notes that say more than :data:`PAIRING_NOTE` (shown under it at the top), once each."""
    seen = {" ".join(PAIRING_NOTE.split())}
    out = []
    for m in models:
        note = " ".join(str(m.card.get("pairing_note") or "").split())
        if note and note not in seen:
            seen.add(note)
            out.append(f"**{m.title}** (`{m.name}`): {note}")
    return out


def cards_for_display(models: Sequence[ClipModel]) -> list[tuple[str, dict]]:
    """[(title, card)] for :func:`pages._common.show_cards`: each distinct pairing note kept on the first card
    that has it (the others would repeat it word for word)."""
    seen: set[str] = set()
    out = []
    for m in models:
        card = dict(m.card)
        note = " ".join(str(card.get("pairing_note") or "").split())
        if note in seen:
            card.pop("pairing_note")
        elif note:
            seen.add(note)
        out.append((m.title, card))
    return out


# --------------------------------------------------------------------------- running (cache_data)


@st.cache_data(show_spinner=False, max_entries=64)
def _analyse(_model: Any, model_key: str, input_digest: str, toggles: tuple[str, ...], _clip: ClipInput,
             repeats: int) -> dict:
    """One clip through one model (keyed by model, input digest and modality toggles), as plain data."""
    inputs = inference.clip_inputs(_model, _clip, toggles)
    res = inference.analyse_clip(_model, inputs, repeats=repeats)
    out = dataclasses.asdict(res)
    out["present"], out["ran"] = tuple(res.present), tuple(res.ran)
    out["branch_names"] = tuple(res.branch_names)
    return out


def analyse(model: ClipModel, clip: ClipInput, input_digest: str, toggles: Sequence[str], *, repeats: int = 3) -> Run:
    """:func:`fusion.inference.analyse_clip` of ``model`` on ``clip`` with only ``toggles`` on (cached)."""
    net, _card = load_model(model.name, model.trained)
    key = tuple(m for m in CLIP_MODALITIES if m in set(toggles))
    return Run(_analyse(net, f"{model.name}:{model.trained}", input_digest, key, clip, repeats))


# --------------------------------------------------------------------------- input views


def crop_strip(clip: ClipInput, limit: int = MAX_CROPS) -> tuple[list[np.ndarray], list[str]]:
    """The face crops to draw (at most ``limit``, evenly spaced) and their captions (time in s)."""
    crops = clip.face_crops if clip.face_crops is not None else np.zeros((0, 48, 48), np.uint8)
    times = clip.face_times if clip.face_times is not None else np.zeros(len(crops))
    idx = np.arange(len(crops)) if len(crops) <= limit else np.unique(np.linspace(0, len(crops) - 1, limit).round().astype(int))
    return [np.asarray(crops[i]) for i in idx], [f"{float(times[i]):.1f} s" for i in idx]


@st.cache_data(show_spinner=False, max_entries=16)
def _log_mel(input_digest: str, _wave: np.ndarray) -> np.ndarray:
    from fusion.data.emotion import log_mel

    return log_mel(_wave)


def mel_figure(mel: np.ndarray, max_columns: int = MAX_MEL_COLUMNS) -> go.Figure:
    """Heatmap of a (64, T) log-mel in dB, time in seconds (10 ms a frame; long clips averaged down)."""
    mel = np.asarray(mel, dtype=np.float32)
    step = max(1, math.ceil(mel.shape[1] / max_columns))
    starts = np.arange(0, mel.shape[1], step)
    if step > 1:  # mean of each run of `step` frames (the last run may be shorter)
        counts = np.diff(np.append(starts, mel.shape[1]))
        mel = np.add.reduceat(mel, starts, axis=1) / counts
    times = starts * HOP_LENGTH / SAMPLE_RATE
    fig = go.Figure(go.Heatmap(z=mel, x=times, y=np.arange(mel.shape[0]), colorscale="Viridis",
                               colorbar=dict(title="dB"), hovertemplate="%{x:.2f} s · band %{y}: %{z:.0f} dB<extra></extra>"))
    fig.update_layout(height=260, margin=dict(l=40, r=10, t=30, b=40), title="Log-mel spectrogram (64 bands)",
                      xaxis=dict(title="time (s)"), yaxis=dict(title="mel band"))
    return fig


def word_pieces(model: Any, text: str) -> tuple[list[str], bool]:
    """The MiniLM word pieces the text encoder reads (``[CLS]`` … ``[SEP]``), and whether the text was cut."""
    enc = model.encoders[TEXT]
    ids, _mask = enc.tokenize([text])
    pieces = [str(enc.tokenizer.id_to_token(int(i))) for i in ids[0]]
    cut = bool(enc.tokenizer.encode(text).overflowing)
    return pieces, cut


def chips_html(pieces: Sequence[str]) -> str:
    """Word pieces as small inline chips (HTML-escaped; special tokens greyed)."""
    out = []
    for p in pieces:
        special = p.startswith("[") and p.endswith("]")
        style = ("display:inline-block;margin:2px;padding:1px 6px;border-radius:8px;font-family:monospace;"
                 + ("background:#e8e8e8;color:#777;" if special else "background:#fff3c4;color:#333;"))
        out.append(f'<span style="{style}">{html.escape(p)}</span>')
    return "".join(out)


# --------------------------------------------------------------------------- results


def prob_sources(static: Run, others: Mapping[str, Run]) -> dict[str, list[float]]:
    """Series to compare, in order: each modality alone (the static model's per-encoder heads, for the encoders
    that ran), then each fused model."""
    out = {f"{LABEL[m]} alone": list(static.per_modality[m]) for m in CLIP_MODALITIES if m in static.per_modality}
    out.update({title: list(r.probs) for title, r in others.items()})
    return out


def prob_table(sources: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """Emotions × series, in percent (one decimal), with each series' pick as the last row."""
    df = pd.DataFrame({name: [round(100.0 * float(v), 1) for v in p] for name, p in sources.items()},
                      index=list(EMOTIONS))
    df.index.name = "emotion (%)"
    return df


def picks(sources: Mapping[str, Sequence[float]]) -> dict[str, str]:
    return {name: EMOTIONS[int(np.argmax(p))] for name, p in sources.items()}


def _series_color(name: str) -> str | None:
    for m, label in LABEL.items():
        if name == f"{label} alone":
            return COLORS[m]
    return COLORS.get(name)


def prob_figure(sources: Mapping[str, Sequence[float]]) -> go.Figure:
    """Grouped bars: per-emotion probability of each series (modalities alone lighter, fused models solid)."""
    fig = go.Figure()
    for name, p in sources.items():
        alone = name.endswith(" alone")
        fig.add_trace(go.Bar(name=name, x=list(EMOTIONS), y=[float(v) for v in p], marker_color=_series_color(name),
                             opacity=0.55 if alone else 1.0,
                             hovertemplate=f"{html.escape(name)} · %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group", height=340, margin=dict(l=40, r=10, t=30, b=40),
                      yaxis=dict(title="probability", range=[0, 1.05]), xaxis=dict(title="emotion"),
                      legend=dict(orientation="h", y=-0.25), title="Per-emotion probabilities")
    return fig


def branch_words(name: str) -> str:
    """``"audio+text"`` -> ``"audio + text"``."""
    return " + ".join(name.split("+"))


def gate_figure(probs: Sequence[float], names: Sequence[str], chosen: str | None) -> go.Figure:
    """The DynMM gate's probability of each modality subset; the subset that ran is highlighted."""
    p = [float(v) for v in probs]
    labels = [branch_words(n) for n in names]
    colors = ["#e4572e" if n == chosen else "#9aa5b1" for n in names]
    fig = go.Figure(go.Bar(x=labels, y=p, marker_color=colors, text=[f"{v:.2f}" for v in p], textposition="outside",
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title="Gate: probability of each subset" + (f" (ran: {branch_words(chosen)})" if chosen else ""),
                      yaxis=dict(title="probability", range=[0, 1.15]), xaxis=dict(title="modalities run"),
                      height=300, margin=dict(l=40, r=10, t=40, b=40), showlegend=False)
    return fig


def full_branch(r: Run) -> str | None:
    """The all-present-modalities branch DynMM was compared with (the largest branch within what was given)."""
    usable = [n for n in r.branch_names if set(n.split("+")) <= set(r.present)]
    return usable[-1] if usable else None


def encoder_lines(r: Run, toggles: Sequence[str], clip: ClipInput) -> list[str]:
    """Per modality: ran, skipped by the gate, switched off, or unusable (and why)."""
    lines = []
    for m in CLIP_MODALITIES:
        if m in r.ran:
            state = "**ran**"
        elif m in r.present:
            state = "**skipped** by the gate: its encoder never ran"
        elif m in clip.problems:
            state = f"not given (cannot be used: {clip.problems[m]})"
        elif m not in toggles:
            state = "switched off"
        else:
            state = "not given"
        lines.append(f"- {LABEL[m]}: {state}")
    return lines


def ratio_text(spent: float | None, full: float | None, unit: str) -> str:
    """``"0.25× (75% fewer FLOPs)"`` / ``"0.72× (28% less time)"``: spent / full and the share saved (``unit``:
    "FLOPs" or "ms"); ``"n/a"`` when either is unknown."""
    if spent is None or full is None or not full or not math.isfinite(full) or not math.isfinite(spent):
        return "n/a"
    saved = viz.saving_percent(full, spent)
    if unit == "FLOPs":
        word = "fewer FLOPs" if saved >= 0 else "more FLOPs"
    else:
        word = "less time" if saved >= 0 else "more time"
    return f"{spent / full:.2f}× ({abs(saved):.0f}% {word})"


def compute_rows(runs: Mapping[str, Run], full: Run | None = None) -> pd.DataFrame:
    """One row per model (and DynMM's all-modality branch when measured): FLOPs, ms, encoders that ran."""
    rows = [{"model": title, "FLOPs": viz.format_flops(r.flops), "ms (median)": _ms(r.ms),
             "encoders run": ", ".join(LABEL[m] for m in r.ran)} for title, r in runs.items()]
    if full is not None and full.full_flops is not None:
        branch = full_branch(full)
        rows.append({"model": f"DynMM, all-modality branch ({branch_words(branch) if branch else '?'})",
                     "FLOPs": viz.format_flops(full.full_flops), "ms (median)": _ms(full.full_ms),
                     "encoders run": ", ".join(LABEL[m] for m in (branch or "").split("+") if m in LABEL)})
    return pd.DataFrame(rows)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"
