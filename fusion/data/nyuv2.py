"""NYU Depth V2 (labelled subset): class sets, the official split, readers and a training dataset.

The data set is the 1,449 densely labelled indoor RGB-D frames of
Silberman, Hoiem, Kohli & Fergus, "Indoor Segmentation and Support Inference
from RGBD Images", ECCV 2012. Labels use the 40-class set of Gupta, Arbeláez &
Malik, "Perceptual Organization and Recognition of Indoor Scenes from RGB-D
Images", CVPR 2013, and the common 13-class grouping of it. The data set has no
explicit licence: use it (and anything trained on it) for research and teaching.

Two layouts are read:

* the folder layout (what ``python -m fusion.data.nyuv2 convert`` writes and
  ``../shared/data/nyuv2`` holds)::

      images/{i}.jpg     640x480 RGB
      depths/{i}.png     640x480 8-bit, value = metres * 25.5 (255 = 10 m)
      labels40/{i}.png   640x480 8-bit, 0..39 in the 40-class set (39 = otherprop + void)
      train.txt test.txt classes40.txt classes13.txt map40to13.txt

* the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5), via :class:`NYUv2Mat`.

Frame ``i`` (0-based) of the folder layout is frame ``i + 1`` of the ``.mat``.

Training targets: in the 40-class set, ids 0..38 are trained on and class 39
(``otherprop``, into which void/unlabelled pixels were merged) becomes
:data:`IGNORE_INDEX`; mIoU is reported over the 39 remaining classes. In the
13-class option, the 40->13 grouping is applied and pixels that were 39 are
ignored as well.

Command line::

    python -m fusion.data.nyuv2 convert --mat nyu_depth_v2_labeled.mat --out DIR [--mapping40 FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fusion.types import FusionError

try:  # optional fast path for the per-item resize; Pillow is the fallback
    import cv2 as _cv2
except ImportError:  # pragma: no cover - depends on the environment
    _cv2 = None

__all__ = [
    "IGNORE_INDEX",
    "NUM_FRAMES",
    "FRAME_SIZE",
    "DEPTH_SCALE_U8",
    "CLASS_NAMES_40",
    "CLASS_NAMES_13",
    "MAP_40_TO_13",
    "num_train_classes",
    "class_names",
    "label_lut",
    "official_split",
    "find_root",
    "read_split",
    "load_frame",
    "mapping_894_to_40",
    "load_mapping40",
    "NYUv2Mat",
    "AugmentConfig",
    "NYUv2",
    "convert_mat",
    "main",
]

# ---------------------------------------------------------------------------
# Constants: class sets, split, 894 -> 40 mapping (facts, stored as data)
# ---------------------------------------------------------------------------

IGNORE_INDEX = 255  # target value ignored by the loss and the metrics
NUM_FRAMES = 1449  # frames in the labelled subset
FRAME_SIZE = (480, 640)  # (H, W) of every frame
DEPTH_SCALE_U8 = 25.5  # 8-bit depth PNG value = metres * 25.5 (255 = 10 m)

# Gupta et al. 2013 40-class set; line k of classes40.txt = class k (spelling as in the released files).
CLASS_NAMES_40: list[str] = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
]  # fmt: skip

# The common 13-class grouping (classes13.txt).
CLASS_NAMES_13: list[str] = [
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table", "tv",
    "wall", "window",
]  # fmt: skip

# map40to13.txt: entry k = 13-class id of 40-class id k.
MAP_40_TO_13: tuple[int, ...] = (
    11, 4, 5, 0, 3, 8, 9, 11, 12, 5,  # wall floor cabinet bed chair sofa table door window bookshelf
    7, 5, 12, 9, 5, 12, 5, 6, 6, 4,  # picture counter blinds desk shelves curtain dresser pillow mirror floor-mat
    6, 2, 1, 5, 10, 6, 6, 6, 6, 6,  # clothes ceiling books fridge tv paper towel shower-curtain box whiteboard
    6, 5, 6, 6, 6, 6, 6, 6, 5, 6,  # person night-stand toilet sink lamp bathtub bag otherstruct otherfurn otherprop
)  # fmt: skip

# Official split (Silberman et al. 2012, splits.mat), 0-based frame ids. The 654 test ids as inclusive
# ranges; the 795 train ids are the other frames of 0..1448.
_TEST_RANGES = (
    "0-1 8 13-17 20 27-42 45-46 55-56 58-62 75-78 83-90 116-118 124-128 130-133 136 152-154 166-168 "
    "170-175 179-201 206-211 219-221 249 263 270-272 278-284 295-301 309-311 314-316 324-334 350-351 "
    "354-363 383-389 394-396 410-413 429-434 440-447 461-465 468-476 507-512 514-525 530-532 536-538 "
    "548-550 554-570 578-582 590-593 602-606 611-612 616-620 632-637 643-644 649-650 655-657 662-663 "
    "667-672 675-680 685-689 692-693 696-698 705-712 716-717 723-727 730-733 742-743 758-786 799-803 "
    "809-813 820-822 832-845 849-851 856-861 868-870 905-907 916-918 925-927 931-934 944-946 958-961 "
    "964-966 969-976 990-994 1000-1003 1009-1011 1020-1022 1031-1033 1037-1038 1047-1048 1051-1052 "
    "1056-1057 1074-1083 1087-1095 1097-1103 1105-1108 1116-1118 1122-1130 1134-1135 1143-1157 "
    "1161-1166 1169-1170 1173-1175 1178-1183 1191-1195 1200-1211 1215-1219 1225-1229 1232-1234 "
    "1246-1249 1253-1264 1274-1279 1284-1294 1296-1298 1301-1307 1313-1314 1328-1331 1334-1339 "
    "1346-1348 1352-1355 1363-1364 1367-1368 1383-1390 1393-1400 1406-1413 1420-1423 1429-1432 1440-1448"
)

# 894-class (the .mat's 'labels', 1-based, 0 = unlabelled) -> 40-class (1-based) mapping of
# Gupta et al. CVPR 2013 (classMapping40.mat, variable mapClass, released with their code at
# http://www.cs.berkeley.edu/~sgupta/cvpr13/). Stored as: 40-class id -> the 894-class ids that map to
# it; every 894-class id not listed maps to 40 (otherprop). Transcribed from two independent public
# copies of mapClass that agree entry for entry (894 entries, all 40 classes present).
_MAP894_EXCEPTIONS: dict[int, tuple[int, ...]] = {
    1: (21,), 2: (11,), 3: (3,), 4: (157,), 5: (5,), 6: (83,), 7: (19,), 8: (28,), 9: (59,), 10: (88,),
    11: (64,), 12: (7,), 13: (80,), 14: (36,), 15: (42,), 16: (89,), 17: (169,), 18: (119,), 19: (122,),
    20: (143,), 21: (141,), 22: (4,), 23: (85,), 24: (17,), 25: (172,), 26: (15,), 27: (135,), 28: (123,),
    29: (26,), 30: (45,), 31: (331,), 32: (158,), 33: (124,), 34: (24,), 35: (144,), 36: (136,), 37: (55,),
    38: (8, 25, 33, 38, 51, 53, 57, 58, 62, 65, 79, 94, 104, 112, 134, 153, 215, 216, 223, 225, 238, 241,
         242, 256, 295, 301, 339, 342, 354, 363, 372, 380, 392, 408, 412, 453, 456, 463, 477, 497, 541,
         550, 553, 567, 573, 582, 591, 609, 612, 615, 642, 645, 657, 658, 659, 663, 667, 668, 686, 700,
         702, 777, 778, 782, 850, 861, 868, 874),
    39: (12, 43, 48, 50, 87, 106, 111, 161, 163, 174, 183, 204, 214, 219, 221, 224, 236, 262, 278, 291,
         298, 313, 343, 344, 356, 359, 373, 393, 401, 414, 418, 419, 430, 443, 444, 447, 448, 457, 458,
         460, 462, 475, 479, 485, 486, 493, 494, 498, 499, 509, 510, 515, 521, 524, 540, 549, 551, 554,
         556, 558, 576, 580, 608, 625, 703, 734, 770, 772, 797, 800, 803, 804, 813, 814, 815, 820, 829,
         835, 858, 863, 882, 892),
}  # fmt: skip
_NUM_RAW_CLASSES = 894

_LAYOUT_DIRS = ("images", "depths", "labels40")
_LAYOUT_FILES = ("train.txt", "test.txt")
_SPLITS = ("train", "test", "val", "fit")
# The project's validation split: 109 of the 795 official train frames, 18 whole scenes (contiguous runs of
# train ids: every 7th run from the 4th). Every setting is chosen on it; "fit" (train minus val, 686 frames)
# is what models are trained on; "test" is read once for the final tables. Same ids as ``val.txt`` in the
# shared copy, embedded so a folder converted from the official .mat gets the same split.
_VAL_RANGES = ("21-26 119-123 202-205 302-308 397-409 526-529 607-610 664-666 718-722 823-831 928-930 "
               "1004-1008 1058-1073 1136-1142 1212-1214 1295 1356-1362 1433-1439")


def _parse_ranges(spec: str) -> list[int]:
    out: list[int] = []
    for tok in spec.split():
        a, _, b = tok.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def official_split(split: str) -> list[int]:
    """A split as sorted 0-based frame ids: the official ``"train"`` (795) / ``"test"`` (654), and the
    project's ``"val"`` (109 train frames, whole scenes) and ``"fit"`` (train minus val, 686)."""
    if split not in _SPLITS:
        raise FusionError(f"unknown NYUv2 split {split!r}; expected one of {_SPLITS}")
    test = _parse_ranges(_TEST_RANGES)
    if split == "test":
        return test
    if split == "val":
        return _parse_ranges(_VAL_RANGES)
    test_set = set(test)
    train = [i for i in range(NUM_FRAMES) if i not in test_set]
    if split == "fit":
        val = set(_parse_ranges(_VAL_RANGES))
        return [i for i in train if i not in val]
    return train


