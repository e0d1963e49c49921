"""Decode user uploads (an RGB photo and a depth map) into the arrays the RGB-D models take.

Depth encodings understood (``units``; :data:`DEPTH_UNITS_LABEL` gives each a label for people):

* ``"u8_nyu"``      8-bit values, value = metres * 25.5 (the NYU Depth V2 folder layout; Silberman et al.,
  ECCV 2012; 255 = 10 m, 4 cm steps); also accepted from a 16-bit file whose values all fit 0..255;
* ``"mm16"``        16-bit PNG in millimetres (Kinect / RealSense / most RGB-D tools);
* ``"tenth_mm16"``  16-bit PNG in tenths of a millimetre (0.1 mm steps, up to 6.55 m);
* ``"eighth_mm16"`` 16-bit PNG in eighths of a millimetre: millimetres shifted left by 3 bits, as the
  Kinect SDK stores them (the low 3 bits hold a player index or 0);
* ``"sunrgbd"``     16-bit PNG in millimetres with SUN RGB-D's bit rotation (Song, Lichtenberg & Xiao, CVPR
  2015): the stored value is the depth rotated left by 3 bits, decoded as
  ``v = (raw >> 3) | ((raw << 13) & 0xFFFF)``; identical to ``eighth_mm16`` below 8.192 m;
* ``"m_npy"``       ``.npy`` (or float image) in metres;  ``"mm_npy"`` ``.npy`` in millimetres;
* ``"scale"``       any numeric depth image or array times an explicit ``scale_m`` (metres per stored unit);
* ``"auto"``        weigh every encoding that fits the file and pick the one whose decoded range looks like
  an indoor scene (most valid pixels between 0.2 and 10 m, median 0.5 to 6 m), saying which and why.

Auto-detection never guesses silently: when no encoding gives a plausible indoor range, or two that give
different depths are about equally plausible, :class:`DepthInfo` says so (``ambiguous``, ``plausible``,
``warning``) and lists every reading it weighed (``candidates``) so that the app can offer the choice.
Depths beyond 20 m are always flagged (``plausible`` False and a ``warning``), never passed on quietly.

Holes (pixels without a measurement) are zeros and stay 0. Every bad upload raises
:class:`fusion.types.FusionError` with a message meant for the person who uploaded it; a depth map
without a single valid pixel raises its subclass :class:`EmptyDepthError`, so that an app can go on
without depth instead.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fusion.types import FusionError

__all__ = [
    "DEPTH_FITS",
    "DEPTH_UNITS",
    "DEPTH_UNITS_HELP",
    "DEPTH_UNITS_LABEL",
    "MAX_PIXELS",
    "DepthCandidate",
    "DepthInfo",
    "EmptyDepthError",
    "aspects_differ",
    "decode_rgb",
    "decode_depth",
    "match_depth_to_rgb",
]

MAX_PIXELS = 40_000_000  # refuse larger uploads (a decompression bomb or a panorama the models cannot use)

# Choice -> help text; the app shows these as the options' tooltips.
DEPTH_UNITS_HELP: dict[str, str] = {
    "auto": "Weigh the known encodings and pick the one that gives a plausible indoor range (0.2-10 m).",
    "u8_nyu": "8-bit PNG as in NYU Depth V2: value = metres x 25.5 (255 = 10 m).",
    "mm16": "16-bit PNG in millimetres (Kinect, RealSense, most RGB-D tools).",
    "tenth_mm16": "16-bit PNG in tenths of a millimetre (value 10000 = 1 m).",
    "eighth_mm16": "16-bit PNG in eighths of a millimetre: millimetres shifted left by 3 bits (Kinect SDK style).",
    "sunrgbd": "16-bit PNG from SUN RGB-D: millimetres with the data set's 3-bit rotation.",
    "m_npy": ".npy array of depths in metres.",
    "mm_npy": ".npy array of depths in millimetres.",
    "scale": "Any depth image or array: stored value x the metres per unit you enter (0.001 for millimetres).",
}
DEPTH_UNITS: tuple[str, ...] = tuple(DEPTH_UNITS_HELP)
# Choice -> short label for people (messages never show the key alone).
DEPTH_UNITS_LABEL: dict[str, str] = {
    "auto": "auto-detect",
    "u8_nyu": "8-bit NYU (255 ≈ 10 m)",
    "mm16": "16-bit millimetres",
    "tenth_mm16": "16-bit in 0.1 mm steps",
    "eighth_mm16": "16-bit in 1/8 mm steps (Kinect-style 3-bit shift)",
    "sunrgbd": "16-bit SUN RGB-D (bit-rotated millimetres)",
    "m_npy": "array in metres",
    "mm_npy": "array in millimetres",
    "scale": "custom metres per unit",
}
# How a depth image whose aspect ratio differs from the colour image's is brought to the colour image's size.
DEPTH_FITS: dict[str, str] = {
    "crop": "cut the centre of the depth image to the colour image's shape, then scale it",
    "resize": "stretch the whole depth image to the colour image's size",
}

_NPY_MAGIC = b"\x93NUMPY"
_ASPECT_TOL = 0.02

# What "plausible indoors" means for a decoded depth map.
NEAR_M, FAR_M = 0.2, 10.0  # most valid pixels lie in this range ...
MOST_IN_RANGE = 0.85  # ... this share of them, at least
MEDIAN_LO_M, MEDIAN_HI_M = 0.5, 6.0  # and the median lies in this range
TOO_FAR_M = 20.0  # any pixel beyond this is flagged, whatever the encoding
_TIE = 0.8  # a runner-up scoring at least this share of the best is "about equally plausible"
_SAME_MEDIAN = 0.05  # readings whose medians differ by less than this (relative) give the same depths
# Share of valid pixels whose stored value is a multiple of 8: about 1/8 for a fine-grained unshifted encoding.
_SHIFT_EVIDENCE = 0.5  # at least this share marks a 3-bit shift (SUN RGB-D, Kinect-style 1/8 mm)
_NO_SHIFT = 0.25  # below this share, the values were not shifted
_SHIFTED = ("eighth_mm16", "sunrgbd")  # encodings that leave the low 3 bits zero (below 8.192 m)
_SCALE_MAX_M = 10.0  # largest metres-per-unit accepted


class EmptyDepthError(FusionError):
    """The depth map has no valid pixel (every value is 0): nothing to use, but the photo still is."""


@dataclass(frozen=True)
class DepthCandidate:
    """One way of reading the stored depth values, with the range it gives (holes excluded)."""

    units: str  # one of DEPTH_UNITS (never "auto")
    label: str  # the units for people, e.g. "8-bit NYU (255 ≈ 10 m)"
    why: str  # in plain words: the range this reading gives and whether it looks like an indoor scene
    min_m: float
    median_m: float
    max_m: float
    in_range: float  # share of valid pixels between NEAR_M and FAR_M
    plausible: bool  # most pixels in range and the median in MEDIAN_LO_M..MEDIAN_HI_M
    score: float  # 0..1, higher = more plausible (range, median and bit-pattern evidence)


@dataclass
class DepthInfo:
    """What :func:`decode_depth` found out about an uploaded depth map."""

    units: str  # the encoding used to decode it (one of DEPTH_UNITS, never "auto")
    detected: bool  # True when the encoding was chosen automatically
    hole_fraction: float  # share of pixels without a measurement (0)
    min_m: float  # smallest measured depth in metres (holes excluded)
    max_m: float  # largest depth in metres
    notes: list[str] = field(default_factory=list)  # human-readable remarks (how it was detected, odd ranges)
    median_m: float = 0.0  # median measured depth in metres
    why: str = ""  # in plain words: why these units (auto-detected) or that they were chosen
    plausible: bool = True  # the decoded range looks like an indoor scene and nothing lies beyond 20 m
    ambiguous: bool = False  # auto-detection could not decide: no plausible reading, or several equally so
    candidates: list[DepthCandidate] = field(default_factory=list)  # every reading weighed, most plausible first
    scale_m: float | None = None  # metres per stored unit for a linear encoding (None: SUN RGB-D's rotation)
    warning: str | None = None  # what needs the user's attention (ambiguity, implausible range), or None

    @property
    def label(self) -> str:
        """The units for people, e.g. "16-bit millimetres"."""
        return DEPTH_UNITS_LABEL.get(self.units, self.units)

    @property
    def needs_choice(self) -> bool:
        """True when a person should confirm the units before the depth is trusted."""
        return self.ambiguous or not self.plausible


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
    """Undo SUN RGB-D's 3-bit left rotation of 16-bit millimetres; returns float32 millimetres."""
    r = raw.astype(np.uint32)
    return ((r >> 3) | ((r << 13) & 0xFFFF)).astype(np.float32)  # millimetres


