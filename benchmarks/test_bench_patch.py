"""``hnas_fast.patch.patch_darts_model`` on DARTS-style code it has never seen (``tests/darts_style.py``:
the structure of DARTS's ``model_search.py``, the paper's 8 operations, 4 nodes, reductions at 1/3 and
2/3): one forward+backward step of the patched model in channels_last against the same model unpatched,
as the public code runs it (NCHW) and with the one-line ``channels_last`` conversion, interleaved in one
process. 8 cells, C=16, 10 classes, 32×32, batch 16, float32. Also the bytes autograd saves for backward
(parameters excluded), for the patched model in normal and memory-saving modes.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import interleaved
from hnas_fast.analysis.memory import saved_tensor_bytes
from hnas_fast.kernels import extension_available
from hnas_fast.patch import patch_darts_model
from tests.darts_style import DARTS_PRIMITIVES, Network

pytestmark = pytest.mark.skipif(not extension_available(), reason="extension not built")
BATCH, CELLS = 16, 8


def _models():
    torch.manual_seed(0)
    plain = Network(C=16, num_classes=10, layers=CELLS, steps=4, primitives=DARTS_PRIMITIVES,
                    reductions=(CELLS // 3, 2 * CELLS // 3)).train()
    plain_cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    patched = patch_darts_model(copy.deepcopy(plain).to(memory_format=torch.channels_last))
    saving = patch_darts_model(copy.deepcopy(plain).to(memory_format=torch.channels_last), memory_saving=True)
    no_pools = patch_darts_model(copy.deepcopy(plain).to(memory_format=torch.channels_last), pools=False)
    return plain, plain_cl, patched, saving, no_pools


def _step(model, x, y):
    def run():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return run


@pytest.mark.parametrize("baseline", ["nchw", "channels_last", "patched_without_pools"])
def test_patched_darts_step(benchmark, baseline):
    """``patched_without_pools``: the same patch with ``pools=False`` (channels_last), which isolates what
    swapping the pool+BN pairs adds."""
    plain, plain_cl, patched, saving, no_pools = _models()
    torch.manual_seed(1)
    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    base = {"nchw": _step(plain, x, y), "channels_last": _step(plain_cl, x_cl, y),
            "patched_without_pools": _step(no_pools, x_cl, y)}[baseline]
    timing = interleaved(_step(patched, x_cl, y), base, rounds=7)
    saved = {name: saved_tensor_bytes(lambda m=m, inp=inp: m(inp), exclude=list(m.parameters()))
             for name, m, inp in (("plain", plain, x), ("patched", patched, x_cl), ("saving", saving, x_cl))}
    benchmark.extra_info.update({
        "baseline": baseline, "batch": BATCH, "cells": CELLS,
        "patched_ms": round(timing["fused_ms"], 1), "baseline_ms": round(timing["reference_ms"], 1),
        "patched_over_baseline": round(1 / timing["speedup_median_pair"], 3),
        "saved_mib_plain": round(saved["plain"] / 2**20, 1),
        "saved_mib_patched": round(saved["patched"] / 2**20, 1),
        "saved_mib_memory_saving": round(saved["saving"] / 2**20, 1),
    })
    benchmark.pedantic(_step(patched, x_cl, y), rounds=3, warmup_rounds=1)
