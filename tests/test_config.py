import pytest

from fpc_keras.config import RunConfig, load_config, save_config
from fpc_keras.errors import BadInputError


def test_defaults_validate():
    config = load_config()
    assert isinstance(config, RunConfig)
    assert config.data.image_size == (224, 224)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 7\ndata:\n  image_size: [64, 48]\n")
    config = load_config(path, ["train.epochs=3", "model.head_units=[8, 4]", "data.aliases={pneu: pne}"])
    assert config.train.epochs == 3
    assert config.data.image_size == (64, 48)
    assert config.model.head_units == (8, 4)
    assert config.data.aliases == {"pneu": "pne"}
    assert isinstance(config.train.learning_rate, float)


def test_saved_config_loads_back(tmp_path):
    config = load_config(None, ["name=r1", "train.epochs=4", "model.attention=cbam"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("override, words", [
    (["train.epoch=3"], "unknown config key(s): train.epoch"),
    (["train.epochs=three"], "train.epochs must be int"),
    (["train.freeze_backbone=1"], "true or false"),
    (["data.kind=xls"], "data.kind is 'xls'"),
    (["data.val_fraction=1.5"], "fraction in [0, 1)"),
    (["train.epochs"], "has no '='"),
    (["export.quant=[fp32, int4]"], "export.quant is 'int4'"),
    (["data.duplicates=off"], "quote the word, e.g. data.duplicates='off'"),
    (["data.split_quota=frames"], "use one of: groups, items"),
    (["train.mixup=-0.2"], "train.mixup is -0.2"),
    (["data.train_fraction=0"], "data.train_fraction is 0"),
])
def test_bad_configs_name_the_key_and_fix(override, words):
    with pytest.raises(BadInputError) as info:
        load_config(None, override)
    assert words in str(info.value)
    assert "Fix:" in str(info.value)


def test_missing_and_broken_yaml(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "b.yaml"
    broken.write_text("train: [epochs: 3\n")
    with pytest.raises(BadInputError, match="not valid YAML"):
        load_config(broken)


def test_an_overlay_changes_only_what_it_states(tmp_path):
    """`extends:` makes a recipe file an ablation overlay of its base: sections merge key by key, overrides last."""
    (tmp_path / "base.yaml").write_text("name: base\ntrain:\n  epochs: 7\n  learning_rate: 0.01\n"
                                        "model:\n  attention: se\n")
    (tmp_path / "variants").mkdir()
    overlay = tmp_path / "variants" / "cbam.yaml"
    overlay.write_text("extends: ../base.yaml\nname: cbam\nmodel:\n  attention: cbam\ntrain:\n  epochs: 9\n")
    config = load_config(overlay, ["train.seed=3"])
    assert (config.name, config.model.attention, config.train.epochs) == ("cbam", "cbam", 9)
    assert (config.train.learning_rate, config.train.seed) == (0.01, 3)
    assert load_config(tmp_path / "base.yaml").train.epochs == 7
    (tmp_path / "base.yaml").write_text("extends: variants/cbam.yaml\n")
    with pytest.raises(BadInputError, match="extends it back"):
        load_config(overlay)


def test_each_architecture_reads_its_own_section():
    """A builder reads `config.model.section()`; its card and a resume compare only that section, so a key another
    architecture uses neither lands on the card nor blocks a resume."""
    import dataclasses

    from fpc_keras.config import MODEL_SECTIONS, model_section_dict

    for name, cls in MODEL_SECTIONS.items():
        config = load_config(None, [f"model.name={name}", "model.alpha=8"])
        assert isinstance(config.model.section(), cls)
        recorded = model_section_dict(config.model)
        assert set(recorded) == {"name", *(f.name for f in dataclasses.fields(cls))}
        assert ("alpha" in recorded) == (name == "slowfast") and recorded["name"] == name
    with pytest.raises(BadInputError, match="model.name is 'resnet'"):
        load_config(None, ["model.name=resnet"])
