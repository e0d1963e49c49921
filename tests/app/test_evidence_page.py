"""AppTest for the evidence page: it draws the shipped DynMM ablation and the sparse / DEQ ablations (or says
how to make each), never a traceback.

The sparse / DEQ cases point the page at a temporary figures folder (``$FUSION_FIGURES``) holding the sample
results in ``tests/app/data/`` (the schema ``fusion.evaluate --ablate`` writes, from a smoke run), with the
mIoU of every setting made distinct so that a number drawn from the wrong setting shows.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import ROOT

DATA = Path(__file__).resolve().parent / "data"
SPARSE_CMD = "python -m fusion.evaluate --ablate sparse_rgbd --split test"
DEQ_CMD = "python -m fusion.evaluate --ablate deq_rgbd --split test"


def _evidence_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/evidence.py")
    at.run()
    return at


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [h.value for h in at.header]
    parts += [e.value for e in at.info] + [e.value for e in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def _charts(at: AppTest) -> dict[str, dict]:
    """The page's plotly charts by key, as their figure JSON."""
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        out[c.proto.id] = spec
    return out


def _chart(at: AppTest, key: str) -> dict:
    found = [spec for k, spec in _charts(at).items() if key in k]
    assert len(found) == 1, list(_charts(at))
    return found[0]


def _hlines(spec: dict) -> dict[str, float]:
    """Horizontal reference lines: annotation text (before the colon) -> y."""
    lines = [s for s in spec["layout"].get("shapes", []) if s.get("y0") == s.get("y1")]
    notes = [a["text"] for a in spec["layout"].get("annotations", [])]
    return {n.split(":")[0]: float(s["y0"]) for n, s in zip(notes, lines)}


def sample_sparse() -> dict:
    """The sample sparse ablation with a distinct mIoU per setting (and the derived fields to match)."""
    res = json.loads((DATA / "sparse_ablation_sample.json").read_text())
    sc = res["settings"]
    for i, v in enumerate(sc.values()):
        v["miou"] = round(30.0 + 0.25 * i, 2)
    sc["zeroed"]["miou"] = 21.5
    for r, v in res["per_ratio"].items():
        v["topk_attn_minus_random"] = round(sc[f"topk_attn@{r}"]["miou"] - sc[f"random@{r}"]["miou"], 2)
        v["topk_attn_minus_strided"] = round(sc[f"topk_attn@{r}"]["miou"] - sc[f"strided_random@{r}"]["miou"], 2)
    res["zeroed_cost"] = round(sc["shipped"]["miou"] - sc["zeroed"]["miou"], 2)
    res["shipped_vs_dense"] = round(sc["shipped"]["miou"] - sc["dense"]["miou"], 2)
    res["split"] = "test"
    return res


def sample_deq() -> dict:
    res = json.loads((DATA / "deq_ablation_sample.json").read_text())
    sc = res["settings"]
    for i, k in enumerate(k for k in sc if k.startswith("iter")):
        sc[k]["miou"] = round(20.0 + 2.0 * i, 2)
    sc["fixed_point"]["miou"], sc["fixed_point_iteration"]["miou"], sc["zeroed"]["miou"] = 34.5, 33.25, 18.75
    res["zeroed_cost"] = round(34.5 - 18.75, 2)
    res["one_step_cost"] = round(34.5 - sc["iter1"]["miou"], 2)
    res["converged_percent"] = 97.5
    res["split"] = "test"
    return res


@pytest.fixture
def figures(tmp_path, monkeypatch) -> Path:
    """An empty figures folder the page reads instead of assets/figures."""
    folder = tmp_path / "figures"
    folder.mkdir()
    monkeypatch.setenv("FUSION_FIGURES", str(folder))
    return folder


def test_evidence_page_shows_the_dynmm_ablation() -> None:
    at = _evidence_page()
    assert not at.exception, [e.value for e in at.exception]
    path = ROOT / "assets" / "figures" / "dynmm_pareto.json"
    if path.exists():
        res = json.loads(path.read_text())
        table = at.dataframe[0].value
        assert list(table["budget"]) == [g["name"] for g in res["gates"]]
        assert "random router" in " ".join(m.value for m in at.markdown)
    else:
        assert "No DynMM evidence yet" in " ".join(i.value for i in at.info)


