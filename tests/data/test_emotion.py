"""Emotion corpora (FER2013, RAVDESS, MELD) and the label pairing.

Most tests run on tiny corpora written into tmp_path, so they never need ../shared. Content encodes the
label (face gray level, tone frequency, the emotion word in the text), so label agreement is checked on
decoded data and not only on bookkeeping. The last section reads the shared copy when it is there.
"""
from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from fusion.data import emotion
from fusion.data.emotion import (
    EMOTIONS,
    FER2013,
    MELD,
    MELD_EMOTION,
    PAIRING_NOTE,
    RAVDESS,
    RAVDESS_EMOTION,
    SAMPLE_RATE,
    TrimodalPairs,
    corpus_stats,
    find_root,
    fix_mojibake,
    load_audio,
    log_mel,
    main,
)
from fusion.types import FusionError

PROJECT = Path(__file__).resolve().parents[2]
SHARED = PROJECT.parent / "shared" / "data"

# Tiny corpora: per split, how many items of each emotion.
FER_COUNTS = {"Training": 4, "PublicTest": 2, "PrivateTest": 2}
RAVDESS_SPLIT_ACTORS = {"train": (1, 2, 3), "val": (19,), "test": (21,)}
MELD_ROWS = {"train_sent_emo.csv": 3, "dev_sent_emo.csv": 1, "test_sent_emo.csv": 1}
MELD_NAMES = {v: k for k, v in MELD_EMOTION.items()}  # EMOTIONS name -> MELD name
DURATION = 0.25  # seconds per fake clip
QUOTES = "I’m “fine” — really…"


def gray_of(label: int) -> int:
    return 20 + 30 * label  # flat face: 20, 50, ..., 200


def tone_of(label: int) -> float:
    return 250.0 * (label + 1)  # Hz: 250 .. 1750


def label_of_gray(face: np.ndarray) -> int:
    return int(round((float(face.mean()) - 20) / 30))


def label_of_tone(wave: np.ndarray, sr: int = SAMPLE_RATE) -> int:
    spectrum = np.abs(np.fft.rfft(wave))
    peak = float(np.fft.rfftfreq(wave.size, 1 / sr)[int(spectrum.argmax())])
    return int(round(peak / 250.0)) - 1


def label_of_text(text: str) -> int:
    return EMOTIONS.index(MELD_EMOTION[text.split()[0]])


def write_fer(root: Path) -> None:
    for label, name in enumerate(EMOTIONS):
        for prefix, n in FER_COUNTS.items():
            folder = root / ("train" if prefix == "Training" else "test") / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                img = np.full((48, 48), gray_of(label), dtype=np.uint8)
                Image.fromarray(img).save(folder / f"{prefix}_{label}{k:03d}.jpg", quality=95)


def write_ravdess(root: Path, *, wav: bool = False) -> None:
    """8 clips (one per RAVDESS code) per actor; actor 19 as 48 kHz WAV (resampling path); ``wav`` = all WAV."""
    for actors in RAVDESS_SPLIT_ACTORS.values():
        for actor in actors:
            folder = root / f"Actor_{actor:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for code, (_, name) in RAVDESS_EMOTION.items():
                as_wav = wav or actor == 19
                sr = 48_000 if actor == 19 else SAMPLE_RATE
                t = np.arange(int(DURATION * sr)) / sr
                wave = (0.3 * np.sin(2 * np.pi * tone_of(EMOTIONS.index(name)) * t)).astype(np.float32)
                stem = f"03-01-{code:02d}-01-{1 + code % 2:02d}-01-{actor:02d}"
                sf.write(folder / (stem + (".wav" if as_wav else ".flac")), wave, sr, subtype="PCM_16")
            # distractors that must be ignored: a song file and a non-audio file
            sf.write(folder / f"03-02-03-01-01-01-{actor:02d}.flac", np.zeros(800, np.float32), SAMPLE_RATE)
            (folder / "notes.txt").write_text("not audio")


