"""Video classifiers measured per video: the mean of evenly spaced clips, and decoding and inference time."""
from __future__ import annotations

import time
from typing import Callable, Sequence

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
    pre = predictor.card["preprocessing"]
    clip_length = int(pre.get("clip_length", 1))
    clips = int(pre.get("clips_per_video", 4))
    spec = predictor.image_spec()
    probs, y_true, skipped, decode_ms, infer_ms = [], [], {}, [], []
    index = {label: i for i, label in enumerate(predictor.labels)}
    for n, record in enumerate(records, start=1):
        start = time.perf_counter()
        try:
            frames = read_video(record.source, spec.size, spec.channels, spec.resize).astype(np.float32)
        except BadInputError as exc:
            if on_bad_input != "skip":
                raise
            skipped[record.source] = exc.what
            continue
        decoded = time.perf_counter()
        probs.append(predictor.predict(model_clips(frames, clip_length, clips)).mean(axis=0))
        decode_ms.append(1000 * (decoded - start))
        infer_ms.append(1000 * (time.perf_counter() - decoded))
        y_true.append(index[record.label])
        if n % 10 == 0:
            progress(f"  videos: {n}/{len(records)}")
    if not probs:
        raise BadInputError("no readable video to evaluate", "check the data; every file was skipped")
    metrics = classification_metrics(np.array(y_true), np.stack(probs), predictor.labels)
    metrics["video_top1"] = metrics["top1"]
    metrics["latency_ms"] = _video_latency(decode_ms, infer_ms, clips)
    return Measured(metrics, len(y_true), skipped)


def _video_latency(decode_ms: list[float], infer_ms: list[float], clips: int) -> dict:
    """Per video: decoding (all frames, resized) and inference (`clips` clips), median and p90, in this process."""
    def summary(values) -> dict:
        return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}
    return {"decode": summary(decode_ms), "inference": summary(infer_ms),
            "total": summary(np.add(decode_ms, infer_ms)), "clips_per_video": clips}