def num_train_classes(num_classes: int) -> int:
    """Number of classes a model predicts for a label set: 40 -> 39 (class 39 ignored), 13 -> 13."""
    if num_classes == 40:
        return 39
    if num_classes == 13:
        return 13
    raise FusionError(f"num_classes must be 40 or 13, got {num_classes!r}")


def class_names(num_classes: int) -> list[str]:
    """Names of the trained classes: 39 names for the 40-class set (otherprop ignored), 13 for the 13-class set."""
    n = num_train_classes(num_classes)
    return list(CLASS_NAMES_40[:n]) if num_classes == 40 else list(CLASS_NAMES_13)


def label_lut(num_classes: int) -> np.ndarray:
    """(256,) uint8 lookup table from a stored 40-class label (0..39) to a training target.

    40 -> ids 0..38 unchanged, 39 -> :data:`IGNORE_INDEX`; 13 -> the 40->13 grouping, 39 -> ignore.
    Any value above 39 (never in valid files) also maps to the ignore index.
    """
    num_train_classes(num_classes)  # validates
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    if num_classes == 40:
        lut[:39] = np.arange(39, dtype=np.uint8)
    else:
        lut[:39] = np.asarray(MAP_40_TO_13[:39], dtype=np.uint8)
    return lut


def mapping_894_to_40() -> np.ndarray:
    """(895,) uint8: 894-class label (0 = unlabelled) -> 0-based 40-class id; unlabelled -> 39 (otherprop+void).

    The built-in table of Gupta et al. 2013 (see ``_MAP894_EXCEPTIONS``).
    """
    one_based = np.full(_NUM_RAW_CLASSES + 1, 40, dtype=np.int64)
    for cls40, raw_ids in _MAP894_EXCEPTIONS.items():
        one_based[list(raw_ids)] = cls40
    one_based[0] = 40  # unlabelled / void merged into otherprop, as in the folder layout
    return (one_based - 1).astype(np.uint8)


