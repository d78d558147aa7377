"""Training recipe details: phase 2 fine-tuning, cached augmented copies, balanced sampling, mixup, the feature cache,
CV folds and resumed schedules (weight averaging: test_averaging.py)."""
import numpy as np
import pytest

from conftest import tiny_overrides
from fpc_keras.config import load_config
from fpc_keras.data.augment import mixup as mixup_of
from fpc_keras.data.pipeline import balanced_indices
from fpc_keras.errors import BadInputError
from fpc_keras.io import read_json
from fpc_keras.training import train


def test_balanced_indices_draw_classes_equally():
    ids = np.array([0] * 90 + [1] * 9 + [2] * 1)
    drawn = np.array(list(balanced_indices(ids, seed=3).take(3000).as_numpy_iterator()))
    shares = np.bincount(ids[drawn], minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.04), shares


def test_two_phases_with_copies_and_balanced_sampling(folder_dataset, tmp_path):
    """Phase 1 fits the head on an ImageNet backbone's cached features; phase 2 fine-tunes the top block at a
    learning rate (0.5) that wrecks it, so it must not win on validation: the kept model is phase 1's best, and
    phase 2 moved only the top block's weights."""
    import keras

    messages = []
    config = load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "model.weights": "imagenet", "train.epochs": "20", "train.early_stopping_patience": "20", "train.feature_copies": "1", "train.balance": "sampling",
        "train.finetune_blocks": "1", "train.finetune_epochs": "2", "train.finetune_learning_rate": "0.5"}))
    run = train(config, progress=messages.append)
    results = read_json(run / "results.json")
    assert set(results["phases"]) == {"phase1", "phase2"}
    assert results["phases"]["phase2"]["epoch"] == 1
    assert any("1 augmented copy" in m for m in messages) and any("fine-tuning the top 1 blocks" in m for m in messages)
    phases = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert phases[-2:] == ["phase2", "phase2"] and set(phases[:-2]) == {"phase1"}  # phase 1 may stop early
    # The head learnt the blobs: above chance (1/3). A fresh-clone run once saw 0.489 where the same code had passed
    # (threaded TF reductions are not bitwise reproducible), so the bar sits between chance and that.
    assert results["phases"]["phase1"]["best_score"] > 0.4
    assert results["phases"]["phase2"]["best_epoch"] == -1, results["phases"]  # never beat phase 1
    best = keras.saving.load_model(run / "checkpoints" / "phase1" / "best.keras")  # the head alone
    kept = keras.saving.load_model(run / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    reference = best(keras.Model(kept.input, kept.get_layer("backbone_features").output)(x))
    np.testing.assert_allclose(np.asarray(kept(x)), np.asarray(reference), atol=1e-5)
    tuned = keras.saving.load_model(run / "checkpoints" / "phase2" / "last.keras")
    moved = {name for name in ("block7a_project_conv", "top_conv", "block6d_project_conv", "block7a_bn")
             if not np.array_equal(tuned.get_layer(name).get_weights()[0], kept.get_layer(name).get_weights()[0])}
    assert moved == {"block7a_project_conv", "top_conv"}  # the top block and top conv; BN and lower blocks stay
    # A second run of another head on the same backbone and data reuses the cached features.
    again = []
    train(load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", name="other",
                                           **{"model.weights": "imagenet", "model.attention": "cbam",
                                              "train.feature_copies": "1"})),
          progress=again.append)
    assert sum("from the cache" in m for m in again) == 3, again  # train, its augmented copy, val


def test_encoding_cached_features_counts_in_training_time(folder_dataset, tmp_path, monkeypatch):
    """A head fitted on cached features reports the encoding in its phase's seconds and the results' training
    time, not the fitting alone (a slow encoder is simulated: 3 s per encoding pass, train and val)."""
    import time

    from fpc_keras.data.feature_cache import FeatureCache

    compute = FeatureCache._compute

    def slow(self, *args):
        time.sleep(3.0)
        compute(self, *args)

    monkeypatch.setattr(FeatureCache, "_compute", slow)
    run = train(load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", **{"train.epochs": "1"})),
                progress=lambda message: None)
    results = read_json(run / "results.json")
    assert results["phases"]["phase1"]["seconds"] >= 6.0
    assert results["timings"]["train_seconds"] >= 6.0


def test_a_state_written_mid_phase_carries_the_time_spent_so_far(tmp_path):
    """A run killed mid-phase and resumed reports its whole training time: the state each epoch's checkpoint
    writes holds the phase's seconds so far (before, only a finished block's time was added)."""
    import time

    from fpc_keras.training.phase import Phase

    phase = Phase("phase1", tmp_path, patience=3, history=tmp_path / "history.csv", progress=lambda m: None)
    with phase.timed():
        time.sleep(0.3)
        phase._write_state()  # as after each epoch
        written = read_json(tmp_path / "state.json")["seconds"]
        time.sleep(0.2)
    assert written >= 0.3
    assert 0.5 <= phase.state["seconds"] < 0.9  # counted once


