"""Distributed search through torchrun on 2 CPU processes (gloo): identical alphas on both ranks after
every step (asserted inside the worker, collectively), and, with batch-independent BatchNorm, the same
alphas and genotype as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from hnas_fast.distributed import DistributedContext, GradientAverager, equal_steps, shard_indices

WORKER = Path(__file__).with_name("distributed_worker.py")
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_two_gloo_ranks_keep_identical_alphas_and_match_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
          "--out", str(two)])
    _run([sys.executable, str(WORKER), "--out", str(one), "--only-fixed"])
    r0, r1 = (torch.load(two / f"rank{r}.pt") for r in range(2))
    single = torch.load(one / "rank0.pt")
    assert r0["world_size"] == r1["world_size"] == 2 and single["world_size"] == 1
    for run in ("bn-batch", "bn-fixed", "second-order"):
        for a, b in zip(r0[run]["alphas"], r1[run]["alphas"]):
            assert torch.equal(a, b)
        assert r0[run]["genotype"] == r1[run]["genotype"]
    assert r0["bn-batch"]["reductions"] == 2 * 3  # one alpha and one weight backward per step
    assert r0["second-order"]["reductions"] == 2 * 2  # the assigned hypergradient, the weight backward
    # Same global batch on one process: identical up to summation order once BN ignores the batch.
    for a, b in zip(r0["bn-fixed"]["alphas"], single["bn-fixed"]["alphas"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert r0["bn-fixed"]["genotype"] == single["bn-fixed"]["genotype"]


def test_single_process_helpers_are_no_ops():
    ctx = DistributedContext()
    assert not ctx.distributed and ctx.is_main
    assert shard_indices(list(range(5)), ctx) == [0, 1, 2, 3, 4]
    assert shard_indices(list(range(5)), DistributedContext(rank=1, world_size=2)) == [1, 3]
    assert equal_steps(7, ctx) == 7
    p = torch.nn.Parameter(torch.ones(3))
    averager = GradientAverager([p], ctx).attach()
    (2 * p).sum().backward()
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and averager.reductions == 0
