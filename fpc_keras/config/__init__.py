"""Typed run configuration: dataclasses, YAML files (a recipe may extend a base recipe), `--set a.b=c` overrides
and validation messages.

A config is plain data. `load_config` reads YAML, applies overrides, checks every key and type against the
dataclasses (sections.py; the model's in models.py) and returns a `RunConfig`; `save_config` writes the resolved
config beside the run's results.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import BadInputError
from ..io import atomic_write_text
from .models import MODEL_SECTIONS, ModelConfig, section_of
from .sections import QUANT_VARIANTS, DataConfig, ExportConfig, RunConfig, TrainConfig

__all__ = ["MODEL_SECTIONS", "QUANT_VARIANTS", "DataConfig", "ExportConfig", "ModelConfig", "RunConfig",
           "TrainConfig", "config_to_dict", "load_config", "model_section_dict", "save_config", "section_of"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3); the value is read as YAML (numbers, lists, true/false)."""
    if "=" not in text:
        raise BadInputError(f"override {text!r} has no '='", "write --set section.key=value, e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise BadInputError(f"cannot set {'.'.join(keys)}: {key} is not a section", "check the key path")
    node[keys[-1]] = value


def from_dict(cls: type, values: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking every key and coercing lists to tuples."""
    if not isinstance(values, dict):
        raise BadInputError(f"config section {where or 'root'} is {type(values).__name__}, not a mapping",
                            "write it as `key: value` lines")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise BadInputError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}",
                            f"valid keys{' in ' + where if where else ''}: {', '.join(sorted(known))}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}" if where else name) for name, value in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, key)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise BadInputError(f"{key} must be a mapping, got {value!r}", f"write {key}: {{a: b}}")
        return {str(k): str(v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise BadInputError(f"{key} must be true or false, got {value!r}", f"write {key}=true or {key}=false")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if hint is str and isinstance(value, bool):
        raise BadInputError(f"{key} must be a word, got {value!r}",
                            f"YAML reads off / no / on / yes as false / true: quote the word, e.g. {key}='off'")
    raise BadInputError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}", f"fix the value of {key}")


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config as a tree. `extends: FILE` (relative to the file) makes it an overlay: the base file's tree,
    its sections updated key by key with this file's (an ablation variant states only what it changes)."""
    if not path.is_file():
        raise BadInputError(f"config file {path} does not exist", "give the path of a YAML config")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BadInputError(f"config file {path} is not valid YAML: {exc}", "fix the YAML syntax") from None
    if not isinstance(tree, dict):
        raise BadInputError(f"config file {path} holds a {type(tree).__name__}, not a mapping",
                            "write it as `section:` blocks of `key: value` lines")
    base = tree.pop("extends", None)
    if base is None:
        return tree
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise BadInputError(f"config file {path} extends {base}, which extends it back", "break the cycle")
    merged = read_recipe(base_path, (*seen, path.resolve()))
    for key, value in tree.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or the defaults), apply `a.b=c` overrides, validate, return a RunConfig."""
    tree = read_recipe(Path(path)) if path is not None else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    config = from_dict(RunConfig, tree)
    config.validate()
    return config


def config_to_dict(config: RunConfig) -> dict:
    return {k: _plain(v) for k, v in dataclasses.asdict(config).items()}


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The keys (dotted) where two config trees differ, each as `key: OLD then, NEW now`."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return out


def model_section_dict(model: ModelConfig) -> dict:
    """The model's name and its architecture's section, as plain data: what a card records and a resume compares."""
    return section_of(_plain(dataclasses.asdict(model)))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def save_config(config: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
