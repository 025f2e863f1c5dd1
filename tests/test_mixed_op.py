"""MixedOp: the fused edge equals the plain DARTS sum, and memory-saving mode changes only memory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hnas_fast.analysis.memory import saved_tensor_bytes
from hnas_fast.nn.mixed_op import MixedOp


class _Zero(nn.Module):
    is_zero = True

    def forward(self, x):
        return x.mul(0.0)


def _conv_candidates(c: int) -> list[nn.Module]:
    def conv(k: int, d: int = 1) -> nn.Module:
        depthwise = nn.Conv2d(c, c, k, padding=d * (k // 2), dilation=d, groups=c, bias=False)
        pointwise = nn.Conv2d(c, c, 1, bias=False)
        return nn.Sequential(nn.ReLU(), depthwise, pointwise, nn.BatchNorm2d(c, affine=False))

    return [_Zero(), nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(c, affine=False)), nn.Identity(),
            conv(3), conv(5), conv(3, 2), conv(5, 2)]


def _run(edge: MixedOp, x: torch.Tensor, alpha: torch.Tensor, g: torch.Tensor):
    out = edge(x, torch.softmax(alpha, 0))
    params = [p for p in edge.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, [x, alpha, *params], g)
    return out, grads


@pytest.mark.parametrize("memory_saving", [False, True])
def test_matches_reference_sum(seed, memory_saving):
    torch.manual_seed(seed)
    edge = MixedOp(_conv_candidates(4), memory_saving=memory_saving).train()
    ref = copy.deepcopy(edge)
    ref.backend, ref.memory_saving = "reference", False
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    alpha = (1e-1 * torch.randn(len(edge.candidates))).requires_grad_()
    g = torch.randn(2, 4, 8, 8)
    out, grads = _run(edge, x, alpha, g)
    out_ref, grads_ref = _run(ref, x, alpha, g)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # BatchNorm running statistics move exactly as often as in the reference (no double count on recompute)
    for m, m_ref in zip(edge.modules(), ref.modules()):
        if isinstance(m, nn.BatchNorm2d):
            torch.testing.assert_close(m.running_mean, m_ref.running_mean)
            torch.testing.assert_close(m.running_var, m_ref.running_var)
            assert m.num_batches_tracked.item() == m_ref.num_batches_tracked.item() == 1


def test_memory_saving_keeps_a_fifth_or_less(seed):
    edge = MixedOp(_conv_candidates(8)).train()
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    w = torch.softmax(torch.randn(len(edge.candidates)), 0).requires_grad_()
    params = list(edge.parameters())
    normal = saved_tensor_bytes(lambda: edge(x, w), exclude=params)
    edge.memory_saving = True
    saving = saved_tensor_bytes(lambda: edge(x, w), exclude=params)
    assert 0 < saving * 5 <= normal, (saving, normal)


def test_zero_candidates_are_skipped_and_get_zero_grad(seed):
    calls = []

    class CountingZero(_Zero):
        def forward(self, x):
            calls.append(1)
            return super().forward(x)

    edge = MixedOp([CountingZero(), nn.Identity(), nn.Identity()])
    x = torch.randn(3, 5)
    w = torch.softmax(torch.randn(3), 0).requires_grad_()
    out = edge(x, w)
    torch.testing.assert_close(out, (w[1] + w[2]) * x)
    (gw,) = torch.autograd.grad(out.sum(), [w])
    assert not calls and gw[0].item() == 0.0
    only_zero = MixedOp([CountingZero()])
    assert torch.equal(only_zero(x, torch.ones(1)), torch.zeros_like(x))


def test_weights_shape_checked():
    edge = MixedOp([nn.Identity(), nn.Identity()])
    with pytest.raises(ValueError, match="weights must have shape"):
        edge(torch.randn(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match="at least one"):
        MixedOp([])


def test_memory_saving_under_compile_and_ddp(seed, tmp_path):
    """Parameters stay visible to autograd: DDP (no unused-parameter search) and torch.compile work."""
    import torch.distributed as dist

    edge = MixedOp(_conv_candidates(4)[1:4], memory_saving=True).train()
    x = torch.randn(2, 4, 8, 8)
    w = torch.softmax(torch.randn(3), 0).requires_grad_()
    compiled = torch.compile(edge, backend="aot_eager")
    compiled(x, w).sum().backward()
    assert all(p.grad is not None for p in edge.parameters())

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdzv", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(MixedOp(_conv_candidates(4)[1:4], memory_saving=True))
        for _ in range(2):
            ddp(x, w).sum().backward()
        assert all(p.grad is not None for p in ddp.parameters())
    finally:
        dist.destroy_process_group()
