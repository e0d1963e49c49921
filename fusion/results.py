"""Pure readers of stored results: model cards and the ablation JSON that ``fusion.evaluate`` writes.

Nothing here loads a model or a data set, and nothing is computed: the pages (``pages/adapters.py``,
``pages/evidence.py``) draw these, and the CLI (``python -m fusion.evaluate``) writes the README blocks with
the same functions (``fusion.evaluate`` and ``fusion.ablations`` re-export them under their old names).

- Missing-modality adapters: :func:`sort_adapter_cards`, :func:`robustness_from_cards` (the subset x method
  robustness matrix from evaluated cards) and the row builders ``fusion.evaluate`` also uses.
- Missing-modality adapters on clips: :func:`clip_adapter_table` / :func:`clip_adapter_lines` (per subset: base,
  adapters, dedicated model, recovery, added parameters) and :func:`clip_robustness` /
  :func:`clip_robustness_lines` (every shipped clip model x every modality subset, from whichever figure files
  exist).
- Ablation tables: :func:`dynmm_lines`, :func:`sparse_lines`, :func:`deq_lines` (the README blocks
  ``results:dynmm``, ``results:sparse_ablation`` and ``results:deq_ablation`` from the stored JSON).
"""
from __future__ import annotations

import json
from pathlib import Path

from fusion.types import DEPTH, RGB


# --------------------------------------------------------------------------- missing-modality adapters


ADAPTER_KINDS = ("lora", "ssf", "bitfit")  # table and page order: most parameters first


def sort_adapter_cards(cards: list[dict]) -> list[dict]:
    """Adapter cards in :data:`ADAPTER_KINDS` order (unknown kinds last)."""
    def rank(c: dict) -> int:
        kind = c["config"]["adapter"]["kind"]
        return ADAPTER_KINDS.index(kind) if kind in ADAPTER_KINDS else len(ADAPTER_KINDS)
    return sorted(cards, key=rank)


def _epochs(card: dict) -> list[str]:
    """["15 epochs"] from the card's training record (empty when it has none)."""
    ep = (card.get("training") or {}).get("epochs") if isinstance(card.get("training"), dict) else None
    return [f"{ep} epoch{'s' if ep != 1 else ''}"] if ep else []


def base_row(base: str, miou: dict) -> dict:
    """Matrix row of the frozen base with adapters off; ``miou`` = {"both", "rgb", "depth"}."""
    return {"method": "base", "label": f"`{base}`, modality missing, no adapter", "params": 0, **miou}


def adapter_row(card: dict) -> dict:
    """Matrix row of an adapter card from its evaluated ``rgb_only`` / ``depth_only`` metrics. The label names
    the kind and the epochs: the rows of one table can have different training lengths."""
    m = card.get("metrics", {})
    return {"method": card["name"],
            "label": f"`{card['name']}` ({', '.join([card['config']['adapter']['kind'], *_epochs(card)])})",
            "params": " / ".join(f"{v:,} ({card['adapter_share_percent'][k]:.2f}%)"
                                 for k, v in card["adapter_params"].items()),
            **{sub: m[f"{sub}_only"]["miou"] for sub in ("rgb", "depth") if f"{sub}_only" in m}}


def dedicated_row(card: dict, sub: str) -> dict:
    """Matrix row of a dedicated ``sub``-only network from its evaluated metrics."""
    ep = _epochs(card)
    return {"method": card["name"],
            "label": f"`{card['name']}`, dedicated {sub}-only network" + (f" ({ep[0]})" if ep else ""),
            "params": f"{card['params']:,} (all)", sub: card["metrics"][f"{sub}_only"]["miou"]}


