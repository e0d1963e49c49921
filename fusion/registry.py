"""The model registry, keyed by task and method: ``@register("static_rgbd", task="rgbd_seg")`` on a factory,
``create("static_rgbd", **cfg)`` or ``create_for("rgbd_seg", "static", **cfg)``.

A model's registry name is ``METHOD_TASKSUFFIX`` (``static_rgbd``, ``dynmm_clips``); its method is the part before
the first underscore unless given. Cards store the name; the pages and CLIs ask by task and method.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from fusion.types import FusionError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_KEYS: dict[str, tuple[str, str]] = {}  # name -> (task, method)


def register(name: str, *, task: str, method: str | None = None
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` for ``task`` (e.g. ``"rgbd_seg"``) and ``method``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = (task, method or name.split("_")[0])
        if name in _REGISTRY:
            raise FusionError(f"model {name!r} is registered twice")
        if key in _KEYS.values():
            raise FusionError(f"task {task!r} already has a model for method {key[1]!r}")
        _REGISTRY[name] = fn
        _KEYS[name] = key
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


def model_name(task: str, method: str) -> str:
    """The registry name of ``task``'s ``method``."""
    _ensure_loaded()
    for name, key in _KEYS.items():
        if key == (task, method):
            return name
    raise FusionError(f"task {task!r} has no method {method!r}; it has: {', '.join(methods(task)) or 'none'}")


def create_for(task: str, method: str, **cfg: Any) -> nn.Module:
    """Build ``task``'s ``method`` model."""
    return create(model_name(task, method), **cfg)


def key_of(name: str) -> tuple[str, str]:
    """``(task, method)`` of a registered model name."""
    _ensure_loaded()
    if name not in _KEYS:
        raise FusionError(f"unknown model {name!r}")
    return _KEYS[name]


def methods(task: str) -> list[str]:
    """The methods registered for ``task``, in registration order."""
    _ensure_loaded()
    return [m for t, m in _KEYS.values() if t == task]


def list_models(task: str | None = None) -> list[str]:
    """Registered names, optionally only those of one task."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if task is None or _KEYS[n][0] == task)
