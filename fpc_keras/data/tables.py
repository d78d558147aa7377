"""CSV label tables read with clear messages: encoding, delimiter, required columns, duplicates."""
from __future__ import annotations

import csv
import io
import sys

import pandas as pd

from ..errors import BadInputError


def read_table(data: bytes, name: str, required: tuple[str, ...], sep: str | None = None) -> pd.DataFrame:
    """Parse CSV bytes into a DataFrame with stripped column names and string cells.

    The delimiter is sniffed where `sep` is None. Column names are compared after stripping spaces (the
    FETAL_PLANES_DB CSV has `Train ` with a trailing space). Exact duplicate rows are dropped and counted on
    stderr.
    """
    text = _decode(data, name)
    if not text.strip():
        raise BadInputError(f"{name} is empty", "give the dataset's label CSV")
    delimiter = sep or _sniff(text)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, skipinitialspace=True,
                            keep_default_na=False)
    except (pd.errors.ParserError, csv.Error) as exc:
        raise BadInputError(f"{name} cannot be parsed as a '{delimiter}'-separated table: {exc}",
                            "check the delimiter and quoting") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise BadInputError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)[:12]}",
                            f"give a '{delimiter}'-separated CSV with the columns {list(required)}"
                            + one_column_hint(list(frame.columns)))
    frame = frame.apply(lambda column: column.str.strip())
    unique = frame.drop_duplicates().reset_index(drop=True)
    if len(unique) < len(frame):
        print(f"[fpc_keras] {name}: {len(frame) - len(unique)} duplicate row(s) dropped", file=sys.stderr)
    return unique


def one_column_hint(columns: list) -> str:
    """The fix for a table read as one column: its delimiter was not recognised."""
    return " (the whole header is one column: is the delimiter , ; tab or |?)" if len(columns) == 1 else ""


def _decode(data: bytes, name: str) -> str:
    """UTF-8 (with or without BOM), UTF-16 with its BOM (Excel's "Unicode text"), else Windows-1252."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise BadInputError(f"{name} starts like UTF-16 but does not decode as it", "save the CSV as UTF-8") from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise BadInputError(f"{name} is neither UTF-8 nor Windows-1252 text", "save the CSV as UTF-8")


def _sniff(text: str) -> str:
    header = text.splitlines()[0]
    counts = {d: header.count(d) for d in (";", ",", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","
