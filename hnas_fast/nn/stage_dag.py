"""Hs-DAS (H-DAS §3.2): the stage-level search network, its depth loss and its complexity loss.

Every stage is a DAG whose nodes are the stage's two inputs and its cells. The cells are *discrete* cells
(:class:`~hnas_fast.nn.network.GenotypeCell`) of any genotype (DARTS_V2, a StacNAS or Hc-DAS result, a
user's), whose weights train while the stage structure is searched. The edge from node ``j`` to cell ``i``
is a mixed edge over the parameter-free ops (max pool, avg pool, skip, none; Rule 1) with its own logits
``alpha_ij``; cell ``i`` may only take nodes in the sliding window of the ``m`` nodes before it (Rule 3;
the stage inputs count).

**How a cell's two inputs are formed (our design).** The paper relaxes the stage as its Eq. 1 with
``x_i`` the output of cell ``i``: a cell's input is the sum, over its candidate predecessors, of the
mixed edges. A DARTS cell, though, takes two inputs (c_{k-2}, c_{k-1}). In this search network the summed
input feeds *both* (``cell(x_i, x_i)``), which is the paper's formulation read literally. For the sum to
exist every node of a stage must have one shape: the stage inputs are brought to the cells' shape once
per stage (``FactorizedReduce`` for the input at twice the resolution, a 1×1 ReLU-conv-BN where only
the channel count differs; nothing when they already agree, as with the 4C stem of Hs-DAS's setting).
The final network (:mod:`hnas_fast.nn.hdas_network`) can be built either way; its default "pair" mode
feeds the two kept predecessors to c_{k-2} and c_{k-1}, which reproduces ordinary DARTS stacking exactly
for the chain macro genotype (tested); "sum" mode is the search network's literal form.

**Stage output (Rule 2, Eq. 3).** The stage hands the next cell a pair of features: without distribution
search, its last two cells; with it (``n_min`` given), a β-weighted mixture over the candidate pairs of
adjacent cells ``(n-1, n)``, ``n = n_min..N``: ``(Σ_p softmax(β)_p X_{n_p-1}, Σ_p softmax(β)_p X_{n_p})``.
Eq. 3's ``Σ softmax(β) concat(X_i, X_j)`` is that pair concatenated; we keep it as a pair because the next
(reduction) cell, like every DARTS cell, takes its inputs as two tensors (a channel concat followed by its
two 1×1 preprocessing convs on the halves is the same computation). The network's classifier reads the
later member of the last stage's pair, as DARTS reads the last cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.genotypes.cell import Genotype
from hnas_fast.genotypes.macro import (
    INPUTS,
    STAGE_OPS,
    MacroGenotype,
    candidate_predecessors,
    derive_macro_genotype,
)
from hnas_fast.nn.hc_supernet import StageGenotypes, as_stage_genotypes
from hnas_fast.nn.mixed_op import MixedOp
from hnas_fast.nn.network import GenotypeCell
from hnas_fast.nn.operations import FactorizedReduce, ReLUConvBN, build_op, set_kernel_backend

__all__ = [
    "StageDAGSupernet",
    "adapter",
    "build_stage_supernet",
    "complexity_loss",
    "depth_loss",
    "depth_numbers",
    "edge_strengths",
    "stage_depth_loss",
]


# ---------------------------------------------------------------------------------------------- losses
def edge_strengths(weights: torch.Tensor, preds: Sequence[Sequence[int]],
                   ops: Sequence[str]) -> list[torch.Tensor]:
    """Per cell, the weight ``a_ij`` of each candidate predecessor: the edge's non-``none`` mass
    ``1 - softmax(alpha_ij)[none]`` normalized over the cell's predecessors so that ``Σ_j a_ij = 1``.

    Interpretation (the paper only says "the weight between node i and j"): normalizing makes a cell's depth
    the weighted *average* of its predecessors' depth + 1, so a chain has depth = its length and a star 1,
    as §6.1's "average length of the paths" describes; an unnormalized sum would grow with the number of
    kept edges, and the loss could then be lowered by switching every edge on, deep or not.
    """
    ops = list(ops)
    if "none" in ops:
        mass = 1.0 - weights[:, ops.index("none")]
    else:
        mass = torch.ones(weights.shape[0], dtype=weights.dtype, device=weights.device)
    out, row = [], 0
    for p in preds:
        m = mass[row: row + len(p)]
        row += len(p)
        out.append(m / m.sum().clamp_min(1e-12))
    return out


def depth_numbers(strengths: Sequence[torch.Tensor], preds: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Depth of every cell of a stage (recursively, Eq. 2): ``d_i = Σ_j a_ij (d_j + 1)``, inputs at 0."""
    depth: list[torch.Tensor] = [strengths[0].new_zeros(())] * INPUTS
    for a, p in zip(strengths, preds):
        depth.append(sum(a[k] * (depth[j] + 1) for k, j in enumerate(p)))
    return depth[INPUTS:]


