"""AppTest for the evidence page: it draws the shipped DynMM ablation (or says how to make it)."""
from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from app_helpers import ROOT


def test_evidence_page_shows_the_dynmm_ablation() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/evidence.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    path = ROOT / "assets" / "figures" / "dynmm_pareto.json"
    if path.exists():
        res = json.loads(path.read_text())
        table = at.dataframe[0].value
        assert list(table["budget"]) == [g["name"] for g in res["gates"]]
        assert "random router" in " ".join(m.value for m in at.markdown)
    else:
        assert "No DynMM evidence yet" in " ".join(i.value for i in at.info)