# Linear encodings: metres = stored value / divisor.
_DIVISOR: dict[str, float] = {
    "u8_nyu": 25.5, "mm16": 1000.0, "tenth_mm16": 10000.0, "eighth_mm16": 8000.0, "m_npy": 1.0, "mm_npy": 1000.0,
}
_SIXTEEN_BIT = ("mm16", "tenth_mm16", "eighth_mm16", "sunrgbd")
_SAMPLE = 1_000_000  # float data: range statistics on at most this many evenly spaced valid pixels


def _label(units: str) -> str:
    return DEPTH_UNITS_LABEL.get(units, units)


def _metres(x: float) -> str:
    """A depth for people: 3 significant figures, no exponent for the usual range."""
    return f"{x:.3g} m" if 0.001 <= x < 1000 else f"{x:.2e} m"


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



# --- weighing the encodings ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Values:
    """The valid (non-zero) stored values of a depth map, in a form cheap to decode many ways."""

    values: np.ndarray  # float64: distinct values (with ``counts``) or the values themselves (maybe sampled)
    counts: np.ndarray | None  # pixels per distinct value; None when ``values`` are pixels
    raw_min: float  # exact smallest and largest valid stored value
    raw_max: float


def _valid_values(arr: np.ndarray) -> _Values:
    """Histogram of the valid values for integers up to 16 bits (exact for every encoding); the valid
    values themselves (evenly subsampled above :data:`_SAMPLE`) otherwise."""
    if arr.dtype.kind in "iu" and int(arr.max()) <= 65535:
        counts = np.bincount(arr.ravel().astype(np.intp, copy=False), minlength=1)
        values = np.flatnonzero(counts)
        values = values[values > 0]
        return _Values(values.astype(np.float64), counts[values], float(values[0]), float(values[-1]))
    flat = arr.ravel()
    valid = flat[flat > 0]
    lo, hi = float(valid.min()), float(valid.max())
    if valid.size > _SAMPLE:
        valid = valid[:: int(math.ceil(valid.size / _SAMPLE))]
    return _Values(valid.astype(np.float64), None, lo, hi)


