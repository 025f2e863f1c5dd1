"""The search cell: a DAG of intermediate nodes whose every incoming edge is a :class:`MixedOp`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hnas_fast.nn.mixed_op import MixedOp
from hnas_fast.nn.operations import FactorizedReduce, ReLUConvBN, build_op, set_kernel_backend

__all__ = ["SearchCell", "num_cell_edges"]


def num_cell_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes (node i has i + 2 inputs)."""
    return nodes * (nodes + 3) // 2


class SearchCell(nn.Module):
    """DARTS's search cell (``model_search.Cell``) over an arbitrary op list.

    Inputs c_{k-2} and c_{k-1} are brought to ``C`` channels (1×1 ReLU-conv-BN, or FactorizedReduce when
    the previous cell halved the resolution). Node i sums a mixed edge from every earlier state; the
    output concatenates the last ``multiplier`` nodes (``multiplier * C`` channels). In a reduction cell
    the edges leaving the two inputs have stride 2. All BatchNorms are non-affine, as in DARTS search.

    ``ops`` is one op list shared by every edge (DARTS), or one list per edge (StacNAS stage 2, where each
    edge mixes the members of its own winning group).
    """

    def __init__(
        self,
        ops: Sequence[str] | Sequence[Sequence[str]],
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        nodes: int = 4,
        multiplier: int = 4,
        memory_saving: bool = False,
        mixed_backend: str | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= multiplier <= nodes:
            raise ValueError(f"multiplier must be in 1..{nodes}, got {multiplier}")
        self.reduction = reduction
        self.nodes = nodes
        self.multiplier = multiplier
        per_edge = len(ops) > 0 and not isinstance(ops[0], str)
        self.edge_ops = (tuple(tuple(e) for e in ops) if per_edge
                         else (tuple(ops),) * num_cell_edges(nodes))
        if len(self.edge_ops) != num_cell_edges(nodes):
            raise ValueError(f"{len(self.edge_ops)} edge op lists for {nodes} nodes "
                             f"(expected {num_cell_edges(nodes)})")
        self.ops = self.edge_ops[0] if not per_edge else None
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(i + 2):
                stride = 2 if reduction and j < 2 else 1
                names = self.edge_ops[len(self.edges)]
                candidates = [build_op(name, C, stride, affine=False, search=True) for name in names]
                for op in candidates:
                    set_kernel_backend(op, mixed_backend)
                self.edges.append(MixedOp(candidates, memory_saving=memory_saving, backend=mixed_backend))

    @property
    def num_edges(self) -> int:
        """Mixed edges in the cell (rows of its weight matrix)."""
        return len(self.edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | Sequence[torch.Tensor]
                ) -> torch.Tensor:
        """``weights[e]``: edge e's softmaxed weights (rows of ``[num_edges, len(ops)]``, or a list)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.nodes):
            s = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier :], dim=1)
