"""Every experiment of the suite, one after the other, then the HTML report over all runs.

    python experiments/run_all.py                    # everything on ../shared/data: many hours on 2 CPU cores
    python experiments/run_all.py --only fetalnet    # one experiment (names below), then the report
    python experiments/run_all.py --dry-run          # the commands, not run

Each experiment runs in its own process (its memory is returned when it ends; one failing does not stop the
others); finished runs are kept and not trained again, so an interrupted run_all resumes where it stopped. The
report (reports/index.html, one page per run in reports/runs/) is written last, from whatever runs exist.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> the experiment's command line (scripts in experiments/, their defaults: ../shared/data)
EXPERIMENTS = {
    "demo": ["demo.py"],
    "efficientnet_attention": ["fpc_efficientnet_attention.py"],
    "frozen_features": ["abdominal_frozen_features.py"],
    "fetalnet": ["fetalnet_multitask.py", "--ship", "tflite/models/hc18_fetalnet"],
    "slowfast": ["video_classification.py", "--ship", "tflite/models/pocus_slowfast"],
    "benchmark_edge": ["benchmark_edge.py", "--model", "runs/fpc_abdominal_efficientnet_lite0_mhsa"],
    "benchmark_pipeline": ["benchmark_pipeline.py"],
    "input_check": ["input_check.py", "--data", "folder:../shared/data/BUSI", "--other", "hc18:../shared/data/HC18",
                    "prefix:../shared/data/abdominal_organs", "../shared/data/FETAL_PLANES_DB/Images",
                    "../shared/data/echo_views"],
    "cv_agreement": ["cv_agreement.py", "reports/cv/paper1_busi_*_cv5_quantisation"],
}


def commands(only: list[str] | None) -> list[tuple[str, list[str]]]:
    unknown = sorted(set(only or []) - set(EXPERIMENTS))
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}: choose from {', '.join(EXPERIMENTS)}")
    chosen = [name for name in EXPERIMENTS if not only or name in only]
    return [(name, [sys.executable, str(HERE / EXPERIMENTS[name][0]), *EXPERIMENTS[name][1:]]) for name in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"some of: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--out", default="reports/index.html")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    plan = commands(args.only) + [("report", [sys.executable, "-m", "fpc_keras.cli", "report", "--runs", args.runs,
                                              "--out", args.out])]
    failed = []
    for name, command in plan:
        print(f"\n== {name}: {' '.join(command)}", flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        code = subprocess.call(command)
        print(f"== {name}: {'done' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - start:.0f} s",
              flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)} (the report shows every run that finished)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
