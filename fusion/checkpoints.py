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
    """The constructor kwargs that rebuild ``model``: SegConfig with the gate keys flat (as the first cards
    have them) and the sparse / DEQ / adapter settings nested; unused method configs are left out."""
    cfg = asdict(model.cfg)
    gate = cfg.pop("gate", {})
    cfg.update(gate)
    for key in ("sparse", "deq", "adapter"):
        if cfg.get(key) is None:
            cfg.pop(key, None)
    cfg["pretrained"] = False
    return cfg


def load_matching(model: torch.nn.Module, src: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy every tensor of ``src`` that fits ``model`` (same name, or the name a wrapped layer had before
    an adapter wrapped it: ``x.base.weight`` <- ``x.weight``; same shape). Returns what was loaded, what
    the model has that ``src`` lacks (new modules), and what ``src`` had that did not fit."""
    own = model.state_dict()
    loaded, new, used = [], [], set()
    fitted = {}
    for k, v in own.items():
        for cand in (k, k.replace(".base.", ".")):
            if cand in src and src[cand].shape == v.shape:
                fitted[k] = src[cand].to(v.dtype)
                loaded.append(k)
                used.add(cand)
                break
        else:
            new.append(k)
    model.load_state_dict(fitted, strict=False)
    return {"loaded": loaded, "new": new, "unused": sorted(set(src) - used)}


def save_checkpoint(model: torch.nn.Module, path: Path, card: dict[str, Any],
                    tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``path.safetensors`` (floating tensors as fp16) and ``path.json``. ``tensors``: what to store
    instead of the whole state dict (adapters ship without their frozen base; the card names the base)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
          for k, v in (model.state_dict() if tensors is None else tensors).items()}
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


def card_path(name_or_path: str | Path, root: Path = ASSETS) -> Path:
    """The card of a checkpoint given by name (in ``root``) or by its ``.json`` / ``.safetensors`` path."""
    p = Path(name_or_path)
    path = p.with_suffix(".json") if p.suffix in (".json", ".safetensors") else Path(root) / f"{p.name}.json"
    if not path.exists():
        raise FusionError(f"no checkpoint {name_or_path!r} (looked for {path})")
    return path


def load_checkpoint(name_or_path: str | Path, root: Path = ASSETS) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model its card names and load its weights (as float32, eval mode)."""
    path = card_path(name_or_path, root)
    card = read_card(path)
    try:
        model = create(card["registry"], **card["config"])
    except KeyError as e:
        raise FusionError(f"model card {path} lacks {e}") from e
    sd = read_weights(path.with_name(card["weights"]))
    if card.get("base"):  # adapters: the frozen base checkpoint first, then the adapter tensors on top
        base_card_path = path.with_name(f"{card['base']}.json")
        if not base_card_path.exists():
            raise FusionError(f"{card['name']} needs its base checkpoint {card['base']!r} next to it")
        base = read_weights(base_card_path.with_name(read_card(base_card_path)["weights"]))
        got = load_matching(model, base)
        # tensors neither checkpoint holds because they load from their own (a clip model's frozen encoders)
        elsewhere = tuple(getattr(model, "loaded_elsewhere", ()))
        missing = [k for k in got["new"] if k not in sd and not (elsewhere and k.startswith(elsewhere))]
        model.load_state_dict(sd, strict=False)
        unexpected = sorted(set(sd) - set(model.state_dict()))
    else:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise FusionError(f"weights do not match {card['registry']}: missing={missing[:3]} unexpected={unexpected[:3]}")
    return model.eval(), card


def read_weights(wpath: Path) -> dict[str, torch.Tensor]:
    try:
        sd = load_file(str(wpath))
    except Exception as e:  # safetensors raises its own error types
        raise FusionError(f"cannot read weights {wpath}: {e}") from e
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