def _shift_evidence(vals: _Values) -> float | None:
    """Share of valid pixels whose stored value has its low 3 bits zero, or None when that says nothing
    (float data, or fewer than 16 distinct values)."""
    if vals.counts is None or vals.values.size < 16:
        return None
    low_zero = (vals.values.astype(np.int64) & 7) == 0
    return float(vals.counts[low_zero].sum() / vals.counts.sum())


def _decode_values(values: np.ndarray, units: str, scale_m: float | None) -> np.ndarray:
    """Stored values (float64) -> metres (float64) under ``units``."""
    if units == "sunrgbd":
        return _sunrgbd_decode(values.astype(np.uint16)).astype(np.float64) / 1000.0
    if units == "scale":
        return values * float(scale_m or 0.0)
    return values / _DIVISOR[units]


def _weighted_median(d: np.ndarray, counts: np.ndarray | None) -> float:
    if counts is None:
        return float(np.median(d))
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(counts[order])
    return float(d[order][int(np.searchsorted(cum, cum[-1] / 2.0))])


def _reading(units: str, vals: _Values, shift: float | None, scale_m: float | None = None
             ) -> tuple[DepthCandidate, np.ndarray]:
    """Decode the valid values one way and judge the range: (candidate, decoded values)."""
    d = _decode_values(vals.values, units, scale_m)
    w = vals.counts
    if w is None and units != "sunrgbd":  # linear, possibly sampled: the extremes from the exact raw ones
        lo, hi = sorted(float(x) for x in _decode_values(np.array([vals.raw_min, vals.raw_max]), units, scale_m))
    else:
        lo, hi = float(d.min()), float(d.max())
    median = _weighted_median(d, w)
    inside = (d >= NEAR_M) & (d <= FAR_M)
    in_range = float(w[inside].sum() / w.sum()) if w is not None else float(np.mean(inside))
    plausible = in_range >= MOST_IN_RANGE and MEDIAN_LO_M <= median <= MEDIAN_HI_M
    if median > MEDIAN_HI_M:
        median_fit = (MEDIAN_HI_M / median) ** 2
    elif median < MEDIAN_LO_M:
        median_fit = (median / MEDIAN_LO_M) ** 2
    else:
        median_fit = 1.0
    shape = f"{_metres(lo)} to {_metres(hi)}, median {_metres(median)}"
    if plausible:
        verdict = f"{in_range:.0%} of pixels between {NEAR_M:g} and {FAR_M:g} m, a plausible indoor range"
    elif median > MEDIAN_HI_M:
        verdict = f"a median of {_metres(median)} is too far for an indoor scene"
    elif median < MEDIAN_LO_M:
        verdict = f"a median of {_metres(median)} is too near for an indoor scene"
    else:
        verdict = f"only {in_range:.0%} of pixels between {NEAR_M:g} and {FAR_M:g} m"
    bits, bit_fit = "", 1.0
    if shift is not None and shift >= _SHIFT_EVIDENCE:
        if units in _SHIFTED:
            bits = f"; {shift:.0%} of the stored values are multiples of 8, as a 3-bit shift leaves them"
        else:
            bits, bit_fit = f"; but {shift:.0%} of the stored values are multiples of 8, the mark of a 3-bit shift", 0.5
    elif shift is not None and shift < _NO_SHIFT and units == "eighth_mm16":
        bits, bit_fit = f"; but only {shift:.0%} of the stored values are multiples of 8, unlike a 3-bit shift", 0.5
    cand = DepthCandidate(
        units=units, label=_label(units), why=f"read as {_label(units)}: {shape}; {verdict}{bits}",
        min_m=lo, median_m=median, max_m=hi, in_range=in_range, plausible=plausible,
        score=float(in_range * median_fit * bit_fit),
    )
    return cand, d


