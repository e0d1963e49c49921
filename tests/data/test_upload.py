"""Upload decoding: every depth encoding, auto-detection, size matching and every kind of bad file."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fusion.data.upload import DEPTH_UNITS, DEPTH_UNITS_HELP, decode_depth, decode_rgb, match_depth_to_rgb
from fusion.types import FusionError

RNG = np.random.default_rng(0)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr: np.ndarray, **kw: bool) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return buf.getvalue()


def _mm(h: int = 12, w: int = 16) -> np.ndarray:
    """Depths in millimetres, 0.5..5 m, not multiples of 8 (as from a real sensor)."""
    return RNG.integers(500, 5000, size=(h, w)).astype(np.uint16) | np.uint16(1)


def _sunrgbd_encode(mm: np.ndarray) -> np.ndarray:
    m = mm.astype(np.uint32)
    return (((m << 3) | (m >> 13)) & 0xFFFF).astype(np.uint16)  # SUN RGB-D stores mm rotated left by 3


# --- RGB ---------------------------------------------------------------------------------------


def test_rgb_png_roundtrip_and_conversions() -> None:
    rgb = RNG.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
    out = decode_rgb(_png(rgb))
    assert out.dtype == np.uint8 and out.shape == (10, 14, 3)
    np.testing.assert_array_equal(out, rgb)
    grey = decode_rgb(_png(rgb[..., 0]))
    assert grey.shape == (10, 14, 3) and (grey[..., 0] == grey[..., 2]).all()
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent -> white, not black
    assert (decode_rgb(_png(rgba)) == 255).all()


def test_rgb_jpeg_applies_exif_rotation() -> None:
    im = Image.fromarray(RNG.integers(0, 256, size=(10, 20, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_rgb(buf.getvalue()).shape == (20, 10, 3)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"hello, this is not an image at all", "not an image"),
        (_png(np.zeros((32, 32, 3), np.uint8))[:60], "corrupt"),
        (_png(_mm()), "depth map"),
        (_npy(np.zeros((4, 4), np.float32)), ".npy"),
    ],
    ids=["empty", "not-image", "truncated", "16-bit", "npy"],
)
def test_rgb_rejects_bad_files(data: bytes, match: str) -> None:
    with pytest.raises(FusionError, match=match):
        decode_rgb(data)


def test_rgb_rejects_huge_images_and_non_bytes() -> None:
    with pytest.raises(FusionError, match="limit"):
        decode_rgb(_png(np.zeros((20, 20, 3), np.uint8)), max_pixels=100)
    with pytest.raises(FusionError):
        decode_rgb("image.png")  # type: ignore[arg-type]


# --- depth: formats and auto-detection -------------------------------------------------------------


def test_depth_u8_nyu() -> None:
    raw = RNG.integers(1, 256, size=(12, 16), dtype=np.uint8)
    depth, info = decode_depth(_png(raw), "d.png")
    assert depth.dtype == np.float32 and depth.shape == (12, 16)
    np.testing.assert_allclose(depth, raw / 25.5, rtol=1e-6)
    assert info.units == "u8_nyu" and info.detected and info.hole_fraction == 0.0
    assert info.max_m <= 10.0 + 1e-6


def test_depth_mm16_png() -> None:
    mm = _mm()
    depth, info = decode_depth(_png(mm), "d.png")
    assert info.units == "mm16" and info.detected
    np.testing.assert_allclose(depth, mm / 1000.0, rtol=1e-6)
    assert info.min_m == pytest.approx(mm.min() / 1000.0) and info.max_m == pytest.approx(mm.max() / 1000.0)


def test_depth_sunrgbd_bit_rotation() -> None:
    mm = _mm()
    data = _png(_sunrgbd_encode(mm))
    depth, info = decode_depth(data, "sun.png")
    assert info.units == "sunrgbd" and info.detected and any("SUN RGB-D" in n for n in info.notes)
    np.testing.assert_allclose(depth, mm / 1000.0, rtol=1e-6)
    explicit, info2 = decode_depth(data, "sun.png", units="sunrgbd")
    assert not info2.detected and np.array_equal(explicit, depth)
    as_mm16, _ = decode_depth(data, "sun.png", units="mm16")  # an override is obeyed: 8x too deep
    np.testing.assert_allclose(as_mm16, mm * 8 / 1000.0, rtol=1e-6)


def test_depth_npy_metres_and_millimetres() -> None:
    metres = RNG.uniform(0.5, 6.0, size=(12, 16)).astype(np.float32)
    depth, info = decode_depth(_npy(metres), "d.npy")
    assert info.units == "m_npy" and info.detected
    np.testing.assert_array_equal(depth, metres)
    depth, info = decode_depth(_npy(metres[None].astype(np.float64) * 1000), "d.npy")  # (1,H,W) float mm
    assert info.units == "mm_npy" and depth.shape == (12, 16)
    np.testing.assert_allclose(depth, metres, rtol=1e-5)
    mm = _mm()
    depth, info = decode_depth(_npy(mm.astype(np.int32)), "d.npy")
    assert info.units == "mm_npy"
    np.testing.assert_allclose(depth, mm / 1000.0, rtol=1e-6)
    depth, info = decode_depth(_npy(metres), "d.npy", units="mm_npy")
    assert not info.detected and any("wrong units" in n for n in info.notes)


def test_depth_holes_stay_zero() -> None:
    mm = _mm()
    mm[:6] = 0
    depth, info = decode_depth(_png(mm), "d.png")
    assert (depth[:6] == 0).all() and info.hole_fraction == pytest.approx(0.5)
    assert info.min_m == pytest.approx(mm[6:].min() / 1000.0)
    assert any("holes" in n for n in info.notes)


def test_depth_grey_rgb_png_is_accepted() -> None:
    raw = RNG.integers(1, 256, size=(8, 8), dtype=np.uint8)
    depth, info = decode_depth(_png(np.stack([raw] * 3, -1)), "d.png")
    np.testing.assert_allclose(depth, raw / 25.5, rtol=1e-6)
    assert info.units == "u8_nyu" and any("3-channel" in n for n in info.notes)


def test_units_help_covers_every_choice() -> None:
    assert DEPTH_UNITS[0] == "auto" and set(DEPTH_UNITS) == set(DEPTH_UNITS_HELP)
    assert set(DEPTH_UNITS) == {"auto", "u8_nyu", "mm16", "sunrgbd", "m_npy", "mm_npy"}


# --- depth: bad files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "name", "units", "match"),
    [
        (b"", "d.png", "auto", "empty"),
        (b"GIF89a but then garbage" * 3, "d.png", "auto", "not an image|corrupt"),
        (_png(_mm(64, 64))[:100], "d.png", "auto", "corrupt"),
        (b"not numpy", "d.npy", "auto", "not a NumPy"),
        (_npy(np.ones((8, 8), np.float32))[:90], "d.npy", "auto", "corrupt"),
        (_npy(np.ones((8, 8), np.float32))[:140], "d.npy", "auto", "corrupt"),
        (_npy(np.array([{"x": 1}], dtype=object), allow_pickle=True), "d.npy", "auto", "pickle"),
        (_png(np.zeros((8, 8), np.uint16)), "d.png", "auto", "every pixel is 0"),
        (_npy(np.zeros((8, 8), np.float32)), "d.npy", "auto", "every pixel is 0"),
        (_npy(np.full((8, 8), np.nan, np.float32)), "d.npy", "auto", "NaN"),
        (_npy(np.array([[1.0, np.inf], [1.0, 2.0]], np.float32)), "d.npy", "auto", "NaN or infinite"),
        (_npy(-np.ones((8, 8), np.float32)), "d.npy", "auto", "negative"),
        (_npy(np.ones((4, 4, 3), np.float32)), "d.npy", "auto", "2-D"),
        (_npy(np.ones(16, np.float32)), "d.npy", "auto", "2-D"),
        (_png(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)), "d.png", "auto", "colour"),
        (_png(_mm()), "d.png", "u8_nyu", "8-bit"),
        (_png(np.ones((8, 8), np.uint8)), "d.png", "mm16", "16-bit"),
        (_png(_mm()), "d.png", "m_npy", "integer image"),
        (_png(_mm()), "d.png", "feet", "unknown units"),
    ],
    ids=[
        "empty", "not-image", "truncated-png", "npy-name-not-npy", "truncated-npy-header", "truncated-npy-data", "pickle", "all-zero-png",
        "all-zero-npy", "nan", "inf", "negative", "3d", "1d", "colour-png", "u8-on-16bit", "mm16-on-8bit",
        "m_npy-on-png", "unknown-units",
    ],
)
def test_depth_rejects_bad_files(data: bytes, name: str, units: str, match: str) -> None:
    with pytest.raises(FusionError, match=match):
        decode_depth(data, name, units=units)


def test_depth_rejects_huge_inputs() -> None:
    with pytest.raises(FusionError, match="limit"):
        decode_depth(_png(_mm(20, 20)), "d.png", max_pixels=100)
    with pytest.raises(FusionError, match="limit"):
        decode_depth(_npy(np.ones((20, 20), np.float32)), "d.npy", max_pixels=100)


# --- size matching --------------------------------------------------------------------------------


def test_match_same_size_is_untouched() -> None:
    d = RNG.uniform(0.5, 5, size=(48, 64)).astype(np.float32)
    out, note = match_depth_to_rgb(d, (48, 64, 3))
    assert out is d and note is None


def test_match_same_aspect_resizes_nearest() -> None:
    d = RNG.uniform(0.5, 5, size=(24, 32)).astype(np.float32)
    d[0, 0] = 0.0
    out, note = match_depth_to_rgb(d, (48, 64, 3))
    assert out.shape == (48, 64) and note is not None and "32x24" in note and "64x48" in note
    assert set(np.unique(out)) <= set(np.unique(d))  # nearest: no blended values
    assert (out[:2, :2] == 0).all()
    out2, note2 = match_depth_to_rgb(d, (48, 65))  # within 2% aspect
    assert out2.shape == (48, 65) and note2


def test_match_other_aspect_is_an_error() -> None:
    with pytest.raises(FusionError, match="aspect"):
        match_depth_to_rgb(np.ones((48, 64), np.float32), (720, 1280, 3))
    with pytest.raises(FusionError, match="2-D"):
        match_depth_to_rgb(np.ones((4, 4, 1), np.float32), (4, 4))