def test_evidence_page_without_results_says_how_to_make_them(figures) -> None:
    at = _evidence_page()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning and not at.error
    infos = [str(i.value) for i in at.info]
    assert len(infos) == 3  # DynMM, sparse, DEQ: one note each
    assert any("No sparse-fusion evidence yet" in i and "sparse_ablation_test.json" in i and SPARSE_CMD in i
               for i in infos), infos
    assert any("No DEQ-fusion evidence yet" in i and "deq_ablation_test.json" in i and DEQ_CMD in i
               for i in infos), infos
    assert not at.get("plotly_chart")
    headers = [h.value for h in at.header]
    assert any("Sparse token fusion" in h for h in headers) and any("DEQ fusion" in h for h in headers)


def test_evidence_page_draws_the_sparse_ablation(figures) -> None:
    res = sample_sparse()
    (figures / "sparse_ablation_test.json").write_text(json.dumps(res))
    at = _evidence_page()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning and not at.error
    sc = res["settings"]
    text = _texts(at)
    # the README's tables, from the file
    assert "| pooling | keep 0.25 (150 tokens) | keep 0.125 (76 tokens) | keep 0.0625 (38 tokens) |" in text
    assert f"| `topk_attn` (learned) | {sc['topk_attn@0.25']['miou']:.2f} |" in text
    assert f"| block output zeroed (no depth at stride 16) | - | 0 | {sc['zeroed']['miou']:.2f} |" in text
    # the summary in words
    assert f"the block is worth **{res['zeroed_cost']:+.2f}** mIoU" in text
    assert f"shipped − dense **{res['shipped_vs_dense']:+.2f}**" in text
    r = res["per_ratio"]["0.125"]["topk_attn_minus_random"]
    assert f"keep 0.125: `topk_attn` − `random` **{r:+.2f}**" in text
    # the chart: one trace per keep ratio, mIoU per pooling mode; dense / shipped / block off as lines
    spec = _chart(at, "evidence_sparse_chart")
    traces = {t["name"]: dict(zip(t["x"], t["y"])) for t in spec["data"]}
    assert set(traces) == {"keep 0.25", "keep 0.125", "keep 0.0625"}
    for name, points in traces.items():
        ratio = name.split()[1]
        assert points == {m: sc[f"{m}@{ratio}"]["miou"] for m in points}
        assert list(points) == ["topk_attn", "topk", "attn_avg", "avg", "max", "random", "strided_random"]
    lines = _hlines(spec)
    assert lines["dense (pool=none)"] == sc["dense"]["miou"]
    assert lines["block off"] == sc["zeroed"]["miou"]
    assert lines["shipped (topk_attn keep 0.1)"] == sc["shipped"]["miou"]
    assert "No DEQ-fusion evidence yet" in text  # the other file is still missing: said, not a traceback


def test_evidence_page_draws_the_deq_ablation(figures) -> None:
    res = sample_deq()
    (figures / "deq_ablation_test.json").write_text(json.dumps(res))
    at = _evidence_page()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning and not at.error
    sc = res["settings"]
    text = _texts(at)
    assert "| after 1 Anderson step | 20.00 | -14.50 |" in text
    assert "| **fixed point** (Anderson, rel. tol 0.001, cap 15) | **34.50** | - |" in text
    assert "| block output zeroed (no depth at stride 32) | 18.75 | -15.75 |" in text
    assert "the block is worth **+15.75** mIoU" in text and "converged on **97.5%** of frames" in text
    spec = _chart(at, "evidence_deq_chart")
    (trace,) = spec["data"]
    steps = sorted(int(k[4:]) for k in sc if k.startswith("iter"))
    assert trace["x"] == steps and trace["y"] == [sc[f"iter{k}"]["miou"] for k in steps]
    lines = _hlines(spec)
    assert lines == {"fixed point": 34.5, "plain fixed-point iteration": 33.25, "block off": 18.75}
    assert "No sparse-fusion evidence yet" in text


def test_evidence_page_with_both_and_a_broken_file(figures) -> None:
    (figures / "sparse_ablation_test.json").write_text(json.dumps(sample_sparse()))
    (figures / "deq_ablation_test.json").write_text(json.dumps(sample_deq()))
    at = _evidence_page()
    assert not at.exception and not at.warning and not at.error
    assert len(_charts(at)) == 2
    broken = sample_deq()
    del broken["settings"]["zeroed"]
    (figures / "deq_ablation_test.json").write_text(json.dumps(broken))
    (figures / "sparse_ablation_test.json").write_text("{not json")
    at = _evidence_page()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [str(w.value) for w in at.warning]
    assert len(warnings) == 1 and "deq_ablation_test.json" in warnings[0] and DEQ_CMD in warnings[0]
    assert any("No sparse-fusion evidence yet" in str(i.value) for i in at.info)  # unreadable JSON = not there