def _conv_extractor():
    import keras

    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs)))


def test_cache_key_follows_files_and_weights(folder_dataset, tmp_path):
    import keras

    from fpc_keras.data.datasets import read_dataset
    from fpc_keras.data.images import ImageSpec
    from fpc_keras.data.feature_cache import FeatureCache

    record = read_dataset("folder", folder_dataset)[0]
    extractor = _conv_extractor()
    cache = FeatureCache(tmp_path, extractor, ImageSpec((32, 32)), lambda m: None)
    key = cache.image_key(record)
    assert cache.image_key(record, "augment1") != key
    with open(record.source, "ab") as handle:
        handle.write(b"\0")  # the same path, other content
    assert cache.image_key(record) != key
    conv = extractor.layers[1]
    conv.set_weights([w + 1 for w in conv.get_weights()])
    assert FeatureCache(tmp_path, extractor, ImageSpec((32, 32)), lambda m: None).model_key != cache.model_key
    unpooled = keras.Model(extractor.input, conv.output)  # same weights, other output
    assert FeatureCache(tmp_path, unpooled, ImageSpec((32, 32)), lambda m: None).model_key != \
        FeatureCache(tmp_path, extractor, ImageSpec((32, 32)), lambda m: None).model_key


def test_cached_features_are_per_image_and_shared_by_every_split(folder_dataset, tmp_path):
    from fpc_keras.data.augment import build_augmenter
    from fpc_keras.data.datasets import read_dataset
    from fpc_keras.data.images import ImageSpec
    from fpc_keras.data.feature_cache import FeatureCache

    records = read_dataset("folder", folder_dataset)[:6]
    messages = []
    cache = FeatureCache(tmp_path, _conv_extractor(), ImageSpec((32, 32)), messages.append)
    augment = build_augmenter(seed=1)
    first = np.asarray(cache.features(records[:4]))
    copy = np.asarray(cache.features(records[:4], augment, "augment1"))
    assert not np.allclose(copy, first)  # an augmented copy is another image
    # Another split of the same images: only the two new ones are computed, the rows of the others are reused.
    later = records[5:3:-1] + records[2::-1]
    again = np.asarray(cache.features(later))
    assert messages[-2].startswith("      computing backbone features of 2 images")
    np.testing.assert_array_equal(again[2:], first[2::-1])
    assert np.asarray(cache.features(records[3:0:-1], augment, "augment1")).shape == (3, 2)
    assert messages[-1].startswith("      features of 3 images (augment1) from the cache")
    # An image's augmented copy does not depend on its place in the list: computed afresh in another order.
    fresh = FeatureCache(tmp_path / "fresh", _conv_extractor(), ImageSpec((32, 32)), messages.append)
    fresh.extractor.set_weights(cache.extractor.get_weights())
    np.testing.assert_allclose(np.asarray(fresh.features(records[3::-1], augment, "augment1")), copy[::-1],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mixup", ["0", "0.4"])
def test_uncached_training_from_images(folder_dataset, tmp_path, monkeypatch, mixup):
    """Trained on image batches, which `train.mixup` blends (the batches' transform traces `mixup` only then)."""
    from fpc_keras.data import pipeline

    blended = []
    monkeypatch.setattr(pipeline, "mixup", lambda *args: blended.append(args[3]) or mixup_of(*args))
    config = load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "train.cache_features": "false", "train.balance": "class_weights", "train.epochs": "1", "train.mixup": mixup}))
    results = read_json(train(config, progress=lambda m: None) / "results.json")
    assert results["phases"]["phase1"]["epoch"] == 0 and results["n"] > 0
    assert set(blended) == ({0.4} if mixup != "0" else set())


@pytest.mark.parametrize("option, message", [("train.mixup=0.2", "train.mixup is 0.2 for a video run"),
                                             ("train.horizontal_flip=true", "horizontal_flip is set for a video")])
def test_image_classifier_options_are_refused_where_they_are_not_implemented(tmp_path, option, message):
    config = load_config(None, ["data.kind=videos", f"data.path={tmp_path}", f"runs_dir={tmp_path / 'runs'}",
                                option])
    with pytest.raises(BadInputError, match=message):
        train(config, progress=lambda m: None)


