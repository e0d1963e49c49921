"""Emotion corpora for the video-text-audio task: one label space, three readers, pairing by label.

    !!! THE THREE CORPORA ARE NOT RECORDINGS OF THE SAME MOMENTS. !!!
    A "trimodal sample" here is a face from FER2013, a speech clip from RAVDESS and an utterance
    from MELD that carry the SAME EMOTION LABEL and nothing else in common: different people,
    different moments, different sources. Samples are paired BY LABEL, the way AV-MNIST pairs
    handwritten digits with spoken digits. A model trained on such pairs learns to combine three
    independent pieces of evidence for one label; it has never seen a face, a voice and a sentence
    of the same person at the same time. Show :data:`PAIRING_NOTE` wherever such a model or its
    numbers are shown.

Corpora (each read from the layout users download; never copied into the project):

* FER2013 (Goodfellow et al., "Challenges in Representation Learning: A report on three machine
  learning contests", ICONIP 2013): 48x48 grayscale faces in the image-folder layout
  ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``. The file-name prefix keeps the original split:
  ``Training_*`` = train, ``PublicTest_*`` = val, ``PrivateTest_*`` = test. No formal licence:
  research and teaching use.
* RAVDESS speech (Livingstone & Russo, PLoS ONE 2018, doi:10.1371/journal.pone.0196391), CC BY-NC-SA
  4.0: ``Actor_XX/03-01-EE-II-SS-RR-AA.{flac,wav}``. Split by actor so no speaker is in two splits:
  01-18 train, 19-20 val, 21-24 test. Audio is returned mono float32 at 16 kHz (48 kHz originals are
  resampled). "calm" folds into neutral. Only speech files (modality 03 audio-only, vocal channel 01)
  are read; song and video files are ignored.
* MELD (Poria et al., "MELD: A Multimodal Multi-Party Dataset for Emotion Recognition in
  Conversations", ACL 2019), GPL-3.0 source repository: ``train_sent_emo.csv``, ``dev_sent_emo.csv``
  (= val) and ``test_sent_emo.csv``. Only the utterance text and its emotion are used here.

Label space (:data:`EMOTIONS`, in this order): angry, disgust, fear, happy, neutral, sad, surprise.

Roots: every reader takes a folder; ``None`` means ``$FUSION_FER2013`` / ``$FUSION_RAVDESS`` /
``$FUSION_MELD`` when set, else ``shared/data/<name>`` next to the project folder. Any problem with
a folder or a file is raised as :class:`~fusion.types.FusionError` naming the path and what is wrong.

Command line::

    python -m fusion.data.emotion stats [--fer2013 DIR] [--ravdess DIR] [--meld DIR]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from fusion.types import AUDIO, FACE, TEXT, FusionError

__all__ = [
    "EMOTIONS",
    "NUM_EMOTIONS",
    "SPLITS",
    "PAIRING_NOTE",
    "FER_SIZE",
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "WIN_LENGTH",
    "N_MELS",
    "F_MIN",
    "F_MAX",
    "LOG_AMIN",
    "TOP_DB",
    "FER_SPLIT_PREFIX",
    "RAVDESS_EMOTION",
    "RAVDESS_ACTORS",
    "RAVDESS_STATEMENTS",
    "MELD_EMOTION",
    "MELD_FILES",
    "default_root",
    "find_root",
    "FER2013",
    "ClipInfo",
    "RAVDESS",
    "load_audio",
    "log_mel",
    "Utterance",
    "MELD",
    "fix_mojibake",
    "TrimodalPairs",
    "corpus_stats",
    "format_stats",
    "main",
]

PathLike = str | os.PathLike[str]

# ---------------------------------------------------------------------------
# Constants: the label space, each corpus' mapping and split (facts, stored as data)
# ---------------------------------------------------------------------------

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
NUM_EMOTIONS = len(EMOTIONS)
SPLITS: tuple[str, ...] = ("train", "val", "test")

PAIRING_NOTE = (
    "Paired by label, not recorded together: each sample joins a face (FER2013), a speech clip (RAVDESS) "
    "and an utterance (MELD) that share only their emotion label. The three corpora are not recordings "
    "of the same moments or the same people, as in AV-MNIST, which pairs handwritten with spoken digits."
)

FER_SIZE = 48  # FER2013 faces are 48x48 grayscale; other sizes are resized to this
# File-name prefix -> split. PublicTest and PrivateTest both sit in test/ of the image-folder layout.
FER_SPLIT_PREFIX: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
_FER_FOLDERS = ("train", "test")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# RAVDESS emotion code (EE of 03-01-EE-II-SS-RR-AA) -> (name in the corpus, name in EMOTIONS).
RAVDESS_EMOTION: dict[int, tuple[str, str]] = {
    1: ("neutral", "neutral"), 2: ("calm", "neutral"), 3: ("happy", "happy"), 4: ("sad", "sad"),
    5: ("angry", "angry"), 6: ("fearful", "fear"), 7: ("disgust", "disgust"), 8: ("surprised", "surprise"),
}  # fmt: skip
RAVDESS_ACTORS: dict[str, tuple[int, ...]] = {
    "train": tuple(range(1, 19)), "val": (19, 20), "test": tuple(range(21, 25)),
}  # fmt: skip
RAVDESS_STATEMENTS: dict[int, str] = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
_RAVDESS_INTENSITY: dict[int, str] = {1: "normal", 2: "strong"}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_AUDIO_SUFFIXES = (".flac", ".wav")

# MELD Emotion column -> name in EMOTIONS; split -> file name.
MELD_EMOTION: dict[str, str] = {
    "anger": "angry", "disgust": "disgust", "fear": "fear", "joy": "happy", "neutral": "neutral",
    "sadness": "sad", "surprise": "surprise",
}  # fmt: skip
MELD_FILES: dict[str, str] = {"train": "train_sent_emo.csv", "val": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
_MELD_COLUMNS = ("Utterance", "Emotion")

# Audio front end. 25 ms windows every 10 ms at 16 kHz, 64 mel bands over 0-8 kHz (Slaney mel scale and
# area-normalised filters, librosa's defaults), power spectrogram -> dB relative to 1.0 (no per-clip
# normalisation, so loudness is kept), floored at LOG_AMIN and clipped TOP_DB below the clip's peak.
SAMPLE_RATE = 16_000  # Hz; every waveform is returned at this rate
N_FFT = 400  # FFT size in samples (25 ms at 16 kHz)
WIN_LENGTH = 400  # Hann window length in samples (25 ms)
HOP_LENGTH = 160  # hop in samples (10 ms): T = 1 + len(wave) // HOP_LENGTH frames (centred frames)
N_MELS = 64  # mel bands
F_MIN = 0.0  # lowest mel filter edge, Hz
F_MAX = 8_000.0  # highest mel filter edge, Hz (Nyquist at 16 kHz)
LOG_AMIN = 1e-10  # power floor before the log (-100 dB)
TOP_DB = 80.0  # dynamic range kept below the clip's maximum, dB (None in log_mel: keep all)

_CORPORA: dict[str, tuple[str, str]] = {  # key -> (display name, environment variable)
    "fer2013": ("FER2013", "FUSION_FER2013"),
    "ravdess": ("RAVDESS", "FUSION_RAVDESS"),
    "meld": ("MELD", "FUSION_MELD"),
}
_LAYOUT_HINT: dict[str, str] = {
    "fer2013": "train/<class>/Training_*.jpg and test/<class>/{PublicTest,PrivateTest}_*.jpg",
    "ravdess": "Actor_01 .. Actor_24 folders of 03-01-EE-II-SS-RR-AA.flac (or .wav) files",
    "meld": ", ".join(MELD_FILES.values()),
}


def _check_split(split: str, corpus: str) -> str:
    if split not in SPLITS:
        raise FusionError(f"unknown {corpus} split {split!r}; expected one of {SPLITS}")
    return split


def _label(name: str) -> int:
    return EMOTIONS.index(name)


# ---------------------------------------------------------------------------
# Finding a corpus folder
# ---------------------------------------------------------------------------


def _layout_problem(corpus: str, root: Path) -> str | None:
    """What is wrong with ``root`` as a folder of ``corpus`` (None: it looks right)."""
    if not root.exists():
        return "does not exist"
    if not root.is_dir():
        return "is not a folder"
    if corpus == "fer2013":
        if not any((root / d).is_dir() for d in _FER_FOLDERS):
            return "has neither a train/ nor a test/ folder"
    elif corpus == "ravdess":
        if not any(p.is_dir() and p.name.startswith("Actor_") for p in root.iterdir()):
            return "has no Actor_XX folders"
    elif not any((root / f).is_file() for f in MELD_FILES.values()):
        return f"has none of {', '.join(MELD_FILES.values())}"
    return None


def default_root(corpus: str) -> Path:
    """``shared/data/<corpus>`` next to the project folder (where the project's shared copy lives)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / corpus


def find_root(corpus: str, root: PathLike | None = None) -> Path:
    """The folder of ``corpus`` ("fer2013", "ravdess" or "meld").

    Order: ``root``; else the environment variable (``FUSION_FER2013``, ``FUSION_RAVDESS``,
    ``FUSION_MELD``); else :func:`default_root`. Raises :class:`FusionError` naming the folder, where it
    came from and what is wrong when the folder does not hold the corpus' layout.
    """
    if corpus not in _CORPORA:
        raise FusionError(f"unknown corpus {corpus!r}; expected one of {tuple(_CORPORA)}")
    name, env = _CORPORA[corpus]
    if root is not None:
        path, origin = Path(root).expanduser(), "folder"
    elif os.environ.get(env):
        path, origin = Path(os.environ[env]).expanduser(), f"folder from ${env}"
    else:
        path, origin = default_root(corpus), "default folder"
    problem = _layout_problem(corpus, path)
    if problem is not None:
        raise FusionError(
            f"{name} {origin} {path}: {problem}; expected {_LAYOUT_HINT[corpus]}. "
            f"Pass the folder you downloaded or set {env}."
        )
    return path.resolve()


# ---------------------------------------------------------------------------
# FER2013 faces
# ---------------------------------------------------------------------------


def _fer_class(folder: Path) -> int:
    name = folder.name.lower()
    if name not in EMOTIONS:
        raise FusionError(f"FER2013 class folder {folder} is not one of {', '.join(EMOTIONS)}")
    return _label(name)


def _fer_split(path: Path) -> str:
    prefix = path.name.split("_", 1)[0]
    split = FER_SPLIT_PREFIX.get(prefix)
    if split is None:
        raise FusionError(
            f"cannot tell the split of FER2013 image {path}: file names must start with "
            f"{', '.join(p + '_' for p in FER_SPLIT_PREFIX)}"
        )
    return split


class FER2013(Dataset):
    """FER2013 faces of one split. Listing reads file names only; images are decoded on access.

    Items: ``{"face": uint8 (48, 48) array, "label": int index into EMOTIONS, "id": str}``; the id is the
    path relative to the root (e.g. ``test/happy/PublicTest_123.jpg``) and keys the pairing.
    ``cache=True`` keeps decoded faces in memory (35,887 faces take 83 MB).
    """

    def __init__(self, root: PathLike | None = None, split: str = "train", *, cache: bool = False) -> None:
        super().__init__()
        self.split = _check_split(split, "FER2013")
        self.root = find_root("fer2013", root)
        self.cache = bool(cache)
        self._cache: dict[int, np.ndarray] = {}
        entries: list[tuple[str, int]] = []
        for top in _FER_FOLDERS:
            folder = self.root / top
            if not folder.is_dir():
                continue
            for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                label = _fer_class(class_dir)
                with os.scandir(class_dir) as it:
                    for e in it:
                        if e.name.lower().endswith(_IMAGE_SUFFIXES) and _fer_split(Path(e.path)) == split:
                            entries.append((f"{top}/{class_dir.name}/{e.name}", label))
        if not entries:
            prefix = next(p for p, s in FER_SPLIT_PREFIX.items() if s == split)
            raise FusionError(f"FER2013 folder {self.root} has no {prefix}_* images for split {split!r}")
        entries.sort()
        self.ids: list[str] = [i for i, _ in entries]
        self.labels: list[int] = [lab for _, lab in entries]

    def __len__(self) -> int:
        return len(self.ids)

    def face(self, index: int) -> np.ndarray:
        """Face ``index`` as a uint8 (48, 48) grayscale array (resized when the file has another size)."""
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        path = self.root / self.ids[index]
        try:
            with Image.open(path) as im:
                im = im.convert("L")
                if im.size != (FER_SIZE, FER_SIZE):
                    im = im.resize((FER_SIZE, FER_SIZE), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8).copy()
        except FileNotFoundError as e:
            raise FusionError(f"FER2013 image {path} is missing (was the folder changed after listing?)") from e
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise FusionError(f"FER2013 image {path} is unreadable or corrupt: {e}") from e
        if self.cache:
            self._cache[index] = arr
        return arr

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"face": self.face(index), "label": self.labels[index], "id": self.ids[index]}