def stage_depth_loss(depths: Sequence[torch.Tensor], pair_weights: torch.Tensor | None = None,
                     n_min: int = 1) -> torch.Tensor:
    """One stage's term of Eq. 2 (or Eq. 4 with ``pair_weights``): ``-(1/N) Σ_{i=1}^{N} (d_i / i)·w_i``.

    ``i`` runs over cells 1..N (the printed ``Σ_{i=0}`` would divide by zero at i=0: read as 1..N);
    ``d_i / i`` is at most 1 (a chain). Eq. 4's factor ``(1 + i·softmax(β_{i-2}))`` is read as: ``w_i =
    1 + i·softmax(β)_p`` where ``p`` is the candidate output pair whose later cell is cell ``i`` (pair ``p``
    ends at cell ``p + n_min``), ``w_i = 1`` for cells that end no pair. So the likely output cells count
    with their full depth ``d_i`` on top, which favours stages whose chosen output is deep.
    """
    n = len(depths)
    total = depths[0].new_zeros(())
    for i, d in enumerate(depths, start=1):
        w = 1.0
        if pair_weights is not None and i >= n_min:
            w = 1.0 + i * pair_weights[i - n_min]
        total = total + d / i * w
    return -total / n


def depth_loss(model: StageDAGSupernet) -> torch.Tensor:
    """``L_depth`` of the whole network: the sum over stages of :func:`stage_depth_loss`."""
    return model.depth_loss()


def complexity_loss(model: StageDAGSupernet, theta: Sequence[float] | None = None) -> torch.Tensor:
    """``L_comp`` (Eq. 5): ``Σ_s θ_s Σ_p softmax(β_s)_p · (p + N_min)``, the expected number of cells per
    stage (θ_s = 1: the paper's FLOPs constraint with stage-shared cell structures); 0 without β."""
    return model.complexity_loss(theta)


def adapter(C_in: int, C_out: int, reduce: bool, affine: bool) -> nn.Module:
    """Bring a stage input to the cells' shape: FactorizedReduce from twice the resolution, a 1×1
    ReLU-conv-BN when only the channels differ, identity when nothing differs."""
    if reduce:
        return FactorizedReduce(C_in, C_out, affine=affine)
    if C_in != C_out:
        return ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine)
    return nn.Identity()


def _as_list(v: int | Sequence[int] | None, n: int, what: str) -> list[int] | None:
    if v is None:
        return None
    out = [int(v)] * n if isinstance(v, int) else [int(x) for x in v]
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} entries for {n} stages")
    return out


