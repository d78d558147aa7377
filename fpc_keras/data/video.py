"""Video decoding (mp4/avi/mov/mpeg/gif through imageio + its bundled ffmpeg, DICOM cine through pydicom), a disk
cache of decoded frames for training, and fixed-length clip sampling. Frames are resized while decoding, so a long
cine never sits in memory at full size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .dicom import DECODE_HINT, dicom_frames
from .images import as_channels, fit_image



def read_video(source: str, size: tuple[int, int], channels: int = 3, mode: str = "pad",
               max_frames: int = 0) -> np.ndarray:
    """All frames (or the first `max_frames`) as uint8 TxHxWxC, each resized by `fit_image`."""
    path = Path(source)
    if not path.is_file():
        raise BadInputError(f"video file not found: {source}", "check the path")
    if path.stat().st_size == 0:
        raise BadInputError(f"{source} is an empty (0-byte) file", DECODE_HINT)
    frames = dicom_frames(path) if path.suffix.lower() == ".dcm" else _imageio_frames(path)
    out = []
    try:
        for frame in frames:
            out.append(fit_image(as_channels(frame, channels), size, mode))
            if max_frames and len(out) >= max_frames:
                break
    except BadInputError:
        raise
    except Exception as exc:  # decoders raise many types (OSError, RuntimeError, ValueError...)
        if not out:
            raise BadInputError(f"{source} cannot be decoded as a video ({decoder_reason(exc)})",
                                DECODE_HINT) from None
        # A damaged tail after good frames: keep what decoded.
    if not out:
        raise BadInputError(f"{source} has no frames", DECODE_HINT)
    return np.stack(out)


def cached_video(source: str, size: tuple[int, int], channels: int, mode: str, cache_dir: Path) -> np.ndarray:
    """`read_video` through a cache of decoded, resized frames (`.npy`, one per video and size, keyed by the file's
    path, size and modification time): the folds and recipes of a cross-validation decode each video once."""
    from ..io import atomic_path, file_key

    if not Path(source).is_file():
        return read_video(source, size, channels, mode)  # names the missing file
    path = Path(cache_dir) / f"{file_key(str(Path(source).resolve()), f'{tuple(size)}|{channels}|{mode}')}.npy"
    if path.is_file():
        return np.load(path)
    frames = read_video(source, size, channels, mode)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, frames)
    return frames


def _imageio_frames(path: Path):
    import imageio.v3 as iio

    plugin = "pillow" if path.suffix.lower() == ".gif" else "FFMPEG"
    try:
        yield from iio.imiter(path, plugin=plugin)
    except Exception as exc:
        raise BadInputError(f"{path} cannot be decoded as a video ({decoder_reason(exc)})", DECODE_HINT) from None


def decoder_reason(exc: Exception) -> str:
    """A decoder's failure in one line: ffmpeg's errors carry its whole log, whose last error line says why."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "not found" in line or "nvalid" in line]
    reason = errors[-1] if errors else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {reason[:200]}"


def clip_starts(n_frames: int, clip_length: int, clips: int, rng: np.random.Generator | None = None) -> list[int]:
    """Start frames of `clips` clips: evenly spaced over the video, or random where `rng` is given."""
    last = max(n_frames - clip_length, 0)
    if rng is not None:
        return sorted(int(s) for s in rng.integers(0, last + 1, size=clips))
    if clips == 1:
        return [last // 2]
    return [int(round(i * last / (clips - 1))) for i in range(clips)]


def sample_clip(n_frames: int, clip_length: int, rng: np.random.Generator,
                speed: tuple[float, float] = (0.8, 1.25)) -> np.ndarray:
    """Frame indices of one training clip: a random playback speed within `speed` (the step between frames) and a
    random start (temporal jitter); a video shorter than the clip's span repeats its last frame."""
    step = rng.uniform(*speed)
    start = rng.uniform(0.0, max(n_frames - 1 - step * (clip_length - 1), 0.0))
    return np.minimum(np.round(start + step * np.arange(clip_length)).astype(np.int64), n_frames - 1)


def take_clip(frames: np.ndarray, start: int, clip_length: int) -> np.ndarray:
    """`clip_length` consecutive frames from `start`; a short video repeats its last frame."""
    indices = np.minimum(np.arange(start, start + clip_length), len(frames) - 1)
    return frames[indices]


def model_clips(frames: np.ndarray, clip_length: int, clips: int) -> np.ndarray:
    """The batch a model sees for one video: `clips` evenly spaced clips (N x T x H x W x C), or, for a frame
    model (`clip_length` 1), N single frames (N x H x W x C). Its outputs are averaged per video."""
    batch = np.stack([take_clip(frames, s, clip_length) for s in clip_starts(len(frames), clip_length, clips)])
    return batch[:, 0] if clip_length == 1 else batch
