"""Cross-validated segmenters: each fold's per-image measures (Dice, IoU, Hausdorff and HC error in mm), pooled
over the folds, and two recipes compared image by image over the same K-fold split."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .. import postprocess
from ..io import read_json
from ..metrics import mean_metrics
from . import check_one_split, paired_items

SEGMENTATION_MEASURES = ("dice", "iou", "hausdorff_mm", "hc_mad_mm")
DIGITS = {name: 2 if name.endswith("_mm") else 4 for name in SEGMENTATION_MEASURES}  # mm to 0.01, overlaps to 1e-4


def segmentation_fold(run_dir: str | Path, fold: int, folds: int) -> dict:
    """What pooling needs from a finished fold of a segmenter: each test item's measures (file name, not path),
    the split counts, the post-processing chosen on the fold's validation split and the training time. Small
    enough to keep in the repository, so that folds run in different sessions pool."""
    run_dir = Path(run_dir)
    results, card = read_json(run_dir / "results.json"), read_json(run_dir / "model_card.json")
    items = [{"file": Path(item["source"]).name, **{k: item.get(k) for k in
                                                    (*SEGMENTATION_MEASURES, "hc_mm", "hc_true_mm", "ellipse")}}
             for item in results["items"]]
    return {"run": run_dir.name, "fold": fold, "folds": folds, "items": items,
            "splits": card["training"]["splits"], "postprocessing": postprocess.settings(card),
            "train_seconds": results["timings"].get("train_seconds", 0.0)}


def pooled_segmentation(folds: Sequence[dict]) -> dict:
    """Per-item measures pooled over folds (each item tested once, by a model that never saw it), with bootstrap
    CIs; refuses folds of different K or the same fold twice."""
    check_one_split(folds)
    per_item = {name: [item[name] for f in folds for item in f["items"] if item.get(name) is not None]
                for name in SEGMENTATION_MEASURES}
    return {"folds_done": sorted(f["fold"] for f in folds), "folds": folds[0]["folds"] if folds else 0,
            "n": sum(len(f["items"]) for f in folds), "metrics": mean_metrics(per_item)}


def pooled_segmentation_table(folds: Sequence[dict], pooled: dict) -> str:
    """Markdown: one row per fold (means), then the pooled row (means with bootstrap CIs)."""

    def mean(values: list, d: int) -> str:
        values = [v for v in values if v is not None and not np.isnan(v)]
        return f"{np.mean(values):.{d}f}" if values else "-"

    lines = ["| fold | n test | Dice | IoU | Hausdorff mm | HC abs. error mm | threshold, mirrored, shape | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for f in sorted(folds, key=lambda f: f["fold"]):
        cells = [mean([item.get(name) for item in f["items"]], DIGITS[name]) for name in SEGMENTATION_MEASURES]
        post = {**postprocess.DEFAULT, **f["postprocessing"]}  # folds stored before `shape`: the mask
        lines.append(f"| {f['fold']} | {len(f['items'])} | {' | '.join(cells)} | {post['threshold']}, "
                     f"{'yes' if post['flip'] else 'no'}, {post['shape']} | {f['train_seconds']:.0f} |")
    cells = []
    for name in SEGMENTATION_MEASURES:
        metric, d = pooled["metrics"].get(name), DIGITS[name]
        cells.append(f"{metric['value']:.{d}f} [{metric['ci95'][0]:.{d}f}, {metric['ci95'][1]:.{d}f}]" if metric
                     else "-")
    lines.append(f"| pooled ({len(folds)} of {pooled['folds']} folds) | {pooled['n']} | {' | '.join(cells)} | | "
                 f"{sum(f['train_seconds'] for f in folds):.0f} |")
    return "\n".join(lines) + "\n"


def paired_segmentation(folds: Sequence[dict], baseline: Sequence[dict]) -> dict:
    """This recipe's per-item measures minus a baseline recipe's, over the test items both have measured. Folds of
    the same K-fold split test the same images, each once, by one model of each recipe that never saw it, so the
    per-image differences compare the recipes with the spread between images taken out: mean difference with a
    bootstrap CI, and on how many images this recipe did better (higher Dice / IoU, lower errors in mm)."""
    pairs = paired_items(folds, baseline)
    out = {}
    for name in SEGMENTATION_MEASURES:
        values = [(mine.get(name), theirs.get(name)) for mine, theirs in pairs]
        diffs = np.array([a - b for a, b in values if a is not None and b is not None], np.float64)
        diffs = diffs[~np.isnan(diffs)]
        if diffs.size:
            better = diffs < 0 if name.endswith("_mm") else diffs > 0
            out[name] = {**mean_metrics({name: diffs})[name], "n": int(diffs.size), "better": int(better.sum())}
    return out


def paired_segmentation_table(paired: dict, recipe: str, baseline: str) -> str:
    """Markdown: per measure, the mean paired difference (recipe - baseline) with its CI and the images it won."""
    lines = [f"| measure | n images | {recipe} - {baseline}, mean [95 % CI] | {recipe} better on |", "|---|---|---|---|"]
    for name, metric in paired.items():
        d = DIGITS[name]
        lines.append(f"| {name} | {metric['n']} | {metric['value']:+.{d}f} [{metric['ci95'][0]:+.{d}f}, "
                     f"{metric['ci95'][1]:+.{d}f}] | {metric['better']} |")
    return "\n".join(lines) + "\n"


