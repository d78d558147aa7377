"""The bad-input corpus (tests/bad_inputs/, written by its make_corpus.py) through every reader and through the
CLI: each file gives a clear error naming it and the fix, or is read correctly, or is counted and reported as a
skip — never a TensorFlow traceback — and nothing in runs/ is corrupted."""
import hashlib
import re
import shutil
from pathlib import Path

import pytest

from conftest import write_folder_dataset
from fpc_keras.cli import main
from fpc_keras.data.datasets import prepare_records
from fpc_keras.data.images import read_image
from fpc_keras.data.video import read_video
from fpc_keras.errors import BadInputError
from fpc_keras.io import read_json

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
# file -> None (read correctly) or words its one-line error must contain
IMAGES = {"truncated.png": "truncated", "zero_byte.png": "empty (0-byte)", "sixteen_bit.png": None,
          "rgba.png": None, "cmyk.jpg": None, "huge_20000x20000.png": "too large", "one_pixel.png": "too small",
          "scan with spaces é ü.png": None}
TABLES = {"utf16.csv": None, "undecodable.csv": "neither UTF-8", "wrong_delimiter.csv": "is the delimiter",
          "duplicate_rows.csv": None, "label_typo.csv": "looks like a typo of 'kidney'"}
VIDEOS = {"zero_frames.mp4": "cannot be decoded as a video", "no_pixel_data.dcm": "without pixel data"}
BAD_IMAGES = sorted(name for name, words in IMAGES.items() if words)


@pytest.mark.parametrize("name", IMAGES)
def test_image_reader(name):
    path = str(CORPUS / "images" / name)
    if IMAGES[name] is None:
        image = read_image(path)
        assert image.dtype.name == "uint8" and image.shape[2] == 3 and image.max() > 0
    else:
        with pytest.raises(BadInputError, match=re.escape(IMAGES[name])) as caught:
            read_image(path)
        assert path in caught.value.what and caught.value.fix


@pytest.mark.parametrize("name", TABLES)
def test_table_reader(name, capsys):
    path = CORPUS / "tables" / name
    if TABLES[name] is None:
        records = prepare_records("csv", path, 0.0, 0.5, 0)
        assert {r.label for r in records} == {"liver", "kidney"} and len(records) == 2
    else:
        with pytest.raises(BadInputError, match=re.escape(TABLES[name])):
            prepare_records("csv", path, 0.0, 0.5, 0)
    if name == "duplicate_rows.csv":
        assert "2 duplicate row(s) dropped" in capsys.readouterr().err


@pytest.mark.parametrize("name", VIDEOS)
def test_video_reader(name):
    with pytest.raises(BadInputError, match=re.escape(VIDEOS[name])) as caught:
        read_video(str(CORPUS / "videos" / name), (16, 16))
    assert str(CORPUS / "videos" / name) in caught.value.what and len(caught.value.what) < 400


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


@pytest.fixture
def mixed_dataset(tmp_path):
    """A 3-class folder dataset with every corpus image added to class `beta`."""
    data = write_folder_dataset(tmp_path / "data", per_class=4)
    for name in IMAGES:
        shutil.copy(CORPUS / "images" / name, data / "beta" / name)
    return data


def test_cli_evaluate_stops_or_skips_and_runs_stay_intact(trained, mixed_dataset, tmp_path, capsys):
    runs = trained["run"].parent
    before = _fingerprint(runs)
    err = _error_line(["evaluate", "--model", str(trained["run"]), "--data", f"folder:{mixed_dataset}"], capsys)
    assert any(name in err for name in BAD_IMAGES) and "Fix:" in err
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(trained["run"]), "--data", f"folder:{mixed_dataset}",
                 "--on-bad-input", "skip", "--out", str(out)]) == 0
    results = read_json(out)
    assert sorted(Path(p).name for p in results["skipped"]) == BAD_IMAGES
    assert results["n"] == 12 + len(IMAGES) - len(BAD_IMAGES)
    assert _fingerprint(runs) == before


def test_cli_train_stops_or_skips(mixed_dataset, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    common = ["--config", str(config), "--set", f"runs_dir={tmp_path / 'runs'}", "--set", "data.kind=folder",
              "--set", f"data.path={mixed_dataset}", "--set", "data.image_size=[32, 32]", "--set",
              "model.weights=none", "--set", "model.head_units=[8]", "--set", "train.epochs=1", "--set",
              "train.cache_features=false"]
    err = _error_line(["train", *common, "--set", "name=stops"], capsys)
    assert any(name in err for name in BAD_IMAGES)
    assert not (tmp_path / "runs" / "stops" / "model.keras").exists()
    assert main(["train", *common, "--set", "name=skips", "--set", "data.on_bad_input=skip"]) == 0
    assert "unreadable file(s) skipped" in capsys.readouterr().out
    assert not list((tmp_path / "runs").rglob("*.tmp"))  # no half-written file left behind


@pytest.mark.parametrize("name", [n for n, words in TABLES.items() if words])
def test_cli_refuses_bad_tables(name, capsys):
    err = _error_line(["datasets", f"csv:{CORPUS / 'tables' / name}"], capsys)
    assert TABLES[name].split("'")[0] in err


def test_exit_code_of_states_user_errors_and_raises_bugs(capsys):
    from fpc_keras.errors import BadInputError, exit_code_of

    def corrupt() -> None:
        raise BadInputError("scan.png is not an image", "replace or remove it")

    assert exit_code_of(corrupt) == 2
    assert capsys.readouterr().err == "error: scan.png is not an image\n  Fix: replace or remove it\n"
    assert exit_code_of(lambda: None) == 0 and exit_code_of(lambda: 3) == 3
    with pytest.raises(ZeroDivisionError):
        exit_code_of(lambda: 1 / 0)