def _candidate_units(arr: np.ndarray, is_npy: bool) -> list[str]:
    """The encodings that can read ``arr``, most common first (ties go to the earlier one)."""
    if arr.dtype.kind == "f":
        return ["m_npy", "mm_npy"]
    if arr.dtype == np.uint8:
        return ["u8_nyu"]
    top = int(arr.max())
    units = ["u8_nyu"] if top <= 255 else []
    if top <= 65535:  # SUN RGB-D before 1/8 mm: the two agree below 8.192 m and SUN RGB-D also reads beyond
        return units + ["mm_npy" if is_npy else "mm16", "tenth_mm16", "sunrgbd", "eighth_mm16"]
    return units + ["mm_npy"]


def _weigh(arr: np.ndarray, is_npy: bool, vals: _Values, shift: float | None) -> list[DepthCandidate]:
    """Every reading of ``arr``, most plausible first; readings that decode to the same depths are merged."""
    kept: list[tuple[DepthCandidate, np.ndarray]] = []
    for units in _candidate_units(arr, is_npy):
        cand, d = _reading(units, vals, shift)
        twin = next((i for i, (_, e) in enumerate(kept) if e.shape == d.shape and np.allclose(e, d, rtol=1e-9)),
                    None)
        if twin is None:
            kept.append((cand, d))
        else:  # e.g. SUN RGB-D and 1/8 mm on depths below 8.192 m
            first = kept[twin][0]
            why = f"{first.why} (the same depths as {cand.label} for every pixel here)"
            kept[twin] = (replace(first, why=why), kept[twin][1])
    return sorted((c for c, _ in kept), key=lambda c: (c.plausible, c.score), reverse=True)


def _rivals(ranked: list[DepthCandidate]) -> list[DepthCandidate]:
    """Plausible readings that score about as well as the best one yet give clearly different depths."""
    best = ranked[0]
    return [c for c in ranked[1:] if c.plausible and c.score >= _TIE * best.score
            and abs(math.log(max(c.median_m, 1e-12) / max(best.median_m, 1e-12))) > math.log1p(_SAME_MEDIAN)]


def _auto_units(ranked: list[DepthCandidate]) -> tuple[DepthCandidate, bool, str]:
    """Pick from the ranked readings: (chosen, ambiguous, why in plain words).

    Ambiguous when no reading gives a plausible indoor range, or when another plausible reading scores
    about as well but gives different depths.
    """
    best = ranked[0]
    if not best.plausible:
        return best, True, f"no encoding gives a plausible indoor range; the closest is {best.why}"
    rivals = _rivals(ranked)
    if rivals:
        others = "; ".join(c.why for c in rivals)
        return best, True, f"{best.why}; but it could as well be {others}"
    rest = [c for c in ranked[1:] if c.units != best.units]
    why = best.why
    if rest:
        worse = "; ".join(f"{c.label}: median {_metres(c.median_m)}" for c in rest)
        why += f"; other readings fit worse ({worse})"
    return best, False, why


