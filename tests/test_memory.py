"""SavedTensorMeter: counts what autograd keeps, and keeps nothing alive itself."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from hnas_fast.analysis.memory import saved_tensor_bytes


def test_counts_distinct_storages_and_excludes_parameters(seed):
    lin = nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    # linear saves x (its weight is excluded); relu saves its output; a view of it adds nothing
    got = saved_tensor_bytes(lambda: torch.relu(lin(x))[:, :4].exp(), exclude=list(lin.parameters()))
    out_bytes = 4 * 8 * 4
    assert got == x.numel() * 4 + out_bytes + 4 * 4 * 4


def test_measured_graphs_are_freed(seed):
    refs = []

    def forward():
        y = torch.relu(torch.randn(3, 3, requires_grad=True) * 2)  # relu saves its own output
        refs.append(weakref.ref(y))
        return y

    saved_tensor_bytes(forward)
    assert refs[0]() is None, "the meter kept the measured graph alive"


def test_meta_device_counts_without_memory():
    lin = nn.Linear(16, 16, device="meta")
    x = torch.empty(32, 16, device="meta", requires_grad=True)
    assert saved_tensor_bytes(lambda: torch.relu(lin(x)), exclude=list(lin.parameters())) == 2 * 32 * 16 * 4
