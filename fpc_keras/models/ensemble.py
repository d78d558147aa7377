"""An ensemble of trained classifiers as ONE Keras model (so one `.tflite`): the members' class probabilities
averaged over a shared input, an image or a clip. Members with another image size see the input resized in the
graph (bilinear, a TFLite builtin).

The graph is flat, as flip TTA's (`models.tta`): each member is cloned with its layer names prefixed `m<i>_` and
called on the shared input, not nested as a layer, which the int8 export's per-layer bias correction would not see
into. A member's own nested head stays nested inside it, as in the member. A multiscale frozen-features member
enters in its export form (`split_feature_norm`: each depth standardised before the concatenation, the same
arithmetic): once renamed, the export would no longer find it, and its full-int8 graph loses the small branches.
"""
from __future__ import annotations

from typing import Sequence

import keras

from ..errors import BadInputError
from .frozen_features import split_feature_norm


def build_ensemble(members: Sequence[keras.Model], name: str = "ensemble") -> keras.Model:
    """The members' mean class probabilities; the input takes the first member's shape and input name."""
    if len(members) < 2:
        raise BadInputError(f"an ensemble needs 2 or more members, got {len(members)}", "name two runs or more")
    first = members[0]
    shape = tuple(first.input.shape[1:])
    classes = {int(m.output.shape[-1]) for m in members}
    if len(classes) != 1 or any(len(m.inputs) != 1 or len(m.outputs) != 1 for m in members):
        raise BadInputError(f"members must be classifiers of one input and the same classes (outputs "
                            f"{[tuple(m.output.shape) for m in members]})", "ensemble runs trained on the same labels")
    inputs = keras.Input(shape, name=first.layers[0].name)
    outputs = []
    for index, member in enumerate(members):
        member = split_feature_norm(member)
        outputs.append(_renamed(member, f"m{index}_").call(_fitted(inputs, member, f"m{index}_resize")))
    return keras.Model(inputs, keras.layers.Average(name="ensemble_average")(outputs), name=name)


def _fitted(inputs, member: keras.Model, name: str):
    """The shared input as `member` takes it: as is, or its frames resized to the member's height and width."""
    wanted, given = tuple(member.input.shape[1:]), tuple(inputs.shape[1:])
    if wanted == given:
        return inputs
    if len(wanted) != 3 or len(given) != 3 or wanted[-1] != given[-1]:
        raise BadInputError(f"member {member.name} takes {wanted}, the ensemble's input is {given}",
                            "ensemble image classifiers (any size) or clip models of one clip shape")
    return keras.layers.Resizing(wanted[0], wanted[1], interpolation="bilinear", name=name)(inputs)


def _renamed(member: keras.Model, prefix: str) -> keras.Model:
    """A copy of `member` whose top-level layers are named `prefix` + their name, with the member's weights."""
    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "name": prefix + layer.name})

    copy = keras.models.clone_model(member, clone_function=clone)
    copy.set_weights(member.get_weights())
    return copy