def _warning(info: DepthInfo, chosen: DepthCandidate, ranked: list[DepthCandidate], far_note: str | None,
             near_note: str | None) -> str | None:
    """The plain-words warning for the person who uploaded the depth image, or None when all is well."""
    parts: list[str] = []
    if info.detected and info.ambiguous and chosen.plausible:
        ways = [chosen, *_rivals(ranked)]
        parts.append(
            f"The depth image can be read in {len(ways)} ways that all look like a room: "
            + "; ".join(f"{c.label} gives {_metres(c.min_m)} to {_metres(c.max_m)} (median {_metres(c.median_m)})"
                        for c in ways)
            + ". Pick the one your camera writes."
        )
    elif info.detected and not chosen.plausible:
        parts.append(
            f"No known encoding gives the depth image a plausible indoor range (most pixels between {NEAR_M:g} and "
            f"{FAR_M:g} m, median {MEDIAN_LO_M:g} to {MEDIAN_HI_M:g} m). The closest, {chosen.label}, gives "
            f"{_metres(chosen.min_m)} to {_metres(chosen.max_m)} (median {_metres(chosen.median_m)}). Check that it "
            "is a depth map, or give its metres per unit."
        )
    elif not info.detected and not chosen.plausible:
        alt = next((c for c in ranked if c.plausible and c.units != info.units), None)
        hint = (f"; auto-detect would read it as {alt.label} ({_metres(alt.min_m)} to {_metres(alt.max_m)}, median "
                f"{_metres(alt.median_m)})") if alt else ""
        parts.append(
            f"Read as {info.label}, the depth image spans {_metres(chosen.min_m)} to {_metres(chosen.max_m)} "
            f"(median {_metres(chosen.median_m)}): not a plausible indoor range{hint}."
        )
    parts += [n for n in (far_note, near_note) if n]
    return " ".join(parts) or None


def _apply_units(arr: np.ndarray, units: str, is_npy: bool, scale_m: float | None = None) -> np.ndarray:
    """Stored values -> float32 metres; :class:`FusionError` when ``units`` cannot read this file."""
    if units == "u8_nyu":
        if arr.dtype.kind not in "iu" or int(arr.max()) > 255:
            what = f"values up to {int(arr.max())}" if arr.dtype.kind in "iu" else f"{arr.dtype} values"
            raise FusionError(f"depth: units 'u8_nyu' ({_label(units)}) need an 8-bit depth image, "
                              f"this file holds {what}")
        return arr.astype(np.float32) / np.float32(25.5)
    if units in _SIXTEEN_BIT:
        if arr.dtype.kind not in "iu" or arr.dtype == np.uint8 or int(arr.max()) > 65535:
            raise FusionError(f"depth: units {units!r} ({_label(units)}) need a 16-bit depth image, "
                              f"this file holds {arr.dtype} values")
        if arr.min() < 0:
            raise FusionError("depth: negative values are not depths")
        raw = arr.astype(np.uint16)
        mm = _sunrgbd_decode(raw) if units == "sunrgbd" else raw.astype(np.float32)
        return mm / np.float32(_DIVISOR.get(units, 1000.0))  # SUN RGB-D: millimetres once un-rotated
    if units in ("m_npy", "mm_npy"):
        if not is_npy and arr.dtype.kind != "f":
            raise FusionError(f"depth: units {units!r} ({_label(units)}) are for .npy (or float) arrays; "
                              "this file is an integer image")
        out = arr.astype(np.float32)
        return out / np.float32(1000.0) if units == "mm_npy" else out
    if units == "scale":
        if scale_m is None:  # pragma: no cover - decode_depth checks this first
            raise FusionError("depth: a custom scale needs the metres per unit")
        return (arr.astype(np.float64) * scale_m).astype(np.float32)
    raise FusionError(f"depth: unknown units {units!r}; choose one of {DEPTH_UNITS}")


