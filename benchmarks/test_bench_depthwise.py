"""depthwise_conv2d (fused input ReLU), forward+backward, against PyTorch NCHW and channels_last.

Each case times the fused op interleaved with both baselines in this process (``interleaved``), with the
fused op given the baseline's layout: NCHW against NCHW, channels_last against channels_last (the layout the
supernet runs in). The bytes that must move are x, weight, out, grad_out and grad_x once each."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import interleaved
from hnas_fast.kernels import depthwise_conv2d, extension_available

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")
SHAPES = [(64, 16, 32, 32), (64, 64, 8, 8)]
KD = [(3, 1), (5, 1), (3, 2), (5, 2)]


def _step(x, w, stride, padding, dilation, fused: bool):
    def run():
        if fused:
            y = depthwise_conv2d(x, w, stride, padding, dilation, relu_input=True)
        else:
            y = F.conv2d(F.relu(x), w, None, stride, padding, dilation, x.shape[1])
        torch.autograd.grad(y, [x, w], torch.ones_like(y))

    return run


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("k,dilation", KD, ids=lambda v: str(v))
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_fwd_bwd(benchmark, copy_gbs, shape, k, dilation, stride):
    padding = dilation * (k - 1) // 2
    x = torch.randn(shape, requires_grad=True)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(shape[1], 1, k, k, requires_grad=True)
    fused = _step(x, w, stride, padding, dilation, True)
    fused_cl = _step(x_cl, w, stride, padding, dilation, True)
    nchw = interleaved(fused, _step(x, w, stride, padding, dilation, False))
    cl = interleaved(fused_cl, _step(x_cl, w, stride, padding, dilation, False))
    best = min(nchw["reference_ms"], cl["reference_ms"])
    out_numel = shape[0] * shape[1] * (-(-shape[2] // stride)) * (-(-shape[3] // stride))
    nbytes = 4 * (3 * x.numel() + 2 * out_numel + 2 * w.numel())
    benchmark.extra_info.update({
        "fused_nchw_ms": round(nchw["fused_ms"], 3), "fused_cl_ms": round(cl["fused_ms"], 3),
        "nchw_ms": round(nchw["reference_ms"], 3), "channels_last_ms": round(cl["reference_ms"], 3),
        "speedup_vs_nchw": round(nchw["speedup_median_pair"], 2),
        "speedup_vs_channels_last": round(cl["speedup_median_pair"], 2),
        "cl_speedup_vs_faster_torch": round(best / cl["fused_ms"], 2),
        "GBps_cl": round(nbytes / cl["fused_ms"] / 1e6, 1), "copy_GBps": round(copy_gbs, 1)})
    benchmark.pedantic(fused_cl, rounds=5, warmup_rounds=1)
