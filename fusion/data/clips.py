"""Decode what a person gives the emotion-clip page: a video, an audio file and a transcript.

Each low-level reader turns one upload into arrays the emotion models can take and raises
:class:`fusion.types.FusionError` with a message for the person who uploaded it when the file cannot be
used at all (empty, damaged, not a media file, an unsupported container or codec, no track of the kind
asked for):

* :func:`decode_video` — mp4 / mov / mkv / webm through PyAV (FFmpeg's libraries, no ffmpeg program
  needed): RGB frames sampled a few times a second with their timestamps, the sound track as mono float32
  at 16 kHz (None, with the reason, when there is none), the duration, and notes such as "the clip is
  95 s long: the first 60 s are analysed";
* :func:`decode_audio` — wav / flac / mp3 / ogg (and the sound track of a video file) to mono float32
  at 16 kHz; a silent recording (RMS below :data:`SILENCE_DBFS`) is reported in ``problem``, not raised;
* :func:`read_transcript` — typed text, ``.txt``, ``.srt`` (or ``.vtt``) subtitles with the cue numbers
  and timings removed; text that is not UTF-8 is refused with a message, never decoded into mojibake;
* :func:`find_faces` — OpenCV's Haar frontal-face cascade (Viola & Jones, CVPR 2001; shipped in
  ``cv2.data.haarcascades``): the largest face of each sampled frame and its 48x48 grey crop, the input
  format of FER2013 (Goodfellow et al., ICONIP 2013); :func:`crop_face` cuts one crop from a given box.

:func:`load_clip` puts them together for the page. It never raises for one bad input: it records why
a modality cannot be used in :attr:`ClipInput.problems` (keyed by modality name, worded for people) and
keeps the others, and raises :class:`FusionError` only when nothing at all can be used, with every reason.
"""
from __future__ import annotations

import io
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Union

import av
import cv2
import numpy as np

from fusion.types import AUDIO, FACE, TEXT, FusionError

__all__ = [
    "AUDIO_FORMATS",
    "CLIP_MODALITIES",
    "DEFAULT_FPS",
    "FACE_MARGIN",
    "FACE_SIZE",
    "MAX_SECONDS",
    "MAX_SIDE",
    "MODALITY_LABEL",
    "SAMPLE_RATE",
    "SILENCE_DBFS",
    "VIDEO_FORMATS",
    "AudioClip",
    "ClipInput",
    "FaceTrack",
    "Transcript",
    "VideoClip",
    "crop_face",
    "decode_audio",
    "decode_video",
    "find_faces",
    "load_clip",
    "read_transcript",
]

Source = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]  # uploaded bytes or a file path

SAMPLE_RATE = 16_000  # Hz of every waveform returned (what speech models expect)
MAX_SECONDS = 60.0  # longer clips are cut to their first MAX_SECONDS, with a note saying so
DEFAULT_FPS = 2.0  # frames sampled per second of video
MAX_SIDE = 640  # sampled frames are scaled down so that their longer side is at most this many pixels
# A recording whose RMS level is below this (dB relative to full scale) is "silent": -60 dBFS is an RMS of
# 0.001, well under the noise floor of a phone or laptop microphone in a quiet room (about -50 dBFS).
SILENCE_DBFS = -60.0
FACE_SIZE = 48  # side of the grey face crops (FER2013's format)
# Each side of the detected face box is widened by this share of its size before cropping: Haar boxes
# cut the chin and the forehead, while FER2013 crops show the whole face.
FACE_MARGIN = 0.1
MAX_TRANSCRIPT_BYTES = 1_000_000  # a longer "transcript" is not a clip's transcript

# FFmpeg demuxer names (a container's ``format.name`` lists several, comma-separated) -> what people call them.
VIDEO_FORMATS: dict[str, str] = {"mp4": "MP4", "mov": "MOV", "matroska": "MKV", "webm": "WebM"}
AUDIO_FORMATS: dict[str, str] = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "Ogg"}

CLIP_MODALITIES: tuple[str, ...] = (FACE, AUDIO, TEXT)
# Modality -> what the page calls it (messages never show the key alone).
MODALITY_LABEL: dict[str, str] = {FACE: "faces (video)", AUDIO: "voice (audio)", TEXT: "words (transcript)"}

_EPS = 1e-6


# --- results -------------------------------------------------------------------------------------------


