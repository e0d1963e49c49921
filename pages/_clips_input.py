"""Inputs of the emotion-clip page: an upload (video and / or audio file, transcript typed or as a file), a live
capture (camera photo, microphone recording, typed text) or a test triple of the label-paired data, each turned
into one :class:`fusion.data.clips.ClipInput`.

Decoding sits behind ``st.cache_data`` (keyed by the bytes); every bad input becomes a reason in
``ClipInput.problems`` (or, when nothing at all is usable, a :class:`FusionError` with every reason), never a
traceback. Widget keys start with ``clips_``.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st

from fusion.data import clips as clipdata
from fusion.data.clips import ClipInput
from fusion.types import AUDIO, FACE, TEXT, FusionError

VIDEO_TYPES = ["mp4", "webm", "mov", "mkv"]
AUDIO_TYPES = ["wav", "flac", "mp3", "ogg"]
TRANSCRIPT_TYPES = ["txt", "srt", "vtt"]
UPLOAD, LIVE, TRIPLE = "Upload", "Live", "Test triple from the data"
CORPORA = ("fer2013", "ravdess", "meld")
# what the page calls each modality (its toggles, chart legends, messages)
LABEL = {FACE: "Face", AUDIO: "Speech", TEXT: "Transcript"}
PHOTO_SIDE = 640  # a camera photo is scaled down to this longer side before face detection


def sentence(text: str) -> str:
    """A library message as a sentence: capital first letter, final full stop."""
    text = str(text).strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


@dataclass
class Source:
    """The clip to analyse (None: nothing given yet, ``prompt`` says what to do) and where it came from."""

    clip: ClipInput | None
    title: str = ""
    prompt: str = ""
    true_label: str | None = None  # test triples: the emotion the three items share
    ids: dict[str, str] = field(default_factory=dict)  # test triples: the item of each corpus
    notes: list[str] = field(default_factory=list)  # what the page did with the inputs (on top of clip.notes)


def digest(clip: ClipInput) -> str:
    """A short hash of what the models would read from ``clip`` (face crops, waveform, transcript): the key of
    the per-input result cache."""
    h = hashlib.blake2b(digest_size=16)
    for name, arr in (("face", clip.face_crops), ("audio", clip.audio)):
        h.update(name.encode())
        if arr is not None:
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    h.update(b"text")
    h.update(b"\x00" if clip.transcript is None else clip.transcript.encode("utf-8"))
    return h.hexdigest()


# --------------------------------------------------------------------------- decoding (cache_data)


@st.cache_data(show_spinner="Decoding the clip…", max_entries=8)
def decode_upload(video: bytes | None, video_name: str | None, audio: bytes | None, audio_name: str | None,
                  transcript: bytes | str | None, transcript_name: str | None) -> ClipInput:
    """:func:`fusion.data.clips.load_clip` on uploaded bytes (FusionError when nothing is usable). The sampled
    frames are dropped (the page draws the face crops, not the frames): a minute of video at 640 px would make
    every rerun unpickle a hundred megabytes from the cache."""
    clip = clipdata.load_clip(video=video, audio=audio, transcript=transcript, transcript_name=transcript_name,
                              video_name=video_name, audio_name=audio_name)
    clip.frames = None
    return clip


def decode_photo(data: bytes) -> np.ndarray:
    """A camera photo (JPEG or any image PIL reads) as (H, W, 3) uint8 RGB, upright, longer side at most
    :data:`PHOTO_SIDE`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise FusionError("the photo is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            if max(img.size) > PHOTO_SIDE:
                img.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise FusionError(f"the photo cannot be read as an image ({e})") from e


@st.cache_data(show_spinner="Reading the photo, the recording and the text…", max_entries=8)
def decode_live(photo: bytes | None, recording: bytes | None, text: str | None) -> ClipInput:
    """A live capture as a :class:`ClipInput`: faces from one photo, the voice from one WAV recording, the typed
    words. Unusable parts get a reason in ``problems``; FusionError only when nothing is usable."""
    clip = ClipInput()
    if photo is None:
        clip.problems[FACE] = "no photo was taken"
    else:
        try:
            frame = decode_photo(photo)
        except FusionError as e:
            clip.problems[FACE] = str(e)
        else:
            faces = clipdata.find_faces(frame[None], [0.0])
            clip.frames, clip.frame_times, clip.face_boxes = frame[None], np.zeros(1), faces.boxes
            if faces.problem:
                clip.problems[FACE] = "no face found in the photo (face the camera, in good light)"
            else:
                clip.face_crops, clip.face_times = faces.crops, faces.times
    if recording is None:
        clip.problems[AUDIO] = "nothing was recorded"
    else:
        try:
            sound = clipdata.decode_audio(recording, name="recording.wav")
        except FusionError as e:
            clip.problems[AUDIO] = str(e)
        else:
            clip.notes += sound.notes
            clip.duration_s = sound.duration_s
            if sound.problem:
                clip.problems[AUDIO] = sound.problem
            else:
                clip.audio, clip.audio_source = sound.waveform, "the recording"
    clipdata.add_transcript(clip, text, missing="no transcript was typed")
    clipdata.check_usable(clip)
    return clip


# --------------------------------------------------------------------------- test triples


def data_roots() -> tuple[tuple[str, ...] | None, str]:
    """The three corpus folders (FER2013, RAVDESS, MELD) when all are there, else None and why."""
    from fusion.data import emotion

    try:
        return tuple(str(emotion.find_root(c)) for c in CORPORA), ""
    except (FusionError, OSError) as e:
        return None, str(e)


@st.cache_resource(show_spinner="Reading the test pairing…")
def _test_pairs(fer: str, ravdess: str, meld: str) -> Any:
    from fusion.data.emotion import TrimodalPairs

    return TrimodalPairs("test", 0, fer_root=fer, ravdess_root=ravdess, meld_root=meld)


def test_pairs(roots: tuple[str, ...] | None) -> tuple[Any | None, str]:
    """The fixed test pairing (seed 0) of the corpora in ``roots``, or None and why (no data, unreadable)."""
    if roots is None:
        return None, "the data sets are not installed"
    try:
        return _test_pairs(*roots), ""
    except (FusionError, OSError) as e:
        return None, str(e)


@st.cache_data(show_spinner="Reading the triple…", max_entries=16)
def triple_clip(roots: tuple[str, ...], index: int) -> tuple[ClipInput, int, dict[str, str]]:
    """Test triple ``index`` as a :class:`ClipInput` (one face crop at 0 s, the speech clip, the utterance),
    its label and the ids of its three items."""
    pairs, why = test_pairs(roots)
    if pairs is None:
        raise FusionError(f"the test pairing cannot be read: {why}")
    item = pairs[int(index)]
    face = np.asarray(item[FACE], dtype=np.uint8)
    wave = np.asarray(item[AUDIO], dtype=np.float32)
    clip = ClipInput(frames=np.repeat(face[None, :, :, None], 3, axis=3), frame_times=np.zeros(1),
                     face_crops=face[None], face_boxes=[(0, 0, face.shape[1], face.shape[0])],
                     face_times=np.array([0.0]), audio=wave, audio_source="RAVDESS", transcript=str(item[TEXT]),
                     duration_s=wave.size / clipdata.SAMPLE_RATE)
    if not clip.transcript.strip():
        clip.transcript = None
        clip.problems[TEXT] = "the MELD utterance of this triple is empty"
    return clip, int(item["label"]), dict(item["ids"])


# --------------------------------------------------------------------------- widgets


def choose_source(box: Any) -> tuple[str, tuple[str, ...] | None]:
    """The sidebar's source radio (the test-triple source only when the three corpora are there)."""
    roots, why = data_roots()
    pairs = None
    if roots is not None:
        pairs, why = test_pairs(roots)
    sources = [UPLOAD, LIVE] + ([TRIPLE] if pairs is not None else [])
    source = box.radio("Source", sources, key="clips_source",
                       help="Upload a clip, capture one with your camera and microphone, or take a test triple "
                            "of the label-paired data (when it is installed next to the project).")
    if pairs is None:
        box.caption(f"Test triples unavailable: {why}." if why else "Test triples unavailable.")
    return source, (roots if pairs is not None else None)


def read_upload() -> Source:
    """The upload widgets -> the decoded clip (None with a prompt when nothing is given)."""
    c1, c2 = st.columns(2)
    video = c1.file_uploader("Video with its sound track (MP4, WebM, MOV, MKV)", type=VIDEO_TYPES,
                             key="clips_video",
                             help="Faces are found in a few frames a second; the sound track is the voice unless "
                                  "an audio file is given too. Clips longer than 60 s are cut to their first 60 s.")
    audio = c1.file_uploader("Audio file (WAV, FLAC, MP3, Ogg; optional, replaces the video's sound)",
                             type=AUDIO_TYPES, key="clips_audio")
    typed = c2.text_area("Transcript (what is said)", key="clips_text", height=110,
                         placeholder="Type the words of the clip, or upload a transcript file below.")
    tfile = c2.file_uploader("…or a transcript file (.txt, .srt, .vtt; UTF-8)", type=TRANSCRIPT_TYPES,
                             key="clips_transcript_file")
    notes: list[str] = []
    transcript: bytes | str | None = None
    tname = None
    if tfile is not None:
        transcript, tname = tfile.getvalue(), tfile.name
        if typed.strip():
            notes.append(f"the transcript comes from {tfile.name}; the typed text is not used")
    elif typed:
        transcript = typed
    if video is None and audio is None and transcript is None:
        return Source(None, prompt="Upload a video (its faces and sound track), an audio file and / or a "
                                   "transcript — any of the three is enough — or pick another input in the sidebar.")
    clip = decode_upload(None if video is None else video.getvalue(), None if video is None else video.name,
                         None if audio is None else audio.getvalue(), None if audio is None else audio.name,
                         transcript, tname)
    parts = [f.name for f in (video, audio, tfile) if f is not None]
    if tfile is None and transcript is not None:
        parts.append("typed transcript")
    return Source(clip, title=" + ".join(parts), notes=notes)


def read_live() -> Source:
    """Camera photo, microphone recording and typed text -> the decoded clip."""
    c1, c2 = st.columns(2)
    photo = c1.camera_input("Photo of your face", key="clips_camera",
                            help="One photo: the face found in it is the face input (one crop at 0 s).")
    recording = c2.audio_input("Record what you say", key="clips_mic", sample_rate=16000)
    typed = c2.text_area("What you said (typed)", key="clips_live_text", height=90)
    if photo is None and recording is None and not typed:
        return Source(None, prompt="Take a photo, record your voice and / or type what you said — any of the "
                                   "three is enough.")
    clip = decode_live(None if photo is None else photo.getvalue(),
                       None if recording is None else recording.getvalue(), typed if typed else None)
    parts = [name for name, given in (("photo", photo), ("recording", recording), ("typed text", typed)) if given]
    return Source(clip, title="live: " + " + ".join(parts))


def read_triple(roots: tuple[str, ...]) -> Source:
    """A number input over the test pairing -> that triple, its true label and its three items."""
    from fusion.data.emotion import EMOTIONS

    pairs, _ = test_pairs(roots)
    n = len(pairs)
    i = st.number_input(f"Test triple (0–{n - 1})", min_value=0, max_value=n - 1, value=0, step=1,
                        key="clips_triple",
                        help="The fixed test pairing (seed 0): each triple joins a FER2013 face, a RAVDESS speech "
                             "clip and a MELD utterance that share only their emotion label.")
    clip, label, ids = triple_clip(roots, int(i))
    return Source(clip, title=f"test triple {int(i)}", true_label=EMOTIONS[label], ids=ids)


def read_source(source: str, roots: tuple[str, ...] | None) -> Source:
    """The clip of the chosen source."""
    if source == TRIPLE and roots is not None:
        return read_triple(roots)
    if source == LIVE:
        return read_live()
    return read_upload()


def show_source(src: Source) -> None:
    """The input's heading, its true label (test triples: three unrelated items sharing one label) and the notes
    from reading it, as the method pages show them above their views."""
    st.subheader(f"Input · {src.title}")
    if src.true_label:
        st.markdown(f"**True label: {src.true_label}** (three unrelated items sharing one label).")
    for note in src.notes + (src.clip.notes if src.clip is not None else []):
        st.info(sentence(note))
