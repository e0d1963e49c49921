"""Pictures and figures for the app: pure functions, no Streamlit, tested without a browser.

Images are numpy arrays (``uint8 (H, W, 3)`` RGB); label maps are integer
``(H, W)`` arrays of class ids where ``ignore_index`` (255) means "no label".
Figures are plotly ``go.Figure`` objects the pages hand to ``st.plotly_chart``.
"""
from __future__ import annotations

import colorsys
import html
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

IGNORE_INDEX = 255
IGNORE_COLOR = (0, 0, 0)

# --------------------------------------------------------------------------- palette


def make_palette(n: int = 40) -> np.ndarray:
    """``n`` visually distinct colours, ``uint8 (n, 3)``; deterministic.

    Hues step by the golden ratio so neighbouring class ids get far-apart
    hues; saturation and value cycle through three levels so that classes
    whose hues come close still differ in shade. No colour is near-black
    (black is kept for "no label" / depth holes).
    """
    if n < 0:
        raise ValueError("palette size must be >= 0")
    golden = 0.618033988749895
    sats = (0.75, 0.55, 0.95)
    vals = (0.95, 0.75, 0.85)
    out = np.zeros((n, 3), np.uint8)
    h = 0.07
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(h % 1.0, sats[i % 3], vals[(i // 3) % 3])
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
        h += golden
    return out


PALETTE = make_palette(40)


def hex_color(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` -> ``"#rrggbb"``."""
    r, g, b = (int(v) for v in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def colorize(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Class-id map ``(H, W)`` -> ``uint8 (H, W, 3)``; ids outside the palette (e.g. 255) are black."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {lab.shape}")
    pal = PALETTE if palette is None else np.asarray(palette, np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = IGNORE_COLOR
    k = min(len(pal), 256)
    lut[:k] = pal[:k]
    idx = lab.astype(np.int64)
    idx = np.where((idx < 0) | (idx > 255), 255, idx)
    return lut[idx]


def overlay(
    rgb: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.5,
    *,
    palette: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Blend class colours over an RGB image; ``alpha`` = weight of the class colour (0..1).

    Pixels labelled ``ignore_index`` show the plain image. ``labels`` must
    have the image's height and width.
    """
    img = _as_rgb_u8(rgb)
    lab = np.asarray(labels)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"labels {lab.shape} do not match image {img.shape[:2]}")
    a = float(np.clip(alpha, 0.0, 1.0))
    col = colorize(lab, palette).astype(np.float32)
    out = img.astype(np.float32) * (1.0 - a) + col * a
    keep = lab == ignore_index
    out[keep] = img[keep]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _as_rgb_u8(rgb: np.ndarray) -> np.ndarray:
    img = np.asarray(rgb)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        if f.size and np.nanmax(f) <= 1.0:
            f = f * 255.0
        img = np.clip(np.nan_to_num(f), 0, 255).astype(np.uint8)
    return img


# --------------------------------------------------------------------------- depth

# Control points of a turbo-like rainbow (dark blue -> cyan -> green -> yellow -> dark red),
# interpolated linearly. Positions in [0, 1], colours in 0..255.
_TURBO_POS = np.linspace(0.0, 1.0, 9)
_TURBO_RGB = np.array(
    [
        (48, 18, 59),
        (67, 103, 221),
        (40, 170, 245),
        (26, 228, 182),
        (112, 254, 90),
        (200, 239, 52),
        (253, 174, 50),
        (232, 82, 17),
        (122, 4, 3),
    ],
    np.float32,
)


def turbo(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> ``uint8 (..., 3)`` colours of a turbo-like map (clipped)."""
    t = np.clip(np.nan_to_num(np.asarray(x, np.float32), nan=0.0), 0.0, 1.0)
    out = np.empty(t.shape + (3,), np.float32)
    for c in range(3):
        out[..., c] = np.interp(t, _TURBO_POS, _TURBO_RGB[:, c])
    return np.rint(out).astype(np.uint8)


def depth_range(depth_m: np.ndarray, lo_pct: float = 2.0, hi_pct: float = 98.0) -> tuple[float, float]:
    """Robust display range (metres) of the valid (> 0, finite) depths; ``(0, 1)`` if there are none."""
    d = np.asarray(depth_m, np.float32)
    valid = d[np.isfinite(d) & (d > 0)]
    if valid.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(valid, [lo_pct, hi_pct])
    if hi - lo < 1e-6:
        lo, hi = float(valid.min()), float(valid.max())
    if hi - lo < 1e-6:
        hi = lo + 1e-3
    return float(lo), float(hi)


def depth_to_rgb(
    depth_m: np.ndarray, *, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Depth in metres ``(H, W)`` -> ``uint8 (H, W, 3)``: near = blue, far = red, holes (0, NaN, inf) black.

    The range defaults to the 2nd..98th percentile of the valid depths.
    """
    d = np.asarray(depth_m, np.float32)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {d.shape}")
    lo, hi = depth_range(d)
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1e-3
    hole = ~np.isfinite(d) | (d <= 0)
    t = (np.where(hole, lo, d) - lo) / (hi - lo)
    out = turbo(t)
    out[hole] = 0
    return out


# --------------------------------------------------------------------------- legend


@dataclass(frozen=True)
class LegendEntry:
    """One class present in a label map."""

    class_id: int
    name: str
    color: str  # "#rrggbb"
    fraction: float  # share of the labelled pixels


def legend_entries(
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    palette: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
    min_fraction: float = 0.0,
) -> list[LegendEntry]:
    """Classes present in ``labels`` (largest first), with name, colour and pixel share.

    ``ignore_index`` pixels are left out. Classes below ``min_fraction`` of the
    labelled pixels are dropped (0 keeps every present class).
    """
    lab = np.asarray(labels).astype(np.int64).ravel()
    lab = lab[(lab != ignore_index) & (lab >= 0) & (lab < 256)]
    if lab.size == 0:
        return []
    pal = PALETTE if palette is None else np.asarray(palette, np.uint8)
    counts = np.bincount(lab, minlength=256)
    total = float(lab.size)
    out = []
    for cid in np.flatnonzero(counts):
        frac = counts[cid] / total
        if frac < min_fraction:
            continue
        name = class_names[cid] if class_names is not None and cid < len(class_names) else f"class {cid}"
        col = hex_color(pal[cid]) if cid < len(pal) else hex_color(IGNORE_COLOR)
        out.append(LegendEntry(int(cid), str(name), col, float(frac)))
    out.sort(key=lambda e: (-e.fraction, e.class_id))
    return out


def legend_html(entries: Iterable[LegendEntry], *, show_fraction: bool = True) -> str:
    """Colour chips for legend entries, as a small HTML snippet (names are escaped)."""
    chips = []
    for e in entries:
        pct = f"{e.fraction * 100:.1f}%" if show_fraction else ""
        chips.append(
            '<span style="display:inline-flex;align-items:center;margin:0 10px 4px 0;font-size:0.85em;">'
            f'<span style="display:inline-block;width:12px;height:12px;border-radius:2px;'
            f'background:{e.color};margin-right:4px;border:1px solid #8884;"></span>'
            f'{html.escape(e.name)}<span style="opacity:0.6;margin-left:4px">{pct}</span></span>'
        )
    return '<div style="line-height:1.4">' + "".join(chips) + "</div>"


def map_legend_html(
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    min_fraction: float = 0.01,
    max_entries: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> str:
    """The legend of one label map: a chip per class with its share of the map's labelled pixels, largest
    first; classes below ``min_fraction`` or past ``max_entries`` are summed into one "+n more" chip.

    The snippet carries the class ``fx-legend`` (one per map) so tests can count legends.
    """
    entries = legend_entries(labels, class_names, ignore_index=ignore_index)
    shown = [e for e in entries if e.fraction >= min_fraction][: max(0, max_entries)]
    ids = {e.class_id for e in shown}
    rest = [e for e in entries if e.class_id not in ids]
    body = legend_html(shown, show_fraction=True)
    if rest:
        share = sum(e.fraction for e in rest) * 100
        body += (f'<span style="font-size:0.8em;opacity:0.7">+{len(rest)} more class'
                 f'{"es" if len(rest) != 1 else ""} ({share:.1f}%)</span>')
    if not entries:
        body = '<span style="font-size:0.8em;opacity:0.7">no labelled pixels</span>'
    return f'<div class="fx-legend">{body}</div>'


# --------------------------------------------------------------------------- comparisons


def changed_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)``: pixels whose label differs between two label maps of one shape."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    return a != b


@dataclass(frozen=True)
class LabelChange:
    """Pixels that one label map calls ``before`` and another calls ``after``."""

    before_id: int
    before: str
    after_id: int
    after: str
    fraction: float  # share of all pixels of the image


def label_changes(
    before: np.ndarray,
    after: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    top: int = 5,
    min_fraction: float = 0.0,
) -> list[LabelChange]:
    """What changed into what between two label maps of one shape, largest pixel share first.

    Each entry is one (before class, after class) pair with the share of *all* the image's pixels that
    moved from the first to the second ("sofa → bed, 12% of the image"); at most ``top`` pairs, pairs below
    ``min_fraction`` dropped. Ids outside 0..255 count as one "other" id (-1).
    """
    a = np.asarray(before).astype(np.int64)
    b = np.asarray(after).astype(np.int64)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        return []
    a = np.where((a < 0) | (a > 255), 256, a).ravel()
    b = np.where((b < 0) | (b > 255), 256, b).ravel()
    moved = a != b
    counts = np.bincount(a[moved] * 257 + b[moved], minlength=257 * 257)
    order = np.argsort(-counts, kind="stable")
    out: list[LabelChange] = []

    def name(cid: int) -> str:
        if cid == 256:
            return "other"
        if cid == IGNORE_INDEX:
            return "unlabelled"
        return str(class_names[cid]) if class_names is not None and cid < len(class_names) else f"class {cid}"

    for code in order[: max(0, top)]:
        frac = counts[code] / a.size
        if counts[code] == 0 or frac < min_fraction:
            break
        i, j = divmod(int(code), 257)
        out.append(LabelChange(-1 if i == 256 else i, name(i), -1 if j == 256 else j, name(j), float(frac)))
    return out


def change_image(rgb: np.ndarray, mask: np.ndarray, *, color=(255, 0, 255), dim: float = 0.35) -> np.ndarray:
    """The image dimmed to grey with ``mask`` pixels painted in ``color`` (default magenta)."""
    img = _as_rgb_u8(rgb)
    m = np.asarray(mask, bool)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask {m.shape} does not match image {img.shape[:2]}")
    grey = img.astype(np.float32).mean(axis=2, keepdims=True) * dim
    out = np.repeat(grey, 3, axis=2)
    out[m] = color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def frame_metrics(
    pred: np.ndarray, target: np.ndarray, num_classes: int, *, ignore_index: int = IGNORE_INDEX
) -> dict[str, float]:
    """Per-frame pixel accuracy and mIoU of ``pred`` against ``target`` (same shape).

    Pixels where ``target == ignore_index`` are left out. The mIoU averages
    IoU over the classes that occur in the target or the prediction on the
    labelled pixels (a single frame holds only a few of the classes), so it
    is not the data-set mIoU. Returns ``pixel_acc``, ``miou``, ``n_classes``,
    ``n_pixels``; NaN when the frame has no labelled pixel.
    """
    p = np.asarray(pred).astype(np.int64).ravel()
    t = np.asarray(target).astype(np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction {np.shape(pred)} and target {np.shape(target)} differ in shape")
    valid = (t != ignore_index) & (t >= 0) & (t < num_classes)
    p, t = p[valid], t[valid]
    if t.size == 0:
        return {"pixel_acc": float("nan"), "miou": float("nan"), "n_classes": 0, "n_pixels": 0}
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)  # out-of-range predictions: always wrong
    k = num_classes + 1
    conf = np.bincount(t * k + p, minlength=k * k).reshape(k, k)[:num_classes]
    inter = np.diag(conf[:, :num_classes]).astype(np.float64)
    gt_count = conf.sum(1).astype(np.float64)
    pred_count = conf[:, :num_classes].sum(0).astype(np.float64)
    union = gt_count + pred_count - inter
    seen = union > 0
    iou = inter[seen] / union[seen]
    return {
        "pixel_acc": float(inter.sum() / t.size),
        "miou": float(iou.mean()) if iou.size else float("nan"),
        "n_classes": int(seen.sum()),
        "n_pixels": int(t.size),
    }


def saving_percent(reference: float | None, spent: float | None) -> float | None:
    """How much less ``spent`` is than ``reference``, in % (negative = more); None if unknown."""
    if reference is None or spent is None or not np.isfinite(reference) or reference <= 0:
        return None
    return float(100.0 * (1.0 - spent / reference))


def format_flops(flops: float | None) -> str:
    """``1.23e9`` -> ``"1.23 GFLOPs"``; ``None`` -> ``"n/a"``."""
    if flops is None or not np.isfinite(flops):
        return "n/a"
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops:.0f} FLOPs"


def fit_within(img: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink an image (or ``(H, W)`` map, nearest) so its longer side is at most ``max_side``."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    s = max(h, w)
    if s <= max_side:
        return a
    from PIL import Image

    nh, nw = max(1, round(h * max_side / s)), max(1, round(w * max_side / s))
    if a.ndim == 3 and a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).resize((nw, nh), Image.BILINEAR))
    # depth / labels: nearest neighbour keeps holes and ids intact
    ys = (np.arange(nh) * h / nh).astype(np.int64)
    xs = (np.arange(nw) * w / nw).astype(np.int64)
    return a[ys][:, xs]


# --------------------------------------------------------------------------- figures


def branch_label(k: int) -> str:
    """Axis label of DynMM branch ``k``."""
    return "k=0 · RGB only" if k == 0 else f"k={k}"


def branch_description(k: int, n_stages: int | None = None) -> str:
    """What DynMM branch ``k`` means, in words."""
    if k == 0:
        return "RGB only: the depth encoder never runs"
    if n_stages is not None and k >= n_stages:
        return f"depth fused into all {n_stages} stages (full RGB-D)"
    return f"depth fused into the first {k} stage{'s' if k != 1 else ''}"


def gate_probs_figure(probs: Sequence[float], chosen: int | None = None, *, n_stages: int | None = None) -> go.Figure:
    """Bar chart of the DynMM gate's branch probabilities; the branch taken is highlighted.

    Branch ``k`` = depth fused into the first ``k`` encoder stages; ``k = 0``
    means the depth encoder never runs.
    """
    p = [float(v) for v in probs]
    ks = list(range(len(p)))
    colors = ["#e4572e" if k == chosen else "#9aa5b1" for k in ks]
    fig = go.Figure(
        go.Bar(
            x=[branch_label(k) for k in ks],
            y=p,
            marker_color=colors,
            text=[f"{v:.2f}" for v in p],
            textposition="outside",
            hovertext=[branch_description(k, n_stages) for k in ks],
            hovertemplate="%{x}: %{y:.3f}<br>%{hovertext}<extra></extra>",
        )
    )
    title = "Gate: branch probabilities"
    if chosen is not None:
        title += f" (taken: k={chosen})"
    fig.update_layout(
        title=title,
        yaxis=dict(title="probability", range=[0, 1.15]),
        xaxis=dict(title="branch"),
        height=300,
        margin=dict(l=40, r=10, t=40, b=40),
        showlegend=False,
    )
    return fig


def compute_figure(rows: Sequence[dict], *, time_noisy: bool = False) -> go.Figure:
    """Side-by-side bars of measured GFLOPs (first: exact) and milliseconds (second: a noisy sample).

    Each row is a dict with ``name``, ``flops`` (float or None) and ``ms`` (float or None: the median);
    optional ``ms_lo`` / ``ms_hi`` draw the time's spread (e.g. the IQR) as an error bar. Unknown values
    are missing bars. ``time_noisy`` says so in the time panel's title.
    """
    names = [str(r["name"]) for r in rows]
    gf = [None if r.get("flops") is None else float(r["flops"]) / 1e9 for r in rows]
    ms = [None if r.get("ms") is None else float(r["ms"]) for r in rows]
    lo = [None if r.get("ms_lo") is None or m is None else max(0.0, m - float(r["ms_lo"])) for r, m in zip(rows, ms)]
    hi = [None if r.get("ms_hi") is None or m is None else max(0.0, float(r["ms_hi"]) - m) for r, m in zip(rows, ms)]
    palette = ["#5b8def", "#e4572e", "#76b041", "#ffc914", "#8e6c8a"]
    colors = [palette[i % len(palette)] for i in range(len(rows))]
    t_title = "forward time (ms) — noisy" if time_noisy else "forward time (ms, median · IQR)"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("GFLOPs (measured, exact)", t_title))
    fig.add_trace(
        go.Bar(x=names, y=gf, marker_color=colors, text=[_fmt(v, 2) for v in gf], textposition="outside",
               hovertemplate="%{x}: %{y:.3f} GFLOPs<extra></extra>"),
        row=1, col=1,
    )
    err = None
    if any(v is not None for v in lo + hi):
        err = dict(type="data", symmetric=False, array=[v or 0.0 for v in hi], arrayminus=[v or 0.0 for v in lo],
                   color="#333", thickness=1.2, width=6)
    fig.add_trace(
        go.Bar(x=names, y=ms, marker_color=colors, text=[_fmt(v, 0) for v in ms], textposition="inside",
               error_y=err, opacity=0.55 if time_noisy else 1.0,
               hovertemplate="%{x}: median %{y:.1f} ms<extra></extra>"),
        row=1, col=2,
    )
    tops = [m + (h or 0.0) for m, h in zip(ms, hi) if m is not None]
    for col, top in ((1, max([v for v in gf if v is not None] or [1.0])), (2, max(tops or [1.0]))):
        fig.update_yaxes(range=[0, top * 1.2 if top > 0 else 1.0], row=1, col=col)
    fig.update_layout(height=300, showlegend=False, margin=dict(l=40, r=10, t=40, b=40))
    return fig


def _fmt(v: float | None, nd: int) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


# --------------------------------------------------------------------------- sparse fusion: which tokens survive


def token_overlay(image: np.ndarray, grid: tuple[int, int], scores: np.ndarray, kept: np.ndarray,
                  windows: np.ndarray | None = None, *, dim: float = 0.25, alpha: float = 0.5) -> np.ndarray:
    """Draw a modality's token grid over ``image`` (uint8 (H, W, 3)): each token cell tinted by its score
    (turbo, normalised over the grid), cells whose token was dropped dimmed to ``dim``, the cell that
    represents each kept or pooled token outlined in white. ``windows`` (window modes): every cell of a
    window is pooled into one token, so nothing is dimmed; window borders are drawn in black instead.
    ``scores`` (N,) and ``windows`` (N,) are over the ``grid`` (h, w) in row-major order; ``kept`` (M,)
    indexes that grid."""
    img = _as_rgb_u8(image).astype(np.float32)
    H, W = img.shape[:2]
    gh, gw = grid
    s = np.asarray(scores, np.float32).reshape(gh, gw)
    lo, hi = float(np.min(s)), float(np.max(s))
    norm = (s - lo) / (hi - lo) if hi > lo else np.full_like(s, 0.5)
    rows = np.minimum((np.arange(H) * gh) // H, gh - 1)  # grid row of every pixel row
    cols = np.minimum((np.arange(W) * gw) // W, gw - 1)
    cell = rows[:, None] * gw + cols[None, :]  # (H, W) token index of every pixel
    kept = np.asarray(kept, np.int64).ravel()
    heat = turbo(norm.ravel()[cell]).astype(np.float32)
    out = (1 - alpha) * img + alpha * heat
    if windows is None:
        keep_mask = np.zeros(gh * gw, bool)
        keep_mask[kept] = True
        out = np.where(keep_mask[cell][..., None], out, img * dim)
    else:
        win = np.asarray(windows, np.int64).ravel()[cell]
        border = np.zeros((H, W), bool)
        border[1:, :] |= win[1:, :] != win[:-1, :]
        border[:, 1:] |= win[:, 1:] != win[:, :-1]
        out[border] = 0
    edge = np.zeros((H, W), bool)  # outline the representative cells
    is_kept = np.isin(cell, kept)
    edge[1:, :] |= is_kept[1:, :] & (cell[1:, :] != cell[:-1, :])
    edge[:-1, :] |= is_kept[:-1, :] & (cell[:-1, :] != cell[1:, :])
    edge[:, 1:] |= is_kept[:, 1:] & (cell[:, 1:] != cell[:, :-1])
    edge[:, :-1] |= is_kept[:, :-1] & (cell[:, :-1] != cell[:, 1:])
    out[edge] = 255
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def token_cost_figure(rows: Sequence[dict]) -> go.Figure:
    """Bars of tokens into cross-modal attention, fusion-stage GFLOPs and fusion-stage allocated MB for the
    sparse and the dense variant. Each row: ``name``, ``tokens``, ``flops``, ``mbytes`` (None = unknown)."""
    names = [str(r["name"]) for r in rows]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("tokens into fusion", "fusion-stage GFLOPs",
                                                        "fusion-stage MB allocated"))
    colors = ["#e4572e", "#9aa5b1", "#5b8def", "#76b041"][: len(rows)]
    for col, key, scale, nd in ((1, "tokens", 1.0, 0), (2, "flops", 1e-9, 3), (3, "mbytes", 1.0, 1)):
        vals = [None if r.get(key) is None else float(r[key]) * scale for r in rows]
        fig.add_trace(go.Bar(x=names, y=vals, marker_color=colors, text=[_fmt(v, nd) for v in vals],
                             textposition="outside"), row=1, col=col)
        top = max([v for v in vals if v is not None] or [1.0])
        fig.update_yaxes(range=[0, top * 1.25 if top > 0 else 1.0], row=1, col=col)
    fig.update_layout(height=300, showlegend=False, margin=dict(l=40, r=10, t=40, b=40))
    return fig


# --------------------------------------------------------------------------- DEQ: convergence


def residual_figure(traces: Sequence[dict], *, tol: float | None = None) -> go.Figure:
    """Solver residual per iteration on a log scale, one line per trace (``name``, ``residuals`` (n,),
    ``nstep``); a marker where each solve stopped and a dashed line at the tolerance."""
    fig = go.Figure()
    palette = ["#e4572e", "#5b8def", "#76b041", "#8e6c8a"]
    for i, t in enumerate(traces):
        r = np.asarray(t["residuals"], np.float64)
        n = int(t.get("nstep") or len(r))
        its = np.arange(1, len(r) + 1)
        color = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=its[:n], y=np.maximum(r[:n], 1e-12), mode="lines+markers", name=str(t["name"]),
                                 line=dict(color=color), hovertemplate="iteration %{x}: %{y:.2e}<extra></extra>"))
        if 0 < n <= len(r):
            fig.add_trace(go.Scatter(x=[n], y=[max(r[n - 1], 1e-12)], mode="markers", showlegend=False,
                                     marker=dict(symbol="x", size=13, color=color),
                                     hovertemplate=f"{t['name']}: stopped at iteration {n}<extra></extra>"))
    if tol is not None:
        fig.add_hline(y=tol, line_dash="dash", line_color="#333", annotation_text=f"tolerance {tol:g}")
    fig.update_layout(yaxis=dict(type="log", title="residual", dtick=1, exponentformat="power"),
                      xaxis=dict(title="solver iteration", dtick=1),
                      height=320, margin=dict(l=50, r=10, t=30, b=40), legend=dict(orientation="h", y=1.12))
    return fig


def settling_figure(iters: Sequence[int], changed_fraction: Sequence[float], residuals: Sequence[float] | None = None
                    ) -> go.Figure:
    """Share of pixels whose label at iteration t differs from the final prediction (does the segmentation
    settle as the residual falls?)."""
    fig = go.Figure(go.Scatter(x=list(iters), y=[100 * float(v) for v in changed_fraction], mode="lines+markers",
                               name="pixels ≠ final", line=dict(color="#e4572e"),
                               hovertemplate="iteration %{x}: %{y:.1f}% of pixels differ<extra></extra>"))
    fig.update_layout(yaxis=dict(title="% pixels ≠ final label", rangemode="tozero"),
                      xaxis=dict(title="solver iteration"), height=260, margin=dict(l=50, r=10, t=20, b=40))
    return fig


# --------------------------------------------------------------------------- adapters: robustness matrix


def robustness_figure(methods: Sequence[str], subsets: Sequence[str], miou: Sequence[Sequence[float | None]],
                      metric: str = "mIoU %") -> go.Figure:
    """Heatmap of mIoU (%) per method (rows) and modality subset (columns); missing cells stay blank. ``metric``:
    the colour bar's title (clips: accuracy)."""
    z = [[None if v is None else float(v) for v in row] for row in miou]
    text = [["" if v is None else f"{v:.1f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=list(subsets), y=list(methods), text=text, texttemplate="%{text}",
                               colorscale="Viridis", colorbar=dict(title=metric),
                               hovertemplate="%{y} · %{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(height=80 + 45 * len(methods), margin=dict(l=10, r=10, t=20, b=40),
                      yaxis=dict(autorange="reversed"))
    return fig


def iterations_run(kept: Sequence[int], nstep: int) -> list[int]:
    """The iterations a "prediction at iteration t" control offers: the kept iterations the solver actually
    reached (< ``nstep``) and ``nstep`` itself, where it stopped (at least 1)."""
    n = max(1, int(nstep))
    return sorted({int(k) for k in kept if 1 <= int(k) < n} | {n})


# --------------------------------------------------------------------------- model cards

CARD_LABELS: dict[str, str] = {
    "name": "checkpoint", "title": "title", "task": "task", "method": "method", "registry": "architecture",
    "base": "frozen base checkpoint", "trained_without": "trained without", "control_for": "control for",
    "superseded": "superseded", "data": "data", "licence": "licence", "split": "split",
    "selected_on": "settings chosen on", "input_size": "input size (H × W)", "num_classes": "output classes",
    "params": "parameters", "adapter_params": "adapter parameters", "adapter_share_percent": "adapter share",
    "training": "training", "metrics": "metrics", "command": "reproduce with",
    # training.*
    "steps": "steps", "seconds": "seconds", "world_size": "processes", "epochs": "epochs",
    "batch_size": "batch size", "lr": "learning rate", "seed": "seed", "init": "initialised from",
    "resource_weight": "resource-loss weight λ", "hardware": "hardware", "code": "code", "data_note": "data note",
    # metrics.*
    "miou": "mIoU (%)", "pixel_acc": "pixel accuracy (%)", "frames": "frames", "mean_gflops": "mean GFLOPs",
    "mean_ms": "mean ms", "median_ms": "median ms", "fusion_gflops": "fusion-stage GFLOPs",
    "no_depth": "without depth", "rgb_only": "RGB only", "depth_only": "depth only",
    "base_no_adapter": "base without adapters", "dense_variant": "dense variant (pool=none)",
    "tokens": "tokens", "before": "before pooling", "after": "after pooling", "pool": "pooling",
    "keep_ratio": "keep ratio", "measured_by": "measured by", "env": "measured on",
}
CARD_SKIP = ("config", "weights", "per_class_iou", "per_class")  # bulky or internal fields


def _card_value(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return " × ".join(_card_value(x) for x in v) if len(v) <= 4 and all(
            isinstance(x, (int, float)) for x in v) else ", ".join(_card_value(x) for x in v)
    return str(v)


def card_rows(card: dict, *, max_depth: int = 3) -> list[tuple[str, str]]:
    """A model card flattened to (field, value) rows with human labels, for a table.

    Nested sections become "section · field" (``metrics.no_depth.miou`` -> "metrics · without depth ·
    mIoU (%)"); the model config, the weights file and per-class lists are left out; None values are
    skipped. Unknown keys keep their name with underscores as spaces.
    """
    rows: list[tuple[str, str]] = []

    def label(key: str) -> str:
        return CARD_LABELS.get(key, key.replace("_", " "))

    def walk(d: dict, prefix: str, depth: int) -> None:
        for k, v in d.items():
            if k in CARD_SKIP or v is None or v == {} or v == []:
                continue
            lab = f"{prefix}{label(str(k))}"
            if isinstance(v, dict):
                if depth < max_depth:
                    walk(v, lab + " · ", depth + 1)
                else:
                    rows.append((lab, ", ".join(f"{label(str(a))}: {_card_value(b)}" for a, b in v.items())))
            elif isinstance(v, (list, tuple)) and len(v) > 12:
                rows.append((lab, f"{len(v)} values"))
            else:
                rows.append((lab, _card_value(v)))

    walk(card, "", 1)
    return rows


def pareto_figure(res: dict) -> go.Figure:
    """DynMM's evidence (the dict ``fusion.ablations.dynmm_pareto`` returns): test mIoU vs measured GFLOPs
    for every fixed branch (the line), each gate budget, a random router with each gate's branch mix
    (mean ± std), the static model and its equal-training control."""
    fig = go.Figure()
    fixed = sorted(res.get("fixed", []), key=lambda f: f["gflops"])
    fig.add_trace(go.Scatter(x=[f["gflops"] for f in fixed], y=[f["miou"] for f in fixed], mode="lines+markers+text",
                             text=[f"k={f['branch']}" for f in fixed], textposition="bottom right",
                             name="fixed branch k (forced)", line={"color": "#888"}))
    gates = res.get("gates", [])
    if gates:
        fig.add_trace(go.Scatter(
            x=[g["mean_gflops"] for g in gates], y=[g["random_router"]["miou_mean"] for g in gates],
            error_y={"type": "data", "array": [g["random_router"]["miou_std"] for g in gates]},
            mode="markers", marker={"symbol": "square", "color": "#e69f00", "size": 9},
            name="random router, same branch mix"))
        fig.add_trace(go.Scatter(
            x=[g["mean_gflops"] for g in gates], y=[g["miou"] for g in gates], mode="markers+text",
            text=[g["name"] for g in gates], textposition="top left",
            marker={"color": "#0072b2", "size": 12}, name="DynMM gate"))
    for key, color, label in (("static", "#009e73", "static base"), ("control", "#cc79a7", "static, same extra epochs")):
        r = res.get(key)
        if r:
            fig.add_trace(go.Scatter(x=[r["mean_gflops"]], y=[r["miou"]], mode="markers",
                                     marker={"symbol": "diamond", "color": color, "size": 12}, name=label))
    fig.update_layout(xaxis_title="GFLOPs per frame (measured on the path that ran)", yaxis_title="test mIoU",
                      height=420, margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return fig
