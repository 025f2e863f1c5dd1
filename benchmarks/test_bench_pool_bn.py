"""pool_bn (pooling + the search BatchNorm2d(affine=False)), forward+backward, against PyTorch.

The baseline is what the search network ran before: ``F.max_pool2d``/``F.avg_pool2d(count_include_pad=False)``
then ``F.batch_norm`` in training mode with running statistics, in NCHW and in channels_last. The fused op is
timed interleaved with each, in the baseline's layout. Bytes that must move: x and grad_x (read and written
once), out and grad_out (twice: the statistics pass and the normalizing pass)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import interleaved
from hnas_fast.kernels import extension_available
from hnas_fast.kernels.pool_bn import pool_bn

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")
SHAPES = [(64, 16, 32, 32), (64, 64, 8, 8)]


def _step(x, kind, k, stride, backend):
    rm, rv = torch.zeros(x.shape[1]), torch.ones(x.shape[1])

    def run():
        y = pool_bn(x, kind, k, stride, rm, rv, True, 0.1, 1e-5, backend=backend)
        torch.autograd.grad(y, [x], torch.ones_like(y))

    return run


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind,k", [("max", 3), ("avg", 3), ("max", 5)], ids=lambda v: str(v))
@pytest.mark.parametrize("stride", [1, 2])
def test_pool_bn_fwd_bwd(benchmark, copy_gbs, shape, kind, k, stride):
    x = torch.randn(shape, requires_grad=True)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    nchw = interleaved(_step(x, kind, k, stride, "cpp"), _step(x, kind, k, stride, "reference"))
    cl = interleaved(_step(x_cl, kind, k, stride, "cpp"), _step(x_cl, kind, k, stride, "reference"))
    out_numel = shape[0] * shape[1] * (-(-shape[2] // stride)) * (-(-shape[3] // stride))
    nbytes = x.element_size() * (2 * x.numel() + 4 * out_numel)
    benchmark.extra_info.update({
        "fused_nchw_ms": round(nchw["fused_ms"], 3), "fused_cl_ms": round(cl["fused_ms"], 3),
        "nchw_ms": round(nchw["reference_ms"], 3), "channels_last_ms": round(cl["reference_ms"], 3),
        "speedup_vs_nchw": round(nchw["speedup_median_pair"], 2),
        "speedup_vs_channels_last": round(cl["speedup_median_pair"], 2),
        "cl_fused_vs_torch_nchw": round(nchw["reference_ms"] / cl["fused_ms"], 2),
        "GBps_cl": round(nbytes / cl["fused_ms"] / 1e6, 1), "copy_GBps": round(copy_gbs, 1)})
    benchmark.pedantic(_step(x_cl, kind, k, stride, "cpp"), rounds=5, warmup_rounds=1)
