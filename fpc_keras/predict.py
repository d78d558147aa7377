"""`fpc-keras predict`: label new, unlabelled scans with a run folder, `.keras` or `.tflite` model, one CSV row each.

Inputs: an image, a folder tree of images, a video, a folder of videos, a DICOM still or cine. A classifier's
row holds the predicted label and a probability per class (a video: the mean over the card's clips). A
segmenter's row holds the head circumference in mm and the fitted ellipse (centre, semi-axes in pixels, angle in
degrees), one row per frame of a cine; its pixel size comes from the DICOM file, a CSV of pixel sizes, or
`--pixel-mm`, and a segmenter given none is refused rather than measured in pixels.
"""
from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import postprocess
from .data.dicom import dicom_frames, dicom_pixel_mm
from .data.folders import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, files_under
from .data.images import as_channels, fit_image, read_image
from .data.video import model_clips, read_video
from .errors import BadInputError
from .io import atomic_write_bytes, atomic_write_text
from .predictor import Predictor
from .tasks import task_of_card

Progress = Callable[[str], None]
DICOM = ".dcm"
UNLIKE = "unlike_training"  # the input check's distance / threshold: above 1, unlike every training image
SEEN = "seen_in_training"  # 1: (nearly) one of the training items (closer than the check's `seen_below`)
PIXEL_HINT = ("give --pixel-mm MM (one size for every input), or --pixel-csv FILE (columns filename and pixel "
              "size in mm, e.g. HC18's pixel-size CSV), or DICOM files that state PixelSpacing")


@dataclass
class Prediction:
    """Rows for the CSV and the files that could not be read (file -> why)."""
    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)

    def report_skipped(self) -> None:
        """Each unreadable file and why, one line each on stderr."""
        for source, why in self.bad.items():
            print(f"skipped {source}: {why}", file=sys.stderr)


def collect_inputs(path: str | Path, card: dict) -> list[Path]:
    """The files under `path` that the model of `card` takes (its task's `inputs`): images (and DICOM) for image
    models, videos (and DICOM cine) for video models. A file is taken as given, whatever its name says."""
    inputs = task_of_card(card).inputs
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"input not found: {path}", "give an image, a video, a DICOM file or a folder of them")
    if path.is_file():
        return [path]
    wanted = (*VIDEO_EXTENSIONS, DICOM) if inputs == "video" else (*IMAGE_EXTENSIONS, DICOM)
    files = files_under(path, wanted)
    if not files:
        raise BadInputError(f"{path} holds no {inputs} file "
                            f"({', '.join(sorted(set(wanted)))})", "give a folder that holds the scans, or a file")
    return files