@dataclass
class VideoClip:
    """What :func:`decode_video` read from a video file."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, sampled `fps` times a second, upright
    times: np.ndarray  # (N,) float64 seconds from the start of the clip
    audio: np.ndarray | None  # (S,) float32 mono at SAMPLE_RATE; None when the file has no usable sound track
    audio_problem: str | None  # why the sound track cannot be used (missing, silent, undecodable); else None
    duration_s: float | None  # length of the whole file; None when the file does not say and it was cut
    analysed_s: float  # seconds of it that were decoded (at most max_seconds)
    notes: list[str] = field(default_factory=list)  # human-readable remarks (cut to 60 s, scaled down, ...)


@dataclass
class AudioClip:
    """What :func:`decode_audio` read from an audio file."""

    waveform: np.ndarray  # (S,) float32 mono in [-1, 1] at `sample_rate`
    sample_rate: int  # always SAMPLE_RATE
    duration_s: float | None  # length of the whole file; None when the file does not say and it was cut
    analysed_s: float  # seconds of it that were decoded (at most max_seconds)
    rms_dbfs: float  # loudness: RMS level in dB relative to full scale (-inf for digital silence)
    problem: str | None = None  # why the sound cannot be used although it decoded (silence); else None
    notes: list[str] = field(default_factory=list)


@dataclass
class Transcript:
    """What :func:`read_transcript` read: the words, whitespace collapsed, and where they came from."""

    text: str
    source: str  # "typed", "text file" or "subtitles"
    cues: int = 0  # subtitle cues read (0 for plain text)
    notes: list[str] = field(default_factory=list)


Box = tuple[int, int, int, int]  # (x, y, w, h) in frame pixels


@dataclass
class FaceTrack:
    """What :func:`find_faces` found: the largest face per sampled frame and its crops over time."""

    boxes: list[Box | None]  # one per frame searched: the largest face's box, None where no face was found
    crops: np.ndarray  # (K, FACE_SIZE, FACE_SIZE) uint8 grey, one per frame with a face, in time order
    frame_index: np.ndarray  # (K,) int64: the frame each crop was cut from
    times: np.ndarray  # (K,) float64 seconds of each crop
    problem: str | None = None  # "no face found in the N sampled frames"; else None
    notes: list[str] = field(default_factory=list)


@dataclass
class ClipInput:
    """Everything the clip page can use, modality by modality, and why the rest cannot be used.

    Invariant: a modality's data field is None exactly when the modality has an entry in ``problems``.
    """

    frames: np.ndarray | None = None  # (N, H, W, 3) uint8 RGB sampled frames (kept even when no face is found)
    frame_times: np.ndarray | None = None  # (N,) seconds
    face_crops: np.ndarray | None = None  # (K, 48, 48) uint8 grey crops over time; None when unusable
    face_boxes: list[Box | None] | None = None  # per sampled frame: the face box drawn on the frame, or None
    face_times: np.ndarray | None = None  # (K,) seconds of each crop
    audio: np.ndarray | None = None  # (S,) float32 mono at `sample_rate`; None when unusable
    sample_rate: int = SAMPLE_RATE
    audio_source: str | None = None  # the file the sound came from (the audio file or the video's track)
    transcript: str | None = None  # the words; None when unusable
    duration_s: float | None = None  # of the video (or of the audio file when no video was given)
    problems: dict[str, str] = field(default_factory=dict)  # modality -> why it cannot be used (for people)
    notes: list[str] = field(default_factory=list)  # what was done to the inputs (cut, scaled, mixed down)

    @property
    def usable(self) -> tuple[str, ...]:
        """The modalities the page can run, in :data:`CLIP_MODALITIES` order."""
        return tuple(m for m in CLIP_MODALITIES if m not in self.problems)


# --- opening media -------------------------------------------------------------------------------------


def _source(data: Source, name: str | None, default: str) -> tuple[Any, str]:
    """(what av.open takes, the file's name for messages); FusionError for an empty or missing file."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        label = name or default
        if not raw:
            raise FusionError(f"{label} is empty (0 bytes)")
        return io.BytesIO(raw), label
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        label = name or path.name
        if not path.is_file():
            raise FusionError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise FusionError(f"{label} is empty (0 bytes)")
        return str(path), label
    raise FusionError(f"{default}: expected the file's bytes or a path, got {type(data).__name__}")


def _why(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _open(src: Any, name: str, formats: dict[str, str], what: str) -> Any:
    """Open a container with PyAV and check that it is one of ``formats``; FusionError otherwise."""
    accepted = ", ".join(dict.fromkeys(formats.values()))
    try:
        container = av.open(src, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise FusionError(f"{name} cannot be read as {what}: the file is damaged or not a media file "
                          f"({_why(e)}); accepted: {accepted}") from e
    kinds = set(container.format.name.split(","))
    if not kinds & set(formats):
        fmt = container.format.name
        found = (f"an image ({fmt.split(',')[0].removesuffix('_pipe').upper()})"
                 if fmt.endswith("_pipe") or fmt == "image2" else f"a {container.format.long_name or fmt} file")
        container.close()
        raise FusionError(f"{name} is {found}, not {what}; accepted: {accepted}")
    return container


def _duration(container: Any, stream: Any) -> float | None:
    """The file's length in seconds, from the container or the stream; None when neither says."""
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        d = float(stream.duration * stream.time_base)
        return d if d > 0 else None
    return None


def _start(container: Any) -> float:
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _decoder_ok(stream: Any) -> bool:
    try:
        return stream.codec_context is not None and stream.codec_context.codec is not None
    except (av.FFmpegError, ValueError):  # pragma: no cover - depends on the FFmpeg build
        return False


def _codec_name(stream: Any) -> str:
    try:
        return stream.codec_context.name
    except (AttributeError, av.FFmpegError):
        return "an unknown codec"


def _cut_note(name: str, duration: float | None, max_seconds: float, cut: bool) -> str | None:
    if not cut:
        return None
    if duration is None:
        return f"{name} is longer than {max_seconds:g} s: the first {max_seconds:g} s are analysed"
    return f"{name} is {duration:.0f} s long: the first {max_seconds:g} s are analysed"


def _check_limits(max_seconds: float, fps: float | None = None) -> None:
    if not (isinstance(max_seconds, (int, float)) and math.isfinite(max_seconds) and max_seconds > 0):
        raise FusionError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise FusionError(f"fps must be a positive number of frames per second, got {fps!r}")


# --- sound ---------------------------------------------------------------------------------------------


class _AudioCollector:
    """Decodes one audio stream's frames into mono float32 at SAMPLE_RATE, up to ``max_seconds``."""

    def __init__(self, stream: Any, t0: float, max_seconds: float) -> None:
        self.t0 = t0
        self.max_samples = int(round(max_seconds * SAMPLE_RATE))
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self.chunks: list[np.ndarray] = []
        self.samples = 0
        self.cut = False  # decoding stopped at max_seconds
        self.last_end = 0.0  # seconds into the file where the last decoded frame ended
        ctx = stream.codec_context
        self.channels = getattr(getattr(ctx, "layout", None), "nb_channels", 0) or 0
        self.rate = int(ctx.sample_rate or 0)

    def add(self, frame: Any) -> bool:
        """Take one decoded frame; True once max_seconds are in (the caller can stop)."""
        if frame.time is not None:
            start = frame.time - self.t0
            if start >= self.max_samples / SAMPLE_RATE - _EPS:
                self.cut = True
                return True
            self.last_end = start + frame.samples / max(frame.sample_rate, 1)
        self._take(self.resampler.resample(frame))
        return self.samples >= self.max_samples

    def _take(self, frames: list[Any]) -> None:
        for out in frames:
            chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)  # (1, n) packed -> (n,)
            self.chunks.append(chunk)
            self.samples += chunk.size

    def finish(self) -> np.ndarray:
        self._take(self.resampler.resample(None))  # flush what the resampler holds back
        wave = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        if wave.size > self.max_samples:
            self.cut = True
            wave = wave[: self.max_samples]
        return np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32)

    def mix_note(self, what: str) -> str | None:
        if self.channels > 1 or (self.rate and self.rate != SAMPLE_RATE):
            layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels}-channel")
            return f"{what}: {layout} {self.rate} Hz converted to mono {SAMPLE_RATE // 1000} kHz"
        return None


