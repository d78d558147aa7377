"""Polyak averaging of the weights (`train.ema_momentum`): the average swapped in and out, kept as the best
checkpoint, while training goes on with the raw weights."""
import keras
import numpy as np

from conftest import tiny_overrides
from fpc_keras.config import load_config
from fpc_keras.training import train
from fpc_keras.training.averaging import averaged_weights, make_optimizer, restart_average


def test_averaged_weights_swap_in_the_moving_average_and_back():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer=make_optimizer(0.1, ema_momentum=0.8), loss="mse")
    rng = np.random.default_rng(0)
    seen = []  # the raw weights after every step: the average must be their exponential moving average
    for _ in range(6):  # steps without fit(), which ends by overwriting the weights with the average
        model.train_on_batch(rng.normal(size=(4, 3)), rng.normal(size=(4, 2)))
        seen.append(model.get_weights())
    expected = seen[0]  # the first step starts the average
    for step in seen[1:]:
        expected = [0.8 * e + 0.2 * w for e, w in zip(expected, step)]
    raw = model.get_weights()
    with averaged_weights(model):
        inside = model.get_weights()
    for got, want, trained in zip(inside, expected, raw):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, trained)
    for got, trained in zip(model.get_weights(), raw):
        np.testing.assert_array_equal(got, trained)
    restart_average(model)
    with averaged_weights(model):
        for got, trained in zip(model.get_weights(), raw):
            np.testing.assert_array_equal(got, trained)


def test_weight_averaging_keeps_the_average_as_best_and_trains_on_the_raw_weights(folder_dataset, tmp_path):
    config = load_config(None, tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "train.epochs": "1", "train.ema_momentum": "0.9"}))
    run = train(config, progress=lambda m: None)
    folder = run / "checkpoints" / "phase1"
    last, best = (keras.saving.load_model(folder / name) for name in ("last.keras", "best.keras"))
    with averaged_weights(last):  # the average is saved with the optimizer, so a resume keeps it
        averaged = last.get_weights()
    raw = keras.saving.load_model(folder / "last.keras").get_weights()
    for kept, average, trained in zip(best.get_weights(), averaged, raw):
        np.testing.assert_allclose(kept, average, atol=1e-7)
    assert any(not np.allclose(a, r) for a, r in zip(averaged, raw))
