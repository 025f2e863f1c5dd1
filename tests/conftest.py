"""Test configuration: Triton runs under its CPU interpreter when no GPU is present, and every test
draws fresh random inputs (the seed is printed so a failure can be replayed with HNAS_TEST_SEED)."""

from __future__ import annotations

import os
import random

# Must precede any triton import: triton.jit reads it when kernels are decorated.
try:
    import torch as _torch

    _HAS_CUDA = _torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (HNAS_TEST_SEED pins it); printed, so pytest shows it on failure."""
    value = int(os.environ.get("HNAS_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={value}")
    torch.manual_seed(value)
    random.seed(value)
    return value


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes: a second intra-op thread only adds OpenMP spin-waits on a shared 2-core machine
    (measured: 10 s instead of 0.3 s per tiny forward+backward under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_cuda)
