"""Memory profile: the meta-device count equals the real one, grows with depth and batch, memory-saving mode
saves less, the largest-batch answer is consistent, and the CLI writes its table, CSV and plot."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from hnas_fast.analysis.memory import saved_tensor_bytes
from hnas_fast.analysis.memory_profile import (
    MemoryConfig,
    largest_batch,
    measure_peak,
    parameter_gradient_bytes,
    saved_bytes,
)
from hnas_fast.nn.supernet import build_supernet
from hnas_fast.profile_memory import main

TINY = MemoryConfig(cells=3, channels=4, batch=4, image_size=16)


@pytest.mark.parametrize("mode", ["normal", "memory_saving"])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_meta_count_equals_cpu_count_and_saved_tensor_meter(seed, mode, backend):
    cfg = replace(TINY, mode=mode, backend=backend)
    meta, meta_pg = saved_bytes(cfg, "meta")
    cpu, cpu_pg = saved_bytes(cfg, "cpu")
    net = build_supernet("darts", cells=3, channels=4, memory_saving=mode == "memory_saving",
                         mixed_backend=None if backend == "fused" else "reference")
    x = torch.randn(4, 3, 16, 16)
    metered = saved_tensor_bytes(lambda: net(x), exclude=list(net.parameters()))
    assert meta == cpu == metered > 0
    assert meta_pg == cpu_pg == parameter_gradient_bytes(net) == 8 * sum(p.numel() for p in net.parameters())


def test_saved_bytes_grow_with_depth_and_linearly_with_batch():
    by_depth = [saved_bytes(replace(TINY, cells=c), "cpu")[0] for c in (2, 3, 5)]
    assert by_depth[0] < by_depth[1] < by_depth[2]
    by_batch = [saved_bytes(replace(TINY, batch=b), "cpu")[0] for b in (2, 4, 6)]
    assert by_batch[0] < by_batch[1] < by_batch[2]
    # Every saved activation has the batch as leading dimension; only per-channel BN statistics do not.
    assert by_batch[2] - by_batch[1] == pytest.approx(by_batch[1] - by_batch[0], rel=1e-3)


def test_memory_saving_saves_far_less():
    normal = saved_bytes(TINY, "cpu")[0]
    saving = saved_bytes(replace(TINY, mode="memory_saving"), "cpu")[0]
    assert saving * 4 < normal


def test_largest_batch_is_consistent():
    cfg = replace(TINY, mode="memory_saving")
    per4 = sum(saved_bytes(cfg, "cpu"))
    budget = int(per4 * 5.5)  # room for more than 4 samples, so the fit must extrapolate
    fit = largest_batch(cfg, budget, probes=(2, 4), count_device="cpu")
    assert fit.fits and fit.batch > 4
    assert fit.measured_bytes == sum(saved_bytes(replace(cfg, batch=fit.batch), "cpu"))
    assert sum(saved_bytes(replace(cfg, batch=fit.batch + 1), "cpu")) > budget
    assert fit.predicted_bytes == pytest.approx(fit.measured_bytes, rel=1e-3)
    with pytest.raises(ValueError):
        largest_batch(cfg, 1000, count_device="cpu")


def test_peak_of_a_step_in_a_subprocess():
    normal = measure_peak(replace(TINY, batch=16))
    saving = measure_peak(replace(TINY, batch=16, mode="memory_saving"))
    assert 0 < saving < normal
    assert normal >= saved_bytes(replace(TINY, batch=16), "cpu")[0]


def test_cli_writes_table_csv_and_plot(tmp_path, capsys):
    assert main(["--cells", "2,3", "--channels", "4", "--batch", "4", "--image-size", "16", "--modes",
                 "normal,memory_saving", "--backends", "fused", "--no-peak", "--fit-gib", "0.01",
                 "--count-device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "largest batch within 0.01 GiB" in out
    with open(tmp_path / "memory_profile.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert all(int(r["max_batch"]) >= 1 for r in rows)
    saved = {(r["cells"], r["mode"]): int(r["saved_bytes"]) for r in rows}
    assert saved[("3", "normal")] > saved[("2", "normal")] > saved[("2", "memory_saving")]
    assert (tmp_path / "memory_profile.png").stat().st_size > 0
