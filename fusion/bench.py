"""Speed and memory benchmarks (never timed assertions in tests).

    python -m fusion.bench                       # every shipped RGB-D checkpoint, 240x320, batch 1
    python -m fusion.bench --size 480 640 --repeats 20
    python -m fusion.bench --app                 # time each app page's first render, cold and warm
    python -m fusion.bench --app --pages home rgbd --repeats 3 --json app_bench.json
    python -m fusion.bench attribution --readme README.md   # "Which modality drove this prediction?" cost

Per model and variant (DynMM: each branch; sparse: config pooling vs dense; DEQ: each solver; adapters: each
subset, unmerged and merged): measured FLOPs (FlopCounterMode), median/min CPU wall time after
warm-up, peak resident memory growth of the forward (tracemalloc does not see torch's allocator, so we
read the process RSS high-water mark before/after), parameter count.

``--app``: per page of the Streamlit app (discovered from the ``st.Page`` calls in ``app.py``), the time of
its first full render on an NYUv2 test frame (a synthetic upload when the data set is not found), driven
headless with ``streamlit.testing.v1.AppTest`` through the widgets a user would touch: open the app, switch
to the page, pick "NYUv2 test frame" in the sidebar's source radio, run until the results are drawn.
**cold**: in a fresh Python process per page, so importing torch and the library and loading the models
count (the interpreter and Streamlit start-up before the first render are reported apart, as
``startup_s``: a running server has paid them already). **warm**: the same steps again in a new session of
the same process (caches filled), median of ``--repeats``. The issue's targets (at most 10 s cold and
2 s warm per page on a 2-core machine) are printed next to the numbers, never asserted.

``attribution``: the cost of "Which modality drove this prediction?" (:mod:`fusion.attribution`): the exact
Shapley values over the modalities and the per-element maps, for shipped RGB-D models on a synthetic 240x320
frame (6x8 cells) and shipped clip models on a synthetic clip (random face crops, 2.4 s of noise log-mel, a
12-word sentence; no data needed), with one thread and torch's default, the maps with one ablated input per
forward and with several per forward (the values compared in the run). Interleaved rounds after a warm-up;
``--readme`` writes ``assets/figures/attribution_bench.json`` and the README block ``results:attribution_bench``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # torch and the library are imported where used, so that the --app page processes
    import torch   # start without them and their first render pays those imports, as it does in the app

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
COLD_TARGET_S = 10.0  # the targets per page, on the 2-core machine (printed, never asserted)
WARM_TARGET_S = 2.0
NYU_SOURCE = "NYUv2 test frame"  # the source radio's option that reads the NYUv2 test split
APP_TIMEOUT_S = 600  # per AppTest script run and per page process: the machine may be busy
_MARK = "FUSION_BENCH_APP "  # prefix of the page process's result line on stdout


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _variants(model: torch.nn.Module) -> list[tuple[str, dict, tuple[str, ...]]]:
    """(label, forward kwargs, modalities given) to bench for each kind of model."""
    from fusion.types import DEPTH, RGB

    kind = getattr(model, "kind", "static")
    both = (RGB, DEPTH)
    if model.dynamic:
        return [(f"branch {k}", {"force_branch": k}, both) for k in range(model.num_stages + 1)]
    if kind == "sparse":
        return [("sparse (config pooling)", {}, both), ("dense (pool=none)", {"pool": "none"}, both)]
    if kind == "deq":
        return [(f"{s}", {"solver": s}, both) for s in ("anderson", "broyden", "fixed_point")]
    if kind == "adapted":
        return [("both (no adapter)", {}, both), ("rgb only + adapters", {}, (RGB,)),
                ("rgb only, merged adapters", {"_merge": RGB}, (RGB,)), ("depth only + adapters", {}, (DEPTH,))]
    return [("full", {}, both)]


def bench_model(name: str, model: torch.nn.Module, size: tuple[int, int], repeats: int) -> list[dict]:
    import torch

    from fusion.compute import count_flops, count_params, time_ms
    from fusion.methods.adapters import merge_adapters, unmerge_adapters
    from fusion.types import DEPTH, RGB

    model.eval()
    full = {RGB: torch.rand(1, 3, *size), DEPTH: torch.rand(1, 1, *size) * 4 + 0.5}
    rows = []
    for label, kw, mods in _variants(model):
        kw = dict(kw)
        merge = kw.pop("_merge", None)
        if merge:  # adapters folded into the weights: no extra cost at inference
            merge_adapters(model, merge)
        x = {m: full[m] for m in mods}
        with torch.no_grad():
            flops, _ = count_flops(lambda: model(x, **kw))
            before = _maxrss_mb()
            t = time_ms(lambda: model(x, **kw), warmup=3, repeats=repeats)
        if merge:
            unmerge_adapters(model)
        rows.append({"model": name, "variant": label, "size": list(size), "gflops": round(flops / 1e9, 4),
                     **{k2: round(v, 2) for k2, v in t.items()}, "rss_growth_mb": round(_maxrss_mb() - before, 1),
                     "params_m": round(count_params(model) / 1e6, 3), "threads": torch.get_num_threads()})
    return rows


# --------------------------------------------------------------------------- app pages (--app)


@dataclass(frozen=True)
class AppPage:
    """One page of the app, as declared by an ``st.Page`` call in ``app.py``."""

    name: str  # the file's stem ("home", "rgbd"): what --pages takes
    path: str  # as given to st.Page, relative to app.py ("pages/rgbd.py"): what switch_page takes
    title: str
    default: bool  # the page app.py opens on (no switch needed)


def discover_pages(app: Path = APP) -> list[AppPage]:
    """The pages ``app.py`` declares, in order, read from its ``st.Page(...)`` calls (the script is parsed,
    not run)."""
    found = []
    for node in ast.walk(ast.parse(app.read_text(), filename=str(app))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if not ((isinstance(func, ast.Attribute) and func.attr == "Page") or (isinstance(func, ast.Name)
                                                                                 and func.id == "Page")):
            continue
        if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            continue  # a page given as a callable: nothing to switch to by path
        kw = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
        path = node.args[0].value
        page = AppPage(Path(path).stem, path, str(kw.get("title", Path(path).stem)), bool(kw.get("default")))
        found.append(((node.lineno, node.col_offset), page))
    return [page for _, page in sorted(found, key=lambda f: f[0])]  # ast.walk is breadth-first: source order


def select_pages(wanted: list[str] | None, app: Path = APP) -> list[AppPage]:
    """The app's pages, restricted to ``wanted`` (stems, paths or titles; all when empty)."""
    pages = discover_pages(app)
    if not wanted:
        return pages
    chosen = []
    for w in wanted:
        hits = [pg for pg in pages if w in (pg.name, pg.path, pg.title)]
        if not hits:
            raise SystemExit(f"unknown page {w!r}: choose from {', '.join(pg.name for pg in pages)}")
        chosen += [pg for pg in hits if pg not in chosen]
    return chosen


