"""Video classifiers measured per video: the mean of evenly spaced clips, and decoding and inference time."""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np

from ..data.records import Record
from ..data.video import model_clips, read_video
from ..errors import BadInputError
from ..metrics import classification_metrics
from ..predictor import Predictor
from .images import Measured, check_labels


def video_metrics(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                  progress: Callable[[str], None]) -> Measured:
    """Mean of the softmax outputs over evenly spaced clips (clip models) or frames (frame models)."""
    check_labels(records, predictor.labels)
    index = {label: i for i, label in enumerate(predictor.labels)}
    probs, y_true, skipped, decode_ms, infer_ms = [], [], {}, [], []
    for record, scored in _scored(predictor, records, on_bad_input, progress):
        if isinstance(scored, str):
            skipped[record.source] = scored
            continue
        probs.append(scored[0])
        decode_ms.append(scored[1])
        infer_ms.append(scored[2])
        y_true.append(index[record.label])
    if not probs:
        raise BadInputError("no readable video to evaluate", "check the data; every file was skipped")
    metrics = classification_metrics(np.array(y_true), np.stack(probs), predictor.labels)
    metrics["video_top1"] = metrics["top1"]
    metrics["latency_ms"] = _video_latency(decode_ms, infer_ms, _clips(predictor)[1])
    return Measured(metrics, len(y_true), skipped)


def video_probabilities(predictor: Predictor, records: Sequence[Record]) -> np.ndarray:
    """A video classifier's probabilities for every record (every video must decode), in the records' order."""
    return np.stack([scored[0] for _, scored in _scored(predictor, records, "error", lambda message: None)])


def _clips(predictor: Predictor) -> tuple[int, int]:
    pre = predictor.card["preprocessing"]
    return int(pre.get("clip_length", 1)), int(pre.get("clips_per_video", 4))


def _scored(predictor: Predictor, records: Sequence[Record], on_bad_input: str,
            progress: Callable[[str], None]) -> Iterator[tuple[Record, tuple[np.ndarray, float, float] | str]]:
    """Each record with (mean probabilities of its clips, decoding ms, inference ms), or, where it will not decode
    and `on_bad_input` is skip, the reason."""
    clip_length, clips = _clips(predictor)
    spec = predictor.image_spec()
    for n, record in enumerate(records, start=1):
        start = time.perf_counter()
        try:
            frames = read_video(record.source, spec.size, spec.channels, spec.resize).astype(np.float32)
        except BadInputError as exc:
            if on_bad_input != "skip":
                raise
            yield record, exc.what
            continue
        decoded = time.perf_counter()
        probs = predictor.predict(model_clips(frames, clip_length, clips)).mean(axis=0)
        yield record, (probs, 1000 * (decoded - start), 1000 * (time.perf_counter() - decoded))
        if n % 10 == 0:
            progress(f"  videos: {n}/{len(records)}")


def _video_latency(decode_ms: list[float], infer_ms: list[float], clips: int) -> dict:
    """Per video: decoding (all frames, resized) and inference (`clips` clips), median and p90, in this process."""
    def summary(values) -> dict:
        return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}
    return {"decode": summary(decode_ms), "inference": summary(infer_ms),
            "total": summary(np.add(decode_ms, infer_ms)), "clips_per_video": clips}
