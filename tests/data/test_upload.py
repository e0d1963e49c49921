"""Upload decoding: every depth encoding, auto-detection, size matching and every kind of bad file."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fusion.data.upload import (DEPTH_UNITS, DEPTH_UNITS_HELP, DEPTH_UNITS_LABEL, EmptyDepthError, aspects_differ,
                                decode_depth, decode_rgb, match_depth_to_rgb)
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
    assert set(DEPTH_UNITS) == {"auto", "u8_nyu", "mm16", "tenth_mm16", "eighth_mm16", "sunrgbd", "m_npy", "mm_npy",
                                "scale"}
    assert set(DEPTH_UNITS_LABEL) == set(DEPTH_UNITS)
    assert all(label and label != units for units, label in DEPTH_UNITS_LABEL.items())  # a label, not the key


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


# --- depth: weighing the encodings (auto-detection, ambiguity, explicit scale, implausible ranges) -------------------

_KEYS = ("u8_nyu", "mm16", "tenth_mm16", "eighth_mm16", "sunrgbd", "m_npy", "mm_npy")  # never shown alone


def _room_m(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth indoor-like depth in metres (about 0.8 to 4.6 m): a floor receding and a wavy wall."""
    yy, xx = np.mgrid[0:h, 0:w]
    return 0.8 + 3.5 * yy / h + 0.3 * np.sin(xx / 5.0) + RNG.uniform(0.0, 0.05, (h, w))


def _kinect_shift(mm: np.ndarray) -> np.ndarray:
    """Kinect SDK style: millimetres shifted left by 3 bits, a player index in the low bits of a few pixels."""
    raw = mm.astype(np.uint16) << np.uint16(3)
    raw[:3, :5] |= np.uint16(3)  # a "player" in the corner
    return raw


def _encodings() -> list[tuple[str, bytes, str, np.ndarray]]:
    """(case, file bytes, expected units, expected metres) for every encoding auto-detection must find."""
    m = _room_m()
    mm = np.rint(m * 1000).astype(np.uint16)
    u8 = np.clip(np.rint(m * 25.5), 0, 255).astype(np.uint8)
    tenth = np.rint(m * 10000).astype(np.uint16)
    kinect = _kinect_shift(mm)
    sun_far = mm.copy()
    sun_far[0, :20] = 9000  # a few pixels beyond 8.192 m: only SUN RGB-D's rotation reads them right
    return [
        ("u8_nyu", _png(u8), "u8_nyu", u8 / 25.5),
        ("mm16", _png(mm), "mm16", mm / 1000.0),
        ("tenth_mm16", _png(tenth), "tenth_mm16", tenth / 10000.0),
        ("eighth_mm16", _png(kinect), "eighth_mm16", kinect / 8000.0),
        ("sunrgbd", _png(_sunrgbd_encode(mm)), "sunrgbd", mm / 1000.0),
        ("sunrgbd_far", _png(_sunrgbd_encode(sun_far)), "sunrgbd", sun_far / 1000.0),
        ("u8_in_16bit", _png(u8.astype(np.uint16)), "u8_nyu", u8 / 25.5),
        ("m_npy", _npy(m.astype(np.float32)), "m_npy", m),
        ("mm_npy_float", _npy(m * 1000.0), "mm_npy", m),
        ("mm_npy_int", _npy(mm.astype(np.int32)), "mm_npy", mm / 1000.0),
    ]


@pytest.mark.parametrize(("case", "data", "units", "metres"), _encodings(), ids=[e[0] for e in _encodings()])
def test_auto_detects_each_encoding(case: str, data: bytes, units: str, metres: np.ndarray) -> None:
    name = "d.npy" if data.startswith(b"\x93NUMPY") else "d.png"
    depth, info = decode_depth(data, name)
    assert info.units == units, (case, info.why)
    assert info.detected and not info.ambiguous and info.plausible and info.warning is None
    np.testing.assert_allclose(depth, metres, rtol=1e-5)
    assert info.label == DEPTH_UNITS_LABEL[units] and info.label in info.why
    assert "plausible indoor range" in info.why
    assert info.candidates[0].units == units and info.candidates[0].plausible
    assert all(c.min_m <= c.median_m <= c.max_m for c in info.candidates)
    assert info.median_m == pytest.approx(float(np.median(metres[metres > 0])), rel=0.02)