def load_mapping40(path: str | Path) -> np.ndarray:
    """Read a 894->40 mapping file and return it in the form of :func:`mapping_894_to_40`.

    The file holds 894 integers in 1..40 (Gupta et al.'s ``mapClass``: entry k is the 40-class id of
    894-class id k+1), optionally with a leading 0 for "unlabelled" (895 entries). Accepted formats:
    whitespace/comma-separated text, ``.npy`` (no pickles), or ``.mat`` (``classMapping40.mat``; HDF5
    files via h5py, older MATLAB files need scipy).
    """
    p = Path(path)
    if not p.is_file():
        raise FusionError(f"mapping file not found: {p}")
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix.lower() == ".mat":
            arr = _read_mat_vector(p, "mapClass")
        else:
            text = p.read_text(encoding="utf-8", errors="strict").replace(",", " ")
            arr = np.array([int(float(t)) for t in text.split()], dtype=np.int64)
    except FusionError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FusionError(f"could not read mapping file {p}: {e}") from e
    arr = np.asarray(arr).reshape(-1)
    if arr.size == _NUM_RAW_CLASSES + 1 and int(arr[0]) == 0:
        arr = arr[1:]
    if arr.size != _NUM_RAW_CLASSES:
        raise FusionError(f"mapping file {p} has {arr.size} entries; expected {_NUM_RAW_CLASSES} ints in 1..40")
    if not np.all(np.isfinite(arr.astype(np.float64))) or np.any(arr != np.round(arr)):
        raise FusionError(f"mapping file {p} must contain integers")
    arr = arr.astype(np.int64)
    if arr.min() < 1 or arr.max() > 40:
        raise FusionError(f"mapping file {p}: values must be 40-class ids in 1..40, got {arr.min()}..{arr.max()}")
    out = np.empty(_NUM_RAW_CLASSES + 1, dtype=np.uint8)
    out[0] = 39
    out[1:] = arr - 1
    return out