def _check_scale(scale_m: object, units: str) -> float | None:
    """The metres per unit as a positive float (None when not given); :class:`FusionError` when unusable."""
    if scale_m is None:
        if units == "scale":
            raise FusionError("depth: custom units need the metres per unit (for example 0.001 for millimetres)")
        return None
    if units not in ("auto", "scale"):
        raise FusionError(f"depth: a metres-per-unit scale goes with custom units, not with {_label(units)}")
    if isinstance(scale_m, bool) or not isinstance(scale_m, (int, float, np.integer, np.floating)):
        raise FusionError(f"depth: the metres per unit must be a number, got {type(scale_m).__name__}")
    s = float(scale_m)
    if not math.isfinite(s) or s <= 0.0:
        raise FusionError(f"depth: the metres per unit must be a positive number, got {scale_m!r}")
    if s > _SCALE_MAX_M:
        raise FusionError(f"depth: {s:g} m per stored unit is more than {_SCALE_MAX_M:g} m; "
                          "for millimetres enter 0.001")
    return s


def decode_depth(
    data: bytes, filename: str, *, units: str = "auto", scale_m: float | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, DepthInfo]:
    """Decode an uploaded depth map to float32 (H, W) metres, holes = 0, plus a :class:`DepthInfo`.

    ``filename`` is used for messages and to expect a ``.npy``; the content decides the actual format.
    ``units`` is one of :data:`DEPTH_UNITS` ("auto" weighs every encoding that fits the file; see the
    module docstring). ``scale_m`` (metres per stored unit, e.g. 0.001) reads any numeric depth map with
    that scale; it goes with ``units="scale"`` or ``"auto"``. ``.npy`` files are read with
    ``allow_pickle=False``.

    The result always says how plausible the decoded range is: ``info.plausible`` is False when it does
    not look like an indoor scene or any pixel lies beyond 20 m; ``info.ambiguous`` is True when
    auto-detection found no plausible encoding or several about equally plausible ones;
    ``info.candidates`` lists every reading weighed and ``info.warning`` says in plain words what needs
    attention.

    Raises :class:`FusionError` for empty/non-image/corrupt/too-large files, arrays that are not 2-D,
    NaN/inf or negative values, units or scales that do not fit the file, and :class:`EmptyDepthError`
    (a FusionError) for a depth map with no valid pixel.
    """
    data = _check_bytes(data, "depth")
    if units not in DEPTH_UNITS:
        raise FusionError(f"depth: unknown units {units!r}; choose one of {DEPTH_UNITS}")
    scale = _check_scale(scale_m, units)
    if scale is not None:
        units = "scale"
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
    if not np.any(arr > 0):
        raise EmptyDepthError(f"{name}: every pixel is 0 (an all-black depth image: no depth measured); "
                              "nothing to use")

    vals = _valid_values(arr)
    shift = _shift_evidence(vals)
    ranked = _weigh(arr, is_npy, vals, shift)
    detected = units == "auto"
    ambiguous = False
    if detected:
        chosen, ambiguous, why = _auto_units(ranked)
        units = chosen.units
        notes.append(f"auto-detected {chosen.label}: {why}")
    depth = np.ascontiguousarray(_apply_units(arr, units, is_npy, scale), dtype=np.float32)
    if not detected:
        chosen = next((c for c in ranked if c.units == units), None) or _reading(units, vals, shift, scale)[0]
        why = f"chosen: {scale:g} m per stored unit" if units == "scale" else f"chosen: {chosen.label}"

    valid = depth > 0
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        raise EmptyDepthError(f"{name}: every pixel decodes to 0 m with {_label(units)}; nothing to use")
    hole_fraction = 1.0 - n_valid / depth.size
    min_m = float(depth[valid].min())
    max_m = float(depth.max())
    far_note = near_note = None
    if hole_fraction > 0.3:
        notes.append(f"{hole_fraction:.0%} of pixels are holes (0); models trained on hole-filled NYUv2 depth may suffer")
    if max_m > TOO_FAR_M:
        far = np.count_nonzero(depth > TOO_FAR_M) / n_valid
        far_note = (f"{far:.1%} of pixels read beyond {TOO_FAR_M:g} m (depths up to {max_m:.1f} m): wrong units, or "
                    "the sensor's 'no reading' code? Indoor scenes rarely exceed 10 m")
        notes.append(far_note)
    elif max_m > 10.0:
        notes.append(f"depths up to {max_m:.1f} m exceed NYUv2's 10 m range")
    if max_m < 0.05:
        near_note = f"all depths below {max_m * 100:.1f} cm: wrong units?"
        notes.append(near_note)
    info = DepthInfo(
        units=units, detected=detected, hole_fraction=float(hole_fraction), min_m=min_m, max_m=max_m, notes=notes,
        median_m=float(chosen.median_m), why=why, plausible=bool(chosen.plausible and max_m <= TOO_FAR_M),
        ambiguous=ambiguous, candidates=ranked,
        scale_m=scale if units == "scale" else (None if units == "sunrgbd" else 1.0 / _DIVISOR[units]),
    )
    info.warning = _warning(info, chosen, ranked, far_note, near_note)
    return depth, info