def read_pixel_csv(path: str | Path) -> dict[str, float]:
    """File name -> mm per pixel, from a CSV with a file-name column and a pixel-size column (HC18's
    `filename,pixel size(mm)`, or `file,pixel_mm`)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"pixel-size CSV not found: {path}", "give the CSV of pixel sizes (--pixel-csv)")
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    try:
        dialect = csv.Sniffer().sniff(text[:2048], ",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.DictReader(io.StringIO(text), dialect=dialect))
    columns = list(rows[0]) if rows else []
    names = [c for c in columns if c.strip().lower() in ("filename", "file", "image", "path")]
    sizes = [c for c in columns if "pixel" in c.lower()]
    if not names or not sizes:
        raise BadInputError(f"{path} has columns {columns}", "name them filename and pixel size(mm) (or file, pixel_mm)")
    table = {}
    for number, row in enumerate(rows, start=2):
        try:
            table[Path(row[names[0]].strip()).name] = float(row[sizes[0]])
        except (TypeError, ValueError):
            raise BadInputError(f"{path} line {number}: pixel size {row[sizes[0]]!r} is not a number",
                                "give the size in mm per pixel, e.g. 0.069") from None
    return table


def predict_inputs(predictor: Predictor, files: Sequence[Path], on_bad_input: str = "error",
                   pixel_mm: float | None = None, pixel_csv: dict[str, float] | None = None,
                   overlays: Path | None = None, progress: Progress = print,
                   on_file: Callable[[Path, list[dict]], None] | None = None) -> Prediction:
    """Every file through the model; unreadable ones stop the run (`error`) or are listed (`skip`). `on_file(path,
    rows)` after each file (no rows where it was skipped), for a caller that shows results as they come (the model
    and its input check are set up once for all the files)."""
    task = task_of_card(predictor.card)
    if task.name == "clip_segmentation":
        raise BadInputError(f"{predictor.path} segments clips (probe sweeps)", "predict with a frame segmenter")
    check = _input_check(predictor)
    if task.postprocessing:  # a frame segmenter: masks, ellipses, HC in mm
        measure = _segmenter(predictor, pixel_mm, pixel_csv or {}, overlays, check)
        prediction = Prediction(["file", "hc_mm", "pixel_mm", "cx", "cy", "semi_axis_a", "semi_axis_b",
                                 "angle_deg"])
    else:
        measure = _classifier(predictor, overlays, check)
        prediction = Prediction(["file", "label", *[f"p_{label}" for label in predictor.labels]])
    seen = check is not None and "seen_below" in predictor.card["input_check"]
    prediction.columns += ([SEEN] if seen else []) + ([UNLIKE] if check else [])
    every = max(10, len(files) // 10)
    for done, path in enumerate(files, start=1):
        try:
            rows = measure(path)
        except BadInputError as exc:
            if on_bad_input != "skip":
                raise
            prediction.bad[str(path)] = exc.what
            rows = []
        prediction.rows.extend(rows)
        if on_file:
            on_file(path, rows)
        if done % every == 0 or done == len(files):
            progress(f"      {done}/{len(files)} inputs ({len(prediction.bad)} unreadable)")
    return prediction


def _input_check(predictor: Predictor) -> Callable | None:
    """{UNLIKE: distance / threshold (and SEEN, where the card has `seen_below`)} of an image's pixels, or of a video
    (its path and the frames the model read), where the model has an input check beside it (`familiarity`); None
    where it has none."""
    from .familiarity import ENCODER_SIZE, beside

    found = beside(predictor.path, predictor.card)
    if found is None:
        return None
    seen_below = predictor.card["input_check"].get("seen_below")
    spec = predictor.image_spec()
    resize = spec.resize

    def cells(ratio: float) -> dict:
        seen = {} if seen_below is None else {SEEN: str(int(ratio * found.reference.threshold < seen_below))}
        return {**seen, UNLIKE: f"{ratio:.3f}"}

    if task_of_card(predictor.card).inputs == "video":
        on_grid = tuple(spec.size) == ENCODER_SIZE and spec.channels == 3

        def video_check(path: Path, frames: np.ndarray) -> dict:  # the model's frames, where on the encoder's grid
            return cells(found.video_ratio(str(path), resize, frames if on_grid else None))
        return video_check

    def image_check(pixels: np.ndarray) -> dict:
        return cells(float(found.ratio(fit_image(as_channels(pixels, 3), ENCODER_SIZE, resize)[None])[0]))
    return image_check


def _images_of(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 HxWxC) per image: one for an image file, one per frame for a DICOM cine."""
    if path.suffix.lower() != DICOM:
        yield str(path), read_image(str(path), 3)
        return
    frames = list(dicom_frames(path))
    for number, frame in enumerate(frames):
        yield (f"{path}#{number}" if len(frames) > 1 else str(path)), as_channels(frame, 3)


def _classifier(predictor: Predictor, overlays: Path | None, check: Callable | None) -> Callable[[Path], list[dict]]:
    spec = predictor.image_spec()
    clip_length = int(predictor.card["preprocessing"].get("clip_length", 1))
    clips = int(predictor.card["preprocessing"].get("clips_per_video", 4))
    videos = task_of_card(predictor.card).inputs == "video"
    if videos and overlays is not None:
        raise BadInputError(f"--overlays draws maps over images; {predictor.path} classifies videos",
                            "leave out --overlays for a video model")
    explain = _explainer(predictor, overlays)

    def row(name: str, probs: np.ndarray) -> dict:
        return {"file": name, "label": predictor.labels[int(np.argmax(probs))],
                **{f"p_{label}": f"{p:.6f}" for label, p in zip(predictor.labels, probs)}}

    def measure(path: Path) -> list[dict]:
        if videos:
            frames = read_video(str(path), spec.size, spec.channels, spec.resize).astype(np.float32)
            return [{**row(str(path), predictor.predict(model_clips(frames, clip_length, clips)).mean(axis=0)),
                     **(check(path, frames) if check else {})}]
        rows = []
        for name, pixels in _images_of(path):
            x = fit_image(as_channels(pixels, spec.channels), spec.size, spec.resize).astype(np.float32)
            probs = predictor.predict(x[None])[0]
            rows.append({**row(name, probs), **(check(pixels) if check else {})})
            if explain is not None:
                explain(name, pixels, x, int(np.argmax(probs)))
        return rows
    return measure


