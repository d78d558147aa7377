import zipfile

import numpy as np
import pytest
from PIL import Image

from fpc_keras.data.datasets import parse_data_spec, prepare_records, read_dataset
from fpc_keras.data.fetal_planes import read_fetal_planes
from fpc_keras.data.folders import prefix_label
from fpc_keras.data.tables import read_table
from fpc_keras.errors import BadInputError

FETAL_HEADER = "Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"


def test_folder_reader(folder_dataset):
    records = read_dataset("folder", folder_dataset)
    assert len(records) == 36
    assert {r.label for r in records} == {"alpha", "beta", "gamma"}
    assert len({r.group for r in records}) == 36


@pytest.mark.parametrize("name, label", [("bowel--0056.png", "bowel"), ("Pneu-Atlas.gif", "pneu"),
                                         ("Cov_combatting_Image1.mp4", "cov"), ("noprefix.png", None)])
def test_prefix_label(name, label):
    assert prefix_label(name) == label


def test_prefix_reader_with_aliases_and_subfolders(tmp_path):
    for sub, name in [("convex", "Pne-a.png"), ("linear", "pneu_b.png"), ("linear", "Reg-c.png"), ("", "REG_d.png")]:
        (tmp_path / sub).mkdir(exist_ok=True)
        Image.new("L", (4, 4)).save(tmp_path / sub / name)
    records = read_dataset("prefix", tmp_path, aliases={"Pneu": "pne"})
    assert sorted(r.label for r in records) == ["pne", "pne", "reg", "reg"]


def test_prefix_reader_refuses_unlabelled_files(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "scan.png")
    with pytest.raises(BadInputError, match="no class prefix"):
        read_dataset("prefix", tmp_path)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(BadInputError, match="no labelled files"):
        read_dataset("folder", tmp_path)
    with pytest.raises(BadInputError, match="dataset folder not found"):
        read_dataset("folder", tmp_path / "nope")


def test_data_spec():
    assert parse_data_spec("prefix:/a:b") == ("prefix", "/a:b")
    with pytest.raises(BadInputError, match="KIND is one of"):
        parse_data_spec("xls:/x")


def _fetal_db(root, rows):
    (root / "Images").mkdir(parents=True)
    lines = [FETAL_HEADER]
    for name, patient, plane, train in rows:
        lines.append(f"{name};{patient};{plane};Not A Brain;Op. A;Voluson E6;{train} \n")
        Image.new("L", (12, 10), 50).save(root / "Images" / f"{name}.png")
    (root / "FETAL_PLANES_DB_data.csv").write_text("".join(lines))
    return root


def test_fetal_planes_folder_and_zip(tmp_path):
    rows = [(f"Patient{p:05d}_Plane{k}_1_of_1", p, plane, int(p < 6)) for p in range(10)
            for k, plane in enumerate(["Fetal brain", "Other"])]
    root = _fetal_db(tmp_path / "db", rows)
    records = read_fetal_planes(root)
    assert len(records) == 20
    assert {r.split for r in records if r.group == "patient1"} == {"train"}
    assert {r.split for r in records if r.group == "patient8"} == {"test"}
    archive = tmp_path / "FETAL_PLANES_ZENODO.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in root.rglob("*"):
            if path.is_file():
                z.write(path, "FETAL_PLANES_ZENODO/" + str(path.relative_to(root)))
    zipped = read_dataset("fetal_planes", archive)
    assert [r.label for r in zipped] == [r.label for r in records]
    from fpc_keras.data.images import read_image
    assert read_image(zipped[0].source, 1).shape == (10, 12, 1)
    split = prepare_records("fetal_planes", root, 0.2, 0.5, 0)
    assert {r.split for r in split if r.group == "patient8"} == {"test"}  # the official test split is kept


def test_fetal_planes_missing_images_and_columns(tmp_path):
    root = _fetal_db(tmp_path / "db", [("Patient00001_Plane1_1_of_1", 1, "Other", 1)])
    (root / "Images" / "Patient00001_Plane1_1_of_1.png").unlink()
    with pytest.raises(BadInputError, match="1 of 1 images listed"):
        read_fetal_planes(root)
    (root / "FETAL_PLANES_DB_data.csv").write_text("Image_name,Patient_num,Plane,Train\nx,1,Other,1\n")
    with pytest.raises(BadInputError, match="lacks column"):
        read_fetal_planes(root)


def test_table_reader_quirks():
    frame = read_table("a;b \n1;x\n1;x\n2;y \n".encode("cp1252"), "t.csv", ("a", "b"))
    assert list(frame.columns) == ["a", "b"] and len(frame) == 2  # duplicate row dropped, spaces stripped
    assert read_table("a,b\ncafé,1\n".encode("cp1252"), "t.csv", ("a",))["a"][0] == "café"
    with pytest.raises(BadInputError, match="is the delimiter"):
        read_table(b"a|b\n1|2\n", "t.csv", ("a", "b"), sep=",")


@pytest.mark.realdata
def test_real_fetal_planes_csv_with_generated_images(tmp_path, shared_data):
    """The real 12,400-row CSV; tiny generated PNGs stand in for the images that are not available here."""
    csv_path = shared_data / "FETAL_PLANES_DB" / "FETAL_PLANES_DB_data.csv"
    root = tmp_path / "FETAL_PLANES_ZENODO"
    (root / "Images").mkdir(parents=True)
    (root / "FETAL_PLANES_DB_data.csv").write_bytes(csv_path.read_bytes())
    frame = read_table(csv_path.read_bytes(), "csv", ("Image_name",), sep=";")
    blank = np.zeros((8, 8), np.uint8)
    for name in frame["Image_name"]:
        Image.fromarray(blank).save(root / "Images" / f"{name}.png", compress_level=0)
    records = prepare_records("fetal_planes", root, 0.15, 0.0, 0)
    assert len(records) == 12400
    assert sum(r.split == "test" for r in records) == 5271
    assert sum(r.split in ("train", "val") for r in records) == 7129
    assert len({r.group for r in records}) == 1792
    assert len({r.label for r in records}) == 6


def test_csv_dataset_with_study_ids(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("L", (4, 4)).save(tmp_path / "img" / name)
    (tmp_path / "labels.csv").write_text("Image,Class,Study\nimg/a.png,liver,s1\nimg/b.png,kidney,s1\n"
                                         f"{tmp_path / 'img' / 'c.png'},liver,s2\n")
    records = read_dataset("csv", tmp_path / "labels.csv")
    assert [(r.label, r.group) for r in records] == [("liver", "s1"), ("kidney", "s1"), ("liver", "s2")]
    split = prepare_records("csv", tmp_path / "labels.csv", 0.0, 0.5, 0)
    assert len({r.split for r in split if r.group == "s1"}) == 1  # a study never straddles splits


@pytest.mark.parametrize("content, words", [
    ("file;kind\nimg/a.png;liver\n", "no label column"),
    ("path,label,split\nimg/a.png,liver,holdout\n", "split 'holdout'"),
    ("path,label\nimg/zzz.png,liver\n", "listed in .* are missing"),
])
def test_csv_dataset_errors(tmp_path, content, words):
    (tmp_path / "img").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "img" / "a.png")
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(BadInputError, match=words):
        read_dataset("csv", tmp_path / "labels.csv")
