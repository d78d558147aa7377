"""`fpc-keras predict` on new, unlabelled scans: the shipped models on real images, videos and DICOM files
written here, the CSV it writes, and one clear line (exit 2) for each kind of bad input."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from fpc_keras.cli import main
from fpc_keras.data.images import read_image

MODELS = REPO / "tflite" / "models"
SEGMENTER = MODELS / "hc18_fetalnet" / "model.tflite"
CLASSIFIER = MODELS / "abdominal_vgg16_frozen" / "model.tflite"
VIDEO_MODEL = MODELS / "pocus_slowfast" / "model.tflite"


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_dicom(path: Path, frames: np.ndarray, pixel_mm: float | None = None, pixels: bool = True) -> Path:
    """A minimal ultrasound DICOM (still: one frame; cine: several) as a scanner exports it."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID, "US"
    if pixels:
        ds.Rows, ds.Columns = frames.shape[1:3]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if len(frames) > 1:
            ds.NumberOfFrames = len(frames)
        ds.PixelData = np.ascontiguousarray(frames.astype(np.uint8)).tobytes()
    if pixel_mm:
        ds.PixelSpacing = [pixel_mm, pixel_mm]
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def hc18_images(tmp_path_factory) -> tuple[Path, dict[str, float], dict[str, float]]:
    """Three real HC18 training images, their pixel sizes and their annotated head circumferences."""
    root = Path(os.environ.get("FPC_SHARED_DATA", REPO.parent / "shared" / "data")) / "HC18"
    table = list(csv.DictReader(open(root / "training_set_pixel_size_and_HC.csv")))[:3]
    folder = tmp_path_factory.mktemp("hc18")
    for row in table:
        (folder / row["filename"]).write_bytes((root / "training_set" / row["filename"]).read_bytes())
    return (folder, {r["filename"]: float(r["pixel size(mm)"]) for r in table},
            {r["filename"]: float(r["head circumference (mm)"]) for r in table})


@pytest.mark.realdata
def test_segmenter_measures_real_scans_in_mm_from_a_pixel_csv(hc18_images, tmp_path):
    folder, sizes, truth = hc18_images
    pixel_csv = tmp_path / "sizes.csv"
    pixel_csv.write_text("filename,pixel size(mm)\n" + "".join(f"{k},{v}\n" for k, v in sizes.items()))
    out = tmp_path / "out" / "predictions.csv"
    assert main(["predict", "--model", str(SEGMENTER), "--input", str(folder), "--out", str(out),
                 "--pixel-csv", str(pixel_csv), "--overlays", str(tmp_path / "overlays")]) == 0
    rows = {Path(r["file"]).name: r for r in rows_of(out)}
    assert set(rows) == set(truth)
    for name, row in rows.items():
        assert abs(float(row["hc_mm"]) - truth[name]) < 10, (name, row["hc_mm"], truth[name])  # card: 1.95 mm mean
        assert float(row["pixel_mm"]) == sizes[name] and float(row["semi_axis_a"]) > float(row["semi_axis_b"]) > 0
    assert len(list((tmp_path / "overlays").glob("*_mask.png"))) == 3


@pytest.mark.realdata
def test_a_dicom_still_gives_its_own_pixel_size(hc18_images, tmp_path):
    folder, sizes, _ = hc18_images
    name = sorted(sizes)[0]
    grey = read_image(str(folder / name), 1)[..., 0]
    dicom = write_dicom(tmp_path / "scan.dcm", grey[None], pixel_mm=sizes[name])
    assert main(["predict", "--model", str(SEGMENTER), "--input", str(dicom), "--out", str(tmp_path / "d.csv")]) == 0
    assert main(["predict", "--model", str(SEGMENTER), "--input", str(folder / name), "--out", str(tmp_path / "p.csv"),
                 "--pixel-mm", str(sizes[name])]) == 0
    from_dicom, from_png = rows_of(tmp_path / "d.csv")[0], rows_of(tmp_path / "p.csv")[0]
    assert float(from_dicom["pixel_mm"]) == pytest.approx(sizes[name])
    assert float(from_dicom["hc_mm"]) == pytest.approx(float(from_png["hc_mm"]), abs=0.05)


