"""Supernet forward+backward step: hnas_fast's fused path (channels_last, the default), in normal and
memory-saving modes, against two baselines in the same process: the plain-PyTorch reference path as the
public DARTS code runs it (NCHW) and the same reference path in channels_last (the one-line user trick).
DARTS space, C=16, 10 classes, 32×32 inputs.

Memory is the bytes autograd saves for backward (activations; parameters excluded), measured with
``hnas_fast.analysis.memory.SavedTensorMeter``; on CUDA also the allocator's peak.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import interleaved
from hnas_fast.analysis.memory import saved_tensor_bytes

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = {"reference": dict(mixed_backend="reference", memory_saving=False, channels_last=False),
         "reference_channels_last": dict(mixed_backend="reference", memory_saving=False, channels_last=True),
         "fused": dict(mixed_backend=None, memory_saving=False),
         "memory_saving": dict(mixed_backend=None, memory_saving=True)}


def _net(cells: int, mode: str):
    from hnas_fast.nn.supernet import build_supernet

    torch.manual_seed(0)
    return build_supernet("darts", cells=cells, channels=16, num_classes=10, **MODES[mode]).to(DEVICE).train()


def _step(net, x, y):
    def run():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    return run


@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("cells", [8, 14])
@pytest.mark.parametrize("mode", ["fused", "memory_saving"])
def test_supernet_step(benchmark, mode, cells, batch):
    if batch > 16 and DEVICE == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc raises its mmap threshold after each large free, so freed activations stay in its arenas:
        # alternating two 8-cell batch-64 supernets then grew this process past 24 GiB (OOM-killed).
        pytest.skip("run with MALLOC_MMAP_THRESHOLD_=1048576 (fixed threshold: big frees return to the OS)")
    ref_net, cl_net, net = _net(cells, "reference"), _net(cells, "reference_channels_last"), _net(cells, mode)
    net.load_state_dict(ref_net.state_dict())
    cl_net.load_state_dict(ref_net.state_dict())
    x = torch.randn(batch, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (batch,), device=DEVICE)

    def saved(model):
        return saved_tensor_bytes(lambda: model(x), exclude=list(model.parameters()))

    bytes_ref, bytes_mode = saved(ref_net), saved(net)
    timing = interleaved(_step(net, x, y), _step(ref_net, x, y), rounds=3, device=DEVICE)
    timing_cl = interleaved(_step(net, x, y), _step(cl_net, x, y), rounds=3, device=DEVICE)
    info = {
        "saved_MiB_reference": round(bytes_ref / 2**20, 1),
        f"saved_MiB_{mode}": round(bytes_mode / 2**20, 1),
        "memory_fraction_of_reference": round(bytes_mode / bytes_ref, 4),
        "step_ms_reference": round(timing["reference_ms"]),
        f"step_ms_{mode}": round(timing["fused_ms"]),
        "time_ratio_vs_reference": round(1 / timing["speedup_median_pair"], 3),
        "step_ms_reference_channels_last": round(timing_cl["reference_ms"]),
        "time_ratio_vs_reference_channels_last": round(1 / timing_cl["speedup_median_pair"], 3),
    }
    if DEVICE == "cuda":
        for name, model in (("reference", ref_net), (mode, net)):
            torch.cuda.reset_peak_memory_stats()
            _step(model, x, y)()
            info[f"cuda_peak_MiB_{name}"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    benchmark.extra_info.update(info)
    benchmark.pedantic(_step(net, x, y), rounds=1, warmup_rounds=0)
