"""The final H-DAS network: cell genotype(s) wired by a macro genotype, dead cells removed.

Layout: stem → stage 0 → reduction → stage 1 → reduction → stage 2 → global pool → classifier, every stage
a DAG of :class:`~hnas_fast.nn.network.GenotypeCell` per its
:class:`~hnas_fast.genotypes.macro.StageDAG`.
A reduction cell takes its stage's output pair; the stage after it has as inputs (node 0, node 1) the
later member of that pair and the reduction cell's output, exactly the two states DARTS hands the first
cell after a reduction. The classifier reads the later member of the last stage's output pair.

Two ways to form a cell's two inputs from its two kept edges ``(op_a, a), (op_b, b)``, ``a < b``:

* ``"pair"`` (default): ``cell(op_a(x_a), op_b(x_b))``: the earlier predecessor feeds c_{k-2}, the later
  c_{k-1}. Each cell preprocesses each input on its own (FactorizedReduce for an input at twice the
  resolution, the stage's node 0 after a reduction), so no stage-level adapter exists. The chain macro
  genotype (``chain_macro_genotype``: cell i takes nodes i, i+1 by skip) then *is* DARTS stacking:
  same modules, same parameter names (``cells.K``...), same outputs for the same weights.
* ``"sum"``: ``x = op_a(x_a) + op_b(x_b)``, ``cell(x, x)``: the paper's relaxation read literally (and what
  the search network trains). It departs from DARTS stacking: a cell's two preprocessing convs see the
  same summed tensor, and the stage inputs need adapters so every node of a stage has one shape (a
  FactorizedReduce for node 0 after a reduction, a 1×1 conv when the stem width differs from the cells').

The auxiliary head (DARTS's, at 2/3 depth) sits on the last reduction cell's output. Drop path applies
inside the cells as in DARTS; the parameter-free stage edges are never dropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from hnas_fast.genotypes.cell import Genotype
from hnas_fast.genotypes.macro import (
    STAGE_OPS,
    MacroGenotype,
    load_macro_genotype,
    remove_dead_cells,
    validate_macro_genotype,
)
from hnas_fast.nn.hc_supernet import StageGenotypes, as_stage_genotypes
from hnas_fast.nn.network import AuxiliaryHeadCIFAR, GenotypeCell
from hnas_fast.nn.operations import build_op
from hnas_fast.nn.stage_dag import adapter

__all__ = ["INPUT_MODES", "HDASNetwork", "build_hdas_network"]

InputMode = Literal["pair", "sum"]
INPUT_MODES: tuple[str, ...] = ("pair", "sum")


class HDASNetwork(nn.Module):
    """The final network for per-stage cell genotypes and a (dead-cell-free) macro genotype.

    ``forward`` returns ``(logits, logits_aux)`` like :class:`~hnas_fast.nn.network.NetworkCIFAR`
    (``logits_aux`` is ``None`` unless training with ``auxiliary=True``); ``drop_path_prob`` is an
    attribute a schedule may change.
    """

    def __init__(
        self,
        genotypes: StageGenotypes,
        macro: MacroGenotype,
        C: int,
        num_classes: int,
        auxiliary: bool = False,
        drop_path_prob: float = 0.0,
        stem_multiplier: int = 3,
        in_channels: int = 3,
        input_mode: InputMode = "pair",
    ) -> None:
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        validate_macro_genotype(macro)
        if genotypes.num_stages != len(macro.stages):
            raise ValueError(f"the macro genotype has {len(macro.stages)} stages but {genotypes.num_stages} "
                             f"stage cell genotype(s) were given")
        self.macro = macro
        self.input_mode = input_mode
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_stem))
        # One flat list of cells in execution order, as NetworkCIFAR, so the chain macro genotype in
        # "pair" mode has DARTS's exact parameter names.
        self.cells = nn.ModuleList()
        self.stage_ops = nn.ModuleList()  # per stage, per cell: its two edge ops (parameter-free)
        self.adapters = nn.ModuleList()  # per stage: (node 0, node 1) adapters ("sum" mode)
        self._plan: list[tuple[int | None, list[int]]] = []  # per stage: (reduction cell idx, cell idxs)
        C_s = C
        # (channels, at twice the stage's resolution) of each node of the current stage
        info: list[tuple[int, bool]] = [(C_stem, False), (C_stem, False)]
        C_aux = C_stem
        for s, st in enumerate(macro.stages):
            g = genotypes.stages[s]
            red_idx = None
            if s > 0:
                a, b = self._prev_output
                C_s *= 2
                red = GenotypeCell(g, info[a][0], info[b][0], C_s, reduction=True, reduction_prev=info[a][1])
                red_idx = len(self.cells)
                self.cells.append(red)
                C_aux = red.multiplier * C_s
                info = [(info[b][0], True), (red.multiplier * C_s, False)]
            C_node = len(g.normal_concat) * C_s
            if input_mode == "sum":
                self.adapters.append(nn.ModuleList(
                    [adapter(info[0][0], C_node, info[0][1], affine=True),
                     adapter(info[1][0], C_node, info[1][1], affine=True)]))
                info = [(C_node, False), (C_node, False)]
            else:
                self.adapters.append(nn.ModuleList([nn.Identity(), nn.Identity()]))
            idxs, ops = [], nn.ModuleList()
            for edges in st.cells:
                (op_a, ja), (op_b, jb) = sorted(edges, key=lambda e: e[1])
                ops.append(nn.ModuleList([build_op(op_a, info[ja][0], 1, affine=True),
                                          build_op(op_b, info[jb][0], 1, affine=True)]))
                if input_mode == "sum":
                    cell = GenotypeCell(g, C_node, C_node, C_s, reduction=False, reduction_prev=False)
                else:
                    cell = GenotypeCell(g, info[ja][0], info[jb][0], C_s, reduction=False,
                                        reduction_prev=info[ja][1])
                idxs.append(len(self.cells))
                self.cells.append(cell)
                info.append((cell.multiplier * C_s, False))
            self.stage_ops.append(ops)
            self._plan.append((red_idx, idxs))
            self._prev_output = st.output
        self._has_aux = auxiliary and len(macro.stages) > 1
        if self._has_aux:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(info[macro.stages[-1].output[1]][0], num_classes)

    @property
    def num_cells(self) -> int:
        """Cells in the network, reductions included."""
        return len(self.cells)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.stem(x)
        in0 = in1 = s
        a_out = b_out = s
        logits_aux = None
        last = len(self.macro.stages) - 1
        for st, (stage, (red_idx, idxs)) in enumerate(zip(self.macro.stages, self._plan)):
            if red_idx is not None:
                in0, in1 = b_out, self.cells[red_idx](a_out, b_out, self.drop_path_prob)
                if st == last and self._has_aux and self.training:
                    logits_aux = self.auxiliary_head(in1)
            nodes = [self.adapters[st][0](in0), self.adapters[st][1](in1)]
            for k, (edges, ci) in enumerate(zip(stage.cells, idxs)):
                (_, ja), (_, jb) = sorted(edges, key=lambda e: e[1])
                op_a, op_b = self.stage_ops[st][k]
                xa, xb = op_a(nodes[ja]), op_b(nodes[jb])
                if self.input_mode == "sum":
                    xa = xb = xa + xb
                nodes.append(self.cells[ci](xa, xb, self.drop_path_prob))
            a_out, b_out = nodes[stage.output[0]], nodes[stage.output[1]]
        return self.classifier(self.global_pooling(b_out).flatten(1)), logits_aux


def build_hdas_network(
    cell_genotypes: StageGenotypes | Genotype | str | os.PathLike[str] | Sequence[Genotype | str],
    macro: MacroGenotype | str | os.PathLike[str] | dict,
    channels: int = 36,
    num_classes: int = 10,
    auxiliary: bool = True,
    drop_path_prob: float = 0.2,
    input_mode: InputMode = "pair",
    stem_multiplier: int = 3,
    in_channels: int = 3,
    remove_dead: bool = True,
) -> HDASNetwork:
    """The final network: cell genotype(s) (one shared, or one per stage) + a macro genotype.

    The macro genotype is validated as given (a cell taking a missing node, a window larger than a stage:
    ``ValueError``), then its dead cells are removed (``remove_dead=True``), so the network holds only cells
    with a path to their stage's output. A number of stage genotypes other than the macro genotype's stage
    count is an error. Defaults: the CIFAR evaluation setting (C=36, aux head, drop path 0.2, stem 3C).
    """
    m = load_macro_genotype(macro)
    validate_macro_genotype(m, STAGE_OPS, check_window_fits=True)
    g = as_stage_genotypes(cell_genotypes, len(m.stages))
    if remove_dead:
        m = remove_dead_cells(m)
    return HDASNetwork(g, m, channels, num_classes, auxiliary, drop_path_prob, stem_multiplier, in_channels,
                       input_mode)