def robustness_from_cards(cards: list[dict]) -> list[dict]:
    """The robustness matrix rows (as :func:`fusion.evaluate.robustness` returns them) from evaluated cards:
    the frozen base without adapters, each adapter kind, each dedicated single-modality model. Unevaluated
    cards are skipped."""
    adapters = sort_adapter_cards([c for c in cards if c.get("registry") == "adapted_rgbd"
                                   and "base_no_adapter" in c.get("metrics", {})])
    rows = [base_row(adapters[0]["base"], adapters[0]["metrics"]["base_no_adapter"])] if adapters else []
    rows += [adapter_row(c) for c in adapters]
    for c in cards:
        sub = {DEPTH: "rgb", RGB: "depth"}.get(c.get("trained_without"))
        if sub and f"{sub}_only" in c.get("metrics", {}):
            rows.append(dedicated_row(c, sub))
    return rows


# --------------------------------------------------------------------------- ablation tables (README blocks)

SPARSE_LEARNED = ("topk_attn", "topk", "attn_avg")  # pooling that decides which tokens by what it learnt
SPARSE_BASELINES = ("random", "strided_random")  # the same number of tokens, not chosen by the model


def dynmm_lines(res: dict, env: str) -> list[str]:
    """The README block ``results:dynmm``: the Pareto table and what it shows."""
    st = res["static"]
    lines = ["| router | mIoU | GFLOPs / frame | vs static | CPU ms (median) | vs static (paired) | "
             "branch share k=0..4 | random router, same mix | gate − random | gate − fixed line |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def ms(r: dict) -> tuple[str, str]:
        if "median_ms" not in r:
            return "-", "-"
        lo, hi = r["ms_ratio_iqr"]
        return f"{r['median_ms']:.1f}", f"{r['ms_ratio_vs_static']:.2f}x ({lo:.2f}–{hi:.2f})"

    for key in ("static", "control"):
        r = res.get(key)
        if r is None:
            continue
        a, b = ms(r)
        label = f"`{r['name']}` " + ("(static base)" if key == "static" else "(static, same extra epochs: the control)")
        lines.append(f"| {label} | "
                     f"{r['miou']:.2f} | {r['mean_gflops']:.3f} | {r['mean_gflops'] / st['mean_gflops']:.2f}x | "
                     f"{a} | {b} | - | - | - | - |")
    for f in res["fixed"]:
        lines.append(f"| fixed branch k={f['branch']} (forced) | {f['miou']:.2f} | {f['gflops']:.3f} | "
                     f"{f['gflops'] / st['mean_gflops']:.2f}x | - | - | - | - | - | - |")
    for g in res["gates"]:
        a, b = ms(g)
        rr = g["random_router"]
        vf = "-" if g["vs_fixed_line"] is None else f"{g['vs_fixed_line']:+.2f}"
        lines.append(f"| **`{g['name']}`** gate (λ={g['resource_weight']:g}) | **{g['miou']:.2f}** | "
                     f"{g['mean_gflops']:.3f} | {g['gflops_ratio_vs_static']:.2f}x | {a} | {b} | "
                     f"{' / '.join(f'{100 * s:.0f}%' for s in g['branch_share'])} | "
                     f"{rr['miou_mean']:.2f} ± {rr['miou_std']:.2f} | {g['vs_random_router']:+.2f} | {vf} |")
    lines += ["", f"_Generated by `python -m fusion.evaluate --pareto` on {res['frames']} NYUv2 test frames ({env}). "
              "mIoU over 39 classes at 480x640 label resolution. GFLOPs: FlopCounterMode on the path each frame "
              "took (gate included). Fixed branches: the same frozen branches forced to k for every frame (FLOPs of "
              "the forced path). Random router: the gate's own branch mix assigned to frames at random, "
              f"{res['gates'][0]['random_router']['draws'] if res['gates'] else 0} draws (mean ± std). Fixed line: "
              "linear between the two fixed branches whose FLOPs bracket the gate's. CPU ms: median over the timed "
              "frames of the median of 3 repeats, all models interleaved in a fresh random order per repeat in one "
              "run; the ratio is the median of per-frame ratios (interquartile range in brackets)._"]
    return lines


def sparse_lines(res: dict, env: str, split: str) -> list[str]:
    """The README block ``results:sparse_ablation``: pooling mode x keep ratio, dense, zeroed."""
    sc = res["settings"]
    ratios = sorted({v["keep_ratio"] for k, v in sc.items() if "@" in k}, reverse=True)
    modes = list(dict.fromkeys(k.split("@")[0] for k in sc if "@" in k))
    tok = {r: sc[f"{modes[0]}@{r:g}"]["tokens_after"] for r in ratios}
    lines = ["| pooling | " + " | ".join(f"keep {r:g} ({tok[r]} tokens)" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for m in modes:
        kind = "learned" if m in SPARSE_LEARNED else "baseline" if m in SPARSE_BASELINES else "fixed"
        cells = []
        for r in ratios:
            v = sc[f"{m}@{r:g}"]
            cells.append(f"{v['miou']:.2f}" + (f" ({v['tokens_after']})" if v["tokens_after"] != tok[r] else ""))
        lines.append(f"| `{m}` ({kind}) | " + " | ".join(cells) + " |")
    sh, dn, z = sc["shipped"], sc["dense"], sc["zeroed"]
    lines += ["", "| setting | tokens into cross-modal attention | fusion-stage GFLOPs | mIoU | vs shipped |",
              "|---|---|---|---|---|",
              f"| shipped: `{sh['pool']}` keep {sh['keep_ratio']:g} | {sh['tokens_in']} → {sh['tokens_after']} "
              f"({res['token_reduction']:.1f}x fewer) | {sh['fusion_flops'] / 1e9:.4f} "
              f"({res['fusion_flops_reduction']:.1f}x fewer) | **{sh['miou']:.2f}** | - |",
              f"| dense (`pool=none`) | {dn['tokens_in']} → {dn['tokens_after']} | {dn['fusion_flops'] / 1e9:.4f} | "
              f"{dn['miou']:.2f} | {sh['miou'] - dn['miou']:+.2f} |",
              f"| block output zeroed (no depth at stride 16) | - | 0 | {z['miou']:.2f} | {z['miou'] - sh['miou']:+.2f} |",
              "", f"_Generated by `python -m fusion.evaluate --ablate {res['name']} --split {split}` on "
              f"{res['frames']} NYUv2 {split} frames ({env}); mIoU (39 classes) at the model's 240x320 (labels resized "
              "nearest). One checkpoint, pooling switched per call; window modes (`avg`, `max`, `attn_avg`, "
              "`strided_random`) use a window of about 1/keep cells, so a count in brackets differs from the column's. "
              "Random modes: one seeded draw per frame. Fusion stage = pooling, cross-modal layer and read-back "
              "(FlopCounterMode)._"]
    return lines


def deq_lines(res: dict, env: str, split: str) -> list[str]:
    """The README block ``results:deq_ablation``: solver iterates vs fixed point vs zeroed."""
    sc = res["settings"]
    iters = [k for k in sc if k.startswith("iter")]
    fp = sc["fixed_point"]["miou"]
    lines = ["| state fed to the network | mIoU | vs fixed point |", "|---|---|---|"]
    for k in iters:
        n = int(k[4:])
        lines.append(f"| after {n} Anderson step{'s' if n > 1 else ''} | {sc[k]['miou']:.2f} | "
                     f"{sc[k]['miou'] - fp:+.2f} |")
    lines += [f"| **fixed point** (Anderson, rel. tol {res['tol']:g}, cap {res['max_iter']}) | **{fp:.2f}** | - |",
              f"| plain fixed-point iteration, same tol and cap | {sc['fixed_point_iteration']['miou']:.2f} | "
              f"{sc['fixed_point_iteration']['miou'] - fp:+.2f} |",
              f"| block output zeroed (no depth at stride 32) | {sc['zeroed']['miou']:.2f} | "
              f"{sc['zeroed']['miou'] - fp:+.2f} |",
              "", f"Converged (relative residual < {res['tol']:g} within {res['max_iter']} Anderson steps): "
              f"**{res['converged_percent']:.2f}%** of frames; mean {res['mean_steps']:.2f} steps, max "
              f"{res['max_steps']}; 99th percentile of the final relative residual {res['rel_residual_p99']:.1e}.",
              "", f"_Generated by `python -m fusion.evaluate --ablate {res['name']} --split {split}` on "
              f"{res['frames']} NYUv2 {split} frames ({env}); mIoU (39 classes) at the model's 240x320 (labels resized "
              "nearest). 'After k steps': the solve's own k-th iterate, decoded like the fixed point (a frame that "
              "stopped earlier keeps its final state)._"]
    return lines


# --------------------------------------------------------------------------- missing-modality adapters on clips

CLIP_MODALITY_ORDER = ("face", "audio", "text")
CLIP_SUBSET_COLUMNS = ("face", "audio", "text", "face+audio", "face+text", "audio+text", "face+audio+text")
CLIP_ADAPTER_SUBSETS = CLIP_SUBSET_COLUMNS[:-1]  # the proper subsets that have adapters
# the figure files whose models enter the clip robustness matrix (whatever of them exists), in row order
CLIP_MATRIX_SOURCES = ("clips_{split}.json", "clips_sparse_models_{split}.json", "clips_deq_models_{split}.json",
                       "clips_adapters_models_{split}.json")
MIN_GAP = 1.0  # accuracy points: below this gap between dedicated and base the recovery is not computed


def recovery(base: float | None, adapted: float | None, dedicated: float | None) -> float | None:
    """Share (percent) of the accuracy a dedicated subset model gains over the frozen base that the adapters
    regain: ``(adapted - base) / (dedicated - base)``; None when the gap is below :data:`MIN_GAP` points (the
    dedicated model is not better than the base there, so there is no drop to recover)."""
    if base is None or adapted is None or dedicated is None or dedicated - base < MIN_GAP:
        return None
    return round(100 * (adapted - base) / (dedicated - base), 1)


def clip_adapter_table(res: dict, cards: dict[str, dict], base: str = "concat_clips") -> list[dict]:
    """Per subset: the frozen base on that subset, each adapter kind, the dedicated model, recovery and added
    parameters. ``res``: a ``fusion.clip_eval.evaluate`` result holding ``base``, the ``adapted_clips_*`` and the
    ``dedicated_clips_*`` models; ``cards``: their model cards by name."""
    models = res["models"]
    adapters = [n for n in models if cards.get(n, {}).get("registry") == "adapted_clips"]
    adapters.sort(key=lambda n: ADAPTER_KINDS.index(cards[n]["adapter_kind"])
                  if cards[n].get("adapter_kind") in ADAPTER_KINDS else len(ADAPTER_KINDS))
    dedicated = {cards[n]["trained_on"]: n for n in models if cards.get(n, {}).get("registry") == "dedicated_clips"}
    rows = []
    for s in CLIP_ADAPTER_SUBSETS:
        b = models[base]["subsets"].get(s) if base in models else None
        ded = dedicated.get(s)
        d = models[ded]["subsets"].get(s) if ded else None
        row = {"subset": s, "base": b, "dedicated": d, "dedicated_model": ded, "adapters": {}}
        for n in adapters:
            c = cards[n]
            a = models[n]["subsets"].get(s)
            row["adapters"][c["adapter_kind"]] = {
                "model": n, "accuracy": a, "recovered_percent": recovery(b, a, d),
                "params": c.get("adapter_params", {}).get(s),
                "share_of_model_percent": c.get("adapter_share_percent", {}).get(s),
                "share_of_fusion_percent": c.get("adapter_share_of_fusion_percent", {}).get(s)}
        rows.append(row)
    return rows


def _cell(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def clip_adapter_lines(rows: list[dict], split: str, samples: int) -> list[str]:
    """The README block ``results:clips_adapters``: accuracy per subset, recovery and added parameters."""
    kinds = list(rows[0]["adapters"]) if rows else []
    head = ("| subset | frozen base | " + " | ".join(f"+ {k}" for k in kinds) + " | dedicated | "
            + " | ".join(f"{k} recovered" for k in kinds) + " |")
    lines = [f"*{split} pairing, {samples} label-paired samples; accuracy (%) with only the subset's modalities "
             "given. Recovered = (adapted − base) / (dedicated − base); '-' where the dedicated model is less than "
             f"{MIN_GAP:g} point above the base (no drop to recover).*", "", head,
             "|---|---|" + "---|" * len(kinds) + "---|" + "---|" * len(kinds)]
    for r in rows:
        ad = r["adapters"]
        lines.append(f"| {r['subset']} | {_cell(r['base'])} | "
                     + " | ".join(_cell(ad[k]["accuracy"]) for k in kinds) + f" | {_cell(r['dedicated'])} | "
                     + " | ".join(_cell(ad[k]["recovered_percent"], "{:.0f}%") for k in kinds) + " |")
    if rows:
        lines += ["", "| subset | " + " | ".join(f"{k} added params (of the model / of the fusion network)"
                                                 for k in kinds) + " |", "|---|" + "---|" * len(kinds)]
        for r in rows:
            ad = r["adapters"]
            lines.append(f"| {r['subset']} | " + " | ".join(
                "-" if ad[k]["params"] is None else
                f"{ad[k]['params']:,} ({ad[k]['share_of_model_percent']:.3f}% / {ad[k]['share_of_fusion_percent']:.2f}%)"
                for k in kinds) + " |")
    return lines


def clip_robustness(figures: Path | str, split: str = "test") -> dict:
    """The clip robustness matrix: every model in the figure files of :data:`CLIP_MATRIX_SOURCES` that exist for
    ``split`` (a later file's row replaces an earlier one of the same name) x every modality subset, accuracy (%)
    with only that subset given (None where a model cannot run it: a dedicated model off its own modalities).
    Returns ``{"split", "samples", "columns", "rows": [{"name", "method", "source", "cells"}], "sources"}``; no
    rows when no file exists."""
    rows: dict[str, dict] = {}
    sources, samples = [], None
    for pattern in CLIP_MATRIX_SOURCES:
        path = Path(figures) / pattern.format(split=split)
        if not path.exists():
            continue
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        sources.append(path.name)
        samples = res.get("samples", samples)
        for name, r in res.get("models", {}).items():
            subs = r.get("subsets", {})
            rows[name] = {"name": name, "method": r.get("method"), "source": path.name,
                          "cells": {s: subs.get(s) for s in CLIP_SUBSET_COLUMNS}}
    return {"split": split, "samples": samples, "columns": list(CLIP_SUBSET_COLUMNS), "rows": list(rows.values()),
            "sources": sources}


def clip_robustness_lines(matrix: dict) -> list[str]:
    """The README block ``results:clips_robustness`` from :func:`clip_robustness`."""
    cols = matrix["columns"]
    lines = [f"*{matrix['split']} pairing, {matrix['samples']} label-paired samples; accuracy (%) with only the "
             f"column's modalities given; from {', '.join(f'`{s}`' for s in matrix['sources'])}. '-': the model "
             "cannot run without a modality it was built for; a dedicated model given more uses only its own. "
             "Adapted models: the column's adapter set on (all three: the frozen base).*", "",
             "| model | method | " + " | ".join(cols) + " | mean over the 7 |", "|---|---|" + "---|" * (len(cols) + 1)]
    for r in matrix["rows"]:
        vals = [r["cells"][c] for c in cols]
        mean = "-" if any(v is None for v in vals) else f"{sum(vals) / len(vals):.1f}"
        lines.append(f"| `{r['name']}` | {r['method']} | " + " | ".join(_cell(v) for v in vals) + f" | {mean} |")
    return lines
