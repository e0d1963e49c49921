"""``python -m fusion.bench --app`` on one light page: the row's structure (times are not asserted as speed)."""
from __future__ import annotations

import json
from pathlib import Path

from fusion import bench


def test_app_pages_are_discovered_from_app_py() -> None:
    pages = bench.discover_pages()
    assert [p.name for p in pages][:1] == ["home"] and pages[0].default
    assert {"rgbd", "sparse", "deq", "adapters"} <= {p.name for p in pages}
    assert all(p.path.startswith("pages/") and p.path.endswith(".py") for p in pages)
    assert [p.name for p in bench.select_pages(["deq", "home"])] == ["deq", "home"]


def test_bench_app_home_page(tmp_path: Path) -> None:
    out = tmp_path / "app.json"
    rows = bench.main(["--app", "--pages", "home", "--repeats", "2", "--threads", "1", "--json", str(out)])
    assert len(rows) == 1
    row = rows[0]
    assert row["page"] == "home" and row["path"] == "pages/home.py"
    for key in ("startup_s", "cold_s", "warm_s"):
        assert isinstance(row[key], float) and row[key] > 0, (key, row[key])
    assert len(row["warm_runs_s"]) == 2 and all(isinstance(t, float) and t > 0 for t in row["warm_runs_s"])
    assert row["errors"] == [] and row["errored"] is False and row["drawn"] is True
    assert row["cold_target_s"] == bench.COLD_TARGET_S and row["warm_target_s"] == bench.WARM_TARGET_S
    assert json.loads(out.read_text()) == rows