def _explainer(predictor: Predictor, overlays: Path | None) -> Callable | None:
    """Overlays for an image classifier: Grad-CAM from a Keras model, occlusion sensitivity from a .tflite (it holds
    no gradients; `saliency.py`, forward passes only)."""
    if overlays is None:
        return None
    from PIL import Image

    from .data.images import unfit_image
    from .saliency import occlusion_map, overlay

    resize = predictor.image_spec().resize
    if predictor.path.endswith(".keras"):
        import keras

        from . import models  # noqa: F401  (registers custom layers)
        from .explain import heatmap

        model = keras.saving.load_model(predictor.path, compile=False)
        method, explain = "gradcam", lambda x, target: heatmap(model, x, target, "gradcam")
    else:
        method, explain = "occlusion", lambda x, target: occlusion_map(predictor.predict, x, target)

    def draw(name: str, pixels: np.ndarray, x: np.ndarray, target: int) -> None:  # target: the predicted class
        cam = np.clip(unfit_image(explain(x, target), pixels.shape[:2], resize), 0, 1)
        _save_png(overlays / f"{_stem(name)}_{method}.png", Image.fromarray(overlay(pixels, cam)))
    return draw


def _segmenter(predictor: Predictor, pixel_mm: float | None, pixel_csv: dict[str, float],
               overlays: Path | None, check: Callable[[np.ndarray], dict] | None) -> Callable[[Path], list[dict]]:
    post = postprocess.settings(predictor.card)
    spec = predictor.image_spec()

    def size_of(path: Path) -> float:
        stated = dicom_pixel_mm(path) if path.suffix.lower() == DICOM else None
        size = pixel_csv.get(path.name) or stated or pixel_mm
        if not size:
            raise BadInputError(f"{path}: no pixel size, so no head circumference in mm", PIXEL_HINT)
        return size

    def measure(path: Path) -> list[dict]:
        size, rows = size_of(path), []
        for name, pixels in _images_of(path):
            x = fit_image(as_channels(pixels, spec.channels), spec.size, spec.resize)
            probs = postprocess.mask_probabilities(predictor.predict, x[None].astype(np.float32), post["flip"])[0]
            mask, ellipse = postprocess.segment(probs, pixels.shape[:2], spec.resize, post["threshold"],
                                                post["shape"])
            rows.append({**_biometry_row(name, ellipse, size), **(check(pixels) if check else {})})
            if overlays is not None:
                _save_png(overlays / f"{_stem(name)}_mask.png", _mask_overlay(pixels, mask))
        return rows
    return measure


def _biometry_row(name: str, ellipse, pixel_mm: float) -> dict:
    if ellipse is None:
        return {"file": name, "hc_mm": "", "pixel_mm": pixel_mm}
    return {"file": name, "hc_mm": f"{ellipse.circumference * pixel_mm:.2f}", "pixel_mm": pixel_mm,
            "cx": f"{ellipse.cx:.2f}", "cy": f"{ellipse.cy:.2f}", "semi_axis_a": f"{ellipse.a:.2f}",
            "semi_axis_b": f"{ellipse.b:.2f}", "angle_deg": f"{math.degrees(ellipse.angle):.2f}"}


def _mask_overlay(pixels: np.ndarray, mask: np.ndarray):
    from PIL import Image

    tinted = pixels.astype(np.float32).copy()
    tinted[mask] = 0.6 * tinted[mask] + 0.4 * np.array([255, 64, 64])
    return Image.fromarray(tinted.astype(np.uint8))


def _stem(name: str) -> str:
    return Path(name.replace("#", "_frame")).name.rsplit(".", 1)[0]


def _save_png(path: Path, image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def check_writable(out: Path) -> None:
    """Refuse an --out that cannot be written before any model work is done."""
    folder = out.parent if out.parent != Path("") else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{out.name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BadInputError(f"cannot write {out} ({exc.strerror})",
                            "choose an --out in a folder you can write to") from None


def write_csv(prediction: Prediction, out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=prediction.columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(prediction.rows)
    atomic_write_text(out, buffer.getvalue())