def _read_mat_vector(path: Path, name: str) -> np.ndarray:
    try:
        import h5py

        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                if name not in f:
                    raise FusionError(f"{path} has no variable {name!r} (has: {sorted(f.keys())})")
                return np.asarray(f[name][()])
    except ImportError:  # pragma: no cover - h5py is a dependency
        pass
    try:
        from scipy.io import loadmat  # type: ignore[import-not-found]
    except ImportError as e:
        raise FusionError(
            f"{path} is a pre-v7.3 MATLAB file; reading it needs scipy (pip install scipy), "
            "or save the 894 ints as a .txt or .npy file"
        ) from e
    m = loadmat(path)
    if name not in m:
        raise FusionError(f"{path} has no variable {name!r}")
    return np.asarray(m[name])


# ---------------------------------------------------------------------------
# Folder layout
# ---------------------------------------------------------------------------


def _layout_problems(root: Path) -> list[str]:
    if not root.is_dir():
        return [f"{root} is not a folder"]
    missing = [d + "/" for d in _LAYOUT_DIRS if not (root / d).is_dir()]
    missing += [f for f in _LAYOUT_FILES if not (root / f).is_file()]
    return [f"missing {', '.join(missing)}"] if missing else []


def find_root(explicit: str | Path | None = None) -> Path | None:
    """Locate an NYUv2 folder layout.

    Order: ``explicit``; else the ``FUSION_NYUV2`` environment variable; else ``shared/data/nyuv2`` next to
    the project folder. An explicit path or the environment variable that does not hold the layout raises
    :class:`FusionError` (the user asked for it); the default location is returned only when valid, else None.
    """
    for given, origin in ((explicit, "path"), (os.environ.get("FUSION_NYUV2") or None, "FUSION_NYUV2")):
        if given is None:
            continue
        root = Path(given).expanduser()
        problems = _layout_problems(root)
        if problems:
            raise FusionError(f"NYUv2 {origin} {root} is not an NYUv2 folder layout: {problems[0]}")
        return root.resolve()
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nyuv2"
    return default if not _layout_problems(default) else None


def _as_root(root: str | Path | None) -> Path:
    found = find_root(root)
    if found is None:
        raise FusionError(
            "NYUv2 data not found: pass a folder, set FUSION_NYUV2, or convert the official .mat with "
            "`python -m fusion.data.nyuv2 convert --mat nyu_depth_v2_labeled.mat --out DIR`"
        )
    return found


def read_split(root: str | Path | None, split: str) -> list[int]:
    """0-based frame ids of ``split`` ("train" 795 / "test" 654 / "val" 109 / "fit" 686) from
    ``root/{split}.txt``; "fit" is ``train.txt`` minus ``val.txt``.

    Falls back to the embedded split when ``root`` is None or has no split file.
    """
    official = official_split(split)  # validates the name
    if root is None:
        return official
    if split in ("fit", "val"):  # val is held out of this folder's train frames (a small folder may hold none)
        train = read_split(root, "train")
        train_set = set(train)
        path = Path(root) / "val.txt"
        val = set(_read_ids(path) if path.is_file() else official_split("val")) & train_set
        return [i for i in train if (i in val) == (split == "val")]
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        return official
    return _read_ids(path)


def _read_ids(path: Path) -> list[int]:
    """Frame ids from a split file: one integer per line, distinct, >= 0."""
    try:
        ids = [int(t) for t in path.read_text(encoding="utf-8").split()]
    except (ValueError, UnicodeDecodeError) as e:
        raise FusionError(f"{path}: expected one integer frame id per line ({e})") from e
    if not ids:
        raise FusionError(f"{path} is empty")
    if min(ids) < 0 or len(set(ids)) != len(ids):
        raise FusionError(f"{path}: frame ids must be distinct and >= 0")
    return ids


