"""grad_gram: fused float64 Gram of m per-minibatch gradients vs the reference, over the parameter tensors
of the DARTS search supernet (1.93 M parameters, m = 10: the StacNAS gradient-confusion setting)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import interleaved
from hnas_fast.kernels import extension_available, grad_gram, grad_gram_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")


def _supernet_grads(m: int) -> list[torch.Tensor]:
    from hnas_fast.nn.supernet import build_supernet

    net = build_supernet("darts", cells=8, channels=16, num_classes=10)
    return [torch.randn(m, *p.shape, device=DEVICE) for p in net.weight_parameters()]


@pytest.mark.parametrize("m", [10])
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_grad_gram(benchmark, backend, m):
    grads = _supernet_grads(m)
    params = sum(g[0].numel() for g in grads)
    def reference():
        return grad_gram_reference(grads)

    run = (lambda: grad_gram(grads, backend="cpp")) if backend == "cpp" else reference
    if backend == "cpp":
        timing = interleaved(run, reference, rounds=9, device=DEVICE)
        benchmark.extra_info.update({k: round(v, 3) for k, v in timing.items()})
    benchmark.pedantic(run, rounds=9, warmup_rounds=2)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["parameters"] = params
    benchmark.extra_info["GFLOPs"] = round(m * (m + 1) * params / seconds / 1e9, 2)  # upper triangle, 2 flops
    benchmark.extra_info["GBps_read"] = round(m * params * 4 / seconds / 1e9, 1)
