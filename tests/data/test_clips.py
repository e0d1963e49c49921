"""Clip decoding: videos, audio files, transcripts and faces, on media the tests write themselves with PyAV."""
from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from fusion.data.clips import (FACE_SIZE, MODALITY_LABEL, SAMPLE_RATE, SILENCE_DBFS, ClipInput, crop_face,
                               decode_audio, decode_video, find_faces, load_clip, read_transcript)
from fusion.types import AUDIO, FACE, TEXT, FusionError

GARBAGE = np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8).tobytes()


# --- making media ------------------------------------------------------------------------------------


def _split_halves(i: int, w: int, h: int) -> np.ndarray:
    """A frame whose left half is white and right half black (to see rotation), green channel = frame number."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = 255
    img[..., 1] = (i * 10) % 256
    return img


def _face_image(h: int = 240, w: int = 320, cx: int = 160, cy: int = 120, s: int = 60) -> np.ndarray:
    """A drawn grey face (oval, hair, brows, eyes, nose, mouth) on a gradient; Haar's cascade finds it."""
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
    return np.repeat(grey[..., None], 3, axis=2)  # (H, W, 3) RGB


def _gradient(h: int = 240, w: int = 320) -> np.ndarray:
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :] * np.linspace(0.3, 1.0, h, dtype=np.float32)[:, None]
    return np.repeat(ramp.astype(np.uint8)[..., None], 3, axis=2)


