"""TensorFlow's start-up chatter kept off the terminal: the C++ lines that TensorFlow prints on import and on
its first device query (absl's "log messages before absl::InitializeLog()", "Could not find cuda drivers",
cuInit failures on a machine without a GPU) go to file descriptor 2 before any Python logging is set up, so
they are silenced by pointing that descriptor at /dev/null while TensorFlow starts (and while a TFLite interpreter
is made: "INFO: Created TensorFlow Lite XNNPACK delegate"). `--verbose` keeps them. TensorFlow-free."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator


_VERBOSE = {"on": False}


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block, unless `start_tensorflow(verbose=True)` ran."""
    if _VERBOSE["on"]:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def start_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and query its devices once, quietly unless `verbose` (a Python exception still raises)."""
    _VERBOSE["on"] = verbose
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_output_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
