"""`fpc-keras report`: one self-contained HTML page from `runs/*/results.json` and the export cards."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

import jinja2
import yaml

from ..errors import BadInputError
from ..io import atomic_write_text, read_json
from ..metrics import headline_metric
from ..postprocess import invokes_per_item
from ..tasks import task_of_card
from .cross_validation import agreement_tables, cross_validation_tables, dataset_folders
from .duplicates import duplicate_sections
from .figures import (bland_altman_figure, confusion_figure, history_figure, image_file_uri, latency_accuracy_figure,
                      overlay_figure, reliability_figure)
from .papers import LOWER_IS_BETTER, PAPERS

TEMPLATE = Path(__file__).with_name("template.html")
RUN_TEMPLATE = Path(__file__).with_name("run.html")


def collect_runs(runs_dir: str | Path) -> list[dict]:
    """Every finished run (results.json beside model_card.json), with its exports and figures."""
    runs = []
    for results_path in sorted(Path(runs_dir).glob("*/results.json")):
        folder = results_path.parent
        card_path = folder / "model_card.json"
        if not card_path.is_file():
            continue
        card = read_json(card_path)
        results = read_json(results_path)
        metrics = results["metrics"]
        exports = [read_json(p) for p in sorted(folder.glob("exports/*/model_card.json"))]
        choice_path = folder / "exports" / "choice.json"
        config = (folder / "config.yaml").read_text() if (folder / "config.yaml").is_file() else ""
        runs.append({"name": folder.name, "folder": str(folder), "card": card, "results": results,
                     "exports": exports, "config": config,
                     "quantised_choice": read_json(choice_path) if choice_path.is_file() else None,
                     "paper": (yaml.safe_load(config) or {}).get("model", {}).get("name") if config else None,
                     "confusion": confusion_figure(metrics["confusion"]) if "confusion" in metrics else None,
                     "reliability": reliability_figure(metrics["calibration"]) if "calibration" in metrics else None,
                     "history": history_figure(folder / "history.csv"),
                     "bland_altman": bland_altman_figure(results.get("items", [])),
                     "overlays": overlay_figure(results.get("items", []))})
    return runs


def run_files(folder: str | Path) -> list[dict]:
    """The run folder's files (checkpoints summed per phase), for its page."""
    folder, rows = Path(folder), {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        key = str(Path(*relative.parts[:2])) + "/" if relative.parts[0] == "checkpoints" else str(relative)
        entry = rows.setdefault(key, {"path": key, "bytes": 0, "files": 0})
        entry["bytes"] += path.stat().st_size
        entry["files"] += 1
    return list(rows.values())


def gradcam_montage(run: dict, pages: Path, progress: Callable[[str], None]) -> str | None:
    """The run's Grad-CAM per class as a data URI, computed once per model (cached beside the run pages)."""
    from ..explain import class_montage

    model, cached = Path(run["folder"]) / "model.keras", pages / f"{run['name']}.gradcam.png"
    if run["card"]["task"] != "classification" or not model.is_file():
        return None
    if not cached.is_file() or cached.stat().st_mtime < model.stat().st_mtime:
        progress(f"      Grad-CAM per class for {run['name']}")
        try:
            class_montage(run["folder"], cached)
        except BadInputError as error:
            progress(f"      no Grad-CAM for {run['name']}: {error}")
            return None
    return image_file_uri(cached)


def shipped_models(models_dir: str | Path) -> list[dict]:
    """The shipped models (`tflite/models/<name>/model_card.json`): the report shows them with no local run."""
    return [{"name": path.parent.name, "card": read_json(path)}
            for path in sorted(Path(models_dir).glob("*/model_card.json"))]


def card_estimate(card: dict) -> tuple[dict, str]:
    """The metrics a shipped card stands on, and where they come from: the CV of its recipe where it was refit on
    every item after one (no test split is left), else its test split. A video classifier's top-1 is per video."""
    cv = card["metrics"].get("cv")
    if not cv:
        return card["metrics"].get("test") or {}, "test"
    video = task_of_card(card).inputs == "video"
    return ({**cv, "video_top1": cv["top1"]} if video and "top1" in cv else cv,
            f"{cv['folds']}-fold CV of its recipe")


def shipped_rows(shipped: list[dict], paper: str, names: list[str]) -> list[dict]:
    """A paper table's rows for the shipped models of that paper: the metrics their cards stand on."""
    rows = []
    for model in shipped:
        card = model["card"]
        if card["model"]["name"] == paper:
            data = str(card["training"]["data"]).split(":", 1)
            metrics, where = card_estimate(card)
            rows.append({"who": f"shipped tflite/models/{model['name']} ({card['export'].get('precision', '')})",
                         "data": f"{data[0]}:{Path(data[-1]).name} ({where})",
                         "n": metrics.get("n", card["metrics"].get("n_test", "")),
                         "cells": [fmt(metrics.get(m)) for m in names]})
    return rows


def shipped_latency_points(shipped: list[dict]) -> list[dict]:
    """(model, precision, median latency, top-1 or Dice) of every shipped model, for the trade-off figure."""
    points = []
    for model in shipped:
        card = model["card"]
        metrics = card_estimate(card)[0]
        metric = headline_metric(metrics)
        latency = next(iter(card["export"]["latency"].values()))
        if metric in metrics:
            points.append({"run": f"shipped {model['name']}", "variant": card["export"]["variant"],
                           "latency_ms": invokes_per_item(card) * latency["median_ms"], "metric": metric,
                           "value": metrics[metric]["value"]})
    return points


def latency_points(runs: list[dict]) -> list[dict]:
    """(run, export variant, median latency, test top-1 or Dice) for every export with both measured (from the
    runs' `export_rows`)."""
    points = []
    for run in runs:
        for row in run["export_rows"]:
            if row["value"] is not None:
                points.append({"run": run["name"], "variant": row["kind"], "latency_ms": row["median_ms"],
                               "metric": row["metric"], "value": row["value"]})
    return points


def fmt(metric) -> str:
    if not isinstance(metric, dict) or "value" not in metric:
        return "–"
    lo, hi = metric["ci95"]
    return f"{metric['value']:.4f} <small>[{lo:.4f}, {hi:.4f}]</small>"


def comparison_tables(runs: list[dict], shipped: list[dict] = ()) -> list[dict]:
    """Per paper: its numbers, the shipped models of that paper, then each local run of that model."""
    tables = []
    for key, paper in PAPERS.items():
        names = list(paper["metrics"])
        rows = [{"who": "paper", "data": paper["data"], "n": "", "cells": [f"{paper['metrics'][m]:.4f}" for m in names]}]
        rows += [{"who": who, "data": values.get("data", paper["data"]), "n": "",
                  "cells": [f"{values[m]:.4f}" if m in values else "–" for m in names]}
                 for who, values in paper.get("references", {}).items()]
        rows += shipped_rows(list(shipped), key, names)
        for run in runs:
            if run["paper"] == key:
                metrics = run["results"]["metrics"]
                rows.append({"who": run["name"], "data": f"{run['results']['data']} ({run['results']['split']})",
                             "n": run["results"]["n"], "cells": [fmt(metrics.get(m)) for m in names]})
        tables.append({"key": key, "title": paper["title"], "notes": paper.get("notes", ""), "metrics": names,
                       "lower": [m in LOWER_IS_BETTER for m in names], "rows": rows,
                       "measured": any(r["who"] != "paper" and r["n"] != "" for r in rows)})
    return tables


def export_rows(run: dict) -> list[dict]:
    rows = []
    chosen = (run.get("quantised_choice") or {}).get("chosen")
    for card in run["exports"]:
        export = card["export"]
        latency, runs = next(iter(export["latency"].values())), invokes_per_item(card)
        split_metrics = card.get("metrics", {})
        test = split_metrics.get("test") or {}
        keras_test = split_metrics.get("keras_test") or {}
        metric = headline_metric(test)
        top1 = test.get(metric, {}).get("value")
        keras_top1 = keras_test.get(metric, {}).get("value")
        fidelity = split_metrics.get("fidelity", {})
        agreement = " / ".join(f"{fidelity[split]['top1_agreement']:.3f}" if split in fidelity else "–"
                               for split in ("val", "test"))
        notes = [note for note, shown in (("not full integer", export.get("precision") == "int8+float"
                                           and export["variant"] != "mixed"),
                                          ("bias-corrected", export.get("bias_correction")),
                                          (f"{len(export.get('float_ops', []))} ops in float",
                                           bool(export.get("float_ops"))),
                                          ("chosen on validation", export["variant"] == chosen))
                 if shown]
        rows.append({"kind": export["variant"],
                     "variant": export["variant"] + (f" ({', '.join(notes)})" if notes else ""),
                     "size_mb": export["size_bytes"] / 1e6, "agreement": agreement if fidelity else "–",
                     "latency": f"{runs * latency['median_ms']:.1f} / {runs * latency['p90_ms']:.1f}"
                                + (f" ({runs} runs per image: mirrored averaging)" if runs > 1 else ""),
                     "median_ms": runs * latency["median_ms"], "value": top1,
                     "threads": next(iter(export["latency"])).split("_")[0]
                                + (f" on {latency['cpu']}" if "cpu" in latency else ""),
                     "metric": metric, "top1": fmt(test.get(metric)),
                     "val": fmt((split_metrics.get("val") or {}).get(metric)),
                     "drop": f"{100 * (keras_top1 - top1):+.2f}" if top1 is not None and keras_top1 is not None else "–"})
    return rows


def experiment_tables(runs_dir: str | Path) -> list[dict]:
    """The experiment scripts' tables (runs/_tables/*.json): ablations chosen on validation, parameter counts."""
    tables = []
    for path in sorted(Path(runs_dir).glob("_tables/*.json")):
        content = read_json(path)
        ablations = [{"name": name, "chosen": t.get("chosen"),
                      "rows": [dict(r, cells={k: fmt(v) for k, v in r["test"].items()}) for r in t["rows"]]}
                     for name, t in content.items() if t.get("rows")]
        chosen_params = [(a["name"], r["params"]) for a in ablations for r in a["rows"] if r["run"] == a["chosen"]]
        references = content.get("parameters", {}).get("reference", {})
        tables.append({"experiment": path.stem, "ablations": ablations,
                       "parameters": _parameter_rows(chosen_params, references)})
    return tables


def _parameter_rows(chosen: list[tuple[str, dict]], references: dict) -> list[dict]:
    """Ours (chosen per dataset) beside the references, with how many times fewer trainable parameters."""
    rows = [{"model": f"ours, chosen on {name}", "trainable": p["trainable"], "total": p["total"], "ratios": ""}
            for name, p in chosen]
    for model, counts in references.items():
        ratios = ", ".join(f"{counts['trainable'] / r['trainable']:.0f}x vs ours on {r['model'].split()[-1]}"
                           for r in rows[: len(chosen)] if r["trainable"])
        rows.append({"model": model, "trainable": counts["trainable"], "total": counts["total"], "ratios": ratios})
    return rows


def build_report(runs_dir: str | Path = "runs", out: str | Path = "reports/index.html",
                 progress: Callable[[str], None] = print, models_dir: str | Path = "tflite/models") -> Path:
    """`out` (the papers beside the shipped models in `models_dir` and every run, latency against accuracy) and
    one page per run in `runs/` beside it (figures, exports, config, environment, files). Every page embeds its
    images: it works offline."""
    out = Path(out)
    pages = out.parent / "runs"
    pages.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(runs_dir)
    for run in runs:
        run["export_rows"] = export_rows(run)
        run["metric_cells"] = {name: fmt(value) for name, value in run["results"]["metrics"].items()
                               if isinstance(value, dict) and "value" in value}
        run["gradcam"] = gradcam_montage(run, pages, progress)
        run["files"] = run_files(run["folder"])
        run["page"] = f"runs/{run['name']}.html"
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=False)
    environment.filters["e"] = html.escape
    for run in runs:
        atomic_write_text(pages / f"{run['name']}.html", environment.get_template(RUN_TEMPLATE.name).render(run=run))
    shipped = shipped_models(models_dir)
    points = latency_points(runs) + shipped_latency_points(shipped)
    trade_offs = [(metric, latency_accuracy_figure(points, metric)) for metric in ("top1", "dice")]
    duplicates = duplicate_sections(out.parent / "duplicates")
    page = environment.get_template(TEMPLATE.name).render(
        tables=comparison_tables(runs, shipped), runs=runs, experiments=experiment_tables(runs_dir),
        cross_validations=cross_validation_tables(out.parent / "cv"),
        agreements=agreement_tables(out.parent / "cv", roots=dataset_folders(duplicates)),
        duplicates=duplicates,
        trade_offs=[(metric, figure) for metric, figure in trade_offs if figure])
    atomic_write_text(out, page)
    return out