def test_auto_says_why_the_other_readings_lose() -> None:
    _, info = decode_depth(_png(np.rint(_room_m() * 10000).astype(np.uint16)), "d.png")
    assert info.units == "tenth_mm16"
    assert {c.units for c in info.candidates} == {"mm16", "tenth_mm16", "eighth_mm16", "sunrgbd"}
    mm16 = next(c for c in info.candidates if c.units == "mm16")
    assert not mm16.plausible and "too far for an indoor scene" in mm16.why  # 8 to 46 m
    eighth = next(c for c in info.candidates if c.units == "eighth_mm16")
    assert eighth.plausible and eighth.score < info.candidates[0].score and "3-bit shift" in eighth.why
    assert "other readings fit worse" in info.why


def test_sunrgbd_and_eighth_mm_agree_below_8m_and_are_merged() -> None:
    mm = np.rint(_room_m() * 1000).astype(np.uint16)
    _, info = decode_depth(_png(_sunrgbd_encode(mm)), "d.png")
    assert info.units == "sunrgbd" and "eighth_mm16" not in {c.units for c in info.candidates}
    assert DEPTH_UNITS_LABEL["eighth_mm16"] in info.candidates[0].why  # says the two give the same depths
    tenth = next(c for c in info.candidates if c.units == "tenth_mm16")
    assert tenth.plausible and tenth.score <= 0.5  # in range, but the values carry a 3-bit shift
    explicit, info2 = decode_depth(_png(_sunrgbd_encode(mm)), "d.png", units="eighth_mm16")
    np.testing.assert_allclose(explicit, mm / 1000.0, rtol=1e-6)
    assert not info2.detected and info2.plausible


def test_two_equally_plausible_readings_are_flagged() -> None:
    raw = RNG.integers(2500, 9000, size=(48, 64)).astype(np.uint16)  # 2.5-9 m as mm, 0.25-0.9 m as 0.1 mm
    depth, info = decode_depth(_png(raw), "d.png")
    assert info.ambiguous and info.plausible and info.needs_choice
    assert info.units == "mm16"  # the more common one first, but flagged
    np.testing.assert_allclose(depth, raw / 1000.0, rtol=1e-6)
    plausible = [c.units for c in info.candidates if c.plausible and c.score > 0.8]
    assert plausible == ["mm16", "tenth_mm16"]
    assert info.warning is not None and "can be read in 2 ways" in info.warning
    assert DEPTH_UNITS_LABEL["mm16"] in info.warning and DEPTH_UNITS_LABEL["tenth_mm16"] in info.warning
    assert not any(k in info.warning for k in _KEYS)
    assert "could as well be" in info.why


def test_no_plausible_reading_is_flagged() -> None:
    raw = RNG.integers(60000, 65535, size=(48, 64)).astype(np.uint16)
    depth, info = decode_depth(_png(raw), "d.png")
    assert info.ambiguous and not info.plausible and info.needs_choice
    assert not any(c.plausible for c in info.candidates)
    assert info.warning is not None and "No known encoding" in info.warning
    assert not any(k in info.warning for k in _KEYS)
    mask = np.ones((8, 8), np.uint8)  # a 0/1 mask uploaded as depth: 4 cm everywhere
    _, info = decode_depth(_png(mask), "d.png")
    assert info.units == "u8_nyu" and info.ambiguous and not info.plausible
    assert "No known encoding" in (info.warning or "")
    assert any("wrong units" in n for n in info.notes) and "wrong units" in (info.warning or "")