# ---------------------------------------------------------------------------
# RAVDESS speech
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipInfo:
    """What a RAVDESS file name says about a clip (no audio decoded)."""

    path: Path  # the audio file
    id: str  # file stem, e.g. "03-01-06-02-01-01-12"; the same for .flac and .wav
    label: int  # index into EMOTIONS (calm -> neutral)
    emotion: str  # the corpus' own emotion name ("calm", "fearful", ...)
    actor: int  # 1..24, odd = male, even = female
    intensity: str  # "normal" or "strong"
    statement: str  # the sentence spoken
    repetition: int  # 1 or 2


def _parse_ravdess(path: Path) -> ClipInfo | None:
    """ClipInfo of a RAVDESS speech file; None for song or video files (other modality / channel codes)."""
    m = _RAVDESS_NAME.match(path.stem)
    if m is None:
        raise FusionError(f"{path} is not a RAVDESS file name (expected 03-01-EE-II-SS-RR-AA{path.suffix})")
    modality, channel, emo, intensity, statement, repetition, actor = (int(g) for g in m.groups())
    if modality != 3 or channel != 1:  # 01/02 = video, 02 = song: not this task's audio
        return None
    if emo not in RAVDESS_EMOTION or intensity not in _RAVDESS_INTENSITY or statement not in RAVDESS_STATEMENTS:
        raise FusionError(f"{path}: emotion/intensity/statement codes out of range in the file name")
    if not 1 <= actor <= 24:
        raise FusionError(f"{path}: actor {actor:02d} is not in 01..24")
    if path.parent.name != f"Actor_{actor:02d}":
        raise FusionError(f"{path}: actor {actor:02d} in the file name but the file is in {path.parent.name}/")
    corpus_name, name = RAVDESS_EMOTION[emo]
    return ClipInfo(
        path=path, id=path.stem, label=_label(name), emotion=corpus_name, actor=actor,
        intensity=_RAVDESS_INTENSITY[intensity], statement=RAVDESS_STATEMENTS[statement], repetition=repetition,
    )  # fmt: skip


