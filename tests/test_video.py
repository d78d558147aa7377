"""Video reading (mp4, gif, DICOM cines), evenly spaced clips, and view videos listed in a CSV with patient ids."""
from pathlib import Path

import numpy as np
import pytest

from fpc_keras.data.datasets import read_dataset
from fpc_keras.data.video import clip_starts, read_video, take_clip
from fpc_keras.errors import BadInputError
from conftest import video_frames, write_gif, write_mp4


def write_dicom(path, frames, with_pixels=True):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # ultrasound multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    gray = frames[..., 0]
    ds.Rows, ds.Columns = gray.shape[1:]
    ds.NumberOfFrames = len(gray)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if with_pixels:
        ds.PixelData = gray.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


@pytest.mark.parametrize("suffix, writer", [(".mp4", write_mp4), (".gif", write_gif), (".dcm", write_dicom)])
def test_decode_formats(tmp_path, suffix, writer):
    path = tmp_path / f"Cov_clip 1{suffix}"
    writer(path, video_frames())
    video = read_video(str(path), (32, 32), 3, "pad")
    assert video.shape == (12, 32, 32, 3) and video.dtype == np.uint8
    assert read_video(str(path), (16, 16), 1, "stretch", max_frames=5).shape == (5, 16, 16, 1)


def test_undecodable_videos_name_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty.mp4 is an empty"):
        read_video(str(empty), (8, 8))
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\0" * 5000)
    with pytest.raises(BadInputError, match="junk.avi cannot be decoded"):
        read_video(str(junk), (8, 8))
    no_pixels = tmp_path / "nopix.dcm"
    write_dicom(no_pixels, video_frames(), with_pixels=False)
    with pytest.raises(BadInputError, match="without pixel data"):
        read_video(str(no_pixels), (8, 8))