def _imread(path: Path, mode: str | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            return np.asarray(im)
    except FileNotFoundError as e:
        raise FusionError(f"missing NYUv2 file {path}") from e
    except OSError as e:
        raise FusionError(f"unreadable NYUv2 file {path}: {e}") from e


def _load_raw(root: Path, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``i`` as stored: rgb uint8 (H,W,3), depth uint8 (H,W) (= m*25.5), label40 uint8 (H,W)."""
    i = int(i)
    if i < 0:
        raise FusionError(f"frame id must be >= 0, got {i}")
    rgb = _imread(root / "images" / f"{i}.jpg", "RGB")
    depth = _imread(root / "depths" / f"{i}.png", None)
    label = _imread(root / "labels40" / f"{i}.png", None)
    if depth.dtype != np.uint8 or label.dtype != np.uint8 or depth.ndim != 2 or label.ndim != 2:
        raise FusionError(f"frame {i} in {root}: depth and label PNGs must be 8-bit single-channel")
    if not (rgb.shape[:2] == depth.shape == label.shape):
        raise FusionError(f"frame {i} in {root}: sizes differ (rgb {rgb.shape}, depth {depth.shape}, label {label.shape})")
    return rgb, depth, label


def _depth_to_m(depth: np.ndarray) -> np.ndarray:
    if depth.dtype == np.uint8:
        return depth.astype(np.float32) * np.float32(1.0 / DEPTH_SCALE_U8)
    return depth.astype(np.float32, copy=False)


def load_frame(root: str | Path, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``i`` of a folder layout at full resolution.

    Returns (rgb uint8 (480,640,3), depth float32 (480,640) metres = 8-bit value / 25.5,
    label40 uint8 (480,640) with values 0..39).
    """
    rgb, depth, label = _load_raw(Path(root), i)
    return rgb, _depth_to_m(depth), label


# ---------------------------------------------------------------------------
# The official .mat (MATLAB v7.3 / HDF5)
# ---------------------------------------------------------------------------


class NYUv2Mat:
    """Reader for the official ``nyu_depth_v2_labeled.mat`` with the folder layout's ``load_frame`` API.

    h5py sees MATLAB's column-major arrays transposed: 'images' (N,3,W,H) uint8, 'depths' (N,W,H) float
    metres, 'labels' (N,W,H) uint16 in the 894-class set (0 = unlabelled). Frames are returned as
    (H,W,3) / (H,W) with labels mapped to the 40-class set (0-based; unlabelled -> 39).
    The HDF5 file is opened lazily and reopened in a new process, so the reader works in DataLoader workers.
    """

    def __init__(self, path: str | Path, *, mapping40: str | Path | np.ndarray | None = None) -> None:
        """``mapping40``: None for the built-in Gupta et al. table, a mapping file (:func:`load_mapping40`),
        or a (895,) array in the form of :func:`mapping_894_to_40`."""
        self.path = Path(path)
        if not self.path.is_file():
            raise FusionError(f"NYUv2 .mat file not found: {self.path}")
        if mapping40 is None:
            self.mapping40 = mapping_894_to_40()
        elif isinstance(mapping40, np.ndarray):
            if mapping40.shape != (_NUM_RAW_CLASSES + 1,) or mapping40.max() > 39:
                raise FusionError("mapping40 array must have shape (895,) with values 0..39")
            self.mapping40 = mapping40.astype(np.uint8)
        else:
            self.mapping40 = load_mapping40(mapping40)
        self._file: Any = None
        self._pid: int | None = None
        try:
            self._validate()
        except FusionError:
            self.close()
            raise

    def _validate(self) -> None:
        f = self._h5()
        missing = [k for k in ("images", "depths", "labels") if k not in f]
        if missing:
            raise FusionError(f"{self.path} lacks datasets {missing}; is it nyu_depth_v2_labeled.mat?")
        im, de, la = f["images"], f["depths"], f["labels"]
        if im.ndim != 4 or im.shape[1] != 3 or de.ndim != 3 or la.ndim != 3:
            raise FusionError(
                f"{self.path}: unexpected shapes images {im.shape}, depths {de.shape}, labels {la.shape} "
                "(expected (N,3,W,H), (N,W,H), (N,W,H))"
            )
        if not (im.shape[0] == de.shape[0] == la.shape[0] and im.shape[2:] == de.shape[1:] == la.shape[1:]):
            raise FusionError(f"{self.path}: images {im.shape}, depths {de.shape}, labels {la.shape} disagree")
        self.num_frames: int = int(im.shape[0])
        self.frame_size: tuple[int, int] = (int(im.shape[3]), int(im.shape[2]))  # (H, W)

    def _h5(self) -> Any:
        import h5py

        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise FusionError(
                    f"{self.path} is not an HDF5 (MATLAB v7.3) file; expected the official nyu_depth_v2_labeled.mat ({e})"
                ) from e
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return self.num_frames

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def close(self) -> None:
        """Close the HDF5 handle (reopened on the next read)."""
        if self._file is not None:
            self._file.close()
        self._file = None

    def __enter__(self) -> NYUv2Mat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.num_frames:
            raise FusionError(f"frame id {i} out of range 0..{self.num_frames - 1}")
        return i

    def raw_labels(self, i: int) -> np.ndarray:
        """(H,W) uint16 labels of frame ``i`` in the 894-class set (0 = unlabelled)."""
        i = self._check(i)
        return np.ascontiguousarray(self._h5()["labels"][i].T)

    def load_frame(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``i`` (0-based; = MATLAB frame i+1): rgb uint8 (H,W,3), depth float32 (H,W) metres,
        label40 uint8 (H,W) in 0..39."""
        i = self._check(i)
        f = self._h5()
        rgb = np.ascontiguousarray(np.asarray(f["images"][i], dtype=np.uint8).transpose(2, 1, 0))  # (3,W,H)->(H,W,3)
        depth = np.asarray(f["depths"][i], dtype=np.float32).T  # (W,H)->(H,W)
        depth = np.ascontiguousarray(np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0))
        raw = np.asarray(f["labels"][i]).T.astype(np.int64)
        if raw.size and (raw.min() < 0 or raw.max() > _NUM_RAW_CLASSES):
            raise FusionError(f"frame {i}: label values {raw.min()}..{raw.max()} outside the 894-class set")
        return rgb, depth, np.ascontiguousarray(self.mapping40[raw])

    def _load_raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.load_frame(i)


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation of :class:`NYUv2` (used when ``augment=True``)."""

    scale: tuple[float, float] = (1.0, 1.5)  # zoom: scale to s*size (s uniform in this range), crop size
    flip_p: float = 0.5  # probability of a horizontal flip (all modalities)
    brightness: float = 0.3  # rgb multiplied by a factor uniform in [1-b, 1+b]
    contrast: float = 0.3  # rgb contrast factor uniform in [1-c, 1+c] (around the mean grey level)
    saturation: float = 0.3  # rgb saturation factor uniform in [1-s, 1+s]


def _nearest_index(n_out: int, start: float, stop: float, n_src: int) -> np.ndarray:
    """Source indices for nearest-neighbour sampling of [start, stop) at n_out pixel centres."""
    pos = start + (np.arange(n_out, dtype=np.float64) + 0.5) * ((stop - start) / n_out)
    return np.clip(np.floor(pos).astype(np.int64), 0, n_src - 1)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _jitter(rgb: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Brightness, contrast, saturation on a float32 (3,H,W) array in [0,1] (numpy: no torch thread pool)."""
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)
    if cfg.brightness > 0:
        rgb *= np.float32(_uniform(1 - cfg.brightness, 1 + cfg.brightness))
    if cfg.contrast > 0:
        mean = np.float32((rgb * w).sum(0).mean())
        rgb = (rgb - mean) * np.float32(_uniform(1 - cfg.contrast, 1 + cfg.contrast)) + mean
    if cfg.saturation > 0:
        grey = (rgb * w).sum(0, keepdims=True)  # (1,H,W)
        rgb = grey + (rgb - grey) * np.float32(_uniform(1 - cfg.saturation, 1 + cfg.saturation))
    return np.clip(rgb, 0.0, 1.0, out=rgb)


def _resize_rgb(rgb: np.ndarray, box: tuple[float, float, float, float], out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear crop-and-resize of uint8 (H,W,3): source window ``box`` = (x0, y0, x1, y1) -> ``out_hw``.

    OpenCV (if installed) is ~5x faster than Pillow here; both sample at pixel centres, so they agree.
    """
    out_h, out_w = out_hw
    x0, y0, x1, y1 = box
    if _cv2 is not None:
        sx, sy = (x1 - x0) / out_w, (y1 - y0) / out_h
        m = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]], dtype=np.float64)
        flags = _cv2.INTER_LINEAR | _cv2.WARP_INVERSE_MAP
        return _cv2.warpAffine(rgb, m, (out_w, out_h), flags=flags, borderMode=_cv2.BORDER_REPLICATE)
    im = Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    return np.asarray(im)


class NYUv2(Dataset):
    """NYUv2 RGB-D semantic segmentation (Silberman et al. 2012; 40/13-class targets after Gupta et al. 2013).

    Items are dicts::

        {"rgb": float32 (3,H,W) in [0,1], "depth": float32 (1,H,W) metres,
         "label": int64 (H,W) with IGNORE_INDEX=255, "frame": int}

    Eval (``augment=False``): the frame is resized to ``size`` (rgb bilinear, depth and label nearest).
    Train (``augment=True``): random zoom s in [1.0, 1.5] of ``size`` and a random ``size`` crop (done as a
    single crop-and-resize from the full frame), horizontal flip, colour jitter on rgb only.
    ``cache=True`` keeps decoded full-resolution frames (uint8) in memory: ~1.5 MB per frame. With
    DataLoader workers each worker fills its own cache unless :meth:`preload` ran before the workers forked.
    """

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        *,
        num_classes: int = 40,
        size: tuple[int, int] = (240, 320),
        augment: bool = False,
        cache: bool = False,
        ids: Sequence[int] | None = None,
        aug: AugmentConfig | None = None,
    ) -> None:
        """``root``: a folder layout (None: :func:`find_root`) or the official ``.mat`` file.
        ``split``: "train", "test", "val" or "fit" (train minus val). ``num_classes``: 40 (39 trained + ignore) or 13. ``size``: (H, W) of
        the items. ``ids``: a subset of the split's frame ids (e.g. for a quick run); default all of them.
        ``aug``: augmentation settings (default :class:`AugmentConfig`)."""
        super().__init__()
        if root is not None and Path(root).suffix.lower() == ".mat" and Path(root).is_file():
            self.source: NYUv2Mat | Path = NYUv2Mat(root)
            split_ids = [i for i in official_split(split) if i < len(self.source)]
        else:
            self.source = _as_root(root)
            split_ids = read_split(self.source, split)
        self.split = split
        self.num_classes = int(num_classes)
        self._lut = label_lut(self.num_classes)
        if len(size) != 2 or min(int(s) for s in size) < 1:
            raise FusionError(f"size must be (H, W) with positive ints, got {size!r}")
        self.size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.augment = bool(augment)
        self.aug = aug or AugmentConfig()
        if ids is None:
            self.ids = list(split_ids)
        else:
            allowed = set(split_ids)
            bad = [int(i) for i in ids if int(i) not in allowed]
            if bad:
                raise FusionError(f"ids {bad[:5]} are not in the {split!r} split")
            self.ids = [int(i) for i in ids]
        self.cache = bool(cache)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def num_train_classes(self) -> int:
        """Number of classes a model predicts on this dataset (39 or 13)."""
        return num_train_classes(self.num_classes)

    @property
    def class_names(self) -> list[str]:
        """Names of the trained classes."""
        return class_names(self.num_classes)

    def __len__(self) -> int:
        return len(self.ids)

    def _raw(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit = self._cache.get(frame)
        if hit is not None:
            return hit
        if isinstance(self.source, NYUv2Mat):
            raw = self.source._load_raw(frame)
        else:
            raw = _load_raw(self.source, frame)
        if self.cache:
            self._cache[frame] = raw
        return raw

    def preload(self, *, progress: bool = False) -> None:
        """Decode every frame into the cache now (call before creating DataLoader workers to share it)."""
        if not self.cache:
            raise FusionError("preload() needs cache=True")
        it: Any = self.ids
        if progress:
            from tqdm import tqdm

            it = tqdm(self.ids, desc=f"NYUv2 {self.split}", unit="frame")
        for frame in it:
            self._raw(frame)

    def __getitem__(self, index: int) -> dict[str, Any]:
        frame = self.ids[index]
        rgb, depth, label = self._raw(frame)
        src_h, src_w = label.shape
        out_h, out_w = self.size
        # Source window (x0, y0, x1, y1) resized once to size.
        x0, y0, x1, y1 = 0.0, 0.0, float(src_w), float(src_h)
        flip = False
        if self.augment:
            s = _uniform(*self.aug.scale)
            win_w, win_h = src_w / s, src_h / s  # a size crop of the s*size zoom, in source pixels
            x0 = _uniform(0.0, src_w - win_w)
            y0 = _uniform(0.0, src_h - win_h)
            x1, y1 = x0 + win_w, y0 + win_h
            flip = float(torch.rand(())) < self.aug.flip_p

        if (out_h, out_w) != (src_h, src_w) or self.augment:
            rgb = _resize_rgb(rgb, (x0, y0, x1, y1), (out_h, out_w))  # (H,W,3) uint8
        rows = _nearest_index(out_h, y0, y1, src_h)
        cols = _nearest_index(out_w, x0, x1, src_w)
        depth = depth[rows[:, None], cols]  # (H,W)
        label = self._lut[label[rows[:, None], cols]]  # (H,W) uint8 targets
        if flip:
            rgb, depth, label = rgb[:, ::-1], depth[:, ::-1], label[:, ::-1]

        # numpy for the conversions: torch ops on small tensors stall when the cores are busy.
        rgb_f = rgb.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)  # (3,H,W)
        if self.augment:
            rgb_f = _jitter(rgb_f, self.aug)
        rgb_t = torch.from_numpy(np.ascontiguousarray(rgb_f))
        depth_t = torch.from_numpy(np.ascontiguousarray(_depth_to_m(depth))[None])  # (1,H,W)
        label_t = torch.from_numpy(label.astype(np.int64))  # (H,W)
        return {"rgb": rgb_t, "depth": depth_t, "label": label_t, "frame": int(frame)}


