"""Decode user uploads (an RGB photo and a depth map) into the arrays the RGB-D models take.

Depth encodings understood (``units``):

* ``"u8_nyu"``  8-bit PNG, value = metres * 25.5 (the NYU Depth V2 folder layout; Silberman et al.,
  ECCV 2012; 255 = 10 m, 4 cm steps);
* ``"mm16"``    16-bit PNG in millimetres (Kinect / RealSense / most RGB-D tools);
* ``"sunrgbd"`` 16-bit PNG in millimetres with SUN RGB-D's bit rotation (Song, Lichtenberg & Xiao, CVPR
  2015): the stored value is the depth rotated left by 3 bits, decoded as
  ``v = (raw >> 3) | ((raw << 13) & 0xFFFF)``;
* ``"m_npy"``   ``.npy`` array in metres;  ``"mm_npy"`` ``.npy`` array in millimetres;
* ``"auto"``    pick one of the above from the file type, dtype and value range (say which in the notes).

Holes (pixels without a measurement) are zeros and stay 0. Every bad upload raises
:class:`fusion.types.FusionError` with a message meant for the person who uploaded it.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fusion.types import FusionError

__all__ = [
    "DEPTH_UNITS",
    "DEPTH_UNITS_HELP",
    "MAX_PIXELS",
    "DepthInfo",
    "decode_rgb",
    "decode_depth",
    "match_depth_to_rgb",
]

MAX_PIXELS = 40_000_000  # refuse larger uploads (a decompression bomb or a panorama the models cannot use)

# Choice -> help text; the app shows these as the options' tooltips.
DEPTH_UNITS_HELP: dict[str, str] = {
    "auto": "Guess the encoding from the file type, bit depth and value range.",
    "u8_nyu": "8-bit PNG as in NYU Depth V2: value = metres x 25.5 (255 = 10 m).",
    "mm16": "16-bit PNG in millimetres (Kinect, RealSense, most RGB-D tools).",
    "sunrgbd": "16-bit PNG from SUN RGB-D: millimetres with the data set's 3-bit rotation.",
    "m_npy": ".npy array of depths in metres.",
    "mm_npy": ".npy array of depths in millimetres.",
}
DEPTH_UNITS: tuple[str, ...] = tuple(DEPTH_UNITS_HELP)

_NPY_MAGIC = b"\x93NUMPY"
_ASPECT_TOL = 0.02


@dataclass
class DepthInfo:
    """What :func:`decode_depth` found out about an uploaded depth map."""

    units: str  # the encoding used to decode it (one of DEPTH_UNITS, never "auto")
    detected: bool  # True when the encoding was chosen automatically
    hole_fraction: float  # share of pixels without a measurement (0)
    min_m: float  # smallest measured depth in metres (holes excluded)
    max_m: float  # largest depth in metres
    notes: list[str] = field(default_factory=list)  # human-readable remarks (how it was detected, odd ranges)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _check_bytes(data: object, what: str) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise FusionError(f"{what}: expected file bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise FusionError(f"{what}: the file is empty")
    return data


def _open_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Open and fully decode an image, with the size checked before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise FusionError(f"{what}: not an image file (or a format Pillow cannot read)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FusionError(f"{what}: the image is too large to decode safely") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise FusionError(f"{what}: the file is corrupt or truncated ({e})") from e
    w, h = im.size
    if w < 1 or h < 1:
        raise FusionError(f"{what}: the image has no pixels")
    if w * h > max_pixels:
        raise FusionError(f"{what}: {w}x{h} = {w * h / 1e6:.1f} MP is larger than the {max_pixels / 1e6:.1f} MP limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning) as e:
        raise FusionError(f"{what}: the file is corrupt or truncated ({e})") from e
    return im


def _squeeze_2d(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2:
        raise FusionError(f"{what}: expected a 2-D depth map (H, W), got an array of shape {tuple(arr.shape)}")
    if min(arr.shape) < 1:
        raise FusionError(f"{what}: the depth map has no pixels")
    return arr


# ---------------------------------------------------------------------------
# RGB
# ---------------------------------------------------------------------------


def decode_rgb(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an uploaded photo to uint8 (H, W, 3) RGB.

    EXIF orientation is applied; greyscale is replicated to 3 channels; alpha is dropped; an animated
    image gives its first frame. Raises :class:`FusionError` for empty, non-image, corrupt or too-large
    files, and for 16-bit single-channel images (almost always a depth map uploaded as the photo).
    """
    data = _check_bytes(data, "RGB image")
    if data.startswith(_NPY_MAGIC):
        raise FusionError("RGB image: this is a .npy array, not an image; upload a JPEG or PNG photo")
    im = _open_image(data, "RGB image", max_pixels)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise FusionError(
            f"RGB image: a {im.mode} single-channel image (16-bit or float) looks like a depth map; "
            "upload it as the depth input"
        )
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a malformed EXIF block must not stop the photo from loading  # noqa: BLE001
        pass
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)  # transparent areas become white, not black
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


# ---------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------


