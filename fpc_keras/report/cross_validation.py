"""The report's cross-validation sections, read from the CV stores kept beside it (`reports/cv/<name>/`): each
store's tables, and per dataset what every recipe gets wrong, with thumbnails of those items where the dataset is on
this machine."""
from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..cv.agreement import Agreement, by_item_set, hard_items, store_agreement, summary, summary_table
from ..data.sources import SHARED_DATA
from .duplicates import thumbnail_uri

SHOWN_WRONG = 60  # thumbnails of the items every run gets wrong, per dataset


def cross_validation_tables(folder: str | Path) -> list[dict]:
    """The cross-validations kept beside the report (`reports/cv/<name>/*.md`, written by the experiment scripts'
    `--folds`: the pooled table and any paired comparison), as HTML tables. They hold the suite's headline numbers
    (every image tested once) but no run folder, so the run-based tables cannot show them."""
    folder = Path(folder)
    return [{"name": str(path.parent.relative_to(folder)), "file": path.stem,
             "html": markdown_table_html(path.read_text())} for path in sorted(folder.rglob("*.md"))] \
        if folder.is_dir() else []


def agreement_tables(folder: str | Path, least: int = 3, roots: Sequence[str | Path] = ()) -> list[dict]:
    """Per item set that `least` or more finished classification CVs in `folder` test (one dataset): each run's
    top-1, their majority vote, how many items (nearly) every recipe gets wrong (`cv.agreement`), and those wrong in
    every run drawn from whichever of the dataset folders `roots` holds them."""
    entries = sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []  # non-stores: left out by by_item_set
    groups = [group for group in by_item_set(entries)[0] if len(group) >= least]
    listings = [_files_by_name(Path(root)) for root in roots] if groups else []  # each folder walked once
    tables = []
    for group in groups:
        agreed = store_agreement(group)
        counts = summary(agreed)
        parts = summary_table(counts).split("\n\n")
        tables.append({"title": f"{len(agreed.files)} items ({', '.join(sorted(set(agreed.labels)))}), "
                                f"{len(group)} CVs", "html": [markdown_table_html(part) for part in parts],
                       "wrong_in_every_run": counts["wrong_in_share"][1.0]["items"],
                       "wrong": wrong_everywhere(agreed, listings)})
    return tables


def wrong_everywhere(agreed: Agreement, listings: Sequence[dict[str, Path]]) -> list[dict]:
    """The first SHOWN_WRONG items every run gets wrong (file, label, the label most runs gave), each with a
    thumbnail from the first of the dataset folders' `listings` (file name -> path) that holds all of them by name
    (the stores keep names, never pixels); none where no folder does."""
    hard = hard_items(agreed, 1.0)[:SHOWN_WRONG]
    for found in listings if hard else ():
        if all(item["file"] in found for item in hard):
            return [{**item, "png": thumbnail_uri(found[item["file"]])} for item in hard]
    return []


def _files_by_name(root: Path) -> dict[str, Path]:
    """The files under `root` by file name, leaving out a name two files share (either could be the item)."""
    paths = [path for path in root.rglob("*") if path.is_file()] if root.is_dir() else []
    shared = {name for name, count in Counter(path.name for path in paths).items() if count > 1}
    return {path.name: path for path in paths if path.name not in shared}


def dataset_folders(duplicate_sections: Sequence[dict]) -> list[Path]:
    """Where the stores' items may be found: the datasets whose near-duplicate summaries the report shows, then
    every dataset folder of the data root (`../shared/data` or FPC_SHARED_DATA), where it is on this machine."""
    shared = sorted(p for p in SHARED_DATA.iterdir() if p.is_dir()) if SHARED_DATA.is_dir() else []
    found = [Path(d["root"]) for d in duplicate_sections if d["root_found"]] + shared
    return list(dict.fromkeys(path.resolve() for path in found))  # a summary's folder is often a data-root one too


def markdown_table_html(text: str) -> str:
    """A pipe table (the only markdown the CV stores hold) as an HTML table; **bold** cells stay bold."""
    rows = [[html.escape(cell.strip()) for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.lstrip().startswith("|")]
    rows = [row for row in rows if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in row)]  # the |---| line
    bold = lambda cell: re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", cell)  # noqa: E731
    lines = ["<table class=\"cv\">"]
    for i, row in enumerate(rows):
        tag = "th" if i == 0 else "td"
        lines.append(" <tr>" + "".join(f"<{tag}>{bold(cell)}</{tag}>" for cell in row) + "</tr>")
    return "\n".join([*lines, "</table>"])