def write_meld(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
              "Season", "Episode", "StartTime", "EndTime"]  # fmt: skip
    for fname, n in MELD_ROWS.items():
        with open(root / fname, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\r\n")
            w.writerow(header)
            sr_no = 1
            for label, name in enumerate(EMOTIONS):
                for k in range(n):
                    text = f"{MELD_NAMES[name]} {k}, {QUOTES}"
                    times = ["00:00:01,000", "00:00:02,000"]  # quoted: they hold commas
                    w.writerow([sr_no, text, "Monica", MELD_NAMES[name], "neutral", label, k, 1, 1, *times])
                    sr_no += 1
            if fname == "train_sent_emo.csv":  # two rows with mojibake, as some MELD copies have them
                bad = "neutral donâ€™t â€œgoâ€\x9d"  # UTF-8 read as cp1252
                w.writerow([sr_no, bad, "Ross", "neutral", "neutral", 99, 0, 1, 1, "", ""])
                w.writerow([sr_no + 1, "neutral he\x92s here\x85", "Ross", "neutral", "neutral", 99, 1, 1, 1, "", ""])


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FUSION_FER2013", "FUSION_RAVDESS", "FUSION_MELD"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("emotion")
    roots = {"fer": base / "fer2013", "ravdess": base / "ravdess", "meld": base / "meld"}
    write_fer(roots["fer"])
    write_ravdess(roots["ravdess"])
    write_meld(roots["meld"])
    return roots


def pairs(tiny: dict[str, Path], split: str, seed: int = 0, **kw) -> TrimodalPairs:
    return TrimodalPairs(split, seed, fer_root=tiny["fer"], ravdess_root=tiny["ravdess"], meld_root=tiny["meld"], **kw)


def digest(p: TrimodalPairs) -> str:
    rows = [f"{p.labels[i]}|{ids['face']}|{ids['audio']}|{ids['text']}" for i in range(len(p)) for ids in [p.ids(i)]]
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Label space
# ---------------------------------------------------------------------------


def test_label_space_and_mappings() -> None:
    assert EMOTIONS == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert {code: name for code, (_, name) in RAVDESS_EMOTION.items()} == {
        1: "neutral", 2: "neutral", 3: "happy", 4: "sad", 5: "angry", 6: "fear", 7: "disgust", 8: "surprise",
    }  # fmt: skip
    assert MELD_EMOTION == {
        "anger": "angry", "disgust": "disgust", "fear": "fear", "joy": "happy", "neutral": "neutral",
        "sadness": "sad", "surprise": "surprise",
    }  # fmt: skip
    assert "paired by label" in PAIRING_NOTE.lower() and "not recordings of the same moments" in PAIRING_NOTE
    doc = emotion.__doc__ or ""
    assert "NOT RECORDINGS OF THE SAME MOMENTS" in doc and "paired BY LABEL" in doc
    assert TrimodalPairs.note == PAIRING_NOTE


# ---------------------------------------------------------------------------
# Readers on tiny corpora
# ---------------------------------------------------------------------------


def test_fer_split_by_prefix_and_lazy_listing(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(*a, **k):
        raise AssertionError("listing must not decode images")

    monkeypatch.setattr(emotion.Image, "open", no_decode)
    sets = {s: FER2013(tiny["fer"], s) for s in ("train", "val", "test")}
    monkeypatch.undo()
    for split, prefix in (("train", "Training_"), ("val", "PublicTest_"), ("test", "PrivateTest_")):
        ds = sets[split]
        assert len(ds) == 7 * FER_COUNTS[prefix[:-1]]
        assert all(Path(i).name.startswith(prefix) for i in ds.ids)
        assert Counter(ds.labels) == {c: FER_COUNTS[prefix[:-1]] for c in range(7)}
    item = sets["val"][5]
    assert item["face"].shape == (48, 48) and item["face"].dtype == np.uint8
    assert label_of_gray(item["face"]) == item["label"] == sets["val"].labels[5]


def test_fer_cache_and_resize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "train" / "Happy"  # capitalised class folders are accepted
    folder.mkdir(parents=True)
    Image.fromarray(np.full((96, 64, 3), 120, np.uint8)).save(folder / "Training_1.png")
    ds = FER2013(tmp_path, "train", cache=True)
    assert ds.labels == [EMOTIONS.index("happy")]
    face = ds.face(0)
    assert face.shape == (48, 48) and abs(int(face.mean()) - 120) <= 1
    monkeypatch.setattr(emotion.Image, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded twice")))
    assert ds.face(0) is face


def test_ravdess_split_by_actor_metadata_and_resampling(tiny: dict[str, Path]) -> None:
    for split, actors in RAVDESS_SPLIT_ACTORS.items():
        ds = RAVDESS(tiny["ravdess"], split)
        assert {c.actor for c in ds.info} == set(actors)
        assert len(ds) == 8 * len(actors)  # song file and notes.txt ignored
        counts = Counter(ds.labels)
        assert counts[EMOTIONS.index("neutral")] == 2 * len(actors)  # neutral + calm
        assert all(counts[c] == len(actors) for c in range(7) if EMOTIONS[c] != "neutral")
    ds = RAVDESS(tiny["ravdess"], "val")  # 48 kHz WAV files
    calm = next(i for i, c in enumerate(ds.info) if c.emotion == "calm")
    item = ds[calm]
    assert item["label"] == EMOTIONS.index("neutral") and item["actor"] == 19
    assert item["intensity"] == "normal" and item["statement"] == "Kids are talking by the door"
    wave = item["audio"]
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - int(DURATION * SAMPLE_RATE)) <= 2  # 48 kHz -> 16 kHz
    for i in range(len(ds)):
        assert label_of_tone(ds.wave(i)) == ds.labels[i]
    flac = RAVDESS(tiny["ravdess"], "train")
    assert flac.info[0].path.suffix == ".flac" and label_of_tone(flac.wave(0)) == flac.labels[0]


def test_log_mel_shape_range_and_pitch() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    low = log_mel((0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    high = log_mel((0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32))
    assert low.shape == (emotion.N_MELS, 1 + SAMPLE_RATE // emotion.HOP_LENGTH) and low.dtype == np.float32
    assert np.isfinite(low).all() and low.max() - low.min() <= emotion.TOP_DB + 1e-3
    assert low.mean(1).argmax() < high.mean(1).argmax()  # a higher tone lands in a higher band
    assert log_mel(np.zeros(800, np.float32), n_mels=40).shape == (40, 6)


def test_meld_crlf_quotes_and_mojibake(tiny: dict[str, Path]) -> None:
    raw = (tiny["meld"] / "train_sent_emo.csv").read_bytes()
    assert b"\r\n" in raw and "“".encode() in raw  # the fixture really is CRLF with typographic quotes
    train = MELD(tiny["meld"], "train")
    val = MELD(tiny["meld"], "val")
    assert val.path.name == "dev_sent_emo.csv" and len(val) == 7
    assert len(train) == 7 * 3 + 2
    for r in train.rows[:21]:
        assert r.text.endswith(QUOTES) and label_of_text(r.text) == r.label
    assert train.rows[-2].text == "neutral don’t “go”"
    assert train.rows[-1].text == "neutral he’s here…"
    assert train.rows[0].id == "dia0_utt0" and train[0]["label"] == EMOTIONS.index("angry")
    assert fix_mojibake(QUOTES) == QUOTES and fix_mojibake("Ça va") == "Ça va"


def test_find_root_env_and_default(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_root("ravdess", tiny["ravdess"]) == tiny["ravdess"].resolve()
    with pytest.raises(FusionError, match="unknown corpus 'iemocap'"):
        find_root("iemocap")
    monkeypatch.setenv("FUSION_MELD", str(tiny["meld"]))
    assert MELD(None, "test").root == tiny["meld"].resolve()
    monkeypatch.setenv("FUSION_RAVDESS", str(tmp_path / "gone"))
    with pytest.raises(FusionError, match=r"\$FUSION_RAVDESS .*gone: does not exist"):
        RAVDESS(None, "train")
    monkeypatch.setattr(emotion, "default_root", lambda corpus: tmp_path / "nowhere" / corpus)
    with pytest.raises(FusionError, match=r"FER2013 default folder .*nowhere.*: does not exist.*set FUSION_FER2013"):
        FER2013(None, "train")


# ---------------------------------------------------------------------------
# Bad input: clean errors naming the folder/file and the problem
# ---------------------------------------------------------------------------


def test_missing_and_wrong_folders(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for cls in (FER2013, RAVDESS, MELD):
        with pytest.raises(FusionError, match="missing: does not exist"):
            cls(missing, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FusionError, match="neither a train/ nor a test/"):
        FER2013(tmp_path / "empty")
    with pytest.raises(FusionError, match="no Actor_XX folders"):
        RAVDESS(tmp_path / "empty")
    with pytest.raises(FusionError, match="has none of train_sent_emo.csv"):
        MELD(tmp_path / "empty")
    with pytest.raises(FusionError, match="unknown FER2013 split 'dev'"):
        FER2013(tmp_path / "empty", "dev")


def test_fer_bad_layouts_and_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "a" / "train" / "contempt").mkdir(parents=True)
    with pytest.raises(FusionError, match=r"class folder .*contempt is not one of angry"):
        FER2013(tmp_path / "a")
    (tmp_path / "b" / "train" / "sad").mkdir(parents=True)
    (tmp_path / "b" / "train" / "sad" / "img_001.jpg").write_bytes(b"x")
    with pytest.raises(FusionError, match=r"split of FER2013 image .*img_001.jpg.*Training_"):
        FER2013(tmp_path / "b")
    (tmp_path / "c" / "test" / "sad").mkdir(parents=True)
    (tmp_path / "c" / "test" / "sad" / "PublicTest_1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FusionError, match=r"no Training_\* images for split 'train'"):
        FER2013(tmp_path / "c", "train")
    ds = FER2013(tmp_path / "c", "val")  # listing works; decoding names the file
    with pytest.raises(FusionError, match=r"PublicTest_1.jpg is unreadable or corrupt"):
        ds[0]


def test_ravdess_bad_files(tmp_path: Path) -> None:
    actor = tmp_path / "r" / "Actor_01"
    actor.mkdir(parents=True)
    (actor / "03-01-05-01-01-01-01.flac").write_bytes(b"fLaC but not really")
    ds = RAVDESS(tmp_path / "r", "train")
    assert ds.labels == [EMOTIONS.index("angry")]
    with pytest.raises(FusionError, match=r"03-01-05-01-01-01-01.flac is unreadable or corrupt"):
        ds[0]
    with pytest.raises(FusionError, match=r"no speech clips for split 'val' \(actors 19-20"):
        RAVDESS(tmp_path / "r", "val")
    (actor / "hello.wav").write_bytes(b"")
    with pytest.raises(FusionError, match=r"hello.wav is not a RAVDESS file name"):
        RAVDESS(tmp_path / "r")
    (actor / "hello.wav").unlink()
    (actor / "03-01-05-01-01-01-02.wav").write_bytes(b"")
    with pytest.raises(FusionError, match=r"actor 02 in the file name but the file is in Actor_01/"):
        RAVDESS(tmp_path / "r")
    (actor / "03-01-05-01-01-01-02.wav").unlink()
    (actor / "03-01-09-01-01-01-01.wav").write_bytes(b"")
    with pytest.raises(FusionError, match="codes out of range"):
        RAVDESS(tmp_path / "r")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(FusionError, match="empty.wav (holds no samples|is unreadable)"):
        load_audio(tmp_path / "empty.wav")


def test_log_mel_rejects_bad_waves() -> None:
    with pytest.raises(FusionError, match="empty waveform"):
        log_mel(np.zeros(0, np.float32))
    with pytest.raises(FusionError, match="mono waveform"):
        log_mel(np.zeros((2, 100), np.float32))
    with pytest.raises(FusionError, match="float samples"):
        log_mel(np.zeros(100, np.int16))
    with pytest.raises(FusionError, match="Nyquist"):
        log_mel(np.zeros(100, np.float32), sr=8000)


def test_meld_bad_csvs(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "train_sent_emo.csv").write_bytes(b"")
    with pytest.raises(FusionError, match=r"train_sent_emo.csv is empty"):
        MELD(root, "train")
    with pytest.raises(FusionError, match=r"dev_sent_emo.csv is missing"):
        MELD(root, "val")
    (root / "train_sent_emo.csv").write_bytes(b"Sr No.,Utterance,Speaker,Emotion\r\n")
    with pytest.raises(FusionError, match="header but no utterances"):
        MELD(root, "train")
    (root / "train_sent_emo.csv").write_bytes(b"Sr No.,Text,Emotion\r\n1,hi,joy\r\n")
    with pytest.raises(FusionError, match="no column Utterance"):
        MELD(root, "train")
    (root / "train_sent_emo.csv").write_bytes(b"Utterance,Emotion\r\nhi,joy\r\nho,happiness\r\n")
    with pytest.raises(FusionError, match=r"data row 2: emotion 'happiness'"):
        MELD(root, "train")


# ---------------------------------------------------------------------------
# Pairing by label
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_pairs_agree_on_label_balanced_and_from_the_split(tiny: dict[str, Path], split: str) -> None:
    p = pairs(tiny, split)
    cap = {"train": 3, "val": 1, "test": 1}[split]  # train: MELD 3/class and RAVDESS 3 actors; else 1
    assert p.cap == p.per_class == cap and len(p) == 7 * cap and not p.notes
    assert Counter(p.labels) == {c: cap for c in range(7)}
    for i, (label, f, a, t) in enumerate(p.pairs):
        assert p.faces.labels[f] == p.speech.labels[a] == p.texts.labels[t] == label
        item = p[i]
        decoded = (label_of_gray(item["face"]), label_of_tone(item["audio"]), label_of_text(item["text"]))
        assert decoded == (label,) * 3 and item["label"] == label
    used = {m: [ids[m] for ids in map(p.ids, range(len(p)))] for m in ("face", "audio", "text")}
    assert all(len(set(v)) == len(v) for v in used.values())  # no item twice without replacement
    prefix = {"train": "Training_", "val": "PublicTest_", "test": "PrivateTest_"}[split]
    assert all(Path(i).name.startswith(prefix) for i in used["face"])
    assert {int(i[-2:]) for i in used["audio"]} <= set(RAVDESS_SPLIT_ACTORS[split])
    assert set(used["text"]) <= set(p.texts.ids)


def test_pairing_is_fixed_by_the_seed(tiny: dict[str, Path], tmp_path: Path) -> None:
    a, b = pairs(tiny, "train", seed=7), pairs(tiny, "train", seed=7)
    assert a.pairs == b.pairs
    assert pairs(tiny, "train", seed=8).pairs != a.pairs
    # Golden values: the pairing is a pure function of (seed, split, item ids), the same on every machine.
    assert digest(pairs(tiny, "val", seed=0)) == "bb368dc66b5a2bb1"
    assert digest(a) == "59455bbae7fdb10c"
    # Same ids from another copy (RAVDESS as WAV instead of FLAC) -> same pairing.
    write_fer(tmp_path / "fer")
    write_ravdess(tmp_path / "rav", wav=True)
    write_meld(tmp_path / "meld")
    other = pairs({"fer": tmp_path / "fer", "ravdess": tmp_path / "rav", "meld": tmp_path / "meld"}, "train", seed=7)
    assert digest(other) == digest(a)


def test_pairing_is_the_same_in_another_process(tiny: dict[str, Path]) -> None:
    code = (
        "import sys; from fusion.data.emotion import TrimodalPairs as T; "
        "p = T('test', 3, fer_root=sys.argv[1], ravdess_root=sys.argv[2], meld_root=sys.argv[3]); "
        "print([tuple(p.ids(i).values()) for i in range(len(p))])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny["fer"]), str(tiny["ravdess"]), str(tiny["meld"])],
        capture_output=True, text=True, env=env, cwd=PROJECT, timeout=300, check=True,
    )  # fmt: skip
    here = pairs(tiny, "test", seed=3)
    assert out.stdout.strip() == str([tuple(here.ids(i).values()) for i in range(len(here))])


def test_train_reshuffle_and_fixed_eval(tiny: dict[str, Path]) -> None:
    p = pairs(tiny, "train", seed=1)
    first = list(p.pairs)
    p.reshuffle(1)
    assert p.pairs != first and p.epoch == 1
    assert Counter(p.labels) == {c: 3 for c in range(7)}
    assert all(p.faces.labels[f] == p.speech.labels[a] == p.texts.labels[t] == lab for lab, f, a, t in p.pairs)
    p.reshuffle(0)
    assert p.pairs == first
    v = pairs(tiny, "val")
    with pytest.raises(FusionError, match="fixed by the seed"):
        v.reshuffle(1)


def test_per_class_cap_and_replacement(tiny: dict[str, Path]) -> None:
    capped = pairs(tiny, "train", per_class=50)
    assert capped.per_class == 3 and len(capped) == 21 and "cut to 3" in capped.notes[0]
    assert len(pairs(tiny, "train", per_class=2)) == 14
    rep = pairs(tiny, "train", per_class=8, replacement=True)
    assert len(rep) == 56 and Counter(rep.labels) == {c: 8 for c in range(7)}
    uses = Counter(rep.ids(i)["audio"] for i in range(len(rep)))
    angry = [n for i, n in uses.items() if RAVDESS_EMOTION[int(i[6:8])][1] == "angry"]
    assert sorted(angry) == [2, 3, 3]  # 8 draws from 3 clips: as even as possible
    with pytest.raises(FusionError, match="train only"):
        pairs(tiny, "val", per_class=3, replacement=True)
    with pytest.raises(FusionError, match="needs per_class"):
        pairs(tiny, "train", replacement=True)
    with pytest.raises(FusionError, match="positive"):
        pairs(tiny, "train", per_class=0)


def test_pairing_needs_every_emotion(tiny: dict[str, Path], tmp_path: Path) -> None:
    write_meld(tmp_path)
    text = (tmp_path / "test_sent_emo.csv").read_bytes().decode("utf-8")
    kept = [line for line in text.split("\r\n") if ",disgust," not in line]
    assert len(kept) == 8  # header + 6 emotions + the final empty string
    (tmp_path / "test_sent_emo.csv").write_bytes("\r\n".join(kept).encode("utf-8"))
    with pytest.raises(FusionError, match="MELD test has no 'disgust' items"):
        TrimodalPairs("test", fer_root=tiny["fer"], ravdess_root=tiny["ravdess"], meld_root=tmp_path)


# ---------------------------------------------------------------------------
# Stats and the command line
# ---------------------------------------------------------------------------


def test_corpus_stats_and_cli(tiny: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    stats = corpus_stats(fer_root=tiny["fer"], ravdess_root=tiny["ravdess"], meld_root=tiny["meld"])
    assert stats["FER2013"]["val"] == {e: 2 for e in EMOTIONS}
    assert stats["RAVDESS"]["train"]["neutral"] == 6 and stats["RAVDESS"]["test"]["sad"] == 1
    assert stats["MELD"]["train"]["neutral"] == 5 and sum(stats["MELD"]["val"].values()) == 7
    argv = ["stats", "--fer2013", str(tiny["fer"]), "--ravdess", str(tiny["ravdess"]), "--meld", str(tiny["meld"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "RAVDESS  train" in out and "pairs per emotion in train (no replacement): 3 -> 21 samples" in out
    assert PAIRING_NOTE in out
    assert main(argv[:5] + ["--meld", str(tmp_path / "nope")]) == 2
    assert "MELD folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The shared copy (../shared/data), when it is there: listing and a handful of items only
# ---------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(
    not all((SHARED / c).is_dir() for c in ("fer2013", "ravdess", "meld")),
    reason=f"shared emotion corpora not found at {SHARED}/{{fer2013,ravdess,meld}} (a copy outside the project)",
)


@needs_shared
def test_shared_counts_match_the_readmes() -> None:
    stats = corpus_stats(fer_root=SHARED / "fer2013", ravdess_root=SHARED / "ravdess", meld_root=SHARED / "meld")
    total = {c: {s: sum(v.values()) for s, v in splits.items()} for c, splits in stats.items()}
    assert total["FER2013"] == {"train": 28709, "val": 3589, "test": 3589}
    assert stats["FER2013"]["train"]["disgust"] == 436 and stats["FER2013"]["train"]["happy"] == 7215
    assert sum(total["RAVDESS"].values()) == 1434
    assert total["MELD"] == {"train": 9989, "val": 1109, "test": 2610}
    assert all(n > 0 for splits in stats.values() for counts in splits.values() for n in counts.values())


@needs_shared
def test_shared_items_read() -> None:
    face = FER2013(SHARED / "fer2013", "val")[0]
    assert face["face"].shape == (48, 48) and face["face"].dtype == np.uint8 and face["face"].std() > 5
    speech = RAVDESS(SHARED / "ravdess", "val")
    clip = speech[0]
    assert clip["actor"] in (19, 20) and clip["audio"].dtype == np.float32
    assert 1.0 < clip["audio"].size / SAMPLE_RATE < 8.0 and np.abs(clip["audio"]).max() <= 1.0
    assert log_mel(clip["audio"]).shape[0] == emotion.N_MELS
    texts = MELD(SHARED / "meld", "train")
    assert any("’" in r.text for r in texts.rows[:50]) and not any("â€" in r.text for r in texts.rows)


@needs_shared
def test_shared_test_pairing_is_fixed() -> None:
    p = pairs({"fer": SHARED / "fer2013", "ravdess": SHARED / "ravdess", "meld": SHARED / "meld"}, "test", seed=0)
    assert p.per_class == 32 and len(p) == 224
    assert digest(p) == "93c3a960beea99fb"
    for label, f, a, t in p.pairs:
        assert p.faces.labels[f] == p.speech.labels[a] == p.texts.labels[t] == label
    assert p[0]["label"] == p.labels[0]
