"""Checkpoints: safetensors weights (fp16 to keep the repo small) + a JSON model card.

Never ``torch.load`` on files a user hands us; safetensors carries tensors only.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fusion.registry import create
from fusion.types import FusionError

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "checkpoints"


def model_config(model: torch.nn.Module) -> dict[str, Any]:
    """The constructor kwargs that rebuild ``model`` (flattened SegConfig + GateConfig)."""
    cfg = asdict(model.cfg)
    gate = cfg.pop("gate", {})
    cfg.update(gate)
    cfg["pretrained"] = False
    return cfg


def save_checkpoint(model: torch.nn.Module, path: Path, card: dict[str, Any]) -> None:
    """Write ``path.safetensors`` (floating tensors as fp16) and ``path.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
          for k, v in model.state_dict().items()}
    save_file(sd, str(path.with_suffix(".safetensors")))
    card = {**card, "config": model_config(model), "weights": path.with_suffix(".safetensors").name}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


def read_card(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FusionError(f"cannot read model card {path}: {e}") from e


def list_cards(task: str | None = None, root: Path = ASSETS) -> list[dict[str, Any]]:
    """Model cards under ``root`` (optionally of one task), sorted by name."""
    cards = [read_card(p) for p in sorted(Path(root).glob("*.json"))]
    return [c for c in cards if task is None or c.get("task") == task]


def load_checkpoint(name_or_path: str | Path, root: Path = ASSETS) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model its card names and load its weights (as float32, eval mode)."""
    p = Path(name_or_path)
    card_path = p.with_suffix(".json") if p.suffix in (".json", ".safetensors") else Path(root) / f"{p.name}.json"
    if not card_path.exists():
        raise FusionError(f"no checkpoint {name_or_path!r} (looked for {card_path})")
    card = read_card(card_path)
    model = create(card["registry"], **card["config"])
    wpath = card_path.with_name(card["weights"])
    try:
        sd = load_file(str(wpath))
    except Exception as e:  # safetensors raises its own error types
        raise FusionError(f"cannot read weights {wpath}: {e}") from e
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise FusionError(f"weights do not match {card['registry']}: missing={missing[:3]} unexpected={unexpected[:3]}")
    return model.eval(), card