# --- matching the depth image to the colour image ----------------------------------------------------------


def aspects_differ(depth_shape: tuple[int, ...], rgb_shape: tuple[int, ...]) -> bool:
    """True when the depth and colour images' (H, W) aspect ratios differ by more than 2%: they need a
    ``fit`` ("crop" or "resize", :data:`DEPTH_FITS`) in :func:`match_depth_to_rgb`."""
    dh, dw = int(depth_shape[0]), int(depth_shape[1])
    th, tw = int(rgb_shape[0]), int(rgb_shape[1])
    if min(dh, dw, th, tw) < 1:
        raise FusionError("the depth image and the colour image must both have pixels")
    return abs((dw / dh) / (tw / th) - 1.0) > _ASPECT_TOL


def _nearest(depth: np.ndarray, th: int, tw: int) -> np.ndarray:
    dh, dw = depth.shape
    rows = np.clip(((np.arange(th) + 0.5) * (dh / th)).astype(np.int64), 0, dh - 1)
    cols = np.clip(((np.arange(tw) + 0.5) * (dw / tw)).astype(np.int64), 0, dw - 1)
    return np.ascontiguousarray(depth[rows[:, None], cols])


def match_depth_to_rgb(
    depth: np.ndarray, rgb_shape: tuple[int, ...], fit: str | None = None
) -> tuple[np.ndarray, str | None]:
    """Bring ``depth`` (H, W) to the colour image's (H, W) with nearest neighbour (no blending across
    edges or holes).

    Same size: returned unchanged with note None. Same aspect ratio within 2%: resized, with a note saying
    so. Another aspect ratio: ``fit="crop"`` cuts the centre of the depth image to the colour image's
    shape and scales it, ``fit="resize"`` stretches the whole depth image, each with a note saying what was
    done; with ``fit=None`` :class:`FusionError` (the two files may not be a pair).
    """
    if fit is not None and fit not in DEPTH_FITS:
        raise FusionError(f"fit must be one of {tuple(DEPTH_FITS)} (or None), got {fit!r}")
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise FusionError(f"depth must be 2-D (H, W), got shape {tuple(depth.shape)}")
    if len(rgb_shape) < 2:
        raise FusionError(f"rgb_shape must be (H, W) or (H, W, 3), got {tuple(rgb_shape)}")
    th, tw = int(rgb_shape[0]), int(rgb_shape[1])
    dh, dw = depth.shape
    if min(th, tw, dh, dw) < 1:
        raise FusionError("the depth image and the colour image must both have pixels")
    if (dh, dw) == (th, tw):
        return depth, None
    if not aspects_differ(depth.shape, rgb_shape):
        return _nearest(depth, th, tw), (f"the depth image ({dw}x{dh}) was resized to the colour image's {tw}x{th} "
                                         "(nearest neighbour)")
    if fit is None:
        raise FusionError(
            f"the depth image ({dw}x{dh}) and the colour image ({tw}x{th}) have different aspect ratios "
            f"({dw / dh:.3f} vs {tw / th:.3f}); are they the same scene and camera? Crop or resize the depth "
            "image to use them together."
        )
    if fit == "resize":
        return _nearest(depth, th, tw), (
            f"the depth image ({dw}x{dh}, aspect {dw / dh:.2f}) was stretched to the colour image's {tw}x{th} "
            f"(aspect {tw / th:.2f}; nearest neighbour): shapes in it are distorted")
    target = tw / th
    if dw / dh > target:  # the depth image is wider: cut its sides
        ch, cw = dh, max(1, min(dw, int(round(dh * target))))
    else:  # taller: cut top and bottom
        ch, cw = max(1, min(dh, int(round(dw / target)))), dw
    y0, x0 = (dh - ch) // 2, (dw - cw) // 2
    out = _nearest(depth[y0:y0 + ch, x0:x0 + cw], th, tw)
    return out, (f"the depth image ({dw}x{dh}) has another shape than the colour image ({tw}x{th}): its centre "
                 f"{cw}x{ch} was cut out and scaled to {tw}x{th} (nearest neighbour); the rest of it is not used")
