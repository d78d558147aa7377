"""Near-duplicate grouping: planted near-twins never straddle splits; distinct scans stay apart; the real BUSI
copies are found."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpc_keras.cli import main
from fpc_keras.data.datasets import prepare_records, read_records, split_records
from fpc_keras.data.duplicates import find_duplicates, resolve_mode
from fpc_keras.errors import BadInputError


def scan(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A distinct 'scan': its own smooth random texture inside a shared sector, plus speckle."""
    coarse = rng.normal(0, 1, (6, 6))
    texture = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BICUBIC))
    yy, xx = np.mgrid[0:size, 0:size]
    sector = (np.abs(xx - size / 2) < (yy + 8) * 0.6).astype(float)
    return sector * (110 + 45 * texture) + rng.normal(0, 6, (size, size))


def twin(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The next frame of the same scan: shifted a pixel, 5 % brighter, fresh speckle."""
    return np.roll(image, 1, axis=1) * 1.05 + rng.normal(0, 6, image.shape)


def write(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def twins_dataset(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    """Two classes of 30 distinct scans; 8 scans per class get a near-twin saved under another file name."""
    rng = np.random.default_rng(3)
    root, planted = tmp_path / "twins", []
    for label in ("benign", "malignant"):
        for index in range(30):
            image = scan(rng)
            write(root / label / f"{label} ({index}).png", image)
            if index < 8:
                write(root / label / f"{label} ({100 + index}).png", twin(image, rng))
                planted.append((f"{label} ({index}).png", f"{label} ({100 + index}).png"))
    return root, planted


def split_of(records) -> dict[str, str]:
    return {Path(r.source).name: r.split for r in records}


def test_planted_near_twins_never_straddle_splits(twins_dataset):
    root, planted = twins_dataset
    straddled_without = 0
    for fold in range(5):
        grouped = split_of(prepare_records("folder", root, 0.2, 0.0, 0, folds=5, fold=fold))
        assert all(grouped[a] == grouped[b] for a, b in planted), fold
        ungrouped = split_of(prepare_records("folder", root, 0.2, 0.0, 0, folds=5, fold=fold, duplicates="off"))
        straddled_without += sum(ungrouped[a] != ungrouped[b] for a, b in planted)
    assert straddled_without > 0  # by file, twins do land on both sides: the grouping is what keeps them together


def test_distinct_scans_are_not_joined(twins_dataset):
    root, planted = twins_dataset
    found = find_duplicates(read_records("folder", root))
    clusters = sorted(sorted(Path(r).name for r in names) for names in
                      ([read_records("folder", root)[i].source for i in c] for c in found.clusters))
    assert clusters == sorted(sorted(pair) for pair in planted)


def test_auto_groups_only_data_without_subject_ids(twins_dataset):
    records = read_records("folder", twins_dataset[0])
    assert resolve_mode("auto", "folder", records) == "phash"
    assert resolve_mode("auto", "csv", records) == "off"  # a CSV whose group column names patients
    by_file = [r.__class__(r.source, r.label, Path(r.source).name) for r in records]
    assert resolve_mode("auto", "csv", by_file) == "phash"  # a CSV without a group column
    assert resolve_mode("auto", "hc18", by_file) == "off"  # patients, even with one image each
    assert resolve_mode("off", "folder", records) == "off"


def test_validator_refuses_near_twins_across_official_splits(twins_dataset, tmp_path):
    root, planted = twins_dataset
    rows = ["path,label,split"]
    for path in sorted(root.rglob("*.png")):
        split = "test" if path.name == planted[0][1] else "train"
        rows.append(f"{path},{path.parent.name},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(BadInputError, match="near-duplicate images"):
        prepare_records("csv", tmp_path / "labels.csv", 0.2, 0.0, 0)
    assert prepare_records("csv", tmp_path / "labels.csv", 0.2, 0.0, 0, duplicates="off")


def test_a_card_without_the_rule_splits_as_before(twins_dataset):
    """Old model cards record no `duplicates`: their test split is rebuilt without grouping, as they were
    trained."""
    from fpc_keras.evaluate import _split_as_trained

    records = read_records("folder", twins_dataset[0])
    rule = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "folds": 0, "fold": 0}
    old = _split_as_trained(records, {"training": {"split_rule": rule}})
    assert split_of(old) == split_of(split_records(records, 0.2, 0.2, 0, duplicates="off"))
    new = _split_as_trained(records, {"training": {"split_rule": {**rule, "duplicates": "phash",
                                                                   "duplicate_distance": 10}}})
    assert split_of(new) == split_of(split_records(records, 0.2, 0.2, 0, duplicates="phash"))
    assert split_of(new) != split_of(old)
    by_items = _split_as_trained(records, {"training": {"split_rule": {**rule, "split_quota": "items"}}})
    assert split_of(by_items) == split_of(split_records(records, 0.2, 0.2, 0, quota="items"))


@pytest.mark.realdata
def test_busi_copies_filed_under_two_classes_are_listed(shared_data, tmp_path, capsys):
    out = tmp_path / "busi.json"
    assert main(["datasets", f"folder:{shared_data / 'BUSI'}", "--duplicates", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    mixed = [sorted(c["items"]) for c in summary["mixed_label_clusters"]]
    assert ["benign/benign (164).png", "malignant/malignant (52).png"] in mixed
    assert 50 <= summary["clusters"] <= 150 and summary["groups_after"] < summary["items"]
    assert "near-duplicate clusters" in capsys.readouterr().out


def test_the_report_shows_each_dataset_s_clusters_with_thumbnails(twins_dataset, tmp_path, capsys):
    from fpc_keras.report import build_report

    root, planted = twins_dataset
    (tmp_path / "reports" / "duplicates").mkdir(parents=True)
    store = tmp_path / "reports" / "duplicates" / "twins.json"
    assert main(["datasets", f"folder:{root}", "--duplicates", "--out", str(store)]) == 0
    assert f"{len(planted)} near-duplicate clusters" in capsys.readouterr().out
    page = build_report(tmp_path / "runs", tmp_path / "reports" / "index.html", lambda _: None,
                        tmp_path / "no_models").read_text()
    section = page[page.index('id="near-duplicates"'):]
    assert f"<td>folder:{root}</td><td>76</td><td>{len(planted)}</td><td>{2 * len(planted)}</td>" in section
    assert section.count('alt="cluster of 2"') == 6  # the six largest clusters drawn
