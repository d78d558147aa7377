"""The input check (`fpc_keras.familiarity`): its threshold measures how far a new group lies, not how alike a scan's
near-twins are; fitted beside a model on the BUSI sample the repo ships, the TF-free runner flags an image unlike
them and passes theirs; its int8 encoder keeps the Keras encoder's embeddings; bad files are named."""
import json
import shutil

import jsonschema
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_blocked, video_frames, write_mp4
from fpc_keras.cli import main
from fpc_keras.errors import BadInputError
from fpc_keras.familiarity import (ENCODER_FILE, REFERENCE_FILE, carried_over, distances, fit_reference, load_reference,
                                   save_reference, unit_rows)

BUSI_SAMPLE = REPO / "samples" / "busi_small"


def _mixtures(rng, count: int, prototypes: np.ndarray) -> np.ndarray:
    """Non-negative mixtures of `prototypes` (like post-ReLU features of one kind of image)."""
    return rng.dirichlet(np.ones(len(prototypes)), count) @ prototypes


def test_threshold_is_the_distance_to_other_groups_not_to_near_twins():
    rng = np.random.default_rng(0)
    prototypes = rng.random((4, 32))
    scans = _mixtures(rng, 30, prototypes)
    twins = np.repeat(scans, 3, axis=0) + rng.normal(0, 1e-3, (90, 32))  # 3 near-identical frames per scan
    by_scan, _ = fit_reference(twins, np.repeat(np.arange(30), 3).astype(str))
    by_frame, _ = fit_reference(twins, np.arange(90).astype(str))
    assert by_scan.threshold > 10 * by_frame.threshold  # grouped: a new scan's distance, not a twin's
    new_scans = distances(by_scan, _mixtures(rng, 200, prototypes))
    assert np.mean(new_scans > by_scan.threshold) < 0.1
    unlike = distances(by_scan, rng.random((20, 4)) @ rng.random((4, 32)) * (rng.random(32) > 0.5))
    assert np.all(unlike > by_scan.threshold)


def test_too_few_images_or_one_group_is_refused():
    with pytest.raises(BadInputError, match="cannot show how far"):
        fit_reference(np.ones((5, 8)), list("abcde"))
    with pytest.raises(BadInputError, match="1 group"):
        fit_reference(np.random.default_rng(0).random((20, 8)), ["one"] * 20)


def test_reference_round_trip_and_a_corrupt_file_named(tmp_path):
    reference, _ = fit_reference(np.random.default_rng(1).random((12, 8)), list("aabbccddeeff"))
    save_reference(tmp_path / REFERENCE_FILE, reference)
    loaded = load_reference(tmp_path / REFERENCE_FILE)
    assert loaded.threshold == pytest.approx(reference.threshold) and loaded.items.shape == (12, 8)
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(BadInputError, match="bad.npz is not a familiarity reference"):
        load_reference(tmp_path / "bad.npz")


@pytest.fixture(scope="module")
def checked(trained, exported, tmp_path_factory):
    """The tiny shipped classifier with the input check fitted beside it on the repo's BUSI sample."""
    folder = tmp_path_factory.mktemp("checked") / "model"
    shutil.copytree(trained["root"] / "shipped", folder)
    assert main(["familiarity", "--model", str(folder), "--data", f"folder:{BUSI_SAMPLE}"]) == 0
    return folder


def test_the_runner_flags_an_image_unlike_the_training_images(checked, trained, tmp_path):
    card = json.loads((checked / "model_card.json").read_text())
    schema = json.loads((REPO / "fpc_keras" / "card_schema.json").read_text())
    jsonschema.validate(card, schema)
    assert card["input_check"]["items"] == 72 and card["input_check"]["data"].startswith("folder:")
    busi = sorted((BUSI_SAMPLE / "benign").glob("*.png"))[0]
    unlike = tmp_path / "blob.png"
    Image.fromarray(np.asarray(Image.open(sorted((trained["data"] / "beta").glob("*.png"))[0]).resize((256, 256)))
                    ).save(unlike)
    done = run_blocked(tmp_path, "--model", checked / "model.tflite", "--json", busi, unlike)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    ratios = [line["unlike_training"] for line in lines]
    assert ratios[0] < 0.05 and ratios[1] > 1  # a training image lies on the reference; the blob far beyond it
    assert [line["seen_in_training"] for line in lines] == [True, False]
    text = run_blocked(tmp_path, "--model", checked / "model.tflite", unlike, busi)
    assert "unlike the training data" in text.stdout.splitlines()[0]
    assert "training items" in text.stdout.splitlines()[1] and "training items" not in text.stdout.splitlines()[0]
    csv = tmp_path / "rows.csv"
    assert run_blocked(tmp_path, "--model", checked / "model.tflite", "--csv", csv, busi).returncode == 0
    assert csv.read_text().splitlines()[0].endswith(",seen_in_training,unlike_training")


