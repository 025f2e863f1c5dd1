"""Time to first step of an image-folder search on 1 and 2 processes: a cold start (rank 0 lists and
screens the folder, writes its index) interleaved with a warm one (the unchanged folder's index is read).
A 4,000-file folder keeps the suite short; ``benchmarks/first_step.py`` runs the 20,000-file measurement
of BENCHMARKS.md, and against another checkout for the before/after comparison."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from benchmarks.first_step import first_step, make_folder

FILES = 4000
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    make_folder(root, FILES)
    return root


@pytest.mark.parametrize("nproc", [1, 2])
def test_first_step_cold_vs_indexed(benchmark, jpegs, tmp_path, nproc):
    warm_runs = tmp_path / "warm"
    warm_runs.mkdir()
    first_step(REPO, jpegs, nproc, warm_runs, "header", 600)  # builds the index the warm launches read
    cold, warm = [], []
    for r in range(3):
        cold_runs = tmp_path / f"cold{r}"
        cold_runs.mkdir()
        cold.append(first_step(REPO, jpegs, nproc, cold_runs, "header", 600))
        warm.append(first_step(REPO, jpegs, nproc, warm_runs, "header", 600))
    benchmark.extra_info.update({
        "files": FILES, "nproc": nproc, "validate": "header",
        "cold_first_step_s": round(statistics.median(cold), 2),
        "indexed_first_step_s": round(statistics.median(warm), 2),
    })
    benchmark.pedantic(lambda: first_step(REPO, jpegs, nproc, warm_runs, "header", 600), rounds=1)