def _rms_dbfs(wave: np.ndarray) -> float:
    if wave.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def _silence_problem(what: str, dbfs: float) -> str | None:
    """The message for a silent recording (RMS below SILENCE_DBFS), or None."""
    if dbfs >= SILENCE_DBFS:
        return None
    level = "every sample is zero" if dbfs == -math.inf else f"its level is {dbfs:.0f} dBFS"
    return (f"{what} is silent ({level}; anything below {SILENCE_DBFS:g} dBFS counts as silence): "
            "there is no voice to analyse")


def decode_audio(data: Source, *, name: str | None = None, max_seconds: float = MAX_SECONDS) -> AudioClip:
    """Decode an audio file (wav / flac / mp3 / ogg, or the sound track of an mp4 / mov / mkv / webm) to
    mono float32 at :data:`SAMPLE_RATE`.

    ``data`` is the file's bytes or a path; ``name`` is the file name used in messages (a path's own name
    by default). Only the first ``max_seconds`` are decoded, with a note saying so. A silent recording is
    not an error: :attr:`AudioClip.problem` says so, and the other modalities can still run.

    Raises :class:`FusionError` for an empty, damaged or non-media file, an unsupported container or
    codec, a file with no audio stream, or one whose audio decodes to nothing.
    """
    _check_limits(max_seconds)
    src, name = _source(data, name, "the audio file")
    container = _open(src, name, {**AUDIO_FORMATS, **VIDEO_FORMATS}, "an audio file")
    with container:
        if not container.streams.audio:
            has_video = any(not _is_cover(s) for s in container.streams.video)
            raise FusionError(f"{name} has no audio track" + (" (it is a silent video)" if has_video else ""))
        stream = container.streams.audio[0]
        if not _decoder_ok(stream):
            raise FusionError(f"{name}: its sound is in {_codec_name(stream)}, which this app cannot decode")
        duration = _duration(container, stream)
        collector = _AudioCollector(stream, _start(container), max_seconds)
        notes: list[str] = []
        try:
            for packet in container.demux(stream):
                if any(collector.add(f) for f in packet.decode()):
                    break
        except (av.FFmpegError, ValueError) as e:
            if not collector.chunks:
                raise FusionError(f"{name}: its sound cannot be decoded; the file is damaged ({_why(e)})") from e
            notes.append(f"{name} is damaged after {collector.last_end:.1f} s: only the sound before that is used")
        wave = collector.finish()
    if wave.size == 0:
        raise FusionError(f"{name}: no sound could be decoded from it")
    analysed = wave.size / SAMPLE_RATE
    cut = collector.cut or (duration is not None and duration > max_seconds + 0.05)
    notes = [n for n in (_cut_note(name, duration, max_seconds, cut), collector.mix_note(name)) if n] + notes
    dbfs = _rms_dbfs(wave)
    return AudioClip(waveform=wave, sample_rate=SAMPLE_RATE, duration_s=duration, analysed_s=analysed,
                     rms_dbfs=dbfs, problem=_silence_problem(name, dbfs), notes=notes)


