"""StacNAS: hierarchical search via operator clustering (Algorithm 1 of the StacNAS paper).

Stage 1 searches a supernet whose edges carry one representative ("key operator") per operator group plus
``none``, with one-level optimization. Each edge's *winning group* is the group of its strongest non-none
op. Stage 2 searches a new supernet, at its own depth and width, whose edge ``e`` carries the members of
edge ``e``'s winning group plus ``none`` (edges therefore differ: :class:`StageTwoSupernet`). The
genotype is derived from stage 2 in the original space's op names.

Decisions where the paper is silent:

* Winning group: Algorithm 1 says "activate the optimal operator group based on α̃*". We take the
  argmax over the non-``none`` logits of the edge (equal to the argmax of its softmax weights). ``none``
  is not a group (the paper's groups never contain it) and stays a candidate in stage 2, so the stage-2
  alphas decide which two edges per node survive, exactly as in DARTS's derivation.
* Normal and reduction cells share one set of alphas each (as in DARTS), so winning groups are per
  (cell type, edge), and every cell of a type has the same stage-2 edges.
* Weight inheritance (``inherit_weights``) is not in the paper; with it, stage 2 starts from stage-1
  tensors wherever the module is the same op at the same place with the same shape (stem, cell
  preprocessing, candidates of the winning group that were also stage-1 representatives, classifier),
  cell by cell for cells of the same type and width. It is off by default, as the paper trains stage 2
  from scratch.
* Genotype ranking: the public StacNAS code ranks edges by raw logit (``ranking="logit"``, the default
  here); ``"weight"`` gives DARTS's softmax ranking. Over stage 2's edges the two differ more than in
  DARTS: each edge's softmax runs over its own candidates only, so under ``"weight"`` an edge with few
  candidates (``{none, skip_connect}``) gets larger weights than a three-op edge at equal logits, a bias
  toward small groups that logit ranking does not have.
* Groups: a preset space's groups (``groups="preset"``), a space file, or ``groups="correlation"``,
  which trains a full-space supernet briefly and clusters its operator correlations
  (:mod:`hnas_fast.search.correlation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.genotypes.cell import Genotype, derive_genotype
from hnas_fast.nn.cell import num_cell_edges
from hnas_fast.nn.supernet import Supernet
from hnas_fast.spaces import NONE, SearchSpace

__all__ = [
    "PARAMETER_FREE_OPS",
    "StageTwoSupernet",
    "alpha_entropy",
    "genotype_diagnostics",
    "inherit_weights",
    "stage_two_edge_ops",
    "winning_groups",
]

#: Ops without parameters (counted by :func:`genotype_diagnostics`); FactorizedReduce (skip at stride 2)
#: has parameters but is still reported as a skip.
PARAMETER_FREE_OPS = frozenset({"skip_connect", "max_pool_3x3", "avg_pool_3x3", "max_pool_5x5",
                                "avg_pool_5x5", NONE})


# ------------------------------------------------------------------------------------------ stage 2 net
class StageTwoSupernet(Supernet):
    """The StacNAS stage-2 supernet: per-edge candidate lists, alphas over the original space's ops.

    The cells are ordinary :class:`~hnas_fast.nn.cell.SearchCell` s given one op list per edge, so the
    stem, preprocessing and candidate modules have the stage-1 supernet's names and settings.
    ``alphas_normal``/``alphas_reduce`` are ``[num_edges, len(space.ops)]`` so their columns line up with
    the original space (and with stage 1); ops absent from an edge are masked to ``-inf`` before the
    softmax, so they get zero weight and no gradient, and never win in :meth:`genotype`.

    Args:
        space: the original (full) space; its op order names the alpha columns.
        normal_ops, reduce_ops: per edge, the op names it holds (``num_cell_edges(nodes)`` lists).
        other args: as :func:`~hnas_fast.nn.supernet.build_supernet`.
    """

    def __init__(
        self, space: SearchSpace, normal_ops: Sequence[Sequence[str]], reduce_ops: Sequence[Sequence[str]],
        cells: int = 20, channels: int = 16, num_classes: int = 10, nodes: int = 4, multiplier: int = 4,
        stem_multiplier: int = 3, in_channels: int = 3, memory_saving: bool = False,
        mixed_backend: str | None = None, reduction_at: Sequence[int] | None = None,
    ) -> None:
        # Supernet builds the cells through _cell_ops, so the per-edge lists must exist before it runs.
        self._edge_ops = {False: self._check_ops(space, normal_ops, nodes, "normal"),
                          True: self._check_ops(space, reduce_ops, nodes, "reduce")}
        super().__init__(space, cells=cells, channels=channels, num_classes=num_classes, nodes=nodes,
                         multiplier=multiplier, stem_multiplier=stem_multiplier, in_channels=in_channels,
                         memory_saving=memory_saving, mixed_backend=mixed_backend, reduction_at=reduction_at)
        self.normal_ops, self.reduce_ops = self._edge_ops[False], self._edge_ops[True]
        k = space.num_ops
        for which, ops in (("normal", self.normal_ops), ("reduce", self.reduce_ops)):
            mask = torch.zeros(self.num_edges, k, dtype=torch.bool)
            for e, edge in enumerate(ops):
                mask[e, [space.index(op) for op in edge]] = True
            self.register_buffer(f"mask_{which}", mask, persistent=False)
            # Column indices of each edge's candidates, in the edge's candidate order.
            for e, edge in enumerate(ops):
                self.register_buffer(f"cols_{which}_{e}", torch.tensor([space.index(op) for op in edge]),
                                     persistent=False)

    def _cell_ops(self, reduction: bool) -> tuple[tuple[str, ...], ...]:
        return self._edge_ops[reduction]

    @staticmethod
    def _check_ops(space: SearchSpace, edge_ops: Sequence[Sequence[str]], nodes: int,
                   which: str) -> tuple[tuple[str, ...], ...]:
        ops = tuple(tuple(e) for e in edge_ops)
        if len(ops) != num_cell_edges(nodes):
            raise ValueError(f"{which}: {len(ops)} edge op lists, expected {num_cell_edges(nodes)}")
        order = {op: i for i, op in enumerate(space.ops)}
        for e, edge in enumerate(ops):
            if not any(op != NONE for op in edge):
                raise ValueError(f"{which} edge {e} holds no op other than 'none': {list(edge)}")
            for op in edge:
                space.index(op)
            if len(set(edge)) != len(edge):
                raise ValueError(f"{which} edge {e} repeats an op: {list(edge)}")
        # Keep the space's order inside an edge: alpha columns and candidates then agree everywhere.
        return tuple(tuple(sorted(edge, key=order.__getitem__)) for edge in ops)

    def masked_alphas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits with ops absent from an edge set to ``-inf``."""
        return (self.alphas_normal.masked_fill(~self.mask_normal, float("-inf")),
                self.alphas_reduce.masked_fill(~self.mask_reduce, float("-inf")))

    def edge_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-edge softmax over each edge's own candidates, ``[num_edges, len(space.ops)]`` (0 elsewhere)."""
        a_n, a_r = self.masked_alphas()
        return F.softmax(a_n, dim=-1), F.softmax(a_r, dim=-1)

    def _edge_rows(self, w: torch.Tensor, which: str) -> list[torch.Tensor]:
        return [w[e].index_select(0, getattr(self, f"cols_{which}_{e}")) for e in range(self.num_edges)]

    def forward(
        self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits; ``weights`` (normal, reduce), ``[num_edges, len(space.ops)]``, overrides the softmax."""
        w_normal, w_reduce = self.edge_weights() if weights is None else weights
        rows_normal, rows_reduce = self._edge_rows(w_normal, "normal"), self._edge_rows(w_reduce, "reduce")
        return self._forward_cells(x, rows_normal, rows_reduce)

    def genotype(self, ranking: str = "logit") -> Genotype:
        """The discrete cell in the original space's op names (masked ops can never be chosen)."""
        a_n, a_r = self.masked_alphas()
        return derive_genotype(a_n.detach(), a_r.detach(), self.space.ops, self.nodes, self.multiplier,
                               ranking)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ stage glue
def winning_groups(stage1: nn.Module, space: SearchSpace) -> tuple[list[int], list[int]]:
    """Per edge, the index in ``space.groups`` of the group whose key operator has the largest stage-1
    logit among the non-``none`` ops: ``(normal, reduce)``."""
    ops = list(stage1.space.ops)
    cand = [k for k, op in enumerate(ops) if op != NONE]
    if not cand:
        raise ValueError("stage-1 space has no op other than 'none'")
    out = []
    for alphas in (stage1.alphas_normal, stage1.alphas_reduce):
        a = alphas.detach().cpu()[:, cand]
        out.append([space.group_of(ops[cand[int(torch.argmax(row))]]) for row in a])
    return out[0], out[1]


def stage_two_edge_ops(space: SearchSpace, groups: Sequence[int]) -> list[tuple[str, ...]]:
    """Per edge: ``none`` (when the space has it) plus the members of the edge's winning group."""
    order = {op: i for i, op in enumerate(space.ops)}
    edges = []
    for g in groups:
        members = set(space.groups[g]) | ({NONE} if space.has_none else set())
        edges.append(tuple(sorted(members, key=order.__getitem__)))
    return edges


def _named_modules_by_op(model: nn.Module) -> dict[str, nn.Module]:
    """Modules keyed by a layout-independent name: candidates by op name instead of position."""
    out: dict[str, nn.Module] = {"stem": model.stem, "classifier": model.classifier}
    for i, cell in enumerate(model.cells):
        tag = f"cells.{i}.{'r' if cell.reduction else 'n'}.{type(cell.preprocess0).__name__}"
        out[f"{tag}.preprocess0"] = cell.preprocess0
        out[f"{tag}.preprocess1"] = cell.preprocess1
        for e, edge in enumerate(cell.edges):
            for op, mod in zip(cell.edge_ops[e], edge.candidates):
                out[f"{tag}.edges.{e}.{op}"] = mod
    return out


@torch.no_grad()
def inherit_weights(target: nn.Module, source: nn.Module) -> int:
    """Copy ``source``'s weights and BN buffers into ``target`` wherever the same op sits at the same
    place (cell index, cell type, preprocessing kind, edge, op name) with equal tensor shapes.

    Returns the number of tensors copied. Architecture logits are never copied.
    """
    src, dst = _named_modules_by_op(source), _named_modules_by_op(target)
    copied = 0
    for key, mod in dst.items():
        other = src.get(key)
        if other is None:
            continue
        a, b = mod.state_dict(), other.state_dict()
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            continue
        for k, t in a.items():
            t.copy_(b[k])
            copied += 1
    return copied


# ------------------------------------------------------------------------------------------ diagnostics
def alpha_entropy(weights: torch.Tensor) -> list[float]:
    """Shannon entropy (nats) of each row of softmaxed edge weights (zero weights contribute nothing)."""
    w = weights.detach().double().cpu()
    logw = torch.where(w > 0, w.log(), torch.zeros_like(w))
    return [float(v) for v in -(w * logw).sum(dim=-1)]


def genotype_diagnostics(genotype: Genotype, model: nn.Module | None = None) -> dict[str, Any]:
    """Skip connections and parameter-free ops per cell type, and (with ``model``) alpha entropy per
    edge and its mean."""
    out: dict[str, Any] = {}
    for which in ("normal", "reduce"):
        ops = [op for op, _ in getattr(genotype, which)]
        out[which] = {"skip_connect": sum(op == "skip_connect" for op in ops),
                      "parameter_free": sum(op in PARAMETER_FREE_OPS for op in ops)}
    if model is not None:
        for which, w in zip(("normal", "reduce"), model.edge_weights()):
            ent = alpha_entropy(w)
            out[which]["alpha_entropy"] = [round(v, 6) for v in ent]
            out[which]["alpha_entropy_mean"] = round(sum(ent) / len(ent), 6)
    return out
