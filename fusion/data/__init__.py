"""Data sets and upload decoding.

* :mod:`fusion.data.nyuv2` — NYU Depth V2 labelled subset (Silberman et al., ECCV 2012) with the 40-class
  set of Gupta et al. (CVPR 2013): class sets, official split, folder and ``.mat`` readers, the
  :class:`NYUv2` training dataset and the ``convert`` command line.
* :mod:`fusion.data.emotion` — FER2013 faces, RAVDESS speech and MELD utterances in one 7-emotion label space,
  ``log_mel``, and :class:`TrimodalPairs`, which pairs the three corpora BY LABEL (they are not recordings of
  the same moments; :data:`PAIRING_NOTE` says so wherever it is shown).
* :mod:`fusion.data.upload` — turn uploaded bytes (photo, depth PNG/NPY) into model-ready arrays.

Names are imported lazily (PEP 562) so that ``python -m fusion.data.nyuv2`` does not import the module
twice (runpy warns about that) and importing one submodule does not import the other.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    **{
        name: "fusion.data.nyuv2"
        for name in (
            "CLASS_NAMES_13", "CLASS_NAMES_40", "IGNORE_INDEX", "MAP_40_TO_13", "NYUv2", "NYUv2Mat",
            "AugmentConfig", "class_names", "find_root", "load_frame", "num_train_classes", "read_split",
            "official_split", "label_lut",
        )
    },
    **{
        name: "fusion.data.emotion"
        for name in (
            "EMOTIONS", "FER2013", "MELD", "PAIRING_NOTE", "RAVDESS", "TrimodalPairs", "corpus_stats", "log_mel",
        )
    },
    **{name: "fusion.data.upload" for name in ("DepthInfo", "decode_depth", "decode_rgb", "match_depth_to_rgb")},
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs
    from fusion.data.emotion import (  # noqa: F401
        EMOTIONS,
        FER2013,
        MELD,
        PAIRING_NOTE,
        RAVDESS,
        TrimodalPairs,
        corpus_stats,
        log_mel,
    )
    from fusion.data.nyuv2 import (  # noqa: F401
        CLASS_NAMES_13,
        CLASS_NAMES_40,
        IGNORE_INDEX,
        MAP_40_TO_13,
        AugmentConfig,
        NYUv2,
        NYUv2Mat,
        class_names,
        find_root,
        label_lut,
        load_frame,
        num_train_classes,
        official_split,
        read_split,
    )
    from fusion.data.upload import DepthInfo, decode_depth, decode_rgb, match_depth_to_rgb  # noqa: F401
