"""mixed_sum: fused vs eager reference at DARTS shapes, forward and forward+backward.

Bytes that must move (fp32): forward reads K inputs and writes 1 output; backward reads the output
gradient and K inputs and writes K input gradients: (K+1)·N and (3K+2)·N elements in all.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import interleaved
from hnas_fast.kernels import extension_available, mixed_sum, mixed_sum_reference

SHAPES = [(64, 16, 32, 32), (64, 64, 8, 8), (256, 16, 32, 32)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = ["cpp", "triton"] if DEVICE == "cuda" else ["cpp"]

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")


def _inputs(shape, k):
    ys = [torch.randn(shape, device=DEVICE, requires_grad=True) for _ in range(k)]
    w = torch.softmax(torch.randn(k, device=DEVICE), 0).requires_grad_()
    return ys, w, torch.randn(shape, device=DEVICE)


def _fwd_bwd(fn, ys, w, g):
    def run():
        out = fn(ys, w)
        return torch.autograd.grad(out, [*ys, w], g)

    return run


def _fwd(fn, ys, w):
    def run():
        with torch.no_grad():
            return fn(ys, w)

    return run


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("k", [5, 8])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("backend", [*FUSED, "reference"])
def test_mixed_sum(benchmark, copy_gbs, backend, mode, k, shape):
    ys, w, g = _inputs(shape, k)
    def fused(ys, w):
        return mixed_sum(ys, w, backend=backend)

    def timed(fn):
        return _fwd_bwd(fn, ys, w, g) if mode == "fwd_bwd" else _fwd(fn, ys, w)

    run = timed(fused if backend != "reference" else mixed_sum_reference)
    nbytes = (3 * k + 2 if mode == "fwd_bwd" else k + 1) * ys[0].numel() * ys[0].element_size()
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["copy_GBps"] = round(copy_gbs, 1)
    if backend != "reference":
        timing = interleaved(run, timed(mixed_sum_reference), device=DEVICE)
        benchmark.extra_info.update({key: round(v, 3) for key, v in timing.items()})
    if DEVICE == "cuda":
        benchmark.pedantic(lambda: (run(), torch.cuda.synchronize()), rounds=30, warmup_rounds=3)
    else:
        benchmark.pedantic(run, rounds=15, warmup_rounds=2)
    gbs = nbytes / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["GBps"] = round(gbs, 1)
    benchmark.extra_info["fraction_of_copy"] = round(gbs / copy_gbs, 3)