def _sine(seconds: float, rate: int, hz: float = 440.0, amp: float = 0.3, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    x = (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.repeat(x[None], channels, axis=0)  # (C, n)


def _add_audio(container: av.container.OutputContainer, codec: str, wave: np.ndarray, rate: int) -> tuple:
    stream = container.add_stream(codec, rate=rate)
    stream.layout = "mono" if wave.shape[0] == 1 else "stereo"
    usable = [f.name for f in stream.codec_context.codec.audio_formats]  # the encoder's sample formats
    fmt = next(f for f in ("fltp", "flt", "s16", "s16p", "s32p") if f in usable)
    return stream, fmt


def _encode_audio(container: av.container.OutputContainer, stream, fmt: str, wave: np.ndarray, rate: int) -> None:
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    step = 1024
    for k in range(0, wave.shape[1], step):
        chunk = wave[:, k:k + step]
        if fmt == "s16":
            arr = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)  # packed (1, n*C)
        elif fmt == "s16p":
            arr = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)
        elif fmt == "s32p":
            arr = (np.clip(chunk, -1, 1) * 2147483392).astype(np.int32)
        elif fmt == "flt":
            arr = chunk.T.reshape(1, -1)
        else:  # fltp
            arr = chunk
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
        frame.sample_rate, frame.pts = rate, k
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_video(path: Path, *, seconds: float = 2.0, rate: int = 10, size: tuple[int, int] = (64, 48),
                codec: str = "mpeg4", audio: str | None = "aac", audio_rate: int = 16000, tone: float = 440.0,
                image=_split_halves, rotate: int | None = None) -> Path:
    """A short video (``size`` = (w, h)) with, when ``audio`` names an encoder, a stereo sine track."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.bit_rate = 2_000_000
        if rotate is not None:
            vs.set_display_rotation(rotate)
        astream = _add_audio(c, audio, _sine(0.1, audio_rate, channels=2), audio_rate) if audio else None
        for i in range(int(seconds * rate)):
            frame = av.VideoFrame.from_ndarray(image(i, size[0], size[1]), format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode():
            c.mux(packet)
        if astream:
            _encode_audio(c, *astream, _sine(seconds, audio_rate, tone, channels=2), audio_rate)
    return path


def write_audio(path: Path, wave: np.ndarray, rate: int, codec: str) -> Path:
    """``wave`` (C, n) float in [-1, 1] -> an audio file; the container comes from the file name."""
    with av.open(str(path), "w") as c:
        _encode_audio(c, *_add_audio(c, codec, wave, rate), wave, rate)
    return path


def _peak_hz(wave: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1.0 / rate)[int(np.argmax(spectrum))])


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_gradient(16, 16)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    face = lambda i, w, h: _face_image(h, w, cx=w // 2 + (i % 3) * 4, cy=h // 2, s=60)  # noqa: E731
    return {
        "mp4": write_video(d / "talk.mp4"),
        "silent_mp4": write_video(d / "mute.mp4", audio=None),
        "face_mp4": write_video(d / "face.mp4", seconds=1.5, size=(320, 240), image=face),
        "wav": write_audio(d / "voice.wav", _sine(2.0, 44100, 300.0, channels=2), 44100, "pcm_s16le"),
        "quiet_wav": write_audio(d / "quiet.wav", np.zeros((1, 16000), np.float32), 16000, "pcm_s16le"),
    }


# --- video -------------------------------------------------------------------------------------------


def test_mp4_frames_timestamps_and_sound(media: dict[str, Path]) -> None:
    clip = decode_video(media["mp4"])
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (4, 48, 64, 3)  # 2 s at 2 frames/s
    np.testing.assert_allclose(clip.times, [0.0, 0.5, 1.0, 1.5])
    assert clip.frames[:, :, :28, 0].min() > 200 and clip.frames[:, :, 36:, 0].max() < 50  # white | black
    assert clip.frames[1, 0, 0, 1] > clip.frames[0, 0, 0, 1] + 30  # frame 5, not frame 1, was kept second
    assert clip.audio is not None and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert clip.audio_problem is None
    assert abs(clip.audio.size / SAMPLE_RATE - 2.0) < 0.1
    assert abs(_peak_hz(clip.audio) - 440.0) < 3.0
    assert clip.duration_s == pytest.approx(2.0, abs=0.1) and clip.analysed_s == pytest.approx(2.0, abs=0.1)
    assert any("stereo 16000 Hz converted to mono 16 kHz" in n for n in clip.notes)
    assert not any("analysed" in n for n in clip.notes)


def test_fps_max_side_and_bytes_input(media: dict[str, Path]) -> None:
    clip = decode_video(media["mp4"].read_bytes(), name="upload.mp4", fps=5.0, max_side=32)
    assert clip.frames.shape == (10, 24, 32, 3)
    np.testing.assert_allclose(clip.times, np.arange(10) * 0.2, atol=1e-6)
    assert any("upload.mp4: frames scaled down from 64x48 to 32x24" == n for n in clip.notes)


@pytest.mark.parametrize("suffix, codec, audio", [(".webm", "libvpx-vp9", "libopus"), (".mkv", "h264", "aac"),
                                                  (".mov", "mpeg4", "aac")])
def test_other_containers(tmp_path: Path, suffix: str, codec: str, audio: str) -> None:
    path = write_video(tmp_path / f"clip{suffix}", codec=codec, audio=audio,
                       audio_rate=48000 if audio == "libopus" else 16000)
    clip = decode_video(path)
    assert clip.frames.shape == (4, 48, 64, 3)
    assert clip.audio is not None and abs(_peak_hz(clip.audio) - 440.0) < 3.0


def test_rotated_video_is_turned_upright(tmp_path: Path) -> None:
    # Display matrix "-90" = shown turned 90 degrees clockwise: the left (white) half ends up on top.
    clip = decode_video(write_video(tmp_path / "phone.mp4", rotate=-90, audio=None))
    assert clip.frames.shape == (4, 64, 48, 3)
    assert clip.frames[:, :28, :, 0].min() > 200 and clip.frames[:, 36:, :, 0].max() < 50
    assert "phone.mp4 was filmed rotated: frames turned upright" in clip.notes


def test_video_without_sound_track(media: dict[str, Path]) -> None:
    clip = decode_video(media["silent_mp4"])
    assert clip.audio is None and clip.audio_problem == "mute.mp4 has no audio track"
    assert clip.frames.shape[0] == 4
    with pytest.raises(FusionError, match=r"^mute\.mp4 has no audio track \(it is a silent video\)$"):
        decode_audio(media["silent_mp4"])


def test_long_clip_is_cut_with_a_note(tmp_path: Path) -> None:
    path = write_video(tmp_path / "long.mp4", seconds=95, rate=1, size=(16, 16), audio_rate=8000)
    clip = decode_video(path)
    assert "long.mp4 is 95 s long: the first 60 s are analysed" in clip.notes
    assert clip.times[-1] < 60.0 and clip.frames.shape[0] == 60  # 1 frame/s in the source
    assert clip.audio is not None and clip.audio.size == 60 * SAMPLE_RATE
    assert clip.duration_s == pytest.approx(95, abs=1) and clip.analysed_s == 60.0
    short = decode_video(path, max_seconds=10, fps=0.5)
    np.testing.assert_allclose(short.times, [0, 2, 4, 6, 8])
    assert short.audio is not None and short.audio.size == 10 * SAMPLE_RATE
    assert "long.mp4 is 95 s long: the first 10 s are analysed" in short.notes


@pytest.mark.parametrize("data, message", [
    (b"", r"^clip\.mp4 is empty \(0 bytes\)$"),
    (GARBAGE, r"^clip\.mp4 cannot be read as a video: the file is damaged or not a media file"),
    (_png(), r"^clip\.mp4 is an image \(PNG\), not a video; accepted: MP4, MOV, MKV, WebM$"),
])
def test_bad_video_bytes(data: bytes, message: str) -> None:
    with pytest.raises(FusionError, match=message):
        decode_video(data, name="clip.mp4")


def test_bad_video_files(tmp_path: Path, media: dict[str, Path]) -> None:
    with pytest.raises(FusionError, match="no such file"):
        decode_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(FusionError, match=r"^empty\.mp4 is empty"):
        decode_video(tmp_path / "empty.mp4")
    with pytest.raises(FusionError, match=r"voice\.wav is a WAV.* file, not a video"):
        decode_video(media["wav"])
    truncated = media["mp4"].read_bytes()[: 2000]  # the index (moov) is written last: cut, it is unreadable
    with pytest.raises(FusionError, match="talk.mp4 cannot be read as a video"):
        decode_video(truncated, name="talk.mp4")
    only_sound = tmp_path / "sound.mkv"
    write_audio(only_sound, _sine(0.5, 16000), 16000, "aac")
    with pytest.raises(FusionError, match=r"^sound\.mkv has no video track \(it holds only sound"):
        decode_video(only_sound)
    with pytest.raises(FusionError, match="fps must be a positive"):
        decode_video(media["mp4"], fps=0)


# --- audio -------------------------------------------------------------------------------------------


def test_wav_stereo_44k_to_mono_16k(media: dict[str, Path]) -> None:
    clip = decode_audio(media["wav"])
    assert clip.waveform.dtype == np.float32 and clip.waveform.ndim == 1 and clip.sample_rate == SAMPLE_RATE
    assert clip.waveform.size == pytest.approx(2 * SAMPLE_RATE, abs=64)
    assert abs(_peak_hz(clip.waveform) - 300.0) < 3.0
    assert clip.problem is None and clip.rms_dbfs > -20
    assert clip.notes == ["voice.wav: stereo 44100 Hz converted to mono 16 kHz"]


@pytest.mark.parametrize("name, codec", [("a.flac", "flac"), ("a.mp3", "libmp3lame"), ("a.ogg", "libopus")])
def test_compressed_audio_formats(tmp_path: Path, name: str, codec: str) -> None:
    rate = 48000 if codec == "libopus" else 22050
    path = write_audio(tmp_path / name, _sine(1.0, rate, 500.0), rate, codec)
    clip = decode_audio(path.read_bytes(), name=name)
    assert abs(clip.waveform.size / SAMPLE_RATE - 1.0) < 0.1
    assert abs(_peak_hz(clip.waveform) - 500.0) < 3.0 and clip.problem is None


def test_silence_is_a_problem_not_an_error(media: dict[str, Path], tmp_path: Path) -> None:
    clip = decode_audio(media["quiet_wav"])
    assert clip.rms_dbfs == -np.inf and clip.waveform.size == SAMPLE_RATE
    assert clip.problem is not None and clip.problem.startswith("quiet.wav is silent (every sample is zero")
    hiss = np.random.default_rng(1).normal(0, 1, (1, 16000)).astype(np.float32)
    hiss *= 10 ** ((SILENCE_DBFS - 10) / 20) / float(np.sqrt(np.mean(hiss ** 2)))  # 10 dB under the threshold
    low = decode_audio(write_audio(tmp_path / "low.flac", hiss, 16000, "flac"))
    assert low.problem is not None and "silent (its level is -70 dBFS" in low.problem
    audible = decode_audio(write_audio(tmp_path / "ok.flac", hiss * 100, 16000, "flac"))  # -30 dBFS
    assert audible.problem is None and audible.rms_dbfs == pytest.approx(-30, abs=1)


def test_long_audio_is_cut(media: dict[str, Path]) -> None:
    clip = decode_audio(media["wav"], max_seconds=0.5)
    assert clip.waveform.size == SAMPLE_RATE // 2 and clip.analysed_s == 0.5
    assert "voice.wav is 2 s long: the first 0.5 s are analysed" in clip.notes


def test_sound_track_of_a_video_file(media: dict[str, Path]) -> None:
    clip = decode_audio(media["mp4"])
    assert abs(_peak_hz(clip.waveform) - 440.0) < 3.0


@pytest.mark.parametrize("data, message", [
    (b"", r"^voice\.wav is empty \(0 bytes\)$"),
    (GARBAGE, r"^voice\.wav cannot be read as an audio file: the file is damaged or not a media file"),
    (_png(), r"^voice\.wav is an image \(PNG\), not an audio file; accepted: WAV, FLAC, MP3, Ogg, MP4, MOV"),
])
def test_bad_audio_bytes(data: bytes, message: str) -> None:
    with pytest.raises(FusionError, match=message):
        decode_audio(data, name="voice.wav")


# --- transcripts -------------------------------------------------------------------------------------

SRT = """1
00:00:01,000 --> 00:00:03,500
<i>I can't believe</i> it,