@pytest.mark.realdata
def test_a_segmenter_without_a_pixel_size_is_refused(hc18_images, tmp_path, capsys):
    folder, _, _ = hc18_images
    assert main(["predict", "--model", str(SEGMENTER), "--input", str(folder), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "no pixel size" in err and "--pixel-mm" in err and not (tmp_path / "p.csv").exists()


@pytest.mark.realdata
def test_classifier_labels_a_folder_tree_as_evaluate_scores_it(shared_data, tmp_path):
    """The rows' probabilities are the evaluator's for the same images (the same pixels reach the model)."""
    from fpc_keras.data.datasets import read_dataset
    from fpc_keras.evaluate import class_probabilities, load_predictor

    records = [r for r in read_dataset("prefix", shared_data / "abdominal_organs") if r.source.endswith("1.png")][:6]
    for index, record in enumerate(records):
        target = tmp_path / "scans" / f"day{index % 2}" / f"scan{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(record.source).read_bytes())
    out = tmp_path / "labels.csv"
    assert main(["predict", "--model", str(CLASSIFIER), "--input", str(tmp_path / "scans"), "--out", str(out)]) == 0
    rows = {Path(r["file"]).name: r for r in rows_of(out)}
    expected = class_probabilities(load_predictor(CLASSIFIER), records)
    labels = ["bladder", "bowel", "gallbladder", "kidney", "liver", "spleen"]
    for index, probs in enumerate(expected):
        row = rows[f"scan{index}.png"]
        assert np.allclose([float(row[f"p_{label}"]) for label in labels], probs, atol=1e-5)
        assert row["label"] == labels[int(np.argmax(probs))]


@pytest.mark.realdata
def test_video_classifier_labels_a_video_and_a_dicom_cine(shared_data, tmp_path):
    from fpc_keras.data.video import read_video

    video = sorted((shared_data / "POCUS_videos").rglob("*.mp4"))[0]
    frames = read_video(str(video), (120, 160), 1)[:20, :, :, 0]
    cine = write_dicom(tmp_path / "cine.dcm", frames)
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / video.name).write_bytes(video.read_bytes())
    (folder / "cine.dcm").write_bytes(cine.read_bytes())
    out = tmp_path / "videos.csv"
    assert main(["predict", "--model", str(VIDEO_MODEL), "--input", str(folder), "--out", str(out)]) == 0
    rows = rows_of(out)
    assert sorted(Path(r["file"]).name for r in rows) == sorted(["cine.dcm", video.name])
    for row in rows:
        probs = [float(row[f"p_{label}"]) for label in ("cov", "pneu", "reg", "vir")]  # int8: steps of 1/256
        assert sum(probs) == pytest.approx(1.0, abs=0.02) and row["label"] in ("cov", "pneu", "reg", "vir")


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments after predict, what the one error line must name)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    header_only = write_dicom(tmp_path / "header.dcm", np.zeros((1, 8, 8)), pixels=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes through permissions; sysfs refuses even root a new file
        locked = Path("/sys")
    image = tmp_path / "scan.png"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(image)
    out = str(tmp_path / "p.csv")
    return {"missing path": (["--model", str(CLASSIFIER), "--input", str(tmp_path / "nowhere"), "--out", out],
                             "nowhere"),
            "empty folder": (["--model", str(CLASSIFIER), "--input", str(tmp_path / "empty"), "--out", out], "empty"),
            "text named .png": (["--model", str(CLASSIFIER), "--input", str(tmp_path / "notes.png"), "--out", out],
                                "notes.png"),
            "undecodable video": (["--model", str(VIDEO_MODEL), "--input", str(tmp_path / "broken.mp4"),
                                   "--out", out], "broken.mp4"),
            "dicom without pixels": (["--model", str(CLASSIFIER), "--input", str(header_only), "--out", out],
                                     "without pixel data"),
            "maps of a video model": (["--model", str(VIDEO_MODEL), "--input", str(tmp_path / "broken.mp4"),
                                       "--out", out, "--overlays", str(tmp_path / "maps")], "classifies videos"),
            "read-only --out": (["--model", str(CLASSIFIER), "--input", str(image), "--out",
                                 str(locked / "p.csv")], str(locked))}


@pytest.mark.parametrize("case", ["missing path", "empty folder", "text named .png", "undecodable video",
                                  "dicom without pixels", "maps of a video model", "read-only --out"])
def test_bad_input_gets_one_line_naming_the_file_and_the_fix(case, tmp_path):
    arguments, named = _bad_inputs(tmp_path)[case]
    done = subprocess.run([sys.executable, "-m", "fpc_keras.cli", "predict", *arguments], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[0].startswith("error: ") and named in lines[0] and "Traceback" not in done.stderr
    assert len(lines) == 2 and lines[1].strip().startswith("Fix:"), lines


def test_skip_lists_and_counts_unreadable_files(tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (80, 80), np.uint8)).save(folder / f"{index}.png")
    (folder / "notes.png").write_text("not an image")
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(CLASSIFIER), "--input", str(folder), "--out", str(out),
                 "--on-bad-input", "skip"]) == 0
    assert [Path(r["file"]).name for r in rows_of(out)] == ["0.png", "1.png"]
    err = capsys.readouterr().err
    assert "1 unreadable" in err and "notes.png" in err
