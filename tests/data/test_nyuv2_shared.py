"""Integration tests on the shared NYUv2 copy (../shared/data/nyuv2 or $FUSION_NYUV2); skipped when absent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.data.nyuv2 import (
    CLASS_NAMES_13,
    CLASS_NAMES_40,
    IGNORE_INDEX,
    MAP_40_TO_13,
    NYUv2,
    find_root,
    load_frame,
    official_split,
    read_split,
)
from fusion.types import FusionError


def _root() -> Path:
    try:
        root = find_root()
    except FusionError as e:
        pytest.skip(f"NYUv2 shared copy unusable: {e}")
    if root is None:
        pytest.skip("NYUv2 shared copy not found (set FUSION_NYUV2 or place it at ../shared/data/nyuv2)")
    return root


@pytest.fixture(scope="module")
def root() -> Path:
    return _root()


def test_split_matches_official(root: Path) -> None:
    train, test = read_split(root, "train"), read_split(root, "test")
    assert len(train) == 795 and len(test) == 654
    assert train == official_split("train") and test == official_split("test")
    assert read_split(root, "val") == official_split("val")  # the shared val.txt is the embedded split
    assert read_split(root, "fit") == official_split("fit")


def test_class_files_match_constants(root: Path) -> None:
    assert (root / "classes40.txt").read_text().splitlines()[:40] == CLASS_NAMES_40
    assert (root / "classes13.txt").read_text().splitlines()[:13] == CLASS_NAMES_13
    rows = [line.split("\t") for line in (root / "map40to13.txt").read_text().splitlines() if line.strip()]
    assert [int(r[2]) for r in rows] == list(MAP_40_TO_13)


def test_frame_shapes_and_ranges(root: Path) -> None:
    rgb, depth, label = load_frame(root, 0)
    assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8
    assert depth.shape == (480, 640) and depth.dtype == np.float32
    assert label.shape == (480, 640) and label.dtype == np.uint8
    assert 0.0 <= depth.min() and 0.3 < depth.max() <= 10.0 + 1e-5
    assert label.max() <= 39 and rgb.std() > 10


def test_dataset_remaps_39_to_ignore(root: Path) -> None:
    frame = official_split("test")[0]
    _, _, label40 = load_frame(root, frame)
    item = NYUv2(root, "test", size=(480, 640), ids=[frame])[0]
    target = item["label"].numpy()
    np.testing.assert_array_equal(target == IGNORE_INDEX, label40 == 39)
    np.testing.assert_array_equal(target[label40 != 39], label40[label40 != 39])
    assert item["rgb"].shape == (3, 480, 640) and 0.0 <= item["rgb"].min() and item["rgb"].max() <= 1.0


def test_dataset_train_and_13_class_items(root: Path) -> None:
    torch.manual_seed(0)
    ds = NYUv2(root, "train", size=(240, 320), augment=True, ids=official_split("train")[:2])
    item = ds[1]
    assert item["rgb"].shape == (3, 240, 320) and item["depth"].shape == (1, 240, 320)
    assert set(item["label"].unique().tolist()) <= set(range(39)) | {IGNORE_INDEX}
    labels13 = NYUv2(root, "test", num_classes=13, ids=official_split("test")[:1])[0]["label"]
    assert labels13.shape == (240, 320)
    assert set(labels13.unique().tolist()) <= set(range(13)) | {IGNORE_INDEX}