# ---------------------------------------------------------------------------
# Conversion: official .mat -> folder layout
# ---------------------------------------------------------------------------


def _write_text_files(out: Path, n: int) -> list[str]:
    notes: list[str] = []
    (out / "classes40.txt").write_text("\n".join(CLASS_NAMES_40) + "\n", encoding="utf-8")
    (out / "classes13.txt").write_text("\n".join(CLASS_NAMES_13) + "\n", encoding="utf-8")
    rows = [f"{k}\t{CLASS_NAMES_40[k]}\t{c}\t{CLASS_NAMES_13[c]}" for k, c in enumerate(MAP_40_TO_13)]
    (out / "map40to13.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for split in ("train", "test", "val"):
        ids = [i for i in official_split(split) if i < n]
        (out / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    if n != NUM_FRAMES:
        notes.append(f"the .mat has {n} frames, not {NUM_FRAMES}: split files list only official ids < {n}")
    return notes


def convert_mat(
    mat: str | Path,
    out: str | Path,
    *,
    mapping40: str | Path | None = None,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    progress: bool = True,
    limit: int | None = None,
) -> list[str]:
    """Write the folder layout from the official ``.mat``; returns notes for the user.

    images/{i}.jpg, depths/{i}.png (8-bit, round(m*25.5), clipped at 10 m), labels40/{i}.png (0..39,
    unlabelled -> 39), train.txt/test.txt (official split), classes40.txt, classes13.txt, map40to13.txt.
    ``mapping40``: a 894->40 mapping file instead of the built-in table. ``limit``: convert only the first
    frames (for a quick look). Refuses to write into a folder that already has images unless ``overwrite``.
    """
    if not 1 <= int(jpeg_quality) <= 100:
        raise FusionError(f"jpeg quality must be in 1..100, got {jpeg_quality}")
    out_dir = Path(out)
    if (out_dir / "images").is_dir() and any((out_dir / "images").iterdir()) and not overwrite:
        raise FusionError(f"{out_dir / 'images'} already has files; pass --overwrite to replace them")
    reader = NYUv2Mat(mat, mapping40=mapping40)
    n = reader.num_frames if limit is None else max(0, min(int(limit), reader.num_frames))
    for d in _LAYOUT_DIRS:
        (out_dir / d).mkdir(parents=True, exist_ok=True)
    it: Any = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=n, desc="NYUv2 .mat -> folders", unit="frame")
    try:
        for i in it:
            rgb, depth, label = reader.load_frame(i)
            Image.fromarray(rgb).save(out_dir / "images" / f"{i}.jpg", quality=int(jpeg_quality))
            d8 = np.clip(np.rint(depth * DEPTH_SCALE_U8), 0, 255).astype(np.uint8)
            Image.fromarray(d8).save(out_dir / "depths" / f"{i}.png")
            Image.fromarray(label).save(out_dir / "labels40" / f"{i}.png")
    finally:
        reader.close()
    notes = _write_text_files(out_dir, reader.num_frames if limit is None else n)
    if mapping40 is None:
        notes.append("894->40 labels mapped with the built-in table of Gupta et al. 2013 (classMapping40.mat)")
    notes.append("unlabelled (void) pixels were merged into class 39 (otherprop); treat 39 as ignore")
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m fusion.data.nyuv2 convert --mat FILE --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m fusion.data.nyuv2",
        description="NYU Depth V2 tools (Silberman et al. 2012; 40-class set of Gupta et al. 2013).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser(
        "convert",
        help="convert the official nyu_depth_v2_labeled.mat into the folder layout",
        description="Convert the official nyu_depth_v2_labeled.mat (MATLAB v7.3) into images/, depths/, "
        "labels40/, train.txt, test.txt and the class files. Frame i of the output = frame i+1 of the .mat.",
    )
    conv.add_argument("--mat", required=True, type=Path, help="path to nyu_depth_v2_labeled.mat")
    conv.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    conv.add_argument(
        "--mapping40",
        type=Path,
        default=None,
        help="894->40 class mapping file (894 ints in 1..40: .txt, .npy or classMapping40.mat); "
        "default: the built-in table of Gupta et al. 2013",
    )
    conv.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of images/{i}.jpg (default 95)")
    conv.add_argument("--limit", type=int, default=None, help="convert only the first N frames")
    conv.add_argument("--overwrite", action="store_true", help="replace files in an existing output folder")
    conv.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        notes = convert_mat(
            args.mat,
            args.out,
            mapping40=args.mapping40,
            jpeg_quality=args.jpeg_quality,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            limit=args.limit,
        )
    except FusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
