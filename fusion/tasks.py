"""Task descriptors: what train, evaluate, bench, inference and the pages need to know about a task, in one
place, so the same commands serve both tasks (``--task rgbd`` / ``--task clips``).

A :class:`Task` names its modalities, its label names, its registry task id (cards and the registry are keyed
by it), its headline metrics, how user data become model inputs (``to_inputs``), how an output is decoded for
display (``decode``), the data set, the card text every model of the task carries, and the entry points of its
training and evaluation commands.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fusion.inference import clip_probabilities, clips_inputs  # clips_inputs re-exported: defined where pages reach it
from fusion.types import AUDIO, DEPTH, FACE, RGB, TEXT, FusionError, FusionOutput


@dataclass(frozen=True)
class Task:
    """One task's descriptor."""

    name: str  # "rgbd" or "clips" (the --task value)
    registry_task: str  # the registry / card task id
    title: str
    modalities: tuple[str, ...]
    metrics: tuple[str, ...]  # headline metrics, in table order
    labels: Callable[[], list[str]]  # class names
    to_inputs: Callable[..., dict[str, torch.Tensor]]  # user data -> model inputs (a batch of one)
    decode: Callable[[FusionOutput], dict[str, Any]]  # output -> what a page shows
    dataset: str  # the data set, in words
    card_note: str  # what every card and page of the task says (e.g. the label-pairing note)
    train: Callable[[Sequence[str] | None], int]  # python -m fusion.train --task NAME ...
    evaluate: Callable[[Sequence[str] | None], int]  # python -m fusion.evaluate --task NAME ...
    page: str  # the page that runs its models


# ---------------------------------------------------------------------------
# RGB-D segmentation
# ---------------------------------------------------------------------------


def _rgbd_labels() -> list[str]:
    from fusion.data.nyuv2 import class_names

    return list(class_names(40))[:39]


def rgbd_inputs(rgb: np.ndarray | None = None, depth: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """(H, W, 3) uint8 RGB and / or (H, W) depth in metres -> ``{"rgb": (1,3,H,W), "depth": (1,1,H,W)}``."""
    out: dict[str, torch.Tensor] = {}
    if rgb is not None:
        out[RGB] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    if depth is not None:
        out[DEPTH] = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None, None]
    if not out:
        raise FusionError("give an RGB image, a depth map or both")
    return out


def _rgbd_decode(out: FusionOutput) -> dict[str, Any]:
    return {"labels": out.labels[0].cpu().numpy(), "present": out.present, "notes": out.notes,
            "branch": None if out.branch is None else int(out.branch[0])}


def _rgbd_train(argv: Sequence[str] | None) -> int:
    from fusion.train import main

    main(list(argv) if argv is not None else None)
    return 0


def _rgbd_evaluate(argv: Sequence[str] | None) -> int:
    from fusion.evaluate import main

    return int(main(list(argv) if argv is not None else None) or 0)


# ---------------------------------------------------------------------------
# Emotion clips
# ---------------------------------------------------------------------------


def _clip_labels() -> list[str]:
    from fusion.data.emotion import EMOTIONS

    return list(EMOTIONS)


def _clip_decode(out: FusionOutput) -> dict[str, Any]:
    probs, per = clip_probabilities(out)
    return {"probs": probs, "label": int(out.labels[0]), "per_modality": per, "ran": out.ran,
            "branch": None if out.branch is None else int(out.branch[0]), "notes": out.notes}


def _clips_train(argv: Sequence[str] | None) -> int:
    from fusion.clip_train import train_main

    return train_main(argv)


def _clips_evaluate(argv: Sequence[str] | None) -> int:
    from fusion.clip_eval import evaluate_main

    return evaluate_main(argv)


def _pairing_note() -> str:
    from fusion.data.emotion import PAIRING_NOTE

    return PAIRING_NOTE


TASKS: dict[str, Task] = {
    "rgbd": Task(name="rgbd", registry_task="rgbd_seg", title="RGB-D semantic segmentation (NYU Depth V2)",
                 modalities=(RGB, DEPTH), metrics=("miou", "pixel_acc"), labels=_rgbd_labels, to_inputs=rgbd_inputs,
                 decode=_rgbd_decode, dataset="NYU Depth V2, 40-class labels (39 scored)", card_note="",
                 train=_rgbd_train, evaluate=_rgbd_evaluate, page="pages/rgbd.py"),
    "clips": Task(name="clips", registry_task="emotion_clips", title="Emotion clips: face, speech, transcript",
                  modalities=(FACE, AUDIO, TEXT), metrics=("accuracy", "macro_f1"), labels=_clip_labels,
                  to_inputs=clips_inputs, decode=_clip_decode,
                  dataset="FER2013 faces + RAVDESS speech + MELD utterances, paired by label",
                  card_note=_pairing_note(), train=_clips_train, evaluate=_clips_evaluate, page="pages/clips.py"),
}


def get_task(name: str) -> Task:
    """The descriptor of ``name`` ("rgbd" or "clips"; the registry ids "rgbd_seg" / "emotion_clips" work too)."""
    for t in TASKS.values():
        if name in (t.name, t.registry_task):
            return t
    raise FusionError(f"unknown task {name!r}; known: {', '.join(TASKS)}")


def task_of_card(card: Mapping[str, Any]) -> Task:
    return get_task(str(card.get("task", "")))