def _sunrgbd_decode(raw: np.ndarray) -> np.ndarray:
    r = raw.astype(np.uint32)
    return ((r >> 3) | ((r << 13) & 0xFFFF)).astype(np.float32)  # millimetres


def _looks_sunrgbd(raw: np.ndarray) -> tuple[bool, str]:
    """SUN RGB-D stores mm rotated left by 3 bits: for depths < 8.192 m the low 3 bits are 0 and the
    stored numbers are 8x the millimetres."""
    nz = raw[raw > 0]
    if nz.size < 16:
        return False, "too few non-zero pixels to test for SUN RGB-D encoding"
    low_zero = float(np.mean((nz & 7) == 0))
    median = float(np.median(nz))
    if low_zero > 0.98 and median >= 4000:
        return True, (
            f"{low_zero:.0%} of values have their low 3 bits zero and the median raw value is {median:.0f}: "
            "SUN RGB-D's bit-rotated millimetres"
        )
    return False, f"16-bit values read as millimetres (median {median / 1000:.2f} m)"


def _read_npy(data: bytes, max_pixels: int) -> np.ndarray:
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buf)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(buf)
    except (ValueError, OSError, SyntaxError) as e:
        raise FusionError(f"depth .npy: the file is corrupt or truncated (header: {e})") from e
    if dtype.hasobject:
        raise FusionError("depth .npy: object arrays (pickles) are not accepted; save a numeric array")
    if int(np.prod(shape, dtype=np.int64)) > max_pixels:
        raise FusionError(f"depth .npy: shape {tuple(shape)} is larger than the {max_pixels / 1e6:.1f} MP limit")
    buf.seek(0)
    try:
        arr = np.load(buf, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FusionError(f"depth .npy: the file is corrupt or truncated ({e})") from e
    if not isinstance(arr, np.ndarray):  # pragma: no cover - np.load of .npy bytes gives an array
        raise FusionError("depth .npy: expected a single array")
    if arr.dtype.kind not in "biuf":
        raise FusionError(f"depth .npy: expected a numeric array, got dtype {arr.dtype}")
    return arr


def _image_depth_array(data: bytes, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    im = _open_image(data, "depth image", max_pixels)
    notes: list[str] = []
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.uint16), notes
    if mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise FusionError("depth image: 32-bit integer values outside 0..65535 are not a known depth encoding")
        return arr.astype(np.uint16), notes
    if mode == "F":
        return np.asarray(im).astype(np.float32), notes
    if mode in ("L", "P"):
        if mode == "P":
            raise FusionError("depth image: a palette (colour-mapped) PNG is a visualisation, not raw depth")
        return np.asarray(im), notes
    if mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(im.convert("RGB"))
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            notes.append("3-channel grey image: used one channel as 8-bit depth")
            return np.ascontiguousarray(arr[..., 0]), notes
        raise FusionError(
            "depth image: a colour image (perhaps a colour-mapped depth visualisation) is not raw depth; "
            "upload the 8/16-bit single-channel PNG or a .npy"
        )
    raise FusionError(f"depth image: unsupported image mode {mode!r}")


def _auto_units(arr: np.ndarray, is_npy: bool) -> tuple[str, str]:
    """Return (units, why) for raw values ``arr``."""
    if arr.dtype == np.uint8:
        return "u8_nyu", "8-bit values read as NYU depth (value / 25.5 m)"
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        top = float(finite.max()) if finite.size else 0.0
        if top <= 25.0:
            return "m_npy", f"float values up to {top:.2f}: read as metres"
        return "mm_npy", f"float values up to {top:.0f}: too large for metres, read as millimetres"
    if not is_npy and arr.dtype == np.uint16:
        sun, why = _looks_sunrgbd(arr)
        return ("sunrgbd" if sun else "mm16"), why
    if is_npy and arr.dtype == np.uint16:
        sun, why = _looks_sunrgbd(arr)
        if sun:
            return "sunrgbd", why
    return "mm_npy", f"integer ({arr.dtype}) values read as millimetres"


def _apply_units(arr: np.ndarray, units: str, is_npy: bool) -> np.ndarray:
    if units == "u8_nyu":
        if arr.dtype != np.uint8:
            raise FusionError(f"depth: units 'u8_nyu' need an 8-bit depth image, this file holds {arr.dtype} values")
        return arr.astype(np.float32) / np.float32(25.5)
    if units in ("mm16", "sunrgbd"):
        if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2 or arr.dtype == np.uint8:
            raise FusionError(f"depth: units {units!r} need a 16-bit depth image, this file holds {arr.dtype} values")
        if arr.min() < 0:
            raise FusionError("depth: negative values are not depths")
        raw = arr.astype(np.uint16)
        mm = _sunrgbd_decode(raw) if units == "sunrgbd" else raw.astype(np.float32)
        return mm / np.float32(1000.0)
    if units in ("m_npy", "mm_npy"):
        if not is_npy and arr.dtype.kind != "f":
            raise FusionError(f"depth: units {units!r} are for .npy (or float) arrays; this file is an integer image")
        out = arr.astype(np.float32)
        return out / np.float32(1000.0) if units == "mm_npy" else out
    raise FusionError(f"depth: unknown units {units!r}; choose one of {DEPTH_UNITS}")


def decode_depth(
    data: bytes, filename: str, *, units: str = "auto", max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, DepthInfo]:
    """Decode an uploaded depth map to float32 (H, W) metres, holes = 0, plus a :class:`DepthInfo`.

    ``filename`` is used for messages and to expect a ``.npy``; the content decides the actual format.
    ``units`` is one of :data:`DEPTH_UNITS` ("auto" detects). ``.npy`` files are read with
    ``allow_pickle=False``. Raises :class:`FusionError` for empty/non-image/corrupt/too-large files,
    arrays that are not 2-D, NaN/inf or negative values, a depth map with no valid pixel, and units that
    do not fit the file.
    """
    data = _check_bytes(data, "depth")
    if units not in DEPTH_UNITS:
        raise FusionError(f"depth: unknown units {units!r}; choose one of {DEPTH_UNITS}")
    name = str(filename or "depth")
    is_npy = data.startswith(_NPY_MAGIC)
    notes: list[str] = []
    if name.lower().endswith(".npy") and not is_npy:
        raise FusionError(f"{name}: named .npy but not a NumPy array file")
    if is_npy:
        arr = _squeeze_2d(_read_npy(data, max_pixels), name)
        if arr.dtype == np.bool_:
            raise FusionError(f"{name}: a boolean mask is not a depth map")
    else:
        arr, img_notes = _image_depth_array(data, max_pixels)
        arr = _squeeze_2d(arr, name)
        notes += img_notes

    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise FusionError(
            f"{name}: {bad} pixels are NaN or infinite; store holes as 0 (e.g. np.nan_to_num(d, nan=0.0))"
        )
    if arr.dtype.kind in "if" and arr.size and float(arr.min()) < 0:
        raise FusionError(f"{name}: negative values ({float(arr.min()):.3g}) are not depths")

    detected = units == "auto"
    if detected:
        units, why = _auto_units(arr, is_npy)
        notes.append(f"auto-detected '{units}': {why}")
    depth = np.ascontiguousarray(_apply_units(arr, units, is_npy), dtype=np.float32)

    valid = depth > 0
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        raise FusionError(f"{name}: every pixel is 0 (no depth measured); nothing to use")
    hole_fraction = 1.0 - n_valid / depth.size
    min_m = float(depth[valid].min())
    max_m = float(depth.max())
    if hole_fraction > 0.3:
        notes.append(f"{hole_fraction:.0%} of pixels are holes (0); models trained on hole-filled NYUv2 depth may suffer")
    if max_m > 20.0:
        notes.append(f"depths up to {max_m:.1f} m: wrong units? Indoor scenes rarely exceed 10 m")
    elif max_m > 10.0:
        notes.append(f"depths up to {max_m:.1f} m exceed NYUv2's 10 m range")
    if max_m < 0.05:
        notes.append(f"all depths below {max_m * 100:.1f} cm: wrong units?")
    info = DepthInfo(
        units=units, detected=detected, hole_fraction=float(hole_fraction), min_m=min_m, max_m=max_m, notes=notes
    )
    return depth, info


def match_depth_to_rgb(depth: np.ndarray, rgb_shape: tuple[int, ...]) -> tuple[np.ndarray, str | None]:
    """Resize ``depth`` (H, W) to the RGB's (H, W) with nearest neighbour (no blending across edges/holes).

    Same size: returned unchanged with note None. Same aspect ratio within 2%: resized, with a note saying
    so. Otherwise :class:`FusionError` (the two files are probably not a pair).
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise FusionError(f"depth must be 2-D (H, W), got shape {tuple(depth.shape)}")
    if len(rgb_shape) < 2:
        raise FusionError(f"rgb_shape must be (H, W) or (H, W, 3), got {tuple(rgb_shape)}")
    th, tw = int(rgb_shape[0]), int(rgb_shape[1])
    dh, dw = depth.shape
    if min(th, tw, dh, dw) < 1:
        raise FusionError("depth and RGB must both have pixels")
    if (dh, dw) == (th, tw):
        return depth, None
    ratio = (dw / dh) / (tw / th)
    if abs(ratio - 1.0) > _ASPECT_TOL:
        raise FusionError(
            f"depth {dw}x{dh} and RGB {tw}x{th} have different aspect ratios "
            f"({dw / dh:.3f} vs {tw / th:.3f}); are they the same scene and camera?"
        )
    rows = np.clip(((np.arange(th) + 0.5) * (dh / th)).astype(np.int64), 0, dh - 1)
    cols = np.clip(((np.arange(tw) + 0.5) * (dw / tw)).astype(np.int64), 0, dw - 1)
    out = np.ascontiguousarray(depth[rows[:, None], cols])
    return out, f"depth {dw}x{dh} resized to the RGB's {tw}x{th} (nearest neighbour)"
