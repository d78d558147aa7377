"""The task registry: every data kind trains one task, every entry's session, evaluator and chooser load, and a
card names its task (a segmenter of clips is its own task) without TensorFlow."""
import subprocess
import sys

import pytest

from fpc_keras.data.datasets import KINDS
from fpc_keras.errors import BadInputError
from fpc_keras.tasks import TASKS, task_of_card, task_of_kind


def test_every_data_kind_trains_exactly_one_task():
    for kind in KINDS:
        assert sum(kind in task.kinds for task in TASKS.values()) == 1, kind
    assert {task_of_kind(k).name for k in ("folder", "hc18", "videos")} == {"classification", "segmentation", "video"}
    with pytest.raises(BadInputError, match="unknown data kind"):
        task_of_kind("xls")


def test_every_entry_loads_what_it_names():
    import inspect

    for task in TASKS.values():
        assert inspect.isclass(task.load("session")), task.name
        assert list(inspect.signature(task.load("metrics")).parameters) == [
            "predictor", "records", "on_bad_input", "batch_size", "progress"], task.name
        assert task.load("postprocessing") is None or callable(task.load("postprocessing"))
    assert TASKS["segmentation"].load("labels") == TASKS["clip_segmentation"].load("labels") == ("head", "off_plane")


def test_a_card_names_its_task():
    frame = {"task": "segmentation", "preprocessing": {"image_size": [8, 8]}}
    clips = {"task": "segmentation", "preprocessing": {"clip_length": 8}}
    assert task_of_card(frame).name == "segmentation" and task_of_card(frame).postprocessing
    assert task_of_card(clips).name == "clip_segmentation" and not task_of_card(clips).postprocessing
    assert task_of_card({"task": "video", "preprocessing": {"clip_length": 16}}).inputs == "video"
    with pytest.raises(BadInputError, match="task 'regression' unknown"):
        task_of_card({"task": "regression"})


def test_the_registry_imports_no_tensorflow():
    """The edge runner reads it on boards without TensorFlow."""
    code = "import sys, fpc_keras.tasks, fpc_keras.predict; assert 'tensorflow' not in sys.modules, 'tensorflow'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
