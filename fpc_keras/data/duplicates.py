"""Near-duplicate images grouped, so that near-twins never straddle splits.

BUSI and the abdominal organ set have no patient ids and hold many frames of the same scan. A split by file puts
near-twins on both sides and flatters the test split. Each image gets a 64-bit perceptual hash: 32x32 grey pixels,
less the dataset's mean image, to their 8x8 lowest DCT frequencies, each bit the sign against their median
(robust to speckle, gain, small shifts and re-encoding). Two images whose hashes differ in at most `distance`
bits are linked; the connected components of those links, joined with the readers' own groups, become the groups
that splits are made of.

The default distance, 10 of 64 bits, sits in the gap of BUSI's nearest-neighbour distances (near-twins at 0-12
bits, distinct scans at 14-24) and links no two organs of the abdominal set (docs/data_and_weights.md). Data
without subject ids (class folders, file-name prefixes, a CSV without a group column) is grouped by default
(`data.duplicates: auto`); data with patient or study ids keeps its own groups.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import BadInputError
from .folders import VIDEO_EXTENSIONS
from .images import read_image
from .records import Record

MODES = ("auto", "phash", "off")
DEFAULT_DISTANCE = 10
HASH_SIDE = 32
LOW = 8
PREFIX = "near:"  # the name of a group that near-duplicates joined


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(HASH_SIDE)


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """HxW(xC) uint8 pixels as 32x32 grey floats."""
    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    small = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).resize((HASH_SIDE, HASH_SIDE), Image.BILINEAR)
    return np.asarray(small, dtype=np.float64)


def centred_hashes(thumbnails: np.ndarray) -> np.ndarray:
    """One packed 64-bit hash per thumbnail, after the dataset's mean thumbnail is taken away: the scan sector,
    overlays and the scanner's look that every image shares would otherwise dominate the low frequencies (all
    64x64 abdominal frames then hash alike)."""
    centred = thumbnails - thumbnails.mean(axis=0)
    low = np.einsum("ij,njk,lk->nil", _DCT, centred, _DCT)[:, :LOW, :LOW].reshape(len(thumbnails), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    weights = np.uint64(1) << np.arange(LOW * LOW, dtype=np.uint64)
    return np.bitwise_or.reduce(np.where(bits, weights, np.uint64(0)), axis=1)


def hashes_of(records: Sequence[Record], progress: Callable[[str], None] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The centred hash of each record's image, and which images could be read. An unreadable image links to
    nothing (it keeps its own group); reading it for training or evaluation stops or skips it, per
    `data.on_bad_input`, with its own message."""
    thumbnails = np.zeros((len(records), HASH_SIDE, HASH_SIDE))
    readable = np.ones(len(records), dtype=bool)
    for index, record in enumerate(records):
        try:
            thumbnails[index] = thumbnail(read_image(record.source, 1)[..., 0])
        except BadInputError:
            readable[index] = False
        if progress and (index + 1) % 500 == 0:
            progress(f"      hashed {index + 1}/{len(records)} images")
    hashes = np.zeros(len(records), dtype=np.uint64)
    if readable.any():
        hashes[readable] = centred_hashes(thumbnails[readable])
    return hashes, readable


def close_pairs(hashes: np.ndarray, distance: int, chunk: int = 2048) -> list[tuple[int, int, int]]:
    """(i, j, bits) for every i < j whose hashes differ in at most `distance` bits."""
    pairs = []
    for start in range(0, len(hashes), chunk):
        block = np.bitwise_count(hashes[start:start + chunk, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(block <= distance)):
            if start + i < j:
                pairs.append((int(start + i), int(j), int(block[i, j])))
    return pairs


@dataclass(frozen=True)
class Duplicates:
    """What grouping found: the clusters (indices into the records, two or more each) and the linked pairs."""
    clusters: list[list[int]]
    pairs: list[tuple[int, int, int]]

    def exact(self) -> list[tuple[int, int]]:
        return [(i, j) for i, j, bits in self.pairs if bits == 0]


def find_duplicates(records: Sequence[Record], distance: int = DEFAULT_DISTANCE,
                    progress: Callable[[str], None] | None = None) -> Duplicates:
    """Clusters of near-duplicate images (components of hash links and of the records' own groups)."""
    hashes, readable = hashes_of(records, progress)
    index = np.flatnonzero(readable)
    pairs = [(int(index[i]), int(index[j]), bits) for i, j, bits in close_pairs(hashes[readable], distance)]
    parent = list(range(len(records)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_of_group: dict[str, int] = {}
    for index, record in enumerate(records):
        parent[root(index)] = root(first_of_group.setdefault(record.group, index))
    for i, j, _ in pairs:
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = defaultdict(list)
    for index in range(len(records)):
        members[root(index)].append(index)
    linked = {i for i, _, _ in pairs} | {j for _, j, _ in pairs}
    clusters = [m for m in members.values() if len(m) > 1 and linked & set(m)]
    return Duplicates(sorted(clusters, key=lambda m: (-len(m), m[0])), pairs)


def group_near_duplicates(records: Sequence[Record], distance: int = DEFAULT_DISTANCE,
                          progress: Callable[[str], None] | None = None) -> list[Record]:
    """The records with each near-duplicate cluster made one group (named `near:` + its first group)."""
    found = find_duplicates(records, distance, progress)
    renamed = {}
    for cluster in found.clusters:
        name = PREFIX + min(records[i].group for i in cluster)
        renamed.update({i: name for i in cluster})
    return [replace(r, group=renamed[i]) if i in renamed else r for i, r in enumerate(records)]


def resolve_mode(mode: str, kind: str, records: Sequence[Record]) -> str:
    """`auto` is `phash` for images without subject ids (class folders, file-name prefixes, a CSV without a
    group column), else `off`: HC18, FETAL_PLANES_DB and videos have patients or sources, which stay the groups
    (HC18 has one image for most patients, so "one file per group" would not tell)."""
    if mode not in MODES:
        raise BadInputError(f"data.duplicates is {mode!r}", f"use one of {MODES}")
    if mode != "auto":
        return mode
    without_ids = kind in ("folder", "prefix") or (kind == "csv" and all(r.group == Path(r.source).name
                                                                        for r in records))
    is_video = any(r.source.lower().endswith(VIDEO_EXTENSIONS) for r in records)
    return "phash" if without_ids and not is_video else "off"


def summarise(records: Sequence[Record], found: Duplicates, distance: int, root: str = "", shown: int = 12) -> dict:
    """What `fpc-keras datasets --duplicates` prints and stores: counts, the largest clusters, exact copies, and
    clusters whose images carry different labels (the same scan filed under two classes). Paths relative to
    `root`."""
    def labels(cluster: list[int]) -> list[str]:
        return sorted({str(records[i].label) for i in cluster})

    def name(index: int) -> str:
        return os.path.relpath(records[index].source, root) if root else records[index].source

    mixed = [c for c in found.clusters if len(labels(c)) > 1]
    return {"items": len(records), "distance": distance, "hash": f"{LOW * LOW}-bit dataset-centred DCT hash",
            "clusters": len(found.clusters),
            "items_in_clusters": sum(len(c) for c in found.clusters),
            "groups_after": len(records) - sum(len(c) - 1 for c in found.clusters),
            "largest": [len(c) for c in found.clusters[:5]],
            "exact_pairs": [[name(i), name(j)] for i, j in found.exact()],
            "mixed_label_clusters": [{"labels": labels(c), "items": [name(i) for i in c]} for c in mixed],
            "top_clusters": [{"labels": labels(c), "items": [name(i) for i in c]}
                             for c in found.clusters[:shown]]}
