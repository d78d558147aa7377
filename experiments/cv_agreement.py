"""Where several recipes' cross-validations of one dataset agree: each run's top-1, their majority vote, and how
many items (nearly) every recipe gets wrong. Those bound what another recipe of the same kind can gain; --csv lists
them for a label audit. Prints markdown.

    python experiments/cv_agreement.py reports/cv/paper1_busi_*_cv5_quantisation --csv busi_hard.csv

Stores that do not hold every fold, or test other items, are named and left out (--strict: refused).
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import sys
from pathlib import Path

from fpc_keras.cv import stored_folds
from fpc_keras.cv.agreement import by_item_set, hard_items, store_agreement, summary, summary_table
from fpc_keras.errors import BadInputError, exit_code_of
from fpc_keras.io import atomic_write_text


def expand(patterns: list[str]) -> list[str]:
    """Store folders, with shell patterns (`reports/cv/paper1_busi_*`) expanded here as well as by a shell."""
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise BadInputError(f"no CV store matches {pattern}", "give store folders under reports/cv/")
        found += matches
    return found


def comparable(paths: list[str]) -> dict[str, list[dict]]:
    """The stores (folder -> fold records) with every fold of the item set most of them test; the others are named
    on stderr."""
    groups, left_out = by_item_set(paths)
    for path, why in left_out.items():
        print(f"left out {path}: {why}", file=sys.stderr)
    if not groups:
        raise BadInputError("no store holds every fold of its CV", "give finished CV stores (reports/cv/...)")
    for other in groups[1:]:
        for path in other:
            print(f"left out {path}: it tests other items than {next(iter(groups[0]))}", file=sys.stderr)
    return groups[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+", help="CV store folders (fold<i>.json)")
    parser.add_argument("--model", default="float", help="which predictions to compare: float, int8, ...")
    parser.add_argument("--share", type=float, default=0.8, help="--csv lists items wrong in this share of runs")
    parser.add_argument("--csv", metavar="OUT", help="write the hard items (file, label, usual prediction)")
    parser.add_argument("--strict", action="store_true", help="refuse incomplete or mismatched stores")
    args = parser.parse_args(argv)

    def run() -> None:
        paths = expand(args.stores)
        stores = {path: stored_folds(path) for path in paths} if args.strict else comparable(paths)
        agreed = store_agreement(stores, args.model)
        print(summary_table(summary(agreed)))
        if args.csv:
            hard = hard_items(agreed, args.share)
            text = io.StringIO()
            writer = csv.DictWriter(text, ["file", "label", "usual_prediction", "runs_wrong", "runs"])
            writer.writeheader()
            writer.writerows(hard)
            atomic_write_text(Path(args.csv), text.getvalue())
            print(f"\n{len(hard)} item(s) wrong in at least {args.share:.0%} of the runs -> {args.csv}")
    return exit_code_of(run)


if __name__ == "__main__":
    sys.exit(main())