# --- video ---------------------------------------------------------------------------------------------


def _is_cover(stream: Any) -> bool:
    """True for a cover picture stored as a video stream (mp3 / m4a artwork), which is not a video."""
    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except (AttributeError, TypeError):  # pragma: no cover - older PyAV
        return False


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longer side at most ``max_side``, even numbers, aspect ratio kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def decode_video(
    data: Source,
    *,
    name: str | None = None,
    max_seconds: float = MAX_SECONDS,
    fps: float = DEFAULT_FPS,
    max_side: int = MAX_SIDE,
) -> VideoClip:
    """Decode a video file (mp4 / mov / mkv / webm) into sampled RGB frames and its sound track.

    ``data`` is the file's bytes or a path; ``name`` is the file name used in messages. The first frame of
    every 1/``fps`` second is kept (so a few frames a second by default), scaled down to at most
    ``max_side`` pixels on its longer side and turned upright when the file says it was filmed rotated.
    Only the first ``max_seconds`` are decoded, with a note. The sound track, if any, comes back as mono
    float32 at :data:`SAMPLE_RATE`; when it is missing, silent or cannot be decoded, ``audio`` is None and
    ``audio_problem`` says why (the frames are still returned).

    Raises :class:`FusionError` for an empty, damaged or non-media file, a container other than the four
    accepted, a file without a video track, a video codec that cannot be decoded, or no decodable frame.
    """
    _check_limits(max_seconds, fps)
    src, name = _source(data, name, "the video")
    container = _open(src, name, VIDEO_FORMATS, "a video")
    with container:
        videos = [s for s in container.streams.video if not _is_cover(s)]
        if not videos:
            only_sound = " (it holds only sound: give it as the audio file)" if container.streams.audio else ""
            raise FusionError(f"{name} has no video track{only_sound}")
        vstream = videos[0]
        if not _decoder_ok(vstream):
            raise FusionError(f"{name}: its video is in {_codec_name(vstream)}, which this app cannot decode")
        vstream.thread_type = "AUTO"
        astream = container.streams.audio[0] if container.streams.audio else None
        audio_problem: str | None = None
        if astream is None:
            audio_problem = f"{name} has no audio track"
        elif not _decoder_ok(astream):
            audio_problem = f"the sound track of {name} is in {_codec_name(astream)}, which this app cannot decode"
            astream = None
        t0 = _start(container)
        duration = _duration(container, vstream)
        collector = _AudioCollector(astream, t0, max_seconds) if astream is not None else None

        frames: list[np.ndarray] = []
        times: list[float] = []
        notes: list[str] = []
        size: tuple[int, int] | None = None
        rotation = 0
        last_slot = -1  # index of the last 1/fps slot a frame was kept for
        last_t = 0.0
        video_done = False
        audio_done = collector is None
        step = 1.0 / (float(vstream.average_rate) if vstream.average_rate else 25.0)
        demuxed = [vstream] + ([astream] if astream is not None else [])
        try:
            for packet in container.demux(*demuxed):
                if packet.stream.index == vstream.index:
                    if video_done:
                        continue
                    for frame in packet.decode():
                        t = frame.time - t0 if frame.time is not None else last_t + step
                        last_t = t
                        if t >= max_seconds - _EPS:
                            video_done = True
                            break
                        slot = int(math.floor(t * fps + _EPS))
                        if slot <= last_slot:
                            continue
                        last_slot = slot
                        if size is None:
                            size = _target_size(frame.width, frame.height, max_side)
                            rotation = int(round((frame.rotation or 0) / 90.0)) % 4
                            if size[0] < frame.width:
                                notes.append(f"{name}: frames scaled down from {frame.width}x{frame.height} "
                                             f"to {size[0]}x{size[1]}")
                            if rotation:
                                notes.append(f"{name} was filmed rotated: frames turned upright")
                        rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])  # (H, W, 3)
                        frames.append(np.ascontiguousarray(np.rot90(rgb, k=rotation)) if rotation else rgb)
                        times.append(max(0.0, t))
                elif collector is not None and not audio_done:
                    try:
                        audio_done = any(collector.add(f) for f in packet.decode())
                    except (av.FFmpegError, ValueError) as e:
                        audio_problem = f"the sound track of {name} cannot be decoded ({_why(e)})"
                        audio_done = True
                if video_done and audio_done:
                    break
        except (av.FFmpegError, ValueError) as e:
            if not frames:
                raise FusionError(f"{name}: its video cannot be decoded; the file is damaged ({_why(e)})") from e
            notes.append(f"{name} is damaged after {last_t:.1f} s: only what comes before is used")
        audio = collector.finish() if collector is not None else None
    if not frames:
        raise FusionError(f"{name}: no frame could be decoded from its video track")

    analysed = min(max_seconds, last_t + step) if not video_done else max_seconds
    cut = video_done or bool(collector and collector.cut)
    notes.insert(0, _cut_note(name, duration, max_seconds, cut) or "")
    if collector is not None and audio is not None and audio_problem is None:
        if audio.size == 0:
            audio_problem = f"no sound could be decoded from the sound track of {name}"
        else:
            audio_problem = _silence_problem(f"the sound track of {name}", _rms_dbfs(audio))
            mix = collector.mix_note(f"the sound track of {name}")
            if mix:
                notes.append(mix)
    return VideoClip(
        frames=np.stack(frames),  # (N, H, W, 3)
        times=np.asarray(times, dtype=np.float64),
        audio=None if audio_problem else audio,
        audio_problem=audio_problem,
        duration_s=duration,
        analysed_s=float(analysed),
        notes=[n for n in notes if n],
    )


