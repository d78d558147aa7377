"""Where the datasets come from and under which licence: what a model card states about its training data. Data
paths on cards are relative to the data root (`../shared/data` beside the repository, or FPC_SHARED_DATA), so a
card never carries one machine's absolute path."""
from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("FPC_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))
ROOTS = {"data": "the data root: ../shared/data beside the repository, or $FPC_SHARED_DATA",
         "repository": "the repository's root (data it ships, e.g. samples/)"}

# Keyed by the dataset's folder name; each entry's source and licence as its SOURCE.txt states them.
DATASETS = {
    "BUSI": {"source": "Al-Dhabyani et al., Dataset of breast ultrasound images, Data in Brief 28 (2020) 104863, "
                       "doi:10.1016/j.dib.2019.104863", "licence": "CC0 1.0"},
    "busi_small": {"source": "a 72-image sample of BUSI (Al-Dhabyani et al. 2020, doi:10.1016/j.dib.2019.104863)",
                   "licence": "CC0 1.0"},
    "HC18": {"source": "van den Heuvel et al., PLoS ONE 13(8): e0200412 (2018); Zenodo 1327317",
             "licence": "CC BY 4.0"},
    "FETAL_PLANES_DB": {"source": "Burgos-Artizzu et al., Sci Rep 10:10200 (2020); Zenodo 3904280",
                        "licence": "CC BY 4.0"},
    "POCUS_videos": {"source": "POCOVID dataset, Born et al., Applied Sciences 2021 "
                               "(github.com/jannisborn/covid19_ultrasound)",
                     "licence": "per video (dataset_metadata.csv); several non-commercial"},
    "abdominal_organs": {"source": "Li, Xu & Meng, IEEE ROBIO 2021 (arXiv 2110.04563); images of "
                                   "github.com/ftsvd/USAnotAI", "licence": "none stated (redistributing repository: MIT)"},
}


def relative_data(spec: str) -> tuple[str, str]:
    """`KIND:PATH` with PATH relative to the repository (data it ships) or else to the data root, and which root:
    absolute paths and paths from the working folder alike."""
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        return spec, "data"
    resolved = Path(path).resolve()
    root = "repository" if resolved.is_relative_to(REPOSITORY) else "data"
    relative = os.path.relpath(resolved, REPOSITORY if root == "repository" else SHARED_DATA.resolve())
    return f"{kind}:{Path(relative).as_posix()}", root


def data_source(spec: str) -> dict:
    """The card's `data`: where the training data lies (relative to a root), what it is, its licence."""
    path, root = relative_data(spec)
    known = DATASETS.get(Path(path.partition(":")[2]).name, {})
    return {"path": path, "root": ROOTS[root], "source": known.get("source", "not recorded"),
            "licence": known.get("licence", "not recorded")}
