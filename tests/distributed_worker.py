"""Worker of tests/test_distributed.py: a tiny DARTS search step loop, run under torchrun (2 ranks) or as
one plain process. Writes each rank's architecture parameters and genotype to ``--out``/rank<r>.pt.

Three runs share the processes: ``bn-batch`` (BatchNorm on batch statistics, as in search),
``bn-fixed`` (every BatchNorm in eval mode, so each sample's computation is independent of the rest of the
batch and two ranks with half batches must reproduce the gradient of one process with the whole batch),
and ``second-order`` (DARTS second order: its hypergradient is assigned to ``.grad``, not accumulated by
backward).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from hnas_fast.distributed import (
    GradientAverager,
    assert_identical,
    broadcast_module,
    cleanup,
    init_distributed,
    shard_indices,
)
from hnas_fast.nn.supernet import build_supernet
from hnas_fast.search.strategy import make_strategy


def run(strategy_name: str, steps: int, global_batch: int, bn_fixed: bool, ctx) -> dict:
    torch.manual_seed(1000 + ctx.rank)  # a different init on each rank: broadcast_module must fix it
    model = build_supernet("darts", cells=2, channels=4, num_classes=3).double()
    broadcast_module(model, ctx)
    if bn_fixed:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    strategy = make_strategy(strategy_name, model, epochs=1, a_lr=3e-2)
    averager = GradientAverager(model.parameters(), ctx).attach(strategy.w_opt, strategy.a_opt)
    data = torch.Generator().manual_seed(0)  # the same synthetic data set on every rank
    x = torch.randn(2 * steps * global_batch, 3, 8, 8, generator=data, dtype=torch.float64)
    y = torch.randint(0, 3, (2 * steps * global_batch,), generator=data)
    mine = shard_indices(range(global_batch), ctx)
    for step in range(steps):
        train = slice(2 * step * global_batch, (2 * step + 1) * global_batch)
        val = slice((2 * step + 1) * global_batch, (2 * step + 2) * global_batch)
        strategy.step((x[train][mine], y[train][mine]), (x[val][mine], y[val][mine]))
        assert_identical(model.arch_parameters(), ctx, "alphas")
    assert_identical(model.parameters(), ctx, "parameters")
    return {"alphas": [a.detach().clone() for a in model.arch_parameters()],
            "genotype": str(model.genotype()), "reductions": averager.reductions}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategy", default="darts")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--only-fixed", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    ctx = init_distributed()
    result = {"world_size": ctx.world_size}
    for name, fixed in (("bn-batch", False), ("bn-fixed", True)):
        if fixed or not args.only_fixed:
            result[name] = run(args.strategy, args.steps, args.global_batch, fixed, ctx)
    if not args.only_fixed:  # the hypergradient is assigned, not accumulated: the pre-step path averages it
        result["second-order"] = run("darts2", 2, args.global_batch, False, ctx)
    torch.save(result, args.out / f"rank{ctx.rank}.pt")
    cleanup(ctx)


if __name__ == "__main__":
    main()
