"""Tiny synthetic media for the clip-page tests, made in memory with PyAV, OpenCV and PIL (never data-set files):
a drawn face that OpenCV's Haar cascade finds, an MP4 of it with a tone as its sound track, WAV recordings
(a tone or silence), and a JPEG photo."""
from __future__ import annotations

import io

import av
import cv2
import numpy as np
from PIL import Image

RATE = 16_000


def face_image(h: int = 240, w: int = 320, cx: int | None = None, cy: int | None = None, s: int = 60) -> np.ndarray:
    """A drawn grey face (oval, hair, brows, eyes, nose, mouth) on a gradient, (h, w, 3) uint8 RGB."""
    cx = w // 2 if cx is None else cx
    cy = h // 2 if cy is None else cy
    img = (np.linspace(120, 220, w)[None, :] * np.ones((h, 1))).astype(np.uint8)
    cv2.ellipse(img, (cx, cy), (int(s * 0.8), s), 0, 0, 360, 185, -1)
    cv2.ellipse(img, (cx, cy - int(s * 0.75)), (int(s * 0.85), int(s * 0.4)), 0, 180, 360, 40, -1)
    ey, ex = cy - int(s * 0.25), int(s * 0.35)
    for dx in (-ex, ex):
        cv2.ellipse(img, (cx + dx, ey - int(s * 0.18)), (int(s * 0.2), int(s * 0.05)), 0, 0, 360, 60, -1)
        cv2.ellipse(img, (cx + dx, ey), (int(s * 0.15), int(s * 0.08)), 0, 0, 360, 70, -1)
    cv2.ellipse(img, (cx, cy + int(s * 0.1)), (int(s * 0.08), int(s * 0.2)), 0, 0, 360, 160, -1)
    cv2.ellipse(img, (cx, cy + int(s * 0.5)), (int(s * 0.3), int(s * 0.08)), 0, 0, 360, 90, -1)
    grey = cv2.GaussianBlur(img, (0, 0), s * 0.04)
    return np.repeat(grey[..., None], 3, axis=2)


def tone(seconds: float, hz: float = 300.0, amp: float = 0.3, rate: int = RATE) -> np.ndarray:
    """A mono sine, float32 (n,)."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _encode_audio(container, stream, wave: np.ndarray, rate: int) -> None:
    usable = [f.name for f in stream.codec_context.codec.audio_formats]
    fmt = next(f for f in ("fltp", "flt", "s16", "s16p") if f in usable)
    step = 1024
    for k in range(0, wave.size, step):
        chunk = wave[None, k:k + step]
        arr = (np.clip(chunk, -1, 1) * 32767).astype(np.int16) if fmt.startswith("s16") else chunk.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, k
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def mp4_bytes(seconds: float = 1.5, fps: int = 10, size: tuple[int, int] = (320, 240), *, audio: bool = True,
              hz: float = 300.0) -> bytes:
    """An MP4 (MPEG-4 part 2 video, AAC sound) of the drawn face moving slightly, with a tone as its sound track."""
    buf = io.BytesIO()
    w, h = size
    with av.open(buf, "w", format="mp4") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.bit_rate = 1_000_000
        astream = None
        if audio:
            astream = c.add_stream("aac", rate=RATE)
            astream.layout = "mono"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(face_image(h, w, cx=w // 2 + (i % 3) * 4), format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode():
            c.mux(packet)
        if astream is not None:
            _encode_audio(c, astream, tone(seconds, hz), RATE)
    return buf.getvalue()


def wav_bytes(wave: np.ndarray, rate: int = RATE) -> bytes:
    """A mono 16-bit PCM WAV of ``wave`` (float in [-1, 1])."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as c:
        stream = c.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        _encode_audio(c, stream, wave, rate)
    return buf.getvalue()


def jpg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92)
    return buf.getvalue()
