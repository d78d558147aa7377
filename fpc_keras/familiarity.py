"""Is an input like the images a model was trained on? A model labels anything it is given: the BUSI classifier calls
a fetal head "malignant" with probability 0.8. This check says when an input is unlike every training image.

How: a frozen ImageNet EfficientNet-Lite0 (`models.image_encoder`, int8 TFLite beside the model) embeds each image;
an input's distance is 1 - its largest cosine similarity to the training images' embeddings (all 1,280 features:
projecting them onto the training images' main directions throws away what makes other images different). The
threshold is the (1 - false_alarm) quantile of the training images' own distances to the images of
*other* near-duplicate groups, i.e. how far a new scan of a new patient usually lies; an input beyond it is flagged.
The ratio distance / threshold is reported (`unlike_training`: above 1 = flagged).

The same reference says when an input is (nearly) one of the training images: `seen_items` counts the inputs
closer to a training image than all but SEEN_SHARE of the training images are to other groups' images, so that
`fpc-keras evaluate` can say when a score is not a held-out one.

A video is embedded as the mean of VIDEO_FRAMES evenly spaced frames' embeddings.
Files beside the model: `familiarity_encoder.tflite` and `familiarity.npz`; the card's `input_check` says how they
were made. Only numpy and a TFLite interpreter are needed to use them (tflite/run.py); fitting needs TensorFlow.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import BadInputError
from .io import atomic_write_bytes

ENCODER_FILE = "familiarity_encoder.tflite"
REFERENCE_FILE = "familiarity.npz"
ENCODER_SIZE = (224, 224)
FALSE_ALARM = 0.01
VIDEO_FRAMES = 4  # a video is embedded as the mean of this many evenly spaced frames
SEEN_SHARE = 0.01  # "seen": closer to a training image than all but this share of new scans (other groups) are
EXACT_COPY = 0.002  # an image's distance to itself through the int8 encoder and the float16 reference: about 2e-4


@dataclass
class Reference:
    items: np.ndarray  # (N, D): the training images' embeddings, unit length (float16 on disk)
    threshold: float


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_distances(queries: np.ndarray, items: np.ndarray, excluded: np.ndarray | None = None,
                      chunk: int = 1024) -> np.ndarray:
    """1 - the largest cosine of each unit query row to the unit `items` rows; `excluded` (queries x items, bool,
    optional) masks pairs out (the same near-duplicate group)."""
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), chunk):
        similarity = queries[start:start + chunk] @ items.T
        if excluded is not None:
            similarity = np.where(excluded[start:start + chunk], -np.inf, similarity)
        out[start:start + chunk] = 1.0 - similarity.max(axis=1)
    return out


def fit_reference(embeddings: np.ndarray, groups: Sequence[str],
                  false_alarm: float = FALSE_ALARM) -> tuple[Reference, np.ndarray]:
    """The reference of training embeddings (N, D) and each one's distance to the other groups' images, whose
    (1 - false_alarm) quantile is the threshold. Near-duplicates of an image are left out of its own distance,
    or the threshold would measure how alike the copies of one scan are, not how far a new scan lies."""
    embeddings = np.asarray(embeddings, np.float32)
    groups = np.asarray(groups)
    if len(embeddings) < 10 or len(set(groups.tolist())) < 2:
        raise BadInputError(f"{len(embeddings)} image(s) in {len(set(groups.tolist()))} group(s) cannot show how "
                            "far a new image usually lies",
                            "fit the check on the model's training data (10 images or more, 2 groups or more)")
    items = unit_rows(embeddings)
    held_out = nearest_distances(items, items, excluded=groups[:, None] == groups[None, :])
    threshold = float(np.quantile(held_out, 1.0 - false_alarm))
    return Reference(items.astype(np.float16), threshold), held_out


def distances(reference: Reference, embeddings: np.ndarray) -> np.ndarray:
    return nearest_distances(unit_rows(np.asarray(embeddings, np.float32)), reference.items.astype(np.float32))


def save_reference(path: str | Path, reference: Reference) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, items=reference.items, threshold=np.float32(reference.threshold))
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_reference(path: str | Path) -> Reference:
    try:
        with np.load(path) as data:
            return Reference(data["items"], float(data["threshold"]))
    except (OSError, KeyError, ValueError) as exc:
        raise BadInputError(f"{path} is not a familiarity reference ({exc})",
                            "fit it again: fpc-keras familiarity --model MODEL --data KIND:PATH") from None


class Familiarity:
    """The check beside one model: `ratio(images)` -> distance / threshold per image (uint8 or float RGB 0-255,
    already fitted to ENCODER_SIZE by the model's resize mode)."""

    def __init__(self, encoder: Callable[[np.ndarray], np.ndarray], reference: Reference):
        self.encoder, self.reference = encoder, reference

    def ratio(self, images: np.ndarray) -> np.ndarray:
        return distances(self.reference, self.encoder(np.asarray(images, np.float32))) / self.reference.threshold

    def video_ratio(self, source: str, resize: str, decoded: np.ndarray | None = None) -> float:
        """A video's distance / threshold; `decoded`: its frames already read on the encoder's grid (RGB,
        ENCODER_SIZE, by `resize`), which spares a second decoding."""
        frames = check_frames(source, resize) if decoded is None else evenly_spaced(decoded)
        return float(distances(self.reference, video_embedding(self.encoder, frames)[None])[0]
                     / self.reference.threshold)


def beside(model_path: str | Path, card: dict, threads: int = 2) -> Familiarity | None:
    """The familiarity check shipped beside a model (its card's `input_check`), or None where it has none."""
    if "input_check" not in card:
        return None
    from .litert import TFLiteModel

    folder = Path(model_path).parent if Path(model_path).suffix else Path(model_path)
    encoder_file, reference_file = folder / ENCODER_FILE, folder / REFERENCE_FILE
    for needed in (encoder_file, reference_file):
        if not needed.is_file():
            raise BadInputError(f"{needed} is missing, though the card has an input_check", "copy the model's "
                                f"whole folder, or fit it again: fpc-keras familiarity --model {folder}")
    return Familiarity(TFLiteModel(encoder_file, threads), load_reference(reference_file))


def carried_over(card: dict, previous: dict, folder: Path) -> dict:
    """The card of a model replacing `previous` in `folder`: the input check fitted there stays where the new model
    trained on the same data and resizes as the old one did (what the check depends on); else its files are removed
    (a stale check would judge inputs against another model's training images)."""
    check = previous.get("input_check")
    if not check:
        return card
    if check["data"] == card.get("training", {}).get("data") and \
            previous["preprocessing"]["resize"] == card["preprocessing"]["resize"]:
        return {**card, "input_check": check}
    for name in (ENCODER_FILE, REFERENCE_FILE):
        (folder / name).unlink(missing_ok=True)
    return card


def seen_items(model_path: str | Path, card: dict, records: Sequence,
               progress: Callable[[str], None] = print) -> dict | None:
    """How many of `records` are (near-)copies of the data the model's input check was fitted on, its training
    data: closer to one of those images than `seen_below` (cards fitted before it: exact copies only). None where
    the model has no check."""
    found = beside(model_path, card)
    if found is None or not records:
        return None
    check = card["input_check"]
    below = float(check.get("seen_below", EXACT_COPY))
    nearest = distances(found.reference, embed_records(found.encoder, records, card["preprocessing"]["resize"],
                                                       progress))
    return {"items": int((nearest < below).sum()), "of": len(records), "copies": int((nearest < EXACT_COPY).sum()),
            "below": below, "fitted_on": check["data"]}


def fit_beside(model_path: str | Path, data: str, progress: Callable[[str], None] = print,
               false_alarm: float = FALSE_ALARM, weights: str = "imagenet") -> dict:
    """Fit the check on the images of `data` (KIND:PATH: the data the model was trained on) and write it beside the
    model at `model_path` (a shipped folder, a run folder or a model file): the int8 encoder, the reference and the
    card's `input_check`. Returns that entry."""
    from .card import read_card, write_card
    from .data.sources import data_source
    from .litert import TFLiteModel

    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    card = read_card(folder)
    records = grouped_records(data)
    resize = card["preprocessing"]["resize"]
    atomic_write_bytes(folder / ENCODER_FILE, int8_encoder(records, resize, weights, progress))
    embeddings = embed_records(TFLiteModel(folder / ENCODER_FILE), records, resize, progress)
    reference, held_out = fit_reference(embeddings, [r.group for r in records], false_alarm)
    save_reference(folder / REFERENCE_FILE, reference)
    entry = {"encoder": ENCODER_FILE, "reference": REFERENCE_FILE, "encoder_backbone": "efficientnet_lite0 (ImageNet)",
             "data": data_source(data)["path"], "items": len(records), "groups": len({r.group for r in records}),
             "threshold": round(reference.threshold, 6), "false_alarm": false_alarm,
             "held_out_median": round(float(np.median(held_out)), 6),
             "seen_below": round(float(np.quantile(held_out, SEEN_SHARE)), 6),
             "rule": "flag an input whose 1 - max cosine to the training images' embeddings exceeds the threshold, "
                     "the (1 - false_alarm) quantile of the training images' distances to other near-duplicate groups; "
                     f"an input under seen_below, their {SEEN_SHARE} quantile, counts as (nearly) a training image"}
    write_card(folder, {**card, "input_check": entry})
    return entry


def grouped_records(data: str) -> list:
    """The images of `data` (KIND:PATH), near-duplicates joined into one group where the data has no subject ids
    (as the splits join them)."""
    from .data.datasets import parse_data_spec, read_records
    from .data.duplicates import DEFAULT_DISTANCE, group_near_duplicates, resolve_mode

    kind, root = parse_data_spec(data)
    records = read_records(kind, root)
    if resolve_mode("auto", kind, records) == "phash":
        records = group_near_duplicates(records, DEFAULT_DISTANCE)
    return records


def is_video(source: str) -> bool:
    from .data.folders import VIDEO_EXTENSIONS

    return Path(source).suffix.lower() in VIDEO_EXTENSIONS


def check_frames(source: str, resize: str) -> np.ndarray:
    """The VIDEO_FRAMES evenly spaced frames of a video the check embeds (float, ENCODER_SIZE)."""
    from .data.video import read_video

    return evenly_spaced(read_video(source, ENCODER_SIZE, 3, resize))


def evenly_spaced(frames: np.ndarray) -> np.ndarray:
    """VIDEO_FRAMES of `frames`, evenly spaced, the first and last left out (float)."""
    chosen = np.linspace(0, len(frames) - 1, VIDEO_FRAMES + 2)[1:-1].round().astype(int)
    return frames[chosen].astype(np.float32)


def video_embedding(encoder: Callable[[np.ndarray], np.ndarray], frames: np.ndarray) -> np.ndarray:
    return encoder(frames).mean(axis=0)


def encoder_grid(records: Sequence, resize: str) -> np.ndarray:
    """One image per record on the encoder's grid: the image, or a video's middle checked frame."""
    from .data.images import fit_image, read_image

    return np.stack([check_frames(r.source, resize)[VIDEO_FRAMES // 2] if is_video(r.source)
                     else fit_image(read_image(r.source, 3), ENCODER_SIZE, resize) for r in records]).astype(np.float32)


def int8_encoder(records: Sequence, resize: str, weights: str = "imagenet",
                 progress: Callable[[str], None] = print, samples: int = 64) -> bytes:
    """The ImageNet EfficientNet-Lite0 encoder as int8 TFLite, calibrated on `samples` of the records' images."""
    from .conversion import convert
    from .models.image_encoder import build_image_encoder

    progress("      converting the ImageNet EfficientNet-Lite0 encoder to int8")
    chosen = np.random.default_rng(0).permutation(len(records))[:samples]
    return convert(build_image_encoder(ENCODER_SIZE, weights=weights), "int8",
                   encoder_grid([records[i] for i in chosen], resize))


def embed_records(encoder: Callable[[np.ndarray], np.ndarray], records: Sequence, resize: str,
                  progress: Callable[[str], None] = print, chunk: int = 256) -> np.ndarray:
    """Embeddings of the records' images (a video's: the mean over its checked frames), read and embedded `chunk`
    at a time (a large dataset never sits in memory as pixels)."""
    out = []
    for start in range(0, len(records), chunk):
        part = records[start:start + chunk]
        out.append(np.stack([video_embedding(encoder, check_frames(r.source, resize)) for r in part])
                   if is_video(part[0].source)
                   else encoder(encoder_grid(part, resize)))
        progress(f"      embedded {min(start + chunk, len(records))}/{len(records)} items")
    return np.concatenate(out)
