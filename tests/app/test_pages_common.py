"""The pages' shared, task-agnostic helpers (``pages/_common.py``), and the rule that no page reaches a CLI
module: a static check of the imports (pages and every ``fusion`` module they pull in, lazy imports
included), then unit tests of the helpers' pure parts. No model runs here and no page is served; the two
AppTest scripts below draw a few widgets only.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fusion.types import FusionError  # noqa: E402
from pages import _common as common  # noqa: E402

# Modules that exist to be run (``python -m ...``): training, evaluation, benchmarks. Pages must not import
# them, directly or through a library module; what a page needs from them lives in a library module
# (``fusion.results``, ``fusion.inference``, ...).
CLI_MODULES = {"fusion.evaluate", "fusion.train", "fusion.train_gate", "fusion.train_encoders", "fusion.bench"}
# Libraries that also ship a small helper command (``python -m fusion.data.nyuv2 convert``): pages use their
# readers, and that is fine.
LIBRARIES_WITH_A_COMMAND = {"fusion.data.nyuv2", "fusion.data.emotion"}


# --------------------------------------------------------------------------- static check: no CLI module


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    return ".".join(parts)


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (lazy imports in functions included), as absolute
    names: ``from fusion import viz`` gives ``fusion`` and ``fusion.viz``; ``importlib.import_module("x")``
    with a literal name counts too. ``module``: the file's module name (default: from its path)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module or _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # submodules; names that are not modules drop out
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.add(node.args[0].value)
    # a dotted import also imports its parents
    return {".".join(m.split(".")[:i]) for m in found if m for i in range(1, m.count(".") + 2)}


def _project_imports(path: Path) -> set[str]:
    """The project modules (``fusion.*``, ``pages.*``) ``path`` imports directly."""
    return {m for m in _imports(path) if m.split(".")[0] in ("fusion", "pages") and _module_file(m)}


def _reachable(start: Path) -> dict[str, str]:
    """{project module: the module that imports it} for everything ``start`` pulls in, transitively."""
    seen: dict[str, str] = {}
    todo = [(m, _module_name(start)) for m in _project_imports(start)]
    while todo:
        mod, by = todo.pop()
        if mod in seen:
            continue
        seen[mod] = by
        todo += [(m, mod) for m in _project_imports(_module_file(mod))]
    return seen


def _cli_modules_found() -> set[str]:
    """The ``fusion`` modules that can be run (an ``if __name__ == "__main__":`` block)."""
    found = set()
    for p in (ROOT / "fusion").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                    and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
                found.add(_module_name(p))
                break
    return found


def test_the_cli_list_is_complete():
    """Every runnable ``fusion`` module is either in :data:`CLI_MODULES` or a known library with a helper
    command, so a new CLI cannot slip past the page check; ``fusion.ablations`` and ``fusion.results`` are
    libraries (no entry point)."""
    found = _cli_modules_found()
    assert found - LIBRARIES_WITH_A_COMMAND <= CLI_MODULES, sorted(found - LIBRARIES_WITH_A_COMMAND - CLI_MODULES)
    assert CLI_MODULES <= found, "a module listed as a CLI has no entry point any more: update CLI_MODULES"
    assert not {"fusion.ablations", "fusion.results"} & found


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "pages").glob("*.py")))
def test_no_page_imports_a_cli_module(page):
    path = ROOT / "pages" / page
    direct = _imports(path) & CLI_MODULES
    assert not direct, f"pages/{page} imports {sorted(direct)}"
    reach = _reachable(path)
    through = {m: reach[m] for m in CLI_MODULES if m in reach}
    assert not through, f"pages/{page} reaches a CLI module (module: imported by) {through}"


@pytest.mark.parametrize("src", ["import fusion.evaluate", "from fusion.train import main", "from fusion import bench",
                                 "def f():\n    from fusion import train_gate",
                                 "import importlib\nimportlib.import_module('fusion.train_encoders')",
                                 "from .evaluate import main"])
def test_the_static_check_sees_every_kind_of_import(tmp_path, src):
    """The checker itself: plain, from, from-package, lazy, importlib and relative imports of a CLI module."""
    f = tmp_path / "case.py"
    f.write_text(src + "\n")
    assert _imports(f, module="fusion.case") & CLI_MODULES, src
    assert not _imports(f, module="fusion.case") & {"fusion.ablations", "fusion.results"}


def test_every_rgbd_page_uses_the_common_helpers():
    """The model pages (and the evidence page) draw their errors, cards and models through ``_common``."""
    for page in ("rgbd.py", "sparse.py", "deq.py", "adapters.py", "evidence.py"):
        assert "pages._common" in _imports(ROOT / "pages" / page), page


# --------------------------------------------------------------------------- the picker's pure parts


CARDS = [  # sorted by name, as list_cards returns them
    {"name": "a_control", "task": "emotion_clips", "registry": "late_emotion", "method": "late fusion",
     "control_for": "late_b1"},
    {"name": "audio_only", "task": "emotion_clips", "registry": "late_emotion", "method": "audio alone",
     "config": {"modalities": ["audio"]}},
    {"name": "dynmm_emotion", "task": "emotion_clips", "registry": "dynmm_emotion", "method": "DynMM",
     "pairing_note": "Faces, voices and sentences come from different data sets, paired by label only."},
    {"name": "late_b1", "task": "emotion_clips", "registry": "late_emotion"},
    {"name": "static_rgbd", "task": "rgbd_seg", "registry": "static_rgbd", "method": "static SE-add fusion"},
]


@pytest.fixture
def cards(monkeypatch):
    from fusion import inference

    monkeypatch.setattr(inference, "list_cards",
                        lambda task=None, root=None: [c for c in CARDS if task is None or c["task"] == task])
    return CARDS


def test_card_label_names_the_checkpoint_and_its_method():
    assert common.card_label(CARDS[2]) == "dynmm_emotion · DynMM"
    assert common.card_label(CARDS[3]) == "late_b1"  # no method on the card: the name alone
    assert common.card_label({"method": "x"}) == "? · x"


def test_task_cards_are_one_tasks_without_controls(cards):
    assert [c["name"] for c in common.task_cards("emotion_clips")] == ["audio_only", "dynmm_emotion", "late_b1"]
    assert [c["name"] for c in common.task_cards("rgbd_seg")] == ["static_rgbd"]
    assert common.task_cards("no_such_task") == []
    fused = common.task_cards("emotion_clips", lambda c: not common.inference.is_dedicated(c))
    assert [c["name"] for c in fused] == ["dynmm_emotion", "late_b1"]


def _picker_script(root: str) -> None:
    import sys

    sys.path.insert(0, root)
    import streamlit as st

    from pages._common import pick_model

    card = pick_model("emotion_clips", key="emo_model", label="Model")
    st.write(f"picked {card['name'] if card else None}")
    none = pick_model("no_such_task", key="none_model", empty_note="No emotion checkpoint yet.")
    st.write(f"empty {none}")


def test_pick_model_offers_the_tasks_cards_by_name_and_method(cards):
    at = AppTest.from_function(_picker_script, args=(str(ROOT),), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key="emo_model")
    assert list(box.options) == ["audio_only · audio alone", "dynmm_emotion · DynMM", "late_b1"]
    assert "picked audio_only" in [m.value for m in at.markdown]
    box.set_value("late_b1").run()
    assert "picked late_b1" in [m.value for m in at.markdown]
    assert "empty None" in [m.value for m in at.markdown]
    assert [i.value for i in at.sidebar.info] == ["No emotion checkpoint yet."]


# --------------------------------------------------------------------------- cards


def test_card_display_puts_the_essentials_first_and_the_pairing_note_apart():
    card = {"training": {"epochs": 3}, "command": "python -m fusion.train x", "metrics": {"miou": 30.0},
            "licence": "research only", "name": "m", "data": "NYUv2", "split": "official test",
            "pairing_note": "paired by label", "config": {"hidden": 8}}
    shown = common.card_for_display(card)
    assert list(shown)[:6] == ["name", "data", "licence", "split", "metrics", "command"]
    assert "pairing_note" not in shown and card["pairing_note"] == "paired by label"  # the card is not edited
    table = common.card_table(card)
    assert list(table.columns) == ["field", "value"] and table["value"].iloc[0] == "m"
    fields = list(table["field"])
    assert {"checkpoint", "data", "licence", "split", "reproduce with", "metrics · mIoU (%)"} <= set(fields)
    assert not any("config" in f or "pairing" in f for f in fields)
    assert common.pairing_notes([("A", card), ("B", {"name": "b"}), ("C", {"pairing_note": "  "})]) == [
        "**A**: paired by label"]


def _cards_script(root: str) -> None:
    import sys

    sys.path.insert(0, root)
    from pages._common import show_cards

    show_cards([("Emotion model", {"name": "dynmm_emotion", "licence": "research only",
                                   "pairing_note": "Faces, voices and sentences are paired by label only."}),
                ("Other", {"name": "late_b1", "licence": "MIT"})])


def test_show_cards_shows_the_pairing_note_outside_the_expander():
    at = AppTest.from_function(_cards_script, args=(str(ROOT),), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [w.value for w in at.warning] == ["**Emotion model**: Faces, voices and sentences are paired by label only."]
    assert [e.label for e in at.expander] == [common.CARDS_EXPANDER]
    assert [t.value["value"].iloc[0] for t in at.table] == ["dynmm_emotion", "late_b1"]


# --------------------------------------------------------------------------- clean errors


def test_error_message_keeps_a_library_message_and_hides_a_traceback():
    assert common.error_message(FusionError("depth must match the RGB's size")) == (
        "depth must match the RGB's size", None)
    assert common.error_message(FusionError("no checkpoint 'x'"), "The model card") == (
        "The model card: no checkpoint 'x'", None)
    msg, details = common.error_message(KeyError("miou"))
    assert msg == common.GENERIC_ERROR and details == "KeyError: 'miou'"
    msg, details = common.error_message(ValueError("bad"), "The robustness matrix")
    assert msg.startswith("The robustness matrix could not be shown") and details == "ValueError: bad"


def test_run_and_show_returns_the_value_or_none():
    def fails() -> None:
        raise FusionError("nope")

    assert common.run_and_show(lambda a, b=0: a + b, 2, b=3) == 5
    assert common.run_and_show(fails) is None


def _errors_script(root: str) -> None:
    import sys

    sys.path.insert(0, root)
    import streamlit as st

    from pages._common import run_and_show
    from fusion.types import FusionError

    def library_says_no() -> None:
        raise FusionError("switch at least one modality on")

    def bug() -> int:
        return {}["missing"]

    st.write(f"first: {run_and_show(library_says_no)}")
    st.write(f"second: {run_and_show(bug, what='The robustness matrix')}")
    st.write(f"third: {run_and_show(lambda: 42)}")


def test_run_and_show_turns_errors_into_messages_and_the_page_goes_on():
    at = AppTest.from_function(_errors_script, args=(str(ROOT),), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error][0] == "switch at least one modality on"
    assert at.error[1].value.startswith("The robustness matrix could not be shown")
    assert "Traceback" not in "".join(e.value for e in at.error)
    assert [c.value for c in at.code] == ["KeyError: 'missing'"]  # details of the unexpected one only
    assert [m.value for m in at.markdown] == ["first: None", "second: None", "third: 42"]


# --------------------------------------------------------------------------- the model cache


class _Tiny:
    """Stands in for a checkpoint's model: records eval() and the gradients switched off."""

    def __init__(self) -> None:
        import torch

        self.net = torch.nn.Linear(2, 2)
        self.net.train()

    def eval(self):
        self.net.eval()
        return self

    def parameters(self):
        return self.net.parameters()


@pytest.fixture
def clean_cache():
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def test_load_model_caches_by_name_in_eval_mode_for_any_task(monkeypatch, clean_cache):
    from fusion import inference

    loads: list[str] = []

    def fake_load(name, *a, **k):
        loads.append(name)
        return _Tiny(), {"name": name, "task": "emotion_clips"}

    monkeypatch.setattr(inference, "load_checkpoint", fake_load)
    model, card = common.load_model("late_b1")
    again, _ = common.load_model("late_b1")
    other, _ = common.load_model("dynmm_emotion")
    assert again is model and other is not model and loads == ["late_b1", "dynmm_emotion"]
    assert card["task"] == "emotion_clips"
    assert not model.net.training and not any(p.requires_grad for p in model.parameters())


def test_rgbd_helpers_still_export_the_old_names():
    """Pages and tests that import from the RGB-D helper modules keep working."""
    from pages import _rgbd_input, _rgbd_views

    assert _rgbd_input.load_model is common.load_model and _rgbd_input.run_page is common.run_page
    assert _rgbd_input.Run is common.Run
    assert _rgbd_views.show_card_tables is common.show_card_tables
    assert _rgbd_views.time_metric is common.time_metric