# --- transcripts ---------------------------------------------------------------------------------------

# "00:00:01,000 --> 00:00:04,000" (SRT) or "00:01.000 --> 00:04.000 line:90%" (WebVTT).
_TIMING = re.compile(r"^\s*(?:\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}\s*-->\s*(?:\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}")
_INDEX = re.compile(r"^\s*\d+\s*$")
_TAG = re.compile(r"<[^>\n]*>|\{\\[^}\n]*\}")  # <i>, </font>, {\an8}
_VTT_BLOCKS = ("NOTE", "STYLE", "REGION")


def _decode_text(data: bytes, name: str) -> str:
    """Bytes -> str: UTF-8 (with or without a byte-order mark), or UTF-16 with its byte-order mark.

    Anything else is refused with a message rather than guessed (guessing gives mojibake)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise FusionError(f"{name}: starts like UTF-16 text but is damaged ({e.reason})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[e.start]
        raise FusionError(
            f"{name} is not UTF-8 text (byte 0x{bad:02x} at position {e.start} is not UTF-8; it may be saved "
            "as Latin-1 / Windows-1252, or not be text at all). Save it as UTF-8 and upload it again."
        ) from e


def _subtitle_text(text: str) -> tuple[str, int]:
    """The words of SRT / WebVTT subtitles (cue numbers, timings, tags and VTT headers removed), cue count."""
    lines = text.split("\n")
    vtt = lines[0].strip().startswith("WEBVTT")
    words: list[str] = []
    cues = 0
    skip_block = False
    block_start = True  # the line opens a block (the first line, or the first after blank lines)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            skip_block, block_start = False, True
            continue
        opens, block_start = block_start, False
        if skip_block:
            continue
        if vtt and opens and (i == 0 or stripped.split(" ", 1)[0] in _VTT_BLOCKS):
            skip_block = True  # the WEBVTT header, NOTE / STYLE / REGION blocks
            continue
        if _TIMING.match(stripped):
            cues += 1
            continue
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if _TIMING.match(nxt):
            continue  # the cue number (SRT) or cue name (WebVTT) above a timing line
        words.append(_TAG.sub("", stripped))
    return " ".join(" ".join(words).split()), cues


def read_transcript(data: bytes | str, filename: str | None = None) -> Transcript:
    """Read a transcript: typed text (a ``str``) or an uploaded ``.txt`` / ``.srt`` / ``.vtt`` file (bytes).

    Subtitles lose their cue numbers, timings and formatting tags; the cue texts are joined with spaces.
    Plain text has its whitespace collapsed. Bytes must be UTF-8 (a byte-order mark is fine; UTF-16 with
    its byte-order mark is accepted too); anything else is refused rather than guessed.

    Raises :class:`FusionError` for text that is not UTF-8, binary data, an over-long file, and a
    transcript with no words in it.
    """
    typed = isinstance(data, str)
    name = filename or ("the typed transcript" if typed else "the transcript")
    if typed:
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if not raw:
            raise FusionError(f"{name} is empty (0 bytes)")
        if len(raw) > MAX_TRANSCRIPT_BYTES:
            raise FusionError(f"{name} is {len(raw) / 1e6:.1f} MB: longer than the "
                              f"{MAX_TRANSCRIPT_BYTES / 1e6:g} MB a clip's transcript can be")
        text = _decode_text(raw, name)
    else:
        raise FusionError(f"{name}: expected text or the file's bytes, got {type(data).__name__}")
    if "\x00" in text:
        raise FusionError(f"{name} holds binary data, not text")
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    suffix = Path(filename).suffix.lower() if filename else ""
    notes: list[str] = []
    looks_timed = any(_TIMING.match(line) for line in text.split("\n")[:20])
    if suffix in (".srt", ".vtt") or looks_timed:
        words, cues = _subtitle_text(text)
        source = "subtitles"
        if suffix not in (".srt", ".vtt"):
            notes.append(f"{name} looks like subtitles: the cue numbers and timings were removed")
        if not words:
            raise FusionError(f"{name} has no words: its {cues} subtitle cues hold only numbers and timings"
                              if cues else f"{name} is empty: it holds no text")
    else:
        words, cues = " ".join(text.split()), 0
        source = "typed" if typed else "text file"
        if not words:
            raise FusionError(f"{name} is empty: it holds no text" if not typed else "the typed transcript is empty")
    return Transcript(text=words, source=source, cues=cues, notes=notes)


# --- faces ---------------------------------------------------------------------------------------------

_CASCADE_FILE = "haarcascade_frontalface_default.xml"
_local = threading.local()  # one classifier per thread: detectMultiScale is not documented as thread-safe


def _cascade() -> Any:
    classifier = getattr(_local, "cascade", None)
    if classifier is None:
        path = os.path.join(cv2.data.haarcascades, _CASCADE_FILE)
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            raise FusionError(f"OpenCV's face detector ({_CASCADE_FILE}) is missing from this installation: "
                              "install opencv-python-headless below version 5")
        _local.cascade = classifier
    return classifier


def _grey(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    raise FusionError(f"a frame must be (H, W, 3) RGB or (H, W) grey, got shape {tuple(frame.shape)}")


def crop_face(frame: np.ndarray, box: Box, *, size: int = FACE_SIZE, margin: float = FACE_MARGIN) -> np.ndarray:
    """The (size, size) uint8 grey crop of ``box`` = (x, y, w, h) in ``frame`` (RGB or grey).

    The box is widened by ``margin`` of its size on each side and made square around its centre (the longer
    side wins) so that the face keeps its proportions; parts outside the frame repeat the frame's edge.
    """
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0:
        raise FusionError(f"a face box needs a positive width and height, got {box}")
    if size < 1 or margin < 0:
        raise FusionError(f"crop size must be positive and margin non-negative, got {size}, {margin}")
    grey = _grey(frame)
    side = max(1, int(round(max(w, h) * (1.0 + 2.0 * margin))))
    cx2, cy2 = 2 * x + w, 2 * y + h  # twice the centre, in integers
    x0, y0 = (cx2 - side) // 2, (cy2 - side) // 2
    x1, y1 = x0 + side, y0 + side
    H, W = grey.shape
    pad = max(0, -x0, -y0, x1 - W, y1 - H)
    if pad:
        grey = np.pad(grey, pad, mode="edge")
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    patch = grey[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(patch, (size, size), interpolation=interp), dtype=np.uint8)


def find_faces(
    frames: np.ndarray | Sequence[np.ndarray],
    times: Sequence[float] | np.ndarray | None = None,
    *,
    size: int = FACE_SIZE,
    margin: float = FACE_MARGIN,
    min_face: float = 0.1,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
) -> FaceTrack:
    """Find the largest frontal face in each frame with OpenCV's Haar cascade and crop it to 48x48 grey.

    ``frames`` are (H, W, 3) RGB (or (H, W) grey) uint8 images, as a list or an (N, H, W, 3) array;
    ``times`` their seconds (frame numbers when None). ``min_face`` is the smallest face searched for, as a share of the frame's shorter side (at least
    24 pixels); ``scale_factor`` and ``min_neighbors`` are the cascade's own settings (larger = fewer,
    surer detections). Frames are histogram-equalised for detection; crops come from the plain grey frame.

    Finding no face is not an error: :attr:`FaceTrack.problem` says "no face found in the N sampled frames"
    and the crops are empty.
    """
    frames = list(frames)  # (N, H, W, 3) or (N, H, W) arrays iterate frame by frame too
    n = len(frames)
    stamps = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    if stamps.shape != (n,):
        raise FusionError(f"find_faces: {n} frames but {stamps.size} times")
    boxes: list[Box | None] = []
    crops: list[np.ndarray] = []
    index: list[int] = []
    if n:
        classifier = _cascade()
    for i, frame in enumerate(frames):
        grey = _grey(frame)
        smallest = max(24, int(round(min_face * min(grey.shape))))
        found = classifier.detectMultiScale(cv2.equalizeHist(grey), scaleFactor=scale_factor,
                                            minNeighbors=min_neighbors, minSize=(smallest, smallest))
        if len(found) == 0:
            boxes.append(None)
            continue
        x, y, w, h = max((tuple(int(v) for v in b) for b in found), key=lambda b: b[2] * b[3])
        boxes.append((x, y, w, h))
        crops.append(crop_face(grey, (x, y, w, h), size=size, margin=margin))
        index.append(i)
    problem = None
    notes: list[str] = []
    if not crops:
        problem = "no frames to search for faces" if n == 0 else (
            f"no face found in the {n} sampled frame{'s' if n != 1 else ''}")
    elif len(crops) < n:
        notes.append(f"a face was found in {len(crops)} of the {n} sampled frames")
    return FaceTrack(
        boxes=boxes,
        crops=np.stack(crops) if crops else np.zeros((0, size, size), np.uint8),  # (K, size, size)
        frame_index=np.asarray(index, dtype=np.int64),
        times=stamps[np.asarray(index, dtype=np.int64)] if index else np.zeros(0, np.float64),
        problem=problem,
        notes=notes,
    )


# --- the whole clip ------------------------------------------------------------------------------------


def _label_of(data: Source, name: str | None, default: str) -> str:
    if name:
        return name
    if isinstance(data, (str, os.PathLike)):
        return Path(data).name
    return default


def load_clip(
    video: Source | None = None,
    audio: Source | None = None,
    transcript: bytes | str | None = None,
    transcript_name: str | None = None,
    *,
    video_name: str | None = None,
    audio_name: str | None = None,
    max_seconds: float = MAX_SECONDS,
    fps: float = DEFAULT_FPS,
) -> ClipInput:
    """Read whatever the person gave for one clip and say which modalities can be used.

    ``video`` and ``audio`` are a file's bytes or a path (``video_name`` / ``audio_name`` name uploaded
    bytes in messages); ``transcript`` is typed text (str) or an uploaded file's bytes named
    ``transcript_name``. Faces come from the video; the voice from the audio file, or from the video's sound
    track when no audio file is given. A modality that is missing or unusable gets a message in
    :attr:`ClipInput.problems` and its data stays None; the others are kept.

    Raises :class:`FusionError` only when no modality at all can be used, listing every reason.
    """
    _check_limits(max_seconds, fps)
    clip = ClipInput()
    vname = _label_of(video, video_name, "the video") if video is not None else None
    track: VideoClip | None = None

    if video is None:
        clip.problems[FACE] = "no video was given"
    else:
        try:
            track = decode_video(video, name=vname, max_seconds=max_seconds, fps=fps)
        except FusionError as e:
            clip.problems[FACE] = str(e)
        else:
            clip.frames, clip.frame_times, clip.duration_s = track.frames, track.times, track.duration_s
            clip.notes += track.notes
            faces = find_faces(track.frames, track.times)
            clip.face_boxes = faces.boxes
            if faces.problem:
                clip.problems[FACE] = f"{faces.problem} of {vname}"
            else:
                clip.face_crops, clip.face_times = faces.crops, faces.times
                clip.notes += [f"{vname}: {n}" for n in faces.notes]

    if audio is not None:
        aname = _label_of(audio, audio_name, "the audio file")
        try:
            sound = decode_audio(audio, name=aname, max_seconds=max_seconds)
        except FusionError as e:
            clip.problems[AUDIO] = str(e)
        else:
            clip.notes += sound.notes
            if clip.duration_s is None:
                clip.duration_s = sound.duration_s
            if sound.problem:
                clip.problems[AUDIO] = sound.problem
            else:
                clip.audio, clip.audio_source = sound.waveform, aname
                if track is not None and track.audio is not None:
                    clip.notes.append(f"the voice is taken from {aname}, not from the sound track of {vname}")
    elif video is None:
        clip.problems[AUDIO] = "no audio file was given, and no video to take the sound from"
    elif track is None:
        clip.problems[AUDIO] = f"no audio file was given, and {clip.problems[FACE]}"
    elif track.audio is None:
        clip.problems[AUDIO] = f"{track.audio_problem}, and no audio file was given"
    else:
        clip.audio, clip.audio_source = track.audio, vname

    add_transcript(clip, transcript, transcript_name)
    check_usable(clip)
    return clip


def add_transcript(clip: ClipInput, transcript: bytes | str | None, name: str | None = None, *,
                   missing: str = "no transcript was given") -> None:
    """Read ``transcript`` (see :func:`read_transcript`) into ``clip``, or record in ``clip.problems`` why it
    cannot be used (``missing`` when there is none)."""
    if transcript is None:
        clip.problems[TEXT] = missing
        return
    try:
        words = read_transcript(transcript, name)
    except FusionError as e:
        clip.problems[TEXT] = str(e)
    else:
        clip.transcript = words.text
        clip.notes += words.notes


def check_usable(clip: ClipInput) -> None:
    """Raise :class:`FusionError` listing every reason when no modality of ``clip`` can be used."""
    if not clip.usable:
        reasons = "; ".join(f"{MODALITY_LABEL[m]}: {clip.problems[m]}" for m in CLIP_MODALITIES)
        raise FusionError(f"nothing in this clip can be used. {reasons}")
