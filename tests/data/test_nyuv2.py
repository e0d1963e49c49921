"""NYUv2 module on tiny fixtures the tests write themselves (a 3-frame .mat in the official HDF5 layout)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fusion.data import nyuv2
from fusion.data.nyuv2 import (
    CLASS_NAMES_13,
    CLASS_NAMES_40,
    IGNORE_INDEX,
    MAP_40_TO_13,
    NYUv2,
    NYUv2Mat,
    class_names,
    convert_mat,
    find_root,
    label_lut,
    load_frame,
    load_mapping40,
    main,
    mapping_894_to_40,
    num_train_classes,
    official_split,
    read_split,
)
from fusion.types import FusionError

H, W, N = 6, 8, 3
# 894-class ids whose 40-class id (0-based) equals the column index: wall floor cabinet bed chair sofa table door
RAW_FOR_COLUMN = np.array([21, 11, 3, 157, 5, 83, 19, 28], dtype=np.uint16)


def _frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames in (H, W) order: smooth rgb (blue = 40 * frame), depth and labels that are functions of the column."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.zeros((N, H, W, 3), dtype=np.uint8)
    for i in range(N):
        rgb[i, ..., 0] = 60 + 20 * xx
        rgb[i, ..., 1] = 80 + 10 * yy
        rgb[i, ..., 2] = 40 * (i + 1)
    depth = np.broadcast_to((xx + 1) * 0.4, (N, H, W)).astype(np.float32).copy()  # metres
    labels = np.broadcast_to(RAW_FOR_COLUMN[xx], (N, H, W)).copy()
    labels[2, 0, :] = 0  # unlabelled row in frame 2
    return rgb, depth, labels


def _write_mat(path: Path) -> Path:
    rgb, depth, labels = _frames()
    with h5py.File(path, "w") as f:  # h5py's view of MATLAB v7.3: (N,3,W,H), (N,W,H), (N,W,H)
        f["images"] = rgb.transpose(0, 3, 2, 1)
        f["depths"] = depth.transpose(0, 2, 1)
        f["labels"] = labels.transpose(0, 2, 1)
    return path


@pytest.fixture()
def mat_file(tmp_path: Path) -> Path:
    return _write_mat(tmp_path / "nyu_depth_v2_labeled.mat")


@pytest.fixture()
def folder(tmp_path: Path, mat_file: Path) -> Path:
    out = tmp_path / "nyuv2"
    assert main(["convert", "--mat", str(mat_file), "--out", str(out), "--no-progress"]) == 0
    return out


# --- constants -------------------------------------------------------------------------------


def test_class_sets() -> None:
    assert len(CLASS_NAMES_40) == 40 and CLASS_NAMES_40[0] == "wall" and CLASS_NAMES_40[39] == "otherprop"
    assert len(CLASS_NAMES_13) == 13 and len(MAP_40_TO_13) == 40
    assert set(MAP_40_TO_13) == set(range(13))
    assert CLASS_NAMES_13[MAP_40_TO_13[24]] == "tv" and CLASS_NAMES_13[MAP_40_TO_13[7]] == "wall"
    assert num_train_classes(40) == 39 and num_train_classes(13) == 13
    assert class_names(40) == CLASS_NAMES_40[:39] and class_names(13) == CLASS_NAMES_13
    with pytest.raises(FusionError):
        num_train_classes(37)


def test_label_lut_ignores_39() -> None:
    lut40, lut13 = label_lut(40), label_lut(13)
    assert lut40[39] == IGNORE_INDEX and lut13[39] == IGNORE_INDEX
    assert list(lut40[:39]) == list(range(39))
    assert list(lut13[:39]) == list(MAP_40_TO_13[:39])
    assert lut40[200] == IGNORE_INDEX


def test_official_split() -> None:
    train, test = official_split("train"), official_split("test")
    assert len(train) == 795 and len(test) == 654
    assert sorted(train + test) == list(range(1449))
    assert test[:3] == [0, 1, 8] and train[:3] == [2, 3, 4]
    with pytest.raises(FusionError):
        official_split("validation")


def test_validation_split_is_whole_scenes_held_out_of_train() -> None:
    train, val, fit = official_split("train"), official_split("val"), official_split("fit")
    assert len(val) == 109 and len(fit) == 686
    assert set(val) <= set(train) and not set(val) & set(fit) and sorted(val + fit) == train
    # whole scenes: every held-out run is a contiguous run of train ids (no train frame inside it is kept)
    pos = {f: i for i, f in enumerate(train)}
    runs = 1 + sum(pos[b] != pos[a] + 1 for a, b in zip(val, val[1:]))
    assert runs == 18


def test_builtin_894_to_40_mapping() -> None:
    m = mapping_894_to_40()
    assert m.shape == (895,) and m.dtype == np.uint8
    assert m[0] == 39  # unlabelled -> otherprop/void
    assert [int(m[r]) for r in RAW_FOR_COLUMN] == list(range(8))
    assert m[331] == 30 and m[172] == 24 and m[894] == 39  # person, television, a rare class -> otherprop
    assert set(m.tolist()) == set(range(40))


def test_load_mapping40_formats(tmp_path: Path) -> None:
    ref = (mapping_894_to_40()[1:].astype(np.int64) + 1)  # 1-based, as in classMapping40.mat
    txt = tmp_path / "m.txt"
    txt.write_text(",".join(map(str, ref)))
    np.testing.assert_array_equal(load_mapping40(txt), mapping_894_to_40())
    npy = tmp_path / "m.npy"
    np.save(npy, np.concatenate([[0], ref]))  # 895 with leading 0 is accepted
    np.testing.assert_array_equal(load_mapping40(npy), mapping_894_to_40())
    mat = tmp_path / "classMapping40.mat"
    with h5py.File(mat, "w") as f:
        f["mapClass"] = ref[None, :]
    np.testing.assert_array_equal(load_mapping40(mat), mapping_894_to_40())


@pytest.mark.parametrize(
    "content",
    ["1 2 3", " ".join(["41"] * 894), "wall " * 894],
    ids=["too-short", "out-of-range", "not-numbers"],
)
def test_load_mapping40_rejects_bad_files(tmp_path: Path, content: str) -> None:
    p = tmp_path / "m.txt"
    p.write_text(content)
    with pytest.raises(FusionError):
        load_mapping40(p)


def test_load_mapping40_rejects_pickles(tmp_path: Path) -> None:
    p = tmp_path / "m.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FusionError):
        load_mapping40(p)
    with pytest.raises(FusionError):
        load_mapping40(tmp_path / "missing.txt")


# --- the .mat reader and the converter ----------------------------------------------------------


def test_mat_reader_transposes_and_maps(mat_file: Path) -> None:
    rgb_ref, depth_ref, labels_ref = _frames()
    with NYUv2Mat(mat_file) as mat:
        assert len(mat) == N and mat.frame_size == (H, W)
        rgb, depth, label = mat.load_frame(2)
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        np.testing.assert_array_equal(rgb, rgb_ref[2])
        np.testing.assert_allclose(depth, depth_ref[2])
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label[1:], np.broadcast_to(np.arange(W), (H - 1, W)))
        assert (label[0] == 39).all()  # unlabelled -> 39
        np.testing.assert_array_equal(mat.raw_labels(2), labels_ref[2])
        with pytest.raises(FusionError):
            mat.load_frame(N)


def test_mat_reader_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5" * 10)
    with pytest.raises(FusionError, match="HDF5"):
        NYUv2Mat(junk)
    with pytest.raises(FusionError):
        NYUv2Mat(tmp_path / "absent.mat")
    wrong = tmp_path / "wrong.mat"
    with h5py.File(wrong, "w") as f:
        f["images"] = np.zeros((1, 3, 4, 4), np.uint8)
    with pytest.raises(FusionError, match="labels"):
        NYUv2Mat(wrong)


def test_convert_writes_layout(folder: Path) -> None:
    for d in ("images", "depths", "labels40"):
        assert sorted(p.name for p in (folder / d).iterdir())[0].startswith("0.")
        assert len(list((folder / d).iterdir())) == N
    assert (folder / "classes40.txt").read_text().split("\n")[:40] == CLASS_NAMES_40
    assert read_split(folder, "test") == [0, 1] and read_split(folder, "train") == [2]
    assert find_root(folder) == folder.resolve()

    rgb_ref, depth_ref, _ = _frames()
    rgb, depth, label = load_frame(folder, 2)
    assert rgb.shape == (H, W, 3) and depth.shape == (H, W) and label.shape == (H, W)
    assert depth.dtype == np.float32 and label.dtype == np.uint8
    assert np.abs(rgb.astype(int) - rgb_ref[2]).mean() < 12  # JPEG of a tiny image
    np.testing.assert_allclose(depth, depth_ref[2], atol=0.5 / 25.5 + 1e-6)  # 8-bit quantisation
    assert (label[0] == 39).all() and list(label[1]) == list(range(W))


def test_convert_refuses_to_overwrite_and_reports_cleanly(
    folder: Path, mat_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", "--mat", str(mat_file), "--out", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--overwrite" in err and "Traceback" not in err
    assert main(["convert", "--mat", str(mat_file), "--out", str(folder), "--no-progress", "--overwrite"]) == 0
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"\x00" * 100)
    assert main(["convert", "--mat", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "not an HDF5" in capsys.readouterr().err


def test_convert_with_mapping_file(mat_file: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "all_wall.txt"
    mapping.write_text("\n".join(["1"] * 894))
    out = tmp_path / "o"
    notes = convert_mat(mat_file, out, mapping40=mapping, progress=False, limit=2)
    assert any("2 frames" in n for n in notes)
    _, _, label = load_frame(out, 1)
    assert (label == 0).all()
    assert read_split(out, "test") == [0, 1] and not (out / "images" / "2.jpg").exists()


# --- folder discovery ---------------------------------------------------------------------------


def test_find_root(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSION_NYUV2", raising=False)
    with pytest.raises(FusionError, match="missing"):
        find_root(tmp_path)
    monkeypatch.setenv("FUSION_NYUV2", str(folder))
    assert find_root() == folder.resolve()
    monkeypatch.setenv("FUSION_NYUV2", str(tmp_path / "nowhere"))
    with pytest.raises(FusionError, match="FUSION_NYUV2"):
        find_root()
    assert read_split(tmp_path, "train") == official_split("train")  # no split file: the official one


# --- the dataset -------------------------------------------------------------------------------


def _column_depth(label: torch.Tensor) -> torch.Tensor:
    """Depth the fixture puts at a pixel of 40-class id c (= column c): round((c+1)*0.4*25.5)/25.5."""
    return torch.round((label.float() + 1) * 0.4 * 25.5) / 25.5


def test_dataset_eval_items(folder: Path) -> None:
    ds = NYUv2(folder, "test", size=(H, W))
    assert len(ds) == 2 and ds.num_train_classes == 39 and len(ds.class_names) == 39
    item = ds[1]
    assert set(item) == {"rgb", "depth", "label", "frame"} and item["frame"] == 1
    assert item["rgb"].shape == (3, H, W) and item["rgb"].dtype == torch.float32
    assert item["depth"].shape == (1, H, W) and item["depth"].dtype == torch.float32
    assert item["label"].shape == (H, W) and item["label"].dtype == torch.int64
    assert 0.0 <= item["rgb"].min() and item["rgb"].max() <= 1.0
    assert abs(item["rgb"][2].mean().item() - 80 / 255) < 0.05  # frame 1 has blue = 80
    np.testing.assert_array_equal(item["label"].numpy(), np.broadcast_to(np.arange(W), (H, W)))

    train = NYUv2(folder, "train", size=(H, W))
    assert (train[0]["label"][0] == IGNORE_INDEX).all()  # class 39 (void) -> ignore

    small = NYUv2(folder, "test", size=(3, 4))[0]
    assert small["rgb"].shape == (3, 3, 4) and small["label"].shape == (3, 4)
    assert torch.allclose(small["depth"][0], _column_depth(small["label"]), atol=1e-5)


def test_dataset_13_classes(folder: Path) -> None:
    label = NYUv2(folder, "train", num_classes=13, size=(H, W))[0]["label"]
    assert (label[0] == IGNORE_INDEX).all()
    assert label[1].tolist() == [MAP_40_TO_13[c] for c in range(W)]


def test_dataset_augment_keeps_modalities_aligned(folder: Path) -> None:
    torch.manual_seed(0)
    ds = NYUv2(folder, "test", size=(H, W), augment=True)
    flipped = 0
    for _ in range(12):
        item = ds[0]
        assert item["rgb"].shape == (3, H, W) and item["label"].shape == (H, W)
        assert 0.0 <= item["rgb"].min() and item["rgb"].max() <= 1.0
        assert torch.allclose(item["depth"][0], _column_depth(item["label"]), atol=1e-5)
        flipped += int(item["label"][0, 0] > item["label"][0, -1])
    assert 0 < flipped < 12  # both flipped and unflipped crops occur


def test_dataset_cache_ids_and_errors(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = NYUv2(folder, "test", size=(3, 4), cache=True, ids=[1])
    ds.preload()
    assert list(ds._cache) == [1] and len(ds) == 1
    a = ds[0]
    monkeypatch.setattr(nyuv2, "_cv2", None)  # the Pillow fallback gives the same result
    b = ds[0]
    diff = (a["rgb"] - b["rgb"]).abs()  # Pillow antialiases; on a smooth image the two agree closely
    assert diff.mean() < 3 / 255 and diff.max() < 10 / 255 and torch.equal(a["label"], b["label"])
    with pytest.raises(FusionError, match="not in the 'test' split"):
        NYUv2(folder, "test", ids=[2])
    with pytest.raises(FusionError):
        NYUv2(folder, "test", num_classes=20)
    with pytest.raises(FusionError):
        NYUv2(folder, "test", size=(0, 4))
    with pytest.raises(FusionError):
        NYUv2(folder, "test").preload()
    (folder / "labels40" / "1.png").unlink()
    with pytest.raises(FusionError, match="missing"):
        NYUv2(folder, "test", size=(3, 4))[1]


def test_dataset_reads_the_mat_directly(mat_file: Path, folder: Path) -> None:
    from_mat = NYUv2(mat_file, "train", size=(H, W))[0]
    from_folder = NYUv2(folder, "train", size=(H, W))[0]
    assert torch.equal(from_mat["label"], from_folder["label"])
    assert torch.allclose(from_mat["depth"], from_folder["depth"], atol=0.5 / 25.5 + 1e-6)