def test_throughput_benchmark_pieces(tmp_path):
    from fpc_keras.throughput import model_rate, peak_rss_mb, pipeline_rate, write_images
    from fpc_keras.training.averaging import compile_classifier

    records = write_images(tmp_path, 12, (40, 30), progress=lambda m: None)
    assert len(records) == 12 and len({r.label for r in records}) == 6
    assert write_images(tmp_path, 12, (40, 30), progress=lambda m: None) == records  # kept, not rewritten
    piped = pipeline_rate(records, 32, 4, augment=True)
    assert piped["images"] == 12 and piped["images_per_s"] > 0
    import keras

    tiny = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(6, activation="softmax")])
    rate = model_rate(compile_classifier(tiny, 1e-3, 0.0), 32, 4, steps=2)
    assert rate["images"] == 8 and rate["images_per_s"] > 0 and peak_rss_mb() > 50


def test_stacked_rows_read_copies_as_one_array_in_any_order():
    from fpc_keras.data.feature_cache import StackedRows

    a, b = np.arange(12, dtype=np.float32).reshape(4, 3), 100 + np.arange(12, dtype=np.float32).reshape(4, 3)
    rows = StackedRows([a, b])
    assert len(rows) == 8 and rows.shape == (8, 3)
    index = np.array([7, 0, 4, 3, 0])
    np.testing.assert_array_equal(rows[index], np.concatenate([a, b])[index])


def test_a_study_of_some_classes_is_recorded_and_followed_by_the_evaluator(folder_dataset, tmp_path):
    """data.classes trains on those classes only; the card's label rule makes the evaluator leave the other
    classes' items of new data out, saying so, instead of refusing them as unknown."""
    from fpc_keras.evaluate import evaluate_path

    config = load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "data.classes": "[alpha, gamma]", "train.epochs": "1", "train.finetune_blocks": "0"}))
    run = train(config, progress=lambda m: None)
    card = read_json(run / "model_card.json")
    assert card["labels"] == ["alpha", "gamma"] and card["label_rule"]["classes"] == ["alpha", "gamma"]
    assert {row["label"] for row in _csv_rows(run / "splits.csv")} == {"alpha", "gamma"}
    said = []
    results = evaluate_path(str(run), f"folder:{folder_dataset}", progress=said.append)
    assert results["n"] == 24  # 12 alpha + 12 gamma; the 12 beta left out
    assert any("12 item(s) of classes the model was not trained on left out: {'beta': 12}" in m for m in said)


def _csv_rows(path):
    import csv

    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_cross_validation_tests_every_item_once_and_chooses_on_mean_validation(folder_dataset, tmp_path):
    from fpc_keras.experiment import pooled_details, run_folds

    row = run_folds("cv", tiny_overrides(folder_dataset, tmp_path / "runs", **{"train.epochs": "1"}), folds=3,
                    progress=lambda _: None)
    folds = [read_json(tmp_path / "runs" / f"cv_fold{i}" / "results.json") for i in range(3)]
    assert row["n_test"] == sum(f["n"] for f in folds) == 36 and row["folds"] == 3
    matrix = np.sum([f["metrics"]["confusion"]["matrix"] for f in folds], axis=0)
    assert row["test"]["top1"]["value"] == pytest.approx(np.trace(matrix) / matrix.sum())
    scores = [read_json(tmp_path / "runs" / f"cv_fold{i}" / "model_card.json")["training"]["phases"]["phase1"]
              ["best_score"] for i in range(3)]
    assert row["val_macro_f1"] == pytest.approx(np.mean(scores))
    assert row["confusion"]["matrix"] == matrix.tolist() and row["n_per_fold"] == [f["n"] for f in folds]
    labels = row["confusion"]["labels"]
    assert [row["recall"][k] for k in labels] == pytest.approx(list(np.diag(matrix) / matrix.sum(axis=1)))

    rights = [f"{int(np.trace(f['metrics']['confusion']['matrix']))}/{f['n']}" for f in folds]
    assert f"right per fold {', '.join(rights)}" in pooled_details([row])
    with pytest.raises(BadInputError, match="train.epochs: 1 then, 2 now"):  # the stored folds are another recipe's
        run_folds("cv", tiny_overrides(folder_dataset, tmp_path / "runs", **{"train.epochs": "2"}), folds=3,
                  progress=lambda _: None)