# ------------------------------------------------------------------------------------------ supernet
class StageDAGSupernet(nn.Module):
    """The Hs-DAS search network over fixed cells.

    Args:
        cell_genotypes: one genotype shared by all stages, or one per stage (:class:`StageGenotypes`).
        cells_per_stage: cells of each stage (the paper: 6, 6, 6 for a 20-cell network; 8 per stage,
            over-parameterized, for the distribution search).
        channels: C of the first stage (doubled at each reduction).
        window: the sliding window m (``None``: every earlier node); must lie in ``[2, N + 1]``.
        n_min: fewest cells per stage (an int or one per stage): turns on the distribution search, with one
            β per stage over the output pairs ending at cells ``n_min..N``.
        stem_multiplier: the stem's width in C (Hs-DAS: 4, so the stem already has a cell's 4C channels).
        ops: the stage-level op set.
    """

    def __init__(
        self,
        cell_genotypes: StageGenotypes | Genotype | str | Sequence[Genotype],
        cells_per_stage: Sequence[int] = (6, 6, 6),
        channels: int = 16,
        num_classes: int = 10,
        window: int | None = None,
        n_min: int | Sequence[int] | None = None,
        stem_multiplier: int = 4,
        in_channels: int = 3,
        ops: Sequence[str] = STAGE_OPS,
        memory_saving: bool = False,
        mixed_backend: str | None = None,
    ) -> None:
        super().__init__()
        self.cells_per_stage = tuple(int(n) for n in cells_per_stage)
        stages = len(self.cells_per_stage)
        if stages < 1:
            raise ValueError("cells_per_stage must list at least one stage")
        self.genotypes = as_stage_genotypes(cell_genotypes, stages)
        self.window = window
        self.ops = tuple(ops)
        self.preds = [candidate_predecessors(n, window) for n in self.cells_per_stage]
        self.n_min = _as_list(n_min, stages, "n_min")
        if self.n_min is not None:
            for s, (lo, n) in enumerate(zip(self.n_min, self.cells_per_stage)):
                if not 1 <= lo <= n:
                    raise ValueError(f"stage {s}: n_min {lo} must be in 1..{n} (its cell count)")

        C_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_stem))
        self.adapters = nn.ModuleList()  # per stage: (in0, in1) adapters
        self.cells = nn.ModuleList()  # per stage: its cells
        self.edges = nn.ModuleList()  # per stage: its mixed edges, cell by cell
        self.reductions = nn.ModuleList()  # reduction r opens stage r + 1
        C_in0 = C_in1 = C_out_a = C_out_b = C_stem
        in0_high_res = False
        C_s = channels
        for s, n in enumerate(self.cells_per_stage):
            g = self.genotypes.stages[s]
            if s > 0:
                C_s *= 2
                red = GenotypeCell(g, C_out_a, C_out_b, C_s, reduction=True, reduction_prev=False)
                self.reductions.append(red)
                C_in0, C_in1, in0_high_res = C_out_b, red.multiplier * C_s, True
            C_node = len(g.normal_concat) * C_s
            self.adapters.append(nn.ModuleList([adapter(C_in0, C_node, in0_high_res, affine=False),
                                                adapter(C_in1, C_node, False, affine=False)]))
            self.cells.append(nn.ModuleList(
                GenotypeCell(g, C_node, C_node, C_s, reduction=False, reduction_prev=False)
                for _ in range(n)))
            self.edges.append(nn.ModuleList(
                MixedOp([set_kernel_backend(build_op(op, C_node, 1, affine=False, search=True), mixed_backend)
                         for op in self.ops],
                        memory_saving=memory_saving, backend=mixed_backend)
                for p in self.preds[s] for _ in p))
            C_out_a = C_out_b = C_node
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_out_b, num_classes)

        k = len(self.ops)
        self.alphas = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(sum(map(len, p)), k)) for p in self.preds)
        self.betas = nn.ParameterList()
        if self.n_min is not None:
            self.betas.extend(nn.Parameter(1e-3 * torch.randn(n - lo + 1))
                              for n, lo in zip(self.cells_per_stage, self.n_min))

    # ------------------------------------------------------------------------------------ parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        """The per-stage edge logits, then the per-stage β (distribution search only)."""
        return [*self.alphas, *self.betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the architecture logits."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def edge_weights(self) -> list[torch.Tensor]:
        """Per stage, softmax of its edge logits over the ops."""
        return [F.softmax(a, dim=-1) for a in self.alphas]

    def pair_weights(self) -> list[torch.Tensor] | None:
        """Per stage, softmax(β) over the candidate output pairs; ``None`` without distribution search."""
        return [F.softmax(b, dim=-1) for b in self.betas] if self.n_min is not None else None

    # ---------------------------------------------------------------------------------------- losses
    def depths(self) -> list[list[torch.Tensor]]:
        """Per stage, the depth number of each cell under the current alphas."""
        return [depth_numbers(edge_strengths(w, p, self.ops), p)
                for w, p in zip(self.edge_weights(), self.preds)]

    def depth_loss(self) -> torch.Tensor:
        """``L_depth`` (Eq. 2, or Eq. 4 in distribution search)."""
        pw = self.pair_weights()
        total = self.alphas[0].new_zeros(())
        for s, d in enumerate(self.depths()):
            total = total + stage_depth_loss(d, None if pw is None else pw[s],
                                             1 if self.n_min is None else self.n_min[s])
        return total

    def complexity_loss(self, theta: Sequence[float] | None = None) -> torch.Tensor:
        """``L_comp`` (Eq. 5); zero without distribution search."""
        pw = self.pair_weights()
        total = self.alphas[0].new_zeros(())
        if pw is None or self.n_min is None:
            return total
        theta = [1.0] * len(pw) if theta is None else list(theta)
        for t, w, lo in zip(theta, pw, self.n_min):
            total = total + t * (w * torch.arange(lo, lo + len(w), dtype=w.dtype, device=w.device)).sum()
        return total

    # --------------------------------------------------------------------------------------- forward
    def _stage(self, s: int, in0: torch.Tensor, in1: torch.Tensor, w: torch.Tensor,
               pw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        nodes = [self.adapters[s][0](in0), self.adapters[s][1](in1)]
        edges = self.edges[s]
        row = 0
        for i, cell in enumerate(self.cells[s]):
            x = sum(edges[row + k](nodes[j], w[row + k]) for k, j in enumerate(self.preds[s][i]))
            row += len(self.preds[s][i])
            nodes.append(cell(x, x))
        if pw is None:
            return nodes[-2], nodes[-1]
        lo = self.n_min[s]  # type: ignore[index]
        # Pair p ends at cell p + lo, i.e. at node p + lo + 1; its earlier member is node p + lo.
        a = sum(pw[p] * nodes[p + lo] for p in range(len(pw)))
        b = sum(pw[p] * nodes[p + lo + 1] for p in range(len(pw)))
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``."""
        ws, pws = self.edge_weights(), self.pair_weights()
        s = self.stem(x)
        in0, in1 = s, s
        a = b = s
        for st in range(len(self.cells_per_stage)):
            if st > 0:
                in0, in1 = b, self.reductions[st - 1](a, b)
            a, b = self._stage(st, in0, in1, ws[st], None if pws is None else pws[st])
        return self.classifier(self.global_pooling(b).flatten(1))

    def macro_genotype(self, ranking: str = "weight") -> MacroGenotype:
        """The discrete stage DAGs (the β-chosen output pair per stage in distribution search)."""
        betas = list(self.betas) if self.n_min is not None else None
        return derive_macro_genotype(list(self.alphas), self.cells_per_stage, self.ops, self.window, betas,
                                     self.n_min, ranking)

    def extra_repr(self) -> str:
        return f"cells_per_stage={self.cells_per_stage}, window={self.window}, n_min={self.n_min}"


def build_stage_supernet(cell_genotypes: Any, **kwargs: Any) -> StageDAGSupernet:
    """Shorthand for :class:`StageDAGSupernet` (defaults: the paper's Hs-DAS CIFAR setting)."""
    return StageDAGSupernet(cell_genotypes, **kwargs)

