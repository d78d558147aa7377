"""The report's cross-validation sections, read from the CV stores kept beside it (`reports/cv/<name>/`): each
store's tables, and per dataset what every recipe gets wrong."""
from __future__ import annotations

import html
import re
from pathlib import Path

from ..cv.agreement import by_item_set, store_agreement, summary, summary_table


def cross_validation_tables(folder: str | Path) -> list[dict]:
    """The cross-validations kept beside the report (`reports/cv/<name>/*.md`, written by the experiment scripts'
    `--folds`: the pooled table and any paired comparison), as HTML tables. They hold the suite's headline numbers
    (every image tested once) but no run folder, so the run-based tables cannot show them."""
    folder = Path(folder)
    return [{"name": str(path.parent.relative_to(folder)), "file": path.stem,
             "html": markdown_table_html(path.read_text())} for path in sorted(folder.rglob("*.md"))] \
        if folder.is_dir() else []


def agreement_tables(folder: str | Path, least: int = 3) -> list[dict]:
    """Per item set that `least` or more finished classification CVs in `folder` test (one dataset): each run's
    top-1, their majority vote, and how many items (nearly) every recipe gets wrong (`cv.agreement`)."""
    entries = sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []  # non-stores: left out by by_item_set
    tables = []
    for group in by_item_set(entries)[0]:
        if len(group) >= least:
            agreed = store_agreement(group)
            parts = summary_table(summary(agreed)).split("\n\n")
            tables.append({"title": f"{len(agreed.files)} items ({', '.join(sorted(set(agreed.labels)))}), "
                                    f"{len(group)} CVs", "html": [markdown_table_html(part) for part in parts]})
    return tables


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
