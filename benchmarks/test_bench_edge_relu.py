"""Edge-level ReLU sharing (issue 15, part 2): the four conv candidates of one DARTS mixed edge
(sep_conv_3x3/5x5, dil_conv_3x3/5x5) all start with ``relu(x)``. Two ways to avoid four ReLU passes:

- **fold-in** (what ``SepConv``/``DilConv`` do): each first depthwise convolution applies the ReLU as it reads
  ``x`` (``relu_input=True``); its backward recomputes the mask from ``x``.
- **shared**: ``relu(x)`` computed once per edge, saved once, and fed to the four depthwise convolutions with
  ``relu_input=False``; one ``threshold_backward`` on the summed gradient.

Both are timed interleaved in one process, forward + backward of the four candidates' sum, in channels_last
(the supernet's layout), with the saved-for-backward bytes of each."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import interleaved
from hnas_fast.analysis.memory import saved_tensor_bytes
from hnas_fast.kernels import depthwise_conv2d, extension_available
from hnas_fast.nn.operations import OPS, DilConv, SepConv, relu_depthwise

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")
CANDIDATES = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def _first_depthwise(r: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    return depthwise_conv2d(r, conv.weight, conv.stride[0], conv.padding[0], conv.dilation[0],
                            relu_input=False)


def _from_relu(op: torch.nn.Module, r: torch.Tensor) -> torch.Tensor:
    """``op(x)`` given ``r = relu(x)``: the candidate with its leading ReLU taken out."""
    seq = op.op
    y = seq[3](seq[2](_first_depthwise(r, seq[1])))
    if isinstance(op, SepConv):
        y = seq[7](seq[6](relu_depthwise(y, seq[5])))
    return y


def _candidates(c: int, stride: int) -> list[torch.nn.Module]:
    ops = [OPS[name](c, stride, False).train() for name in CANDIDATES]
    assert all(isinstance(op, (SepConv, DilConv)) for op in ops)
    return [op.to(memory_format=torch.channels_last) for op in ops]


@pytest.mark.parametrize("shape", [(16, 16, 32, 32), (64, 16, 32, 32), (64, 64, 8, 8)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
def test_edge_relu_fold_in_vs_shared(benchmark, shape, stride):
    torch.manual_seed(0)
    ops = _candidates(shape[1], stride)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()

    def fold_in() -> torch.Tensor:
        return sum(op(x) for op in ops)

    def shared() -> torch.Tensor:
        r = F.relu(x)
        return sum(_from_relu(op, r) for op in ops)

    with torch.no_grad():  # the two forms compute the same function (BN in training mode: batch statistics)
        torch.testing.assert_close(shared(), fold_in(), rtol=1e-4, atol=1e-4)

    def step(fn):
        def run():
            out = fn()
            torch.autograd.grad(out, [x], torch.ones_like(out))
        return run

    params = [p for op in ops for p in op.parameters()]
    timing = interleaved(step(fold_in), step(shared), rounds=11)
    benchmark.extra_info.update({
        "fold_in_ms": round(timing["fused_ms"], 2), "shared_ms": round(timing["reference_ms"], 2),
        "shared_over_fold_in": round(timing["speedup_median_pair"], 3),
        "saved_MiB_fold_in": round(saved_tensor_bytes(fold_in, exclude=params) / 2**20, 2),
        "saved_MiB_shared": round(saved_tensor_bytes(shared, exclude=params) / 2**20, 2)})
    benchmark.pedantic(step(fold_in), rounds=3, warmup_rounds=1)
