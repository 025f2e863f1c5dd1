"""MixedOp: saved-for-backward bytes and step time, normal vs memory-saving mode, on an edge of conv
candidates (the DARTS operation set at 64×16×32×32)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import interleaved
from hnas_fast.analysis.memory import saved_tensor_bytes
from hnas_fast.nn.mixed_op import MixedOp


def _edge(c: int, memory_saving: bool) -> MixedOp:
    try:
        from hnas_fast.nn.operations import OPS
        from hnas_fast.spaces import get_space

        ops = [OPS[name](c, 1, False) for name in get_space("darts").ops]
    except ImportError:  # the search engine's operations are not in this checkout
        pytest.skip("hnas_fast.nn.operations not available")
    return MixedOp(ops, memory_saving=memory_saving).train()


@pytest.mark.parametrize("batch", [16, 64])
def test_mixed_op_memory_saving(benchmark, batch):
    torch.manual_seed(0)
    normal = _edge(16, False)
    saving = _edge(16, True)
    saving.load_state_dict(normal.state_dict())
    x = torch.randn(batch, 16, 32, 32, requires_grad=True)
    w = torch.softmax(1e-3 * torch.randn(len(normal.candidates)), 0).requires_grad_()

    def step(edge):
        def run():
            out = edge(x, w)
            out.backward(torch.ones_like(out))
        return run

    bytes_normal = saved_tensor_bytes(lambda: normal(x, w), exclude=list(normal.parameters()))
    bytes_saving = saved_tensor_bytes(lambda: saving(x, w), exclude=list(saving.parameters()))
    timing = interleaved(step(saving), step(normal), rounds=7)
    benchmark.extra_info.update({
        "saved_MiB_normal": round(bytes_normal / 2**20, 2),
        "saved_MiB_memory_saving": round(bytes_saving / 2**20, 2),
        "saved_fraction": round(bytes_saving / bytes_normal, 4),
        "step_ms_normal": round(timing["reference_ms"], 1),
        "step_ms_memory_saving": round(timing["fused_ms"], 1),
        "time_ratio_saving_over_normal": round(1 / timing["speedup_median_pair"], 3),
    })
    benchmark.pedantic(step(saving), rounds=3, warmup_rounds=1)
