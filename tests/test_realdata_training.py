"""Minutes-long trainings on the real data in ../shared/data (`make test-slow`): the numbers must hold."""
import pytest

from fpc_keras.config import load_config
from fpc_keras.io import read_json
from fpc_keras.training import train

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_abdominal_organs_lite0_head_on_cached_features(shared_data, tmp_path):
    """Genuine ImageNet EfficientNet-Lite0 features + an SE head separate the 6 organs (measured 0.95-1.00), on a
    test split that shares no near-duplicate group with training (41 of the 300 images since the grouping)."""
    import csv

    config = load_config(None, [
        "name=abdominal_lite0_se", f"runs_dir={tmp_path}", "data.kind=prefix",
        f"data.path={shared_data / 'abdominal_organs'}", "data.image_size=[224, 224]", "model.attention=se",
        "train.epochs=40", "train.batch_size=32", "train.feature_copies=1", "train.label_smoothing=0.1",
        "train.early_stopping_patience=8"])
    run = train(config, progress=print)
    results = read_json(run / "results.json")
    rows = list(csv.DictReader(open(run / "splits.csv")))
    groups = {split: {r["group"] for r in rows if r["split"] == split} for split in ("train", "val", "test")}
    assert results["n"] == sum(r["split"] == "test" for r in rows) >= 30
    assert not groups["test"] & (groups["train"] | groups["val"])
    assert results["metrics"]["top1"]["value"] >= 0.90
    assert results["metrics"]["top2"]["value"] >= 0.95