2
00:00:04,000 --> 00:00:06,000 X1:40 X2:600
you did that
for me!

3
00:00:07,000 --> 00:00:08,000
{\\an8}42
"""


def test_srt_keeps_only_the_words() -> None:
    t = read_transcript(SRT.replace("\n", "\r\n").encode("utf-8"), "talk.srt")
    assert t.text == "I can't believe it, you did that for me! 42"
    assert t.cues == 3 and t.source == "subtitles" and t.notes == []


def test_subtitles_without_the_srt_name_and_webvtt() -> None:
    t = read_transcript(SRT)
    assert t.text.startswith("I can't believe it,") and t.notes == [
        "the typed transcript looks like subtitles: the cue numbers and timings were removed"]
    vtt = ("WEBVTT - talk\n\nNOTE made by hand\nsecond line\n\n"
           "intro\n00:01.000 --> 00:02.000 line:90%\nHello <b>there</b>\n")
    assert read_transcript(vtt.encode(), "talk.vtt").text == "Hello there"


def test_plain_text_typed_and_with_bom() -> None:
    assert read_transcript("  Well,\n\n I'm   fine.  ").text == "Well, I'm fine."
    t = read_transcript("\ufeffcafé — très bien\r\n".encode("utf-8"), "notes.txt")
    assert t.text == "café — très bien" and t.source == "text file"
    assert read_transcript("hé".encode("utf-16"), "win.txt").text == "hé"


@pytest.mark.parametrize("data, name, message", [
    ("   \n ", None, r"^the typed transcript is empty$"),
    (b"", "a.txt", r"^a\.txt is empty \(0 bytes\)$"),
    (b" \r\n\t", "a.txt", r"^a\.txt is empty: it holds no text$"),
    (b"1\n00:00:01,000 --> 00:00:02,000\n\n", "a.srt", r"^a\.srt has no words: its 1 subtitle cues hold only"),
    ("café".encode("latin-1"), "old.txt", r"^old\.txt is not UTF-8 text \(byte 0xe9 at position 3 is not UTF-8"),
    (GARBAGE, "junk.srt", r"^junk\.srt is not UTF-8 text"),
    (b"abc\x00def", "bin.txt", r"^bin\.txt holds binary data, not text$"),
])
def test_bad_transcripts(data: bytes | str, name: str | None, message: str) -> None:
    with pytest.raises(FusionError, match=message):
        read_transcript(data, name)


# --- faces -------------------------------------------------------------------------------------------


def test_gradient_has_no_face() -> None:
    track = find_faces(np.stack([_gradient()] * 3), [0.0, 0.5, 1.0])
    assert track.problem == "no face found in the 3 sampled frames"
    assert track.crops.shape == (0, FACE_SIZE, FACE_SIZE) and track.boxes == [None, None, None]
    assert find_faces([]).problem == "no frames to search for faces"


def test_drawn_face_is_found_and_cropped() -> None:
    frames = [_face_image(cx=160, cy=120, s=60), _gradient(), _face_image(cx=110, cy=130, s=50)]
    track = find_faces(frames, [0.0, 0.5, 1.0])
    assert track.problem is None and track.notes == ["a face was found in 2 of the 3 sampled frames"]
    assert track.boxes[1] is None and track.frame_index.tolist() == [0, 2] and track.times.tolist() == [0.0, 1.0]
    for box, (cx, cy) in zip((track.boxes[0], track.boxes[2]), ((160, 120), (110, 130))):
        x, y, w, h = box
        assert abs(x + w / 2 - cx) < 10 and abs(y + h / 2 - cy) < 15 and 80 < w < 150
    assert track.crops.shape == (2, FACE_SIZE, FACE_SIZE) and track.crops.dtype == np.uint8
    # The largest of two faces wins.
    two = _face_image(h=240, w=480, cx=120, cy=120, s=40)
    two[:, 240:] = _face_image(h=240, w=480, cx=340, cy=120, s=70)[:, 240:]
    assert len(find_faces([two[:, :240]]).crops) == 1  # the small face alone is found too
    (x, _, w, _), = find_faces([two]).boxes
    assert x > 240 and w > 120


def test_crop_geometry() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[20:60, 50:90] = 255  # a white 40x40 square
    assert (crop_face(frame, (50, 20, 40, 40), margin=0.0) == 255).all()
    wide = crop_face(frame, (50, 20, 40, 40), margin=0.5)  # 80x80 around it: a white centre, black border
    assert wide.shape == (FACE_SIZE, FACE_SIZE) and wide[24, 24] == 255 and wide[2, 2] == 0 and wide[24, 2] == 0
    tall = crop_face(frame, (60, 20, 20, 40), margin=0.0)  # squared to 40x40 around the centre: all white
    assert (tall == 255).all()
    frame[:, :10] = 128  # a box over the left edge repeats the edge column
    edge = crop_face(frame, (-10, 40, 30, 20), margin=0.0, size=30)  # 30x30 from x = -10: 10 columns outside
    assert (edge[:, :20] == 128).all() and (edge[:, 20:] == 0).all()
    with pytest.raises(FusionError, match="positive width"):
        crop_face(frame, (0, 0, 0, 5))
    with pytest.raises(FusionError, match="3 frames but 2 times"):
        find_faces([frame] * 3, [0.0, 1.0])


# --- the whole clip ----------------------------------------------------------------------------------


def test_load_clip_everything_usable(media: dict[str, Path]) -> None:
    clip = load_clip(video=media["face_mp4"], transcript=SRT.encode(), transcript_name="talk.srt")
    assert isinstance(clip, ClipInput) and clip.usable == (FACE, AUDIO, TEXT) and clip.problems == {}
    assert clip.frames is not None and clip.frames.shape == (3, 240, 320, 3)
    assert clip.face_crops is not None and clip.face_crops.shape == (3, FACE_SIZE, FACE_SIZE)
    assert clip.face_times is not None and clip.face_times.tolist() == [0.0, 0.5, 1.0]
    assert clip.audio is not None and clip.audio_source == "face.mp4" and clip.transcript.startswith("I can't")


def test_load_clip_keeps_the_usable_modalities(media: dict[str, Path]) -> None:
    clip = load_clip(video=media["silent_mp4"], transcript="I'm so happy")
    assert clip.usable == (TEXT,)
    assert clip.problems[FACE] == "no face found in the 4 sampled frames of mute.mp4"
    assert clip.problems[AUDIO] == "mute.mp4 has no audio track, and no audio file was given"
    assert clip.frames is not None and clip.face_crops is None and clip.audio is None
    clip = load_clip(video=GARBAGE, video_name="clip.mov", audio=media["wav"], transcript=b"abc\x00")
    assert clip.usable == (AUDIO,) and clip.audio_source == "voice.wav"
    assert clip.problems[FACE].startswith("clip.mov cannot be read as a video")
    assert clip.problems[TEXT] == "the transcript holds binary data, not text"
    clip = load_clip(video=media["mp4"], audio=media["quiet_wav"], transcript="fine")
    assert clip.problems[AUDIO].startswith("quiet.wav is silent") and clip.audio is None


def test_load_clip_audio_file_wins_over_the_sound_track(media: dict[str, Path]) -> None:
    clip = load_clip(video=media["mp4"], audio=media["wav"].read_bytes(), audio_name="mic.wav")
    assert clip.audio_source == "mic.wav" and abs(_peak_hz(clip.audio) - 300.0) < 3.0
    assert "the voice is taken from mic.wav, not from the sound track of talk.mp4" in clip.notes


def test_load_clip_raises_only_when_nothing_is_usable(media: dict[str, Path]) -> None:
    with pytest.raises(FusionError) as info:
        load_clip(video=b"", video_name="v.mp4", audio=media["quiet_wav"], transcript=" ")
    message = str(info.value)
    assert message.startswith("nothing in this clip can be used.")
    for modality, reason in ((FACE, "v.mp4 is empty (0 bytes)"), (AUDIO, "quiet.wav is silent"),
                             (TEXT, "the typed transcript is empty")):
        assert f"{MODALITY_LABEL[modality]}: {reason}" in message
    with pytest.raises(FusionError, match="no video was given.*no transcript was given"):
        load_clip()