@pytest.mark.parametrize(
    ("lo", "hi", "dtype"),
    [(1, 255, np.uint8), (1, 255, np.uint16), (200, 5000, np.uint16), (2000, 40000, np.uint16),
     (30000, 65535, np.uint16), (60000, 65535, np.uint16), (1, 65535, np.uint16), (1, 70000, np.int32)],
)
def test_tens_of_metres_are_never_passed_on_silently(lo: int, hi: int, dtype: type) -> None:
    raw = RNG.integers(lo, hi, size=(24, 32), endpoint=True).astype(dtype)
    data, name = (_npy(raw), "d.npy") if dtype == np.int32 else (_png(raw), "d.png")
    for units in ("auto", "mm16", "tenth_mm16", "sunrgbd") if dtype == np.uint16 else ("auto",):
        depth, info = decode_depth(data, name, units=units)
        if float(depth.max()) > 20.0:
            assert not info.plausible and info.needs_choice, (lo, hi, units)
            assert info.warning is not None and "beyond 20 m" in info.warning
        if info.plausible and not info.ambiguous:
            assert info.warning is None and info.max_m <= 20.0


def test_65_m_no_reading_codes_are_flagged() -> None:
    mm = np.rint(_room_m() * 1000).astype(np.uint16)
    mm[::10, ::10] = 65535  # some sensors write 65535 where they have no reading
    depth, info = decode_depth(_png(mm), "d.png")
    assert info.units == "mm16" and not info.ambiguous  # the units are clear ...
    assert not info.plausible and info.needs_choice  # ... but 65.5 m depths are not handed on quietly
    assert info.max_m == pytest.approx(65.535) and "65.5 m" in (info.warning or "")
    assert "beyond 20 m" in (info.warning or "")


def test_16bit_values_read_with_8bit_scaling_are_flagged() -> None:
    mm = np.rint(_room_m() * 1000).astype(np.uint16)
    with pytest.raises(FusionError, match="8-bit"):
        decode_depth(_png(mm), "d.png", units="u8_nyu")
    depth, info = decode_depth(_png(mm), "d.png", scale_m=1 / 25.5)  # 8-bit NYU scaling on millimetres
    assert info.units == "scale" and info.max_m > 100.0
    assert not info.plausible and info.warning is not None
    assert "not a plausible indoor range" in info.warning and "beyond 20 m" in info.warning
    assert DEPTH_UNITS_LABEL["mm16"] in info.warning  # what auto-detection would have read


def test_explicit_metres_per_unit_is_honoured() -> None:
    tenth = np.rint(_room_m() * 10000).astype(np.uint16)
    for kw in ({"scale_m": 0.0001}, {"units": "scale", "scale_m": 1e-4}):
        depth, info = decode_depth(_png(tenth), "d.png", **kw)  # type: ignore[arg-type]
        np.testing.assert_allclose(depth, tenth * 1e-4, rtol=1e-6)
        assert info.units == "scale" and not info.detected and info.scale_m == pytest.approx(1e-4)
        assert info.plausible and info.warning is None and "0.0001 m per stored unit" in info.why
    u8 = RNG.integers(1, 256, size=(12, 16), dtype=np.uint8)
    depth, _ = decode_depth(_png(u8), "d.png", scale_m=0.02)  # any integer image, any scale
    np.testing.assert_allclose(depth, u8 * 0.02, rtol=1e-6)
    metres = RNG.uniform(0.5, 5.0, size=(12, 16)).astype(np.float32)
    depth, _ = decode_depth(_npy(metres * 4), "d.npy", scale_m=0.25)  # quarter metres in a float array
    np.testing.assert_allclose(depth, metres, rtol=1e-6)
    depth, info = decode_depth(_npy(tenth.astype(np.int64)), "d.npy", units="scale", scale_m=np.float32(1e-4))
    np.testing.assert_allclose(depth, tenth * 1e-4, rtol=1e-6)
    _, info = decode_depth(_png(u8), "d.png")
    assert info.scale_m == pytest.approx(1 / 25.5)  # linear encodings report their scale too


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"units": "scale"}, "metres per unit"), ({"scale_m": 0.0}, "positive"), ({"scale_m": -0.001}, "positive"),
     ({"scale_m": float("nan")}, "positive"), ({"scale_m": float("inf")}, "positive"),
     ({"scale_m": "0.001"}, "a number"), ({"scale_m": True}, "a number"), ({"scale_m": 50.0}, "more than"),
     ({"units": "mm16", "scale_m": 0.001}, "custom units")],
    ids=["missing", "zero", "negative", "nan", "inf", "string", "bool", "too-large", "with-named-units"],
)
def test_bad_scales_are_clean_errors(kw: dict, match: str) -> None:
    with pytest.raises(FusionError, match=match):
        decode_depth(_png(_mm()), "d.png", **kw)


