"""A tiny model registry: ``@register("name")`` on a factory, ``create("name", **cfg)``."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from fusion.types import FusionError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}


def register(name: str, *, task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` for ``task`` (e.g. ``"rgbd_seg"``)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise FusionError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        _TASKS[name] = task
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the model modules runs their @register decorators.
    import fusion.encoders.audio  # noqa: F401  (emotion encoders; text imports transformers only when built)
    import fusion.encoders.face  # noqa: F401
    import fusion.encoders.text  # noqa: F401
    import fusion.models  # noqa: F401


def create(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model. Unknown names raise :class:`FusionError` listing the known ones."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise FusionError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**cfg)


def list_models(task: str | None = None) -> list[str]:
    """Registered names, optionally only those of one task."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if task is None or _TASKS[n] == task)