def test_zero_frame_video(tmp_path):
    path = tmp_path / "zero.mp4"
    write_mp4(path, video_frames(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # header survives, frames do not
    with pytest.raises(BadInputError, match="zero.mp4"):
        read_video(str(path), (8, 8))


def test_clip_sampling():
    assert clip_starts(100, 16, 4) == [0, 28, 56, 84]
    assert clip_starts(10, 16, 3) == [0, 0, 0]
    rng_starts = clip_starts(100, 16, 5, np.random.default_rng(0))
    assert all(0 <= s <= 84 for s in rng_starts)
    clip = take_clip(np.arange(10)[:, None], 6, 8)
    assert clip[:, 0].tolist() == [6, 7, 8, 9, 9, 9, 9, 9]


def test_video_dataset_groups_by_source(tmp_path):
    for name in ("Cov_src_Image1.mp4", "Cov_src_Image2.mp4", "Reg-other.gif"):
        (write_gif if name.endswith("gif") else write_mp4)(tmp_path / name, video_frames(4))
    records = read_dataset("videos", tmp_path)
    groups = {r.source.rsplit("/", 1)[1]: r.group for r in records}
    assert groups["Cov_src_Image1.mp4"] == groups["Cov_src_Image2.mp4"] != groups["Reg-other.gif"]


@pytest.mark.realdata
def test_real_pocus_videos_decode(shared_data):
    records = read_dataset("videos", shared_data / "POCUS_videos", aliases={"pneu": "pne"})
    assert {r.label for r in records} == {"cov", "pne", "reg", "vir"}
    by_suffix = {}
    for record in records:
        by_suffix.setdefault(record.source.rsplit(".", 1)[1].lower(), record)
    for record in by_suffix.values():  # one video of each container format
        video = read_video(record.source, (64, 64), 3, "pad", max_frames=8)
        assert video.shape[1:] == (64, 64, 3) and 1 <= len(video) <= 8, record.source


def test_training_clips_jitter_in_time_and_speed():
    from fpc_keras.data.video import sample_clip

    rng = np.random.default_rng(0)
    clips = [sample_clip(100, 16, rng) for _ in range(200)]
    assert all(len(c) == 16 and c.min() >= 0 and c.max() <= 99 and (np.diff(c) >= 0).all() for c in clips)
    spans = [c[-1] - c[0] for c in clips]
    starts = [c[0] for c in clips]
    assert 11 <= min(spans) and max(spans) <= 19 and max(spans) - min(spans) >= 5  # speeds 0.8..1.25
    assert max(starts) > 60 and min(starts) < 10  # starts spread over the video
    short = sample_clip(5, 16, rng)
    assert len(short) == 16 and short.max() == 4  # a short video repeats its last frame
    np.testing.assert_array_equal(sample_clip(100, 16, np.random.default_rng(3)),
                                  sample_clip(100, 16, np.random.default_rng(3)))


def test_cached_video_decodes_once_and_redecodes_a_changed_file(tmp_path, monkeypatch):
    from fpc_keras.data import video

    path = tmp_path / "clip.gif"
    write_gif(path, video_frames())
    calls = []
    real = video.read_video
    monkeypatch.setattr(video, "read_video", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    first = video.cached_video(str(path), (16, 16), 3, "pad", tmp_path / "cache")
    again = video.cached_video(str(path), (16, 16), 3, "pad", tmp_path / "cache")
    np.testing.assert_array_equal(first, again)
    assert first.shape == (12, 16, 16, 3) and len(calls) == 1 and len(list((tmp_path / "cache").glob("*.npy"))) == 1
    video.cached_video(str(path), (24, 24), 3, "pad", tmp_path / "cache")  # another size: decoded anew
    write_gif(path, video_frames(n=5))
    assert len(video.cached_video(str(path), (16, 16), 3, "pad", tmp_path / "cache")) == 5 and len(calls) == 3
    with pytest.raises(BadInputError, match="not found"):
        video.cached_video(str(tmp_path / "gone.mp4"), (16, 16), 3, "pad", tmp_path / "cache")


def _echo_cines(shared_data, root, views=("a4c", "plax", "psax-av"), patients: int = 4):
    """Short cine loops made from the real echocardiography frames (one per view): each patient's loop is its view's
    frame shifted by a patient-specific offset and pulsing in zoom, as a beating heart does; a CSV lists them with
    their view and patient id, and with a second loop per patient so that patients must stay on one side."""
    import csv

    from PIL import Image

    root.mkdir(parents=True)
    rows = []
    for view in views:
        base = np.asarray(Image.open(shared_data / "echo_views" / f"{view}.png").convert("RGB").resize((48, 48)))
        for patient in range(patients):
            for loop in range(2):
                frames = []
                for t in range(8):
                    zoom = 1 + 0.06 * np.sin(2 * np.pi * t / 8 + loop)
                    size = int(48 * zoom)
                    frame = np.asarray(Image.fromarray(base).resize((size, size)))
                    top = (size - 40) // 2 + patient - 2
                    frames.append(frame[max(top, 0):max(top, 0) + 40, max(top, 0):max(top, 0) + 40])
                name = f"{view}_p{patient}_loop{loop}.gif"
                write_gif(root / name, np.stack(frames))
                rows.append({"path": name, "label": view, "patient_id": f"{view}-{patient}"})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "labels.csv"


@pytest.mark.realdata
def test_echo_view_videos_listed_in_a_csv_run_through_the_video_script(shared_data, tmp_path):
    """The echo path of experiments/video_classification.py: view videos listed in a CSV with patient ids
    (`videos:labels.csv`), made from real echo frames; patients never straddle splits, and the run trains,
    evaluates whole test videos and reports them in the ablation table."""
    import argparse
    import csv
    import importlib.util

    from conftest import REPO

    labels = _echo_cines(shared_data, tmp_path / "echo")
    spec = importlib.util.spec_from_file_location("video_classification",
                                                  REPO / "experiments" / "video_classification.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = argparse.Namespace(folds=0, runs=str(tmp_path / "runs"), slow=["scratch"], set=[
        "data.image_size=[32, 32]", "data.clip_length=4", "data.clips_per_video=2", "model.alpha=2",
        "train.epochs=1", "train.batch_size=4", "export.latency_runs=2"])
    table = script.run_dataset("echo", f"videos:{labels}", args)
    row = table["rows"][0]
    assert table["chosen"] == "sf_echo_scratch" and row["n_test"] >= 3
    assert set(row["test"]) == {"top1", "top2", "macro_f1"}
    with open(Path(row["folder"]) / "splits.csv") as f:
        splits = list(csv.DictReader(f))
    assert len(splits) == 24
    sides = {}
    for r in splits:
        sides.setdefault(Path(r["source"]).name.rsplit("_loop", 1)[0], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values()), sides


def test_a_csv_of_videos_must_list_videos(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not read")
    (tmp_path / "labels.csv").write_text("path,label,patient\na.png,a4c,p1\n")
    with pytest.raises(BadInputError, match=r"not videos, e.g. .*a\.png"):
        read_dataset("videos", tmp_path / "labels.csv")