def test_evaluate_says_when_the_items_are_the_training_images(checked, trained, tmp_path, capsys):
    """The check's reference also tells a score on the model's own training data from a held-out one."""
    card = json.loads((checked / "model_card.json").read_text())
    assert 0 < card["input_check"]["seen_below"] < card["input_check"]["threshold"]
    out = tmp_path / "own.json"
    assert main(["evaluate", "--model", str(checked / "model.tflite"), "--data", f"folder:{BUSI_SAMPLE}",
                 "--alias", "benign=alpha", "--alias", "malignant=beta", "--alias", "normal=gamma",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["seen_in_training"]["items"] == 72 == \
        json.loads(out.read_text())["seen_in_training"]["copies"]
    assert "warning: 72 of 72 items" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(checked / "model.tflite"), "--data", f"folder:{trained['data']}",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["seen_in_training"]["items"] == 0  # other images: no warning
    assert "warning" not in capsys.readouterr().out
    assert main(["evaluate", "--model", str(checked / "model.tflite"), "--data", f"folder:{trained['data']}",
                 "--split", "test", "--out", str(out)]) == 0
    assert "seen_in_training" not in json.loads(out.read_text())  # its own test split: held out by its split rule


def test_int8_encoder_keeps_the_keras_embeddings(checked):
    """Parity of the exported encoder: its embeddings point where the Keras ImageNet encoder's do."""
    import keras

    from fpc_keras.data.images import fit_image, read_image
    from fpc_keras.litert import TFLiteModel
    from fpc_keras.models.image_encoder import build_image_encoder

    images = np.stack([fit_image(read_image(str(p), 3), (224, 224), "pad")
                       for p in sorted(BUSI_SAMPLE.rglob("*.png"))[::9]]).astype(np.float32)
    float_embeddings = np.asarray(build_image_encoder()(keras.ops.convert_to_tensor(images), training=False))
    int8_embeddings = TFLiteModel(checked / ENCODER_FILE)(images)
    cosines = np.sum(unit_rows(float_embeddings) * unit_rows(int8_embeddings), axis=1)
    assert cosines.min() > 0.97, cosines


def test_a_missing_reference_is_named(checked, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checked, broken)
    (broken / REFERENCE_FILE).unlink()
    done = run_blocked(tmp_path, "--model", broken / "model.tflite", sorted(BUSI_SAMPLE.rglob("*.png"))[0])
    assert done.returncode == 2 and f"{broken / REFERENCE_FILE} is missing" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_video_is_embedded_as_the_mean_of_its_checked_frames(tmp_path):
    """A video's embedding is the mean over VIDEO_FRAMES evenly spaced frames (the first and last left out), so a
    still video embeds as its frame does; an undecodable video is named."""
    from fpc_keras.data.records import Record
    from fpc_keras.familiarity import VIDEO_FRAMES, Familiarity, embed_records

    def encoder(batch):  # a stand-in: the mean brightness of each third of the width
        return np.stack([[b[:, i * 75:(i + 1) * 75].mean() for i in range(3)] for b in batch])

    frames = video_frames(n=14, h=48, w=48)
    write_mp4(tmp_path / "moving.mp4", frames)
    write_mp4(tmp_path / "still.mp4", np.repeat(frames[:1], 14, axis=0))
    records = [Record(str(tmp_path / name), None, name) for name in ("moving.mp4", "still.mp4")]
    embedded = embed_records(encoder, records, "pad", progress=lambda _: None)
    assert embedded.shape == (2, 3) and VIDEO_FRAMES == 4
    still_frame = encoder(np.stack([np.asarray(Image.fromarray(frames[0]).resize((224, 224)), np.float32)]))[0]
    assert embedded[1] == pytest.approx(still_frame, rel=0.1)
    assert not np.allclose(embedded[0], embedded[1], rtol=0.05)
    reference, _ = fit_reference(np.random.default_rng(0).random((12, 3)), list("aabbccddeeff"))
    assert Familiarity(encoder, reference).video_ratio(str(tmp_path / "moving.mp4"), "pad") > 0
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(BadInputError, match="broken.mp4"):
        embed_records(encoder, [Record(str(tmp_path / "broken.mp4"), None, "b")], "pad", progress=lambda _: None)


def test_a_replacing_model_keeps_the_check_only_where_it_still_applies(checked, exported, tmp_path):
    """The check depends on the training data and the resize mode: shipping a model trained on other data over a
    checked one removes the check's files; the same data and resize keep it."""
    from fpc_keras.export import ship

    folder = tmp_path / "model"
    shutil.copytree(checked, folder)
    card = json.loads((folder / "model_card.json").read_text())
    same = {**card, "input_check": {**card["input_check"], "data": card["training"]["data"]}}
    new = {key: value for key, value in card.items() if key != "input_check"}
    assert carried_over(new, same, folder)["input_check"] == same["input_check"]
    assert (folder / ENCODER_FILE).is_file()
    ship(exported["int8"], folder)  # trained on the tiny generated data, not on the BUSI sample
    assert "input_check" not in json.loads((folder / "model_card.json").read_text())
    assert not (folder / ENCODER_FILE).exists() and not (folder / REFERENCE_FILE).exists()


def test_a_video_check_reuses_the_frames_the_model_read(tmp_path):
    """Frames already decoded on the encoder's grid give the ratio a second decoding would (no second decode)."""
    from fpc_keras.data.video import read_video
    from fpc_keras.familiarity import ENCODER_SIZE, Familiarity

    def encoder(batch):
        return np.stack([[b[:, i * 75:(i + 1) * 75].mean() + 1 for i in range(3)] for b in batch])

    write_mp4(tmp_path / "moving.mp4", video_frames(n=14, h=48, w=48))
    reference, _ = fit_reference(np.random.default_rng(0).random((12, 3)), list("aabbccddeeff"))
    check = Familiarity(encoder, reference)
    decoded = read_video(str(tmp_path / "moving.mp4"), ENCODER_SIZE, 3, "pad").astype(np.float32)
    missing = str(tmp_path / "gone.mp4")  # with frames given, the file is not read again
    assert check.video_ratio(missing, "pad", decoded) == pytest.approx(
        check.video_ratio(str(tmp_path / "moving.mp4"), "pad"), rel=1e-6)
