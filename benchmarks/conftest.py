"""Benchmark helpers: interleaved A/B timing (design.md §4: compare two versions only inside one process,
interleaved, and quote medians of per-pair ratios) and the machine's copy bandwidth."""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fused: Callable[[], object], reference: Callable[[], object], rounds: int = 15,
                device: str = "cpu") -> dict[str, float]:
    """Time ``fused`` and ``reference`` alternately; medians and the median of per-pair ratios."""
    for f in (fused, reference, fused, reference):
        f()
    ta, tb, ratios = [], [], []
    for _ in range(rounds):
        pair = []
        for f in (fused, reference):
            _sync(device)
            t0 = time.perf_counter()
            f()
            _sync(device)
            pair.append(time.perf_counter() - t0)
        ta.append(pair[0])
        tb.append(pair[1])
        ratios.append(pair[1] / pair[0])
    return {"fused_ms": 1e3 * statistics.median(ta), "reference_ms": 1e3 * statistics.median(tb),
            "speedup_median_pair": statistics.median(ratios)}


@functools.cache
def copy_bandwidth_gbs(device: str = "cpu", nbytes: int = 512 * 2**20) -> float:
    """Bytes read + written per second by ``dst.copy_(src)`` on warm memory (the machine's copy rate)."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(9):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times) / 1e9


@pytest.fixture(scope="session")
def copy_gbs() -> float:
    return copy_bandwidth_gbs("cuda" if torch.cuda.is_available() else "cpu")
