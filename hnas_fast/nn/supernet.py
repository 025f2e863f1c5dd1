"""The cell-level search network (DARTS's ``model_search.Network``) over any search space."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.genotypes.cell import Genotype, Ranking, derive_genotype
from hnas_fast.nn.cell import SearchCell, num_cell_edges
from hnas_fast.spaces import SearchSpace, get_space

__all__ = ["Supernet", "build_supernet", "default_reductions"]


def default_reductions(cells: int) -> tuple[int, ...]:
    """DARTS's rule: reduction cells at ``cells // 3`` and ``2 * cells // 3``."""
    return tuple(sorted({cells // 3, 2 * cells // 3}))


class Supernet(nn.Module):
    """A stack of :class:`SearchCell` sharing two sets of architecture logits (normal and reduce).

    ``alphas_normal`` and ``alphas_reduce`` (``[num_edges, K]``) are registered parameters, so they are in
    ``state_dict()`` and ``parameters()``; optimizers should take :meth:`weight_parameters` and
    :meth:`arch_parameters` separately.

    With ``channels_last`` (the default) the convolution weights and every activation are laid out
    channels-last (``forward`` converts its input): PyTorch's 1x1 convolutions, BatchNorm and pooling and the
    fused depthwise op are all faster so on the CPU (BENCHMARKS.md, supernet step). Values and the state-dict
    layout are the same either way: ``load_state_dict`` copies into the existing strides.
    """

    def __init__(
        self,
        space: SearchSpace,
        cells: int = 8,
        channels: int = 16,
        num_classes: int = 10,
        nodes: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        in_channels: int = 3,
        memory_saving: bool = False,
        mixed_backend: str | None = None,
        reduction_at: Sequence[int] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if cells < 1:
            raise ValueError(f"cells must be >= 1, got {cells}")
        self.space = space
        self.num_cells = cells
        self.channels = channels
        self.num_classes = num_classes
        self.nodes = nodes
        self.multiplier = multiplier
        red = default_reductions(cells) if reduction_at is None else reduction_at
        self.reduction_at = tuple(sorted({int(i) for i in red}))
        bad = [i for i in self.reduction_at if not 0 <= i < cells]
        if bad:
            raise ValueError(f"reduction_at {bad} outside 0..{cells - 1}")

        C_curr = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(cells):
            reduction = i in self.reduction_at
            if reduction:
                C_curr *= 2
            self.cells.append(
                SearchCell(
                    self._cell_ops(reduction), C_prev_prev, C_prev, C_curr, reduction, reduction_prev, nodes,
                    multiplier, memory_saving=memory_saving, mixed_backend=mixed_backend,
                )
            )
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        self.num_edges = num_cell_edges(nodes)
        k = space.num_ops
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(self.num_edges, k))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(self.num_edges, k))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def _cell_ops(self, reduction: bool) -> Sequence[str] | Sequence[Sequence[str]]:
        """The op list(s) of a cell's edges: the space's ops on every edge (subclasses vary it per edge)."""
        return self.space.ops

    def arch_parameters(self) -> list[nn.Parameter]:
        """``[alphas_normal, alphas_reduce]``."""
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the architecture logits."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``named_parameters()`` without the architecture logits."""
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    def edge_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(softmax(alphas_normal), softmax(alphas_reduce))`` over the ops of each edge."""
        return F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1)

    def forward(
        self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits for ``x``; ``weights`` (normal, reduce) overrides :meth:`edge_weights` (e.g. for
        sampled or hardened edges)."""
        w_normal, w_reduce = self.edge_weights() if weights is None else weights
        return self._forward_cells(x, w_normal, w_reduce)

    def _forward_cells(self, x: torch.Tensor, w_normal: torch.Tensor | Sequence[torch.Tensor],
                       w_reduce: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        s0 = s1 = self.stem(x.contiguous(memory_format=self.memory_format))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def genotype(self, ranking: Ranking = "weight") -> Genotype:
        """The discrete cell; ``ranking`` as in :func:`~hnas_fast.genotypes.cell.derive_genotype`."""
        return derive_genotype(
            self.alphas_normal, self.alphas_reduce, self.space.ops, self.nodes, self.multiplier, ranking
        )


def build_supernet(
    space: str | SearchSpace = "darts",
    cells: int = 8,
    channels: int = 16,
    num_classes: int = 10,
    nodes: int = 4,
    multiplier: int = 4,
    stem_multiplier: int = 3,
    in_channels: int = 3,
    memory_saving: bool = False,
    mixed_backend: str | None = None,
    reduction_at: Sequence[int] | None = None,
    channels_last: bool = True,
) -> Supernet:
    """Build the search network; the defaults are DARTS's CIFAR search model (8 cells, C=16).

    Args:
        space: a preset name (see :data:`hnas_fast.spaces.SPACES`) or a :class:`SearchSpace`.
        cells: cells in the stack; reductions at ``reduction_at`` (default ``cells // 3``,
            ``2 * cells // 3``).
        channels: C of the first cells (doubled at each reduction).
        memory_saving: passed to every :class:`~hnas_fast.nn.mixed_op.MixedOp`.
        mixed_backend: the backend of the fused kernels, the mixed sum and the depthwise convolutions of
            SepConv/DilConv (``None``: automatic; ``"reference"``: plain PyTorch, as the public DARTS
            code runs).
        channels_last: lay weights and activations out channels-last (see :class:`Supernet`).
    """
    return Supernet(
        get_space(space), cells=cells, channels=channels, num_classes=num_classes, nodes=nodes,
        multiplier=multiplier, stem_multiplier=stem_multiplier, in_channels=in_channels,
        memory_saving=memory_saving, mixed_backend=mixed_backend, reduction_at=reduction_at,
        channels_last=channels_last,
    )