def load_audio(path: PathLike, *, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file (FLAC, WAV, anything libsndfile reads) to mono float32 at ``sr`` Hz.

    Channels are averaged; other sample rates (e.g. RAVDESS's original 48 kHz) are resampled with
    soxr (high quality) through librosa.
    """
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise FusionError(f"audio file {p} is missing")
    try:
        data, file_sr = sf.read(p, dtype="float32", always_2d=True)  # (N, C)
    except (RuntimeError, OSError, ValueError, TypeError) as e:  # sf.LibsndfileError is a RuntimeError
        raise FusionError(f"audio file {p} is unreadable or corrupt: {e}") from e
    if data.shape[0] == 0:
        raise FusionError(f"audio file {p} holds no samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wave)):
        raise FusionError(f"audio file {p} has non-finite samples")
    if int(file_sr) != int(sr):
        import librosa

        wave = librosa.resample(wave, orig_sr=int(file_sr), target_sr=int(sr), res_type="soxr_hq")
    return np.ascontiguousarray(wave, dtype=np.float32)


def log_mel(
    wave: np.ndarray,
    sr: int = SAMPLE_RATE,
    n_mels: int = N_MELS,
    *,
    n_fft: int = N_FFT,
    win_length: int = WIN_LENGTH,
    hop_length: int = HOP_LENGTH,
    fmin: float = F_MIN,
    fmax: float | None = F_MAX,
    top_db: float | None = TOP_DB,
) -> np.ndarray:
    """(n_mels, T) float32 log-mel spectrogram in dB of a mono waveform, T = 1 + len(wave) // hop_length.

    Power mel spectrogram (librosa, centred Hann frames, Slaney mel filters) -> ``10 * log10(max(S,
    LOG_AMIN))`` relative to 1.0, then values more than ``top_db`` below the clip's maximum are raised to
    that floor. Defaults: 25 ms windows, 10 ms hop, 64 bands over 0-8 kHz (see the module constants).
    ``fmax`` None means sr / 2.
    """
    import librosa

    y = np.asarray(wave)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise FusionError(f"log_mel needs a mono waveform (N,), got shape {tuple(np.shape(wave))}")
    if y.size == 0:
        raise FusionError("log_mel got an empty waveform")
    if not np.issubdtype(y.dtype, np.floating):
        raise FusionError(f"log_mel needs float samples in [-1, 1], got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise FusionError("log_mel got non-finite samples")
    if fmax is not None and fmax > sr / 2:
        raise FusionError(f"fmax {fmax} Hz is above the Nyquist frequency {sr / 2} Hz of sr={sr}")
    power = librosa.feature.melspectrogram(
        y=y.astype(np.float32, copy=False), sr=int(sr), n_fft=int(n_fft), win_length=int(win_length),
        hop_length=int(hop_length), window="hann", center=True, power=2.0, n_mels=int(n_mels),
        fmin=float(fmin), fmax=fmax,
    )  # (n_mels, T)  # fmt: skip
    db = librosa.power_to_db(power, ref=1.0, amin=LOG_AMIN, top_db=top_db)
    return np.ascontiguousarray(db, dtype=np.float32)


class RAVDESS(Dataset):
    """RAVDESS speech clips of one split (by actor). Listing parses file names; audio is decoded on access.

    Items: ``{"audio": float32 (N,) waveform at 16 kHz, "label": int, "id": str, "actor": int,
    "intensity": str, "statement": str, "emotion": str}`` (``emotion`` is the corpus' own name, so
    "calm" stays visible). :attr:`info` holds the same metadata without decoding. ``cache=True`` keeps
    decoded waveforms in memory (all 1,434 clips take about 350 MB).
    """

    def __init__(self, root: PathLike | None = None, split: str = "train", *, cache: bool = False) -> None:
        super().__init__()
        self.split = _check_split(split, "RAVDESS")
        self.root = find_root("ravdess", root)
        self.cache = bool(cache)
        self._cache: dict[int, np.ndarray] = {}
        actors = RAVDESS_ACTORS[split]
        infos: dict[str, ClipInfo] = {}
        for actor in actors:
            folder = self.root / f"Actor_{actor:02d}"
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if not (path.is_file() and path.suffix.lower() in _AUDIO_SUFFIXES):
                    continue
                info = _parse_ravdess(path)
                if info is None:
                    continue
                if info.id in infos:
                    raise FusionError(f"RAVDESS clip {info.id} is there twice: {infos[info.id].path} and {path}")
                infos[info.id] = info
        if not infos:
            raise FusionError(
                f"RAVDESS folder {self.root} has no speech clips for split {split!r} "
                f"(actors {actors[0]:02d}-{actors[-1]:02d}: Actor_XX/03-01-*.flac or .wav)"
            )
        self.info: list[ClipInfo] = [infos[k] for k in sorted(infos)]
        self.ids: list[str] = [c.id for c in self.info]
        self.labels: list[int] = [c.label for c in self.info]

    def __len__(self) -> int:
        return len(self.info)

    def wave(self, index: int) -> np.ndarray:
        """Clip ``index`` as mono float32 at 16 kHz."""
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        wave = load_audio(self.info[index].path)
        if self.cache:
            self._cache[index] = wave
        return wave

    def __getitem__(self, index: int) -> dict[str, Any]:
        c = self.info[index]
        return {
            "audio": self.wave(index), "label": c.label, "id": c.id, "actor": c.actor,
            "intensity": c.intensity, "statement": c.statement, "emotion": c.emotion,
        }  # fmt: skip


# ---------------------------------------------------------------------------
# MELD utterances
# ---------------------------------------------------------------------------

# Signs that UTF-8 text was decoded as cp1252/latin-1 somewhere upstream: "â€™" for "’", "Ã©" for "é".
_CP1252_HIGH = "\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u203a\u20ac\u2122"
_MOJIBAKE = re.compile(f"â€|Ã[{_CP1252_HIGH}]|Â[\u0080-\u00bf]")
_C1 = re.compile("[\u0080-\u009f]")


def _cp1252_byte(ch: str) -> bytes:
    try:
        return ch.encode("cp1252")
    except UnicodeEncodeError:
        if ord(ch) < 256:  # the five bytes cp1252 leaves undefined pass through as latin-1
            return bytes([ord(ch)])
        raise


def fix_mojibake(text: str) -> str:
    """Undo the two common mis-decodings of MELD-like text, keeping everything else as it is.

    * UTF-8 bytes read as cp1252 ("donâ€™t" -> "don’t"), repaired only when the whole string
      round-trips back to valid UTF-8;
    * cp1252 bytes read as latin-1, which leaves C1 control characters ("don\\x92t" -> "don’t").

    Typographic quotes and dashes that are already right are kept; nothing is turned into ASCII.
    """
    if _MOJIBAKE.search(text):
        try:
            text = b"".join(_cp1252_byte(ch) for ch in text).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    if _C1.search(text):
        text = _C1.sub(lambda m: bytes([ord(m.group())]).decode("cp1252", errors="replace"), text)
    return text


@dataclass(frozen=True)
class Utterance:
    """One MELD row: the utterance and what is known about it."""

    text: str  # the utterance, typographic quotes kept, obvious mojibake repaired
    label: int  # index into EMOTIONS
    emotion: str  # MELD's own emotion name ("joy", "anger", ...)
    speaker: str
    sentiment: str  # negative / neutral / positive
    id: str  # "dia{Dialogue_ID}_utt{Utterance_ID}" (MELD's clip names); "row{n}" when the ids are absent


def _read_meld(path: Path) -> list[Utterance]:
    if not path.is_file():
        raise FusionError(f"MELD file {path} is missing (expected {', '.join(MELD_FILES.values())} in {path.parent})")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FusionError(f"MELD file {path} is unreadable: {e}") from e
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        content = raw.decode("cp1252", errors="replace")  # old copies of the csv were Windows-1252
    reader = csv.DictReader(io.StringIO(content, newline=""))  # CRLF or LF; quoted fields may span lines
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        if not header:
            raise FusionError(f"MELD file {path} is empty (no header row)")
        missing = [c for c in _MELD_COLUMNS if c not in header]
        if missing:
            raise FusionError(f"MELD file {path} has no column {', '.join(missing)} (columns: {', '.join(header)})")
        rows: list[Utterance] = []
        seen: set[str] = set()
        for n, row in enumerate(reader):
            emotion = (row.get("Emotion") or "").strip().lower()
            if emotion not in MELD_EMOTION:
                raise FusionError(
                    f"MELD file {path}, data row {n + 1}: emotion {emotion!r} is not one of {', '.join(MELD_EMOTION)}"
                )
            dia, utt = (row.get("Dialogue_ID") or "").strip(), (row.get("Utterance_ID") or "").strip()
            uid = f"dia{dia}_utt{utt}" if dia and utt else f"row{n + 1}"
            if uid in seen:
                uid = f"{uid}_row{n + 1}"
            seen.add(uid)
            rows.append(
                Utterance(
                    text=fix_mojibake(row.get("Utterance") or "").strip(), label=_label(MELD_EMOTION[emotion]),
                    emotion=emotion, speaker=(row.get("Speaker") or "").strip(),
                    sentiment=(row.get("Sentiment") or "").strip(), id=uid,
                )
            )  # fmt: skip
    except csv.Error as e:
        raise FusionError(f"MELD file {path} is not a valid CSV: {e}") from e
    if not rows:
        raise FusionError(f"MELD file {path} has a header but no utterances")
    return rows


class MELD(Dataset):
    """MELD utterances of one split ("val" reads ``dev_sent_emo.csv``).

    Items: ``{"text": str, "label": int, "id": str}``; :attr:`rows` holds the :class:`Utterance` records.
    """

    def __init__(self, root: PathLike | None = None, split: str = "train") -> None:
        super().__init__()
        self.split = _check_split(split, "MELD")
        self.root = find_root("meld", root)
        self.path = self.root / MELD_FILES[split]
        self.rows: list[Utterance] = _read_meld(self.path)
        self.ids: list[str] = [r.id for r in self.rows]
        self.labels: list[int] = [r.label for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.rows[index]
        return {"text": r.text, "label": r.label, "id": r.id}


# ---------------------------------------------------------------------------
# Pairing by label
# ---------------------------------------------------------------------------


def _rank(*parts: object) -> int:
    """A 64-bit sort key that is a pure function of its parts (same on every machine, Python and numpy)."""
    key = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def _draw(ids: Sequence[str], pool: Sequence[int], n: int, key: tuple[object, ...]) -> list[int]:
    """``n`` indices from ``pool``: a keyed shuffle of it, repeated (each pass reshuffled) when n > len(pool)."""
    out: list[int] = []
    rnd = 0
    while len(out) < n:
        out.extend(sorted(pool, key=lambda i: (_rank(*key, rnd, ids[i]), ids[i])))
        rnd += 1
    return out[:n]


class TrimodalPairs(Dataset):
    """Face + speech + utterance samples built BY LABEL from three unrelated corpora (see PAIRING_NOTE).

    For every emotion, ``per_class`` samples are made; sample k of an emotion joins the k-th face, clip
    and utterance of that emotion in a keyed shuffle of each corpus' ``split``. Every emotion gets the
    same count. Without replacement the count is capped by the scarcest (corpus, emotion) of the split
    (the cap is the default; a larger ``per_class`` is cut to it and noted in :attr:`notes`). With
    ``replacement=True`` (train only) ``per_class`` is required and scarce items are reused, each as
    evenly as possible.

    The shuffles are keyed by (seed, epoch, split, corpus, item id) through BLAKE2b, not by a random
    generator, so a pairing depends only on the seed and the items' ids: the same on every run and
    machine and independent of listing order. Val and test are fixed at epoch 0; train can be re-drawn
    with :meth:`reshuffle`.

    Items: ``{"face": uint8 (48, 48), "audio": float32 (N,) at 16 kHz, "text": str, "label": int,
    "ids": {"face": id, "audio": id, "text": id}}``; conversion to tensors is the task's job.
    """

    note: str = PAIRING_NOTE

    def __init__(
        self,
        split: str,
        seed: int = 0,
        per_class: int | None = None,
        *,
        replacement: bool = False,
        fer_root: PathLike | None = None,
        ravdess_root: PathLike | None = None,
        meld_root: PathLike | None = None,
        faces: FER2013 | None = None,
        speech: RAVDESS | None = None,
        texts: MELD | None = None,
        cache: bool = False,
    ) -> None:
        """``split``: "train", "val" or "test" (each corpus' own split of that name). ``seed``: keys the
        pairing. ``per_class``: samples per emotion (default: the cap). ``replacement``: reuse items to reach
        ``per_class`` (train only). ``*_root``: corpus folders (default: :func:`find_root`). ``faces`` /
        ``speech`` / ``texts``: readers already made for this split, used instead of the roots.
        ``cache``: keep decoded faces and clips in memory."""
        super().__init__()
        self.split = _check_split(split, "pairing")
        self.seed = int(seed)
        if per_class is not None and int(per_class) < 1:
            raise FusionError(f"per_class must be a positive int, got {per_class!r}")
        if replacement and split != "train":
            raise FusionError(f"sampling with replacement is for train only; {split} pairings use each item once")
        if replacement and per_class is None:
            raise FusionError("replacement=True needs per_class (how many samples per emotion to draw)")
        self.faces = faces if faces is not None else FER2013(fer_root, split, cache=cache)
        self.speech = speech if speech is not None else RAVDESS(ravdess_root, split, cache=cache)
        self.texts = texts if texts is not None else MELD(meld_root, split)
        self._corpora: dict[str, FER2013 | RAVDESS | MELD] = {FACE: self.faces, AUDIO: self.speech, TEXT: self.texts}
        for modality, reader in self._corpora.items():
            if reader.split != split:
                raise FusionError(f"the {modality} reader holds split {reader.split!r}, not {split!r}")
        self._pools: dict[str, list[list[int]]] = {
            m: [[i for i, lab in enumerate(r.labels) if lab == c] for c in range(NUM_EMOTIONS)]
            for m, r in self._corpora.items()
        }
        scarce = [
            (len(pools[c]), type(self._corpora[m]).__name__, EMOTIONS[c])
            for m, pools in self._pools.items()
            for c in range(NUM_EMOTIONS)
        ]
        self.cap, corpus, emotion = min(scarce)
        if self.cap == 0:
            raise FusionError(
                f"{corpus} {split} has no {emotion!r} items: cannot pair all {NUM_EMOTIONS} emotions by label"
            )
        self.notes: list[str] = []
        if replacement:
            self.per_class = int(per_class)  # type: ignore[arg-type]
        elif per_class is None:
            self.per_class = self.cap
        else:
            self.per_class = min(int(per_class), self.cap)
            if int(per_class) > self.cap:
                self.notes.append(
                    f"per_class {per_class} cut to {self.cap}: {corpus} {split} has only {self.cap} {emotion!r} items"
                )
        self.replacement = bool(replacement)
        self.epoch = 0
        self.pairs: list[tuple[int, int, int, int]] = self._make_pairs(0)

    def _make_pairs(self, epoch: int) -> list[tuple[int, int, int, int]]:
        """(label, face index, clip index, utterance index) per sample, in a keyed order."""
        drawn: dict[str, list[list[int]]] = {
            m: [
                _draw(r.ids, self._pools[m][c], self.per_class, (self.seed, epoch, self.split, m))
                for c in range(NUM_EMOTIONS)
            ]
            for m, r in self._corpora.items()
        }
        pairs = [
            (c, drawn[FACE][c][k], drawn[AUDIO][c][k], drawn[TEXT][c][k])
            for c in range(NUM_EMOTIONS)
            for k in range(self.per_class)
        ]
        return sorted(pairs, key=lambda p: (_rank(self.seed, epoch, self.split, "order", *p), p))

    def reshuffle(self, epoch: int) -> None:
        """Re-draw the train pairing for ``epoch`` (epoch 0 = the pairing made at construction)."""
        if self.split != "train":
            raise FusionError(f"{self.split} pairings are fixed by the seed; only train can be re-drawn")
        self.epoch = int(epoch)
        self.pairs = self._make_pairs(self.epoch)

    @property
    def labels(self) -> list[int]:
        """Label of every sample, in order."""
        return [p[0] for p in self.pairs]

    def ids(self, index: int) -> dict[str, str]:
        """The item ids joined in sample ``index``, keyed by modality."""
        _, f, a, t = self.pairs[index]
        return {FACE: self.faces.ids[f], AUDIO: self.speech.ids[a], TEXT: self.texts.ids[t]}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        label, f, a, t = self.pairs[index]
        return {
            FACE: self.faces.face(f), AUDIO: self.speech.wave(a), TEXT: self.texts.rows[t].text,
            "label": label, "ids": self.ids(index),
        }  # fmt: skip


# ---------------------------------------------------------------------------
# Statistics and the command line
# ---------------------------------------------------------------------------


def corpus_stats(
    *,
    fer_root: PathLike | None = None,
    ravdess_root: PathLike | None = None,
    meld_root: PathLike | None = None,
) -> dict[str, dict[str, dict[str, int]]]:
    """Class counts: ``{corpus: {split: {emotion: count}}}`` for "FER2013", "RAVDESS" and "MELD".

    Lists files and reads the CSVs only (no image or audio decoding).
    """
    readers = (("FER2013", FER2013, fer_root), ("RAVDESS", RAVDESS, ravdess_root), ("MELD", MELD, meld_root))
    out: dict[str, dict[str, dict[str, int]]] = {}
    for name, cls, root in readers:
        out[name] = {}
        for split in SPLITS:
            labels = cls(root, split).labels
            out[name][split] = {e: labels.count(c) for c, e in enumerate(EMOTIONS)}
    return out


def format_stats(stats: dict[str, dict[str, dict[str, int]]]) -> str:
    """A plain-text table of :func:`corpus_stats`, with the per-emotion cap of an unreplaced pairing."""
    width = max(len(e) for e in EMOTIONS) + 1
    head = f"{'corpus':<8} {'split':<5} " + " ".join(f"{e:>{width}}" for e in EMOTIONS) + f" {'total':>7}"
    lines = [head, "-" * len(head)]
    for corpus, splits in stats.items():
        for split, counts in splits.items():
            cells = " ".join(f"{counts[e]:>{width}}" for e in EMOTIONS)
            lines.append(f"{corpus:<8} {split:<5} {cells} {sum(counts.values()):>7}")
    lines.append("")
    for split in SPLITS:
        cap = min(splits[split][e] for splits in stats.values() for e in EMOTIONS)
        lines.append(f"pairs per emotion in {split} (no replacement): {cap} -> {cap * NUM_EMOTIONS} samples")
    lines += ["", PAIRING_NOTE]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m fusion.data.emotion stats``."""
    parser = argparse.ArgumentParser(
        prog="python -m fusion.data.emotion",
        description="Emotion corpora (FER2013 faces, RAVDESS speech, MELD text) in one 7-emotion label space.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stats", help="print class counts per split per corpus")
    st.add_argument("--fer2013", type=Path, default=None, help="FER2013 folder (default $FUSION_FER2013 or shared)")
    st.add_argument("--ravdess", type=Path, default=None, help="RAVDESS folder (default $FUSION_RAVDESS or shared)")
    st.add_argument("--meld", type=Path, default=None, help="MELD folder (default $FUSION_MELD or shared)")
    args = parser.parse_args(argv)
    try:
        stats = corpus_stats(fer_root=args.fer2013, ravdess_root=args.ravdess, meld_root=args.meld)
    except FusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_stats(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