@pytest.mark.parametrize(
    ("data", "name", "units"),
    [(_png(np.zeros((8, 8), np.uint8)), "d.png", "auto"), (_png(np.zeros((8, 8), np.uint16)), "d.png", "mm16"),
     (_png(np.zeros((8, 8, 3), np.uint8)), "d.png", "auto"), (_npy(np.zeros((8, 8), np.float64)), "d.npy", "m_npy"),
     (_png(np.zeros((8, 8), np.uint8)), "d.png", "mm16")],
    ids=["black-8bit", "black-16bit", "black-rgb", "zero-npy", "black-8bit-any-units"],
)
def test_all_black_depth_is_its_own_error(data: bytes, name: str, units: str) -> None:
    with pytest.raises(EmptyDepthError, match="every pixel is 0") as e:
        decode_depth(data, name, units=units)
    assert isinstance(e.value, FusionError)  # callers that only know FusionError still catch it


# --- size matching: another aspect ratio ---------------------------------------------------------------------


def test_aspects_differ() -> None:
    assert aspects_differ((96, 96), (96, 128, 3)) and aspects_differ((424, 512), (1080, 1920))
    assert not aspects_differ((48, 64), (96, 128)) and not aspects_differ((48, 64), (48, 65))
    with pytest.raises(FusionError):
        aspects_differ((0, 4), (4, 4))


def test_match_other_aspect_crop_cuts_the_centre() -> None:
    rows = np.repeat(np.arange(1, 97, dtype=np.float32)[:, None], 96, axis=1)  # value = row + 1
    out, note = match_depth_to_rgb(rows, (96, 128, 3), fit="crop")
    assert out.shape == (96, 128) and note is not None
    assert out.min() == 13 and out.max() == 84  # rows 12..83: the centre 72 of 96
    assert "96x72" in note and "cut out" in note and "the depth image" in note and "the colour image" in note
    cols = np.repeat(np.arange(1, 129, dtype=np.float32)[None, :], 48, axis=0)  # a wider depth image
    out, note = match_depth_to_rgb(cols, (96, 128), fit="crop")
    assert out.shape == (96, 128) and out.min() == 33 and out.max() == 96  # columns 32..95


def test_match_other_aspect_resize_stretches_everything() -> None:
    rows = np.repeat(np.arange(1, 97, dtype=np.float32)[:, None], 96, axis=1)
    rows[0, 0] = 0.0  # a hole stays a hole, no blending
    out, note = match_depth_to_rgb(rows, (96, 128, 3), fit="resize")
    assert out.shape == (96, 128) and note is not None and "stretched" in note
    assert out[0, 0] == 0 and out.max() == 96 and set(np.unique(out)) <= set(np.unique(rows))
    same, note2 = match_depth_to_rgb(rows[:48, :64], (96, 128), fit="crop")  # same aspect: plain resize
    assert same.shape == (96, 128) and "resized" in (note2 or "")
    with pytest.raises(FusionError, match="fit"):
        match_depth_to_rgb(rows, (96, 128), fit="squash")
