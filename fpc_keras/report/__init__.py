"""`fpc-keras report`: one self-contained HTML page from `runs/*/results.json` and the export cards."""
from __future__ import annotations

import html
from pathlib import Path

import jinja2
import yaml

from ..io import atomic_write_text, read_json
from .figures import bland_altman_figure, confusion_figure, history_figure, overlay_figure
from .papers import LOWER_IS_BETTER, PAPERS

TEMPLATE = Path(__file__).with_name("template.html")


def collect_runs(runs_dir: str | Path) -> list[dict]:
    """Every finished run (results.json beside model_card.json), with its exports."""
    runs = []
    for results_path in sorted(Path(runs_dir).glob("*/results.json")):
        folder = results_path.parent
        card_path = folder / "model_card.json"
        if not card_path.is_file():
            continue
        card = read_json(card_path)
        results = read_json(results_path)
        exports = [read_json(p) for p in sorted(folder.glob("exports/*/model_card.json"))]
        config = (folder / "config.yaml").read_text() if (folder / "config.yaml").is_file() else ""
        runs.append({"name": folder.name, "folder": str(folder), "card": card, "results": results,
                     "exports": exports, "config": config,
                     "paper": (yaml.safe_load(config) or {}).get("model", {}).get("name") if config else None,
                     "confusion": confusion_figure(results["metrics"]["confusion"])
                     if "confusion" in results["metrics"] else None,
                     "history": history_figure(folder / "history.csv"),
                     "bland_altman": bland_altman_figure(results.get("items", [])),
                     "overlays": overlay_figure(results.get("items", []))})
    return runs


def fmt(metric) -> str:
    if not isinstance(metric, dict) or "value" not in metric:
        return "–"
    lo, hi = metric["ci95"]
    return f"{metric['value']:.4f} <small>[{lo:.4f}, {hi:.4f}]</small>"


def comparison_tables(runs: list[dict]) -> list[dict]:
    """Per paper: its numbers, then each of our runs of that model on the same metrics."""
    tables = []
    for key, paper in PAPERS.items():
        names = list(paper["metrics"])
        rows = [{"who": "paper", "data": paper["data"], "n": "", "cells": [f"{paper['metrics'][m]:.4f}" for m in names]}]
        rows += [{"who": who, "data": values.get("data", paper["data"]), "n": "",
                  "cells": [f"{values[m]:.4f}" if m in values else "–" for m in names]}
                 for who, values in paper.get("references", {}).items()]
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
    for card in run["exports"]:
        export = card["export"]
        latency = next(iter(export["latency"].values()))
        split_metrics = card.get("metrics", {})
        test = split_metrics.get("test") or {}
        keras_test = split_metrics.get("keras_test") or {}
        metric = "top1" if "top1" in test else "dice"  # a classifier's top-1, a segmenter's Dice
        top1 = test.get(metric, {}).get("value")
        keras_top1 = keras_test.get(metric, {}).get("value")
        rows.append({"variant": export["variant"], "size_mb": export["size_bytes"] / 1e6,
                     "latency": f"{latency['median_ms']:.1f} / {latency['p90_ms']:.1f}",
                     "threads": next(iter(export["latency"])).split("_")[0],
                     "metric": metric, "top1": fmt(test.get(metric)),
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


def build_report(runs_dir: str | Path = "runs", out: str | Path = "reports/index.html") -> Path:
    runs = collect_runs(runs_dir)
    for run in runs:
        run["export_rows"] = export_rows(run)
        run["metric_cells"] = {name: fmt(value) for name, value in run["results"]["metrics"].items()
                               if isinstance(value, dict) and "value" in value}
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=False)
    environment.filters["e"] = html.escape
    page = environment.get_template(TEMPLATE.name).render(tables=comparison_tables(runs), runs=runs,
                                                          experiments=experiment_tables(runs_dir))
    atomic_write_text(out, page)
    return Path(out)