def synthetic_upload(h: int = 480, w: int = 640, seed: int = 0) -> tuple[bytes, bytes]:
    """PNG bytes of an indoor-ish RGB frame (gradient and a box) and its 8-bit NYU-style depth (metres x 25.5,
    one hole), at NYUv2's frame size: the upload a user would give when no data set is installed."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 120)], -1).astype(np.uint8)
    rgb[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = (200, 60, 40)
    rgb = np.clip(rgb.astype(int) + rng.integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)
    depth_m = 1.0 + 3.0 * yy / h
    depth_m[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 1.2
    depth8 = np.clip(np.rint(depth_m * 25.5), 0, 255).astype(np.uint8)
    depth8[:4, :4] = 0

    def png(a: Any) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    return png(rgb), png(depth8)


def _problems(at: Any) -> list[str]:
    """What the page raised (uncaught exceptions) or showed as an error (``st.error``)."""
    out = [f"exception: {e.value}" for e in at.exception]
    return out + [f"error: {e.value}" for e in at.error]


def _render(page: AppPage, source: str, upload: tuple[bytes, bytes], timeout: float) -> dict:
    """One first render of ``page`` in a new AppTest session, driven as a user would: open the app, switch
    to the page, choose the input in the page's own widgets (sidebar source radio ``<prefix>_source``; an
    upload goes into ``<prefix>_rgb_file`` / ``<prefix>_depth_file``), run until the results are drawn.

    ``source``: "auto" (the NYUv2 test frame when the page offers it, else the upload), "nyuv2" or "upload".
    Returns the total and per-step seconds, the input used, whether results were drawn and any errors.
    """
    from streamlit.testing.v1 import AppTest

    steps: dict[str, float] = {}
    out: dict[str, Any] = {"input": "none", "drawn": False, "errors": []}
    t0 = t = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = round(now - t, 3)
        t = now

    try:
        at = AppTest.from_file(str(APP), default_timeout=timeout)
        at.run()
        step("open_app_s")
        if not page.default:
            at.switch_page(page.path)
            at.run()
            step("switch_page_s")
        radios = [r for r in at.sidebar.radio if (r.key or "").endswith("_source")]
        if radios:
            radio = radios[0]
            prefix = radio.key[: -len("_source")]
            if source != "upload" and NYU_SOURCE in radio.options:
                radio.set_value(NYU_SOURCE).run()
                frames = [b for b in at.selectbox if b.key == f"{prefix}_frame"]
                out["input"] = f"{NYU_SOURCE} {frames[0].value if frames else '?'}"
            elif source == "nyuv2":
                raise RuntimeError(f"the page offers no {NYU_SOURCE!r} (data set not found): {list(radio.options)}")
            else:
                ups = {u.key: u for u in at.file_uploader}
                rgb_png, depth_png = upload
                ups[f"{prefix}_rgb_file"].set_value(("scene.png", rgb_png, "image/png"))
                ups[f"{prefix}_depth_file"].set_value(("depth.png", depth_png, "image/png"))
                at.run()
                out["input"] = "synthetic upload 640x480"
            step("input_s")
            # the input row draws the photo and the depth picture; a result adds at least one map or chart
            out["drawn"] = len(at.get("image")) + len(at.get("plotly_chart")) > 2
        else:
            out["drawn"] = not at.exception
        out["errors"] = _problems(at)
    except Exception as e:  # a timeout or a failed step: report it, keep the time spent so far
        out["errors"].append(f"bench: {type(e).__name__}: {e}")
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["steps"] = steps
    return out


def _app_worker(page_path: str, spawned_at: float, repeats: int, source: str, timeout: float) -> None:
    """In a fresh process: the cold render of one page, then ``repeats`` warm ones; prints one result line."""
    page = next(pg for pg in discover_pages() if pg.path == page_path)
    import streamlit.testing.v1  # noqa: F401  -- a running server has imported Streamlit before any page

    startup = time.time() - spawned_at
    upload = synthetic_upload()  # made outside both clocks (a user brings the file)
    cold = _render(page, source, upload, timeout)
    failed = any(e.startswith("bench:") for e in cold["errors"])  # e.g. a timeout: do not wait for it again
    warm = [] if failed else [_render(page, source, upload, timeout) for _ in range(repeats)]
    errors = cold["errors"] + [e for w in warm for e in w["errors"] if e not in cold["errors"]]
    res = {"page": page.name, "path": page.path, "title": page.title, "input": cold["input"],
           "startup_s": round(startup, 3), "cold_s": cold["seconds"], "cold_steps": cold["steps"],
           "warm_s": round(statistics.median([w["seconds"] for w in warm]), 3) if warm else None,
           "warm_runs_s": [w["seconds"] for w in warm], "warm_steps": warm[-1]["steps"] if warm else {},
           "drawn": cold["drawn"] and all(w["drawn"] for w in warm), "errors": errors}
    print(_MARK + json.dumps(res), flush=True)


def bench_page(page: AppPage, repeats: int, threads: int, source: str = "auto", nyuv2: str | None = None,
               timeout: float = APP_TIMEOUT_S) -> dict:
    """Cold and warm first-render times of one page, measured in a fresh ``python -m fusion.bench`` process
    (torch on ``threads`` intra-op threads). Never raises for a page that fails: the row says so."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [v for v in [os.environ.get("PYTHONPATH")] if v]))
    if nyuv2:
        env["FUSION_NYUV2"] = nyuv2
    cmd = [sys.executable, "-m", "fusion.bench", "--app-worker", page.path, "--spawned-at", repr(time.time()),
           "--repeats", str(repeats), "--source", source, "--timeout", str(timeout)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout * (repeats + 1) * 3)
        lines = [ln[len(_MARK):] for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
        problem = None if lines else f"page process exited {proc.returncode}: {proc.stderr.strip()[-800:]}"
    except subprocess.TimeoutExpired:
        lines, problem = [], "page process timed out"
    wall = round(time.perf_counter() - t0, 3)
    if problem:
        row: dict = {"page": page.name, "path": page.path, "title": page.title, "input": "?", "startup_s": None,
                     "cold_s": None, "cold_steps": {}, "warm_s": None, "warm_runs_s": [], "warm_steps": {},
                     "drawn": False, "errors": [f"bench: {problem}"]}
    else:
        row = json.loads(lines[-1])
    row.update(errored=bool(row["errors"]), process_s=wall, repeats=repeats, threads=threads,
               cold_target_s=COLD_TARGET_S, warm_target_s=WARM_TARGET_S)
    return row


def _fmt(value: float | None, target: float) -> str:
    """Seconds with a mark when over the target ("!")."""
    if value is None:
        return "-"
    return f"{value:.2f}" + (" !" if value > target else "")


def print_app_table(rows: list[dict]) -> None:
    """The per-page table: input used, start-up, cold, warm (median), next to the targets; errors below."""
    head = ["page", "input", "startup s", f"cold s (<= {COLD_TARGET_S:g})", f"warm s (<= {WARM_TARGET_S:g})",
            "drawn", "errored"]
    body = [[r["page"], r["input"], _fmt(r["startup_s"], float("inf")), _fmt(r["cold_s"], COLD_TARGET_S),
             _fmt(r["warm_s"], WARM_TARGET_S) + (f" (median of {len(r['warm_runs_s'])})" if r["warm_runs_s"] else ""),
             "yes" if r["drawn"] else "no", "YES" if r["errored"] else "no"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    for line in [head, ["-" * w for w in widths], *body]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    print(f"targets (issue, 2-core machine): cold <= {COLD_TARGET_S:g} s, warm <= {WARM_TARGET_S:g} s per page; "
          "'!' = over target (not asserted). cold excludes startup s (interpreter + Streamlit import).")
    for r in rows:
        for e in r["errors"]:
            print(f"  {r['page']}: {e}")


def bench_app(pages: list[AppPage], repeats: int, threads: int, source: str = "auto", nyuv2: str | None = None,
              timeout: float = APP_TIMEOUT_S) -> list[dict]:
    """:func:`bench_page` for each page, one fresh process each, one after the other."""
    rows = []
    for page in pages:
        print(f"[bench --app] {page.name} ({page.path}) …", file=sys.stderr, flush=True)
        rows.append(bench_page(page, repeats, threads, source, nyuv2, timeout))
    return rows


def bench_clips(names: Sequence[str], repeats: int, *, untrained: bool = False) -> list[dict]:
    """Emotion-clip models on the reference clip (one face crop, 2.39 s of speech, 12 word pieces): measured
    FLOPs and interleaved wall time of each model and, for DynMM, of each fixed branch (its encoders included)."""
    import torch

    from fusion.checkpoints import list_cards, load_checkpoint
    from fusion.clip_train import reference_clip
    from fusion.compute import count_flops, time_interleaved
    from fusion.registry import create, list_models

    if untrained:
        models = [(n, create(n, encoders=False)) for n in list_models("emotion_clips")]
    else:
        models = [(n, load_checkpoint(n)[0]) for n in (names or [c["name"] for c in list_cards("emotion_clips")])]
    rows = []
    for name, model in models:
        model.eval()
        x = reference_clip(model)
        calls = {"model": lambda m=model: m(x)}
        if model.kind == "dynmm":
            calls.update({f"branch {'+'.join(b)}": (lambda k=k, m=model: m(x, force_branch=k))
                          for k, b in enumerate(model.branches)})
        with torch.no_grad():
            times = time_interleaved(calls, repeats=repeats)
            for label, fn in calls.items():
                flops, out = count_flops(fn)
                rows.append({"model": name, "path": label, "gflops": round(flops / 1e9, 4), "ran": list(out.ran),
                             "ms": round(times[label].median_ms, 2),
                             "iqr_ms": round(times[label].q3_ms - times[label].q1_ms, 2)})
                print(json.dumps(rows[-1]))
    return rows


# --------------------------------------------------------------------------- attribution cost (attribution)

ATTR_JSON = ROOT / "assets" / "figures" / "attribution_bench.json"
ATTR_RGBD = ("static_rgbd", "dynmm_rgbd_b2")  # shipped models the attribution bench runs by default
ATTR_CLIPS = ("late_clips", "dynmm_clips_l0p2")
ATTR_BATCHES = (1, 4)  # ablated inputs per forward: unbatched, and batched as the clip pages run them
ATTR_GRID = (6, 8)  # the RGB-D pages' grid of cells
ATTR_SENTENCE = "oh my god i can not believe you did that to me"  # 12 words
ATTR_FACES = 6  # face crops of the synthetic clip
ATTR_AUDIO_S = 2.4  # seconds of noise log-mel


def attribution_frame(size: tuple[int, int] = (240, 320)) -> dict[str, torch.Tensor]:
    """The RGB-D input of the attribution bench: :func:`synthetic_upload` (a photo-like frame with a box, its
    depth in metres) at the model's input size."""
    import io

    import numpy as np
    from PIL import Image

    from fusion import inference

    rgb_png, depth_png = synthetic_upload()
    rgb = np.asarray(Image.open(io.BytesIO(rgb_png)).convert("RGB"))
    depth_m = np.asarray(Image.open(io.BytesIO(depth_png))).astype(np.float32) / 25.5
    return inference.to_tensors(rgb, depth_m, tuple(size))


def attribution_clip(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The clip of the attribution bench, no data needed: :data:`ATTR_FACES` random face crops, :data:`ATTR_AUDIO_S`
    s of noise log-mel (10 ms frames), a sentence of 12 words."""
    import torch

    from fusion.types import AUDIO, FACE, TEXT

    g = torch.Generator().manual_seed(seed)
    frames = int(round(ATTR_AUDIO_S * 100))
    ids, mask = model.encoders[TEXT].tokenize([ATTR_SENTENCE])
    return {FACE: torch.rand(1, ATTR_FACES, 1, 48, 48, generator=g),
            "face_mask": torch.ones(1, ATTR_FACES, dtype=torch.bool),
            AUDIO: torch.randn(1, 64, frames, generator=g) * 15 - 45,
            "audio_mask": torch.ones(1, frames, dtype=torch.bool), TEXT: ids, "text_mask": mask}


def _class_name(model: torch.nn.Module, cls: int) -> str:
    """The name of class ``cls`` of a clip (an emotion) or RGB-D (an NYUv2 class) model."""
    from fusion.data import nyuv2
    from fusion.data.emotion import EMOTIONS

    n = int(getattr(getattr(model, "cfg", None), "num_classes", 0) or 0)
    if getattr(model, "task", "") == "emotion_clips":
        names = list(EMOTIONS)
    else:
        names = next((nyuv2.class_names(full) for full in (40, 13) if nyuv2.num_train_classes(full) == n), [])
    return names[cls] if cls < len(names) else str(cls)


def bench_attribution_one(name: str, model: torch.nn.Module, inputs: dict, input_text: str, *, threads: int,
                          batches: Sequence[int], repeats: int, grid: tuple[int, int] = ATTR_GRID) -> list[dict]:
    """One model on one input with ``threads`` intra-op threads: the exact Shapley values over the modalities
    and the per-element maps of every present modality at each batch size, timed interleaved (one warm-up,
    then ``repeats`` rounds). The maps of each batch size are checked against the unbatched ones."""
    import numpy as np
    import torch

    from fusion import attribution
    from fusion.compute import time_interleaved

    torch.set_num_threads(threads)
    model.eval()
    score = attribution.default_score(model, inputs)
    score = attribution.default_score(model, inputs, cls=int(score.label), label=_class_name(model, int(score.label)))
    info: dict[str, dict] = {}

    def shapley() -> None:
        att = attribution.modality_shapley(model, inputs, score)
        info["shapley"] = {"forwards": att.forwards, "evaluations": att.forwards,
                           "modalities": list(att.modalities)}

    def maps(batch: int) -> None:
        mods = [m for m in attribution.MODALITIES if inputs.get(m) is not None]
        els = [attribution.element_attribution(model, inputs, m, score, grid=grid, batch=batch) for m in mods]
        info[f"maps {batch}"] = {"forwards": sum(e.forwards for e in els),
                                 "evaluations": sum(e.evaluations for e in els),
                                 "values": np.concatenate([np.ravel(e.values) for e in els])}

    calls: dict[str, Any] = {"shapley": shapley}
    calls.update({f"maps {b}": (lambda b=b: maps(b)) for b in batches})
    with torch.no_grad():
        times = time_interleaved(calls, warmup=1, repeats=repeats)
    ref = info.get(f"maps {min(batches)}", {}).get("values")
    rows = []
    for label, t in times.items():
        what, batch = ("shapley", 1) if label == "shapley" else ("maps", int(label.split()[1]))
        row = {"model": name, "input": input_text, "what": what, "batch": batch, "threads": threads,
               "median_ms": round(t.median_ms, 1), "q1_ms": round(t.q1_ms, 1), "q3_ms": round(t.q3_ms, 1),
               "noisy": bool(t.noisy), "repeats": t.repeats, "forwards": info[label]["forwards"],
               "evaluations": info[label]["evaluations"], "score": score.label}
        if what == "maps" and ref is not None:
            row["max_abs_diff_vs_unbatched"] = float(np.abs(info[label]["values"] - ref).max())
        rows.append(row)
    base = {r["threads"]: r["median_ms"] for r in rows if r["what"] == "maps" and r["batch"] == min(batches)}
    for r in rows:
        if r["what"] == "maps":
            r["speedup_vs_unbatched"] = round(base[r["threads"]] / r["median_ms"], 2) if r["median_ms"] else None
    return rows


def bench_attribution(rgbd: Sequence[str], clips: Sequence[str], *, threads: Sequence[int], batches: Sequence[int],
                      repeats: int, untrained: bool = False, size: tuple[int, int] = (240, 320),
                      grid: tuple[int, int] = ATTR_GRID) -> list[dict]:
    """:func:`bench_attribution_one` for each RGB-D model on :func:`attribution_frame` and each clip model on
    :func:`attribution_clip`, at each thread count. ``untrained``: registry models, randomly initialised (the
    clip encoders too), instead of the shipped checkpoints (for tests)."""
    import torch

    from fusion.checkpoints import load_checkpoint
    from fusion.registry import create

    torch.manual_seed(0)
    models = []
    for n in rgbd:
        models.append((n, create(n, pretrained=False) if untrained else load_checkpoint(n)[0], "rgbd"))
    for n in clips:
        models.append((n, create(n, encoders=False) if untrained else load_checkpoint(n)[0], "clip"))
    frame = attribution_frame(size)
    rows = []
    for name, model, kind in models:
        if kind == "rgbd":
            x, text = frame, f"RGB-D frame {size[0]}x{size[1]}, {grid[0]}x{grid[1]} cells"
        else:
            x = attribution_clip(model)
            n_words = int(x["text_mask"].sum()) - 2
            text = f"clip: {ATTR_FACES} face crops, {ATTR_AUDIO_S:g} s noise mel, {n_words} word pieces"
        for t in threads:
            print(f"[bench attribution] {name}, {t} thread(s) …", file=sys.stderr, flush=True)
            for row in bench_attribution_one(name, model, x, text, threads=t, batches=batches, repeats=repeats,
                                             grid=grid):
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def attribution_lines(rows: Sequence[dict], meta: dict) -> list[str]:
    """The README block ``results:attribution_bench``: one row per model and thread count."""
    batches = sorted({r["batch"] for r in rows if r["what"] == "maps"})
    big = max(batches) if batches else 1

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        return f"{'≈' if r['noisy'] else ''}{r['median_ms'] / 1e3:.2f} s ({r['forwards']} fw)"

    lines = [f"| model | input | threads | Shapley over modalities | maps, 1 input / forward | maps, {big} / forward "
             "| speed-up |", "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["model"], r["threads"]) for r in rows))
    for model, t in keys:
        mine = [r for r in rows if r["model"] == model and r["threads"] == t]
        sh = next((r for r in mine if r["what"] == "shapley"), None)
        one = next((r for r in mine if r["what"] == "maps" and r["batch"] == min(batches)), None)
        many = next((r for r in mine if r["what"] == "maps" and r["batch"] == big), None)
        speed = f"{many['speedup_vs_unbatched']:.2f}×" if many and many.get("speedup_vs_unbatched") else "-"
        lines.append(f"| `{model}` | {mine[0]['input']} | {t} | {cell(sh)} | {cell(one)} | {cell(many)} | {speed} |")
    lines.append("")
    lines.append(f"Median of {meta['repeats']} interleaved rounds after one warm-up (≈: interquartile range over 20% "
                 f"of the median, a busy machine); fw = model forwards. {meta['machine']}; load average "
                 f"{meta['loadavg_before']} before the run. Written by `{meta['command']}` "
                 f"(`assets/figures/attribution_bench.json`).")
    return lines


def replace_readme_block(readme: Path, tag: str, lines: Sequence[str]) -> None:
    """Replace the README block between ``<!-- results:TAG -->`` and ``<!-- /results:TAG -->`` (appended when
    missing)."""
    import re

    text = readme.read_text()
    block = f"<!-- results:{tag} -->\n" + "\n".join(lines) + f"\n<!-- /results:{tag} -->"
    new, n = re.subn(rf"<!-- results:{tag} -->.*?<!-- /results:{tag} -->", lambda _: block, text, flags=re.S)
    readme.write_text(new if n else text + "\n" + block + "\n")


def attribution_main(argv: Sequence[str]) -> list[dict]:
    """``python -m fusion.bench attribution``: the cost of "Which modality drove this prediction?"."""
    import platform

    import torch

    p = argparse.ArgumentParser(prog="python -m fusion.bench attribution",
                                description="Time the modality Shapley values and the per-element maps "
                                            "(unbatched vs batched) on an RGB-D frame and a synthetic clip.")
    p.add_argument("--rgbd", nargs="*", default=list(ATTR_RGBD), help="RGB-D checkpoints (none: skip RGB-D)")
    p.add_argument("--clips", nargs="*", default=list(ATTR_CLIPS), help="clip checkpoints (none: skip clips)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="intra-op thread counts to run (default: 1 and torch's default on this machine)")
    p.add_argument("--batches", type=int, nargs="+", default=list(ATTR_BATCHES),
                   help="ablated inputs per forward for the maps (the smallest is the reference)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--grid", type=int, nargs=2, default=ATTR_GRID, metavar=("ROWS", "COLS"))
    p.add_argument("--untrained", action="store_true", help="registry models, randomly initialised (tests)")
    p.add_argument("--json", metavar="PATH", help=f"write the rows (default with --readme: {ATTR_JSON.relative_to(ROOT)})")
    p.add_argument("--readme", metavar="PATH", help="replace the results:attribution_bench block of this README")
    a = p.parse_args(list(argv))
    threads = a.threads or sorted({1, torch.get_num_threads()})
    load = [round(x, 2) for x in os.getloadavg()]
    rows = bench_attribution(a.rgbd, a.clips, threads=threads, batches=sorted(set(a.batches)), repeats=a.repeats,
                             untrained=a.untrained, size=tuple(a.size), grid=tuple(a.grid))
    meta = {"command": "python -m fusion.bench attribution " + " ".join(argv), "repeats": a.repeats,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
            "loadavg_before": load, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "untrained": a.untrained, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = a.json or (str(ATTR_JSON) if a.readme else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    if a.readme:
        replace_readme_block(Path(a.readme), "attribution_bench", attribution_lines(rows, meta))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["attribution"]:
        return attribution_main(argv[1:])
    from fusion.tasks import get_task
    from fusion.train import task_of

    if get_task(task_of(argv)).name == "clips":
        p = argparse.ArgumentParser(prog="python -m fusion.bench --task clips")
        p.add_argument("--task", default="clips")
        p.add_argument("models", nargs="*", help="clip checkpoint names (default: all shipped)")
        p.add_argument("--repeats", type=int, default=10)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--untrained", action="store_true")
        p.add_argument("--json", metavar="PATH")
        a = p.parse_args(argv)
        import torch

        torch.set_num_threads(a.threads)
        rows = bench_clips(a.models, a.repeats, untrained=a.untrained)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
        return rows
    p = argparse.ArgumentParser(prog="python -m fusion.bench", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="rgbd", choices=("rgbd",), help="rgbd (this parser); --task clips: its own")
    p.add_argument("models", nargs="*", help="checkpoint names (default: all shipped RGB-D ones)")
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=None,
                   help="timed forwards per model (default 10); with --app: warm renders per page (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--untrained", action="store_true", help="bench freshly built registry models instead")
    p.add_argument("--json", metavar="PATH", help="also write the rows (with --app: the page table) as JSON")
    app = p.add_argument_group("app pages")
    app.add_argument("--app", action="store_true",
                     help="time each app page's first render: cold (fresh process) and warm (caches filled)")
    app.add_argument("--pages", nargs="+", metavar="PAGE",
                     help="with --app: only these pages (file stems as in app.py: home rgbd sparse ...)")
    app.add_argument("--source", choices=("auto", "nyuv2", "upload"), default="auto",
                     help="with --app: the input (auto: an NYUv2 test frame when found, else a synthetic upload)")
    app.add_argument("--nyuv2", metavar="DIR", help="with --app: the NYUv2 folder (default: as the app finds it)")
    app.add_argument("--timeout", type=float, default=APP_TIMEOUT_S, help=argparse.SUPPRESS)
    p.add_argument("--app-worker", metavar="PAGE_PATH", help=argparse.SUPPRESS)  # one page, in its own process
    p.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.app_worker:
        _app_worker(args.app_worker, args.spawned_at or time.time(), 3 if args.repeats is None else args.repeats,
                    args.source, args.timeout)
        return []
    if args.app:
        pages = select_pages(args.pages)
        rows = bench_app(pages, 3 if args.repeats is None else args.repeats, args.threads, args.source, args.nyuv2,
                         args.timeout)
        print_app_table(rows)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        return rows
    import torch

    from fusion.checkpoints import list_cards, load_checkpoint
    from fusion.registry import create, list_models

    torch.set_num_threads(args.threads)
    if args.untrained:
        pairs = [(n, create(n, pretrained=False)) for n in list_models("rgbd_seg")]
    else:
        names = args.models or [c["name"] for c in list_cards("rgbd_seg")]
        pairs = [(n, load_checkpoint(n)[0]) for n in names]
    rows = []
    for name, model in pairs:
        for row in bench_model(name, model, tuple(args.size), 10 if args.repeats is None else args.repeats):
            print(json.dumps(row))
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