def test_feature_norm_starts_at_the_training_features_statistics():
    """A head's `feature_norm` starts at the mean and variance of every training row (across stacked, memory-mapped
    copies, read in chunks), not at BatchNormalization's 0 and 1, which raw VGG16 features (thousands) take
    hundreds of steps to leave; a head without one is left alone."""
    from fpc_keras.models.frozen_features import build_fc_head
    from fpc_keras.data.feature_cache import StackedRows
    from fpc_keras.training.session import start_feature_norm

    rng = np.random.default_rng(0)
    parts = [rng.normal(2000, 300, (7, 5)).astype(np.float32), rng.normal(10, 2, (7, 5)).astype(np.float32)]
    head = build_fc_head((5,), 3, (), 0.0)
    start_feature_norm(head, StackedRows(parts), chunk=3)
    _, _, mean, variance = head.get_layer("feature_norm").get_weights()
    rows = np.concatenate(parts).astype(np.float64)
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(variance, rows.var(axis=0), rtol=1e-4)
    flat = build_fc_head((2, 2, 3), 3, (4,), 0.0, pooling="avg")
    before = [w.copy() for w in flat.get_weights()]
    start_feature_norm(flat, rng.normal(size=(6, 2, 2, 3)))
    assert all(np.array_equal(a, b) for a, b in zip(before, flat.get_weights()))


def test_phase_2_cosine_schedule_and_adamw_survive_a_resume(folder_dataset, tmp_path, monkeypatch):
    """`train.finetune_schedule=cosine` decays phase 2's rate to zero over its epochs; a weight decay makes the
    optimiser AdamW; both come back from phase 2's checkpoint, which is what a resumed run continues with.
    `train.finetune_keep=last` ships phase 2's last epoch with that epoch's validation score on the card, although
    (validation scores planted here) phase 2 never comes near phase 1."""
    import keras

    import fpc_keras.training.classification as classification

    planted = iter([(0.9, 0.1, "macro_f1"), (0.2, 2.0, "macro_f1"), (0.1, 3.0, "macro_f1")])  # phase 1, phase 2 x 2
    monkeypatch.setattr(classification, "classification_score", lambda *_: lambda: next(planted))
    config = load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "train.epochs": "1", "train.finetune_blocks": "1", "train.finetune_epochs": "2",
        "train.finetune_learning_rate": "0.001", "train.finetune_schedule": "cosine",
        "train.finetune_weight_decay": "0.01", "train.finetune_keep": "last"}))
    run = train(config, progress=lambda _: None)
    results = read_json(run / "results.json")
    assert results["phases"]["phase2"]["best_epoch"] == 1, results["phases"]
    assert results["phases"]["phase2"]["best_score"] == pytest.approx(0.1)
    last = keras.saving.load_model(run / "checkpoints" / "phase2" / "last.keras")
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    kept = keras.saving.load_model(run / "model.keras")
    np.testing.assert_allclose(np.asarray(kept(x)), np.asarray(last(x)), atol=1e-5)
    optimizer = last.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == pytest.approx(0.01)
    train_items = read_json(run / "model_card.json")["training"]["splits"]["train"]
    steps = 2 * -(-sum(train_items.values()) // 8)
    assert int(optimizer.iterations) == steps
    schedule = optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.001) and float(schedule(steps)) == pytest.approx(0.0, abs=1e-9)



def test_phase_2_trains_the_unfrozen_blocks_batch_norm_when_asked(folder_dataset, tmp_path):
    """`train.finetune_batchnorm`: phase 2 re-estimates the unfrozen block's BatchNormalization (scale, offset and
    running statistics) on the training images; lower blocks' never move. (By default it keeps ImageNet's:
    test_two_phases_with_copies_and_balanced_sampling.)"""
    import keras

    from fpc_keras.models import build_model

    config = load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "model.weights": "imagenet", "train.epochs": "1", "train.finetune_blocks": "1", "train.finetune_epochs": "1",
        "train.finetune_learning_rate": "0.01", "train.finetune_keep": "last",
        "train.finetune_batchnorm": "true"}))
    run = train(config, progress=lambda _: None)
    tuned, imagenet = keras.saving.load_model(run / "model.keras"), build_model(config)
    moved = {name for name in ("block7a_bn", "block6d_bn")
             if not all(np.array_equal(a, b) for a, b in zip(tuned.get_layer(name).get_weights(),
                                                              imagenet.get_layer(name).get_weights()))}
    assert moved == {"block7a_bn"}


def test_horizontal_flip_reaches_every_augmentation_of_an_image_classifier(folder_dataset, tmp_path, monkeypatch):
    """`train.horizontal_flip`: the cached augmented copies of phase 1 and phase 2's image batches both mirror."""
    import fpc_keras.training.classification as classification

    built = []
    real = classification.build_augmenter
    monkeypatch.setattr(classification, "build_augmenter", lambda **kw: built.append(kw) or real(**kw))
    config = load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "train.epochs": "1", "train.feature_copies": "1", "train.finetune_blocks": "1", "train.finetune_epochs": "1",
        "train.horizontal_flip": "true"}))
    train(config, progress=lambda _: None)
    assert len(built) == 2 and all(kw["horizontal_flip"] for kw in built), built
