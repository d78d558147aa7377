"""The ultrasound augmentation: one composed warp, stateless draws keyed by (seed, key)."""
import numpy as np
import pytest
import tensorflow as tf

from fpc_keras.data.augment import build_augmenter, mixup
from fpc_keras.data.pipeline import image_dataset
from fpc_keras.errors import BadInputError

NONE = dict(rotation_deg=0.0, zoom=0.0, shift=0.0, contrast=0.0, brightness=0.0, speckle=0.0)


def _images(count: int = 6) -> tf.Tensor:
    rng = np.random.default_rng(0)
    return tf.constant(rng.uniform(0, 255, (count, 20, 24, 3)).astype(np.float32))


def test_no_change_when_every_range_is_zero():
    images = _images()
    out = build_augmenter(**NONE)(images, tf.constant(3, tf.int64))
    np.testing.assert_allclose(out.numpy(), images.numpy(), atol=1e-3)


def test_flip_mirrors_whole_images_and_both_outcomes_occur():
    images = tf.repeat(_images(1), 16, axis=0)
    out = build_augmenter(**NONE, horizontal_flip=True)(images, tf.constant(1, tf.int64)).numpy()
    original, mirrored = images[0].numpy(), images[0].numpy()[:, ::-1]
    same = [np.allclose(o, original, atol=1e-3) for o in out]
    flipped = [np.allclose(o, mirrored, atol=1e-3) for o in out]
    assert all(s or f for s, f in zip(same, flipped)) and any(same) and any(flipped)


def test_same_key_same_batch_other_key_or_seed_other_batch():
    images, key = _images(), tf.constant(7, tf.int64)
    augment = build_augmenter(seed=1)
    first, again = augment(images, key).numpy(), augment(images, key).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, augment(images, tf.constant(8, tf.int64)).numpy())
    assert not np.allclose(first, build_augmenter(seed=2)(images, key).numpy())
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 255


def test_rotation_turns_about_the_centre():
    """A bright dot right of centre, rotated by up to 10 degrees, stays at the same distance from the centre."""
    image = np.zeros((1, 41, 41, 1), np.float32)
    image[0, 20, 35] = 255.0
    images = tf.constant(np.repeat(image, 8, axis=0))
    out = build_augmenter(**{**NONE, "rotation_deg": 10.0})(images, tf.constant(0, tf.int64)).numpy()[..., 0]
    yy, xx = np.mgrid[0:41, 0:41]
    for frame in out:
        cy, cx = (frame * yy).sum() / frame.sum(), (frame * xx).sum() / frame.sum()
        assert abs(np.hypot(cy - 20, cx - 20) - 15) < 0.5 and abs(np.degrees(np.arctan2(cy - 20, cx - 20))) <= 10.5


def test_fingerprint_names_settings_and_seed():
    assert build_augmenter(seed=1).fingerprint == build_augmenter(seed=1).fingerprint
    assert build_augmenter(seed=1).fingerprint != build_augmenter(seed=2).fingerprint
    assert build_augmenter(seed=1).fingerprint != build_augmenter(seed=1, speckle=0.0).fingerprint


def test_speckle_is_multiplicative_with_the_set_spread():
    flat = tf.fill((4, 40, 40, 1), 100.0)
    out = build_augmenter(**{**NONE, "speckle": 0.08})(flat, tf.constant(5, tf.int64)).numpy()
    assert abs(out.mean() - 100) < 0.5 and abs(out.std() - 8.0) < 0.3


def test_clips_share_one_transform_per_clip_and_differ_between_clips():
    frame = _images(1)
    clips = tf.repeat(tf.repeat(frame[:, None], 5, axis=1), 3, axis=0)  # 3 clips of 5 identical frames
    out = build_augmenter(speckle=0.0, horizontal_flip=True).clips(clips, tf.constant(2, tf.int64)).numpy()
    assert out.shape == (3, 5, 20, 24, 3)
    for clip in out:
        np.testing.assert_allclose(clip, np.repeat(clip[:1], 5, axis=0), atol=1e-4)
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])
    speckled = build_augmenter(**{**NONE, "speckle": 0.1}).clips(clips, tf.constant(2, tf.int64)).numpy()
    assert not np.allclose(speckled[0, 0], speckled[0, 1])  # speckle is drawn per frame


def test_mixup_blends_each_image_and_its_label_with_one_weight():
    """Image i is constant 10 * i, its label one-hot i: a blended image is constant, and its value is the blend
    that its label's weights say. Weights spread over (0, 1); the same key repeats the batch, another does not."""
    count = 8
    images = tf.constant(np.broadcast_to(10.0 * np.arange(count)[:, None, None, None], (count, 4, 5, 3)), tf.float32)
    labels = tf.one_hot(np.arange(count), count)
    key = tf.constant(5, tf.int64)
    mixed, soft = (x.numpy() for x in mixup(images, labels, key, 0.4))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    assert ((soft > 1e-6).sum(axis=1) <= 2).all()
    np.testing.assert_allclose(mixed, np.broadcast_to((soft @ (10.0 * np.arange(count)))[:, None, None, None],
                                                      mixed.shape), atol=1e-3)
    own = soft[np.arange(count), np.arange(count)]
    assert own.min() < 0.9 and 0.1 < own.max(), own
    np.testing.assert_array_equal(mixup(images, labels, key, 0.4)[1].numpy(), soft)
    assert not np.allclose(mixup(images, labels, tf.constant(6, tf.int64), 0.4)[1].numpy(), soft)


def test_a_mixed_dataset_yields_soft_labels_and_images_in_range(folder_dataset):
    from fpc_keras.data.datasets import read_records
    from fpc_keras.data.images import ImageSpec

    records = read_records("folder", folder_dataset)
    labels = sorted({r.label for r in records})
    spec = ImageSpec((32, 32), 3, "pad")
    plain = next(iter(image_dataset(records, spec, labels, batch_size=16, seed=1)))[1].numpy()
    images, soft = (x.numpy() for x in next(iter(image_dataset(records, spec, labels, batch_size=16, seed=1,
                                                                mixup_alpha=0.4))))
    assert set(np.unique(plain)) == {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).any() and np.allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    assert images.min() >= 0 and images.max() <= 255
    with pytest.raises(BadInputError, match="mixup needs the labels"):
        image_dataset(records, spec, None, mixup_alpha=0.4)
