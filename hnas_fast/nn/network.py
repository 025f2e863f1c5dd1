"""The final (discrete) networks built from a genotype, as DARTS's ``model.py``.

Layout, parameter names and counts follow DARTS's public code, so its checkpoints load and its published
sizes are reproduced: DARTS_V2 on CIFAR-10 (20 cells, C=36) has 3,349,342 parameters without the
auxiliary head (what DARTS's ``count_parameters_in_MB`` prints, "3.3M" in the paper) and 3,825,768 with it.
"""

from __future__ import annotations

import torch
from torch import nn

from hnas_fast.genotypes.cell import Genotype, load_genotype, validate_genotype
from hnas_fast.nn.operations import FactorizedReduce, ReLUConvBN, build_op

__all__ = [
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "GenotypeCell",
    "NetworkCIFAR",
    "NetworkImageNet",
    "build_network",
    "drop_path",
]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (DARTS's drop path)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class GenotypeCell(nn.Module):
    """A discrete cell: node i sums two ops applied to the states the genotype names."""

    def __init__(
        self,
        genotype: Genotype,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        self._concat = [int(i) for i in (genotype.reduce_concat if reduction else genotype.normal_concat)]
        self.multiplier = len(self._concat)
        self._steps = len(pairs) // 2
        self._indices = [int(j) for _, j in pairs]
        self._ops = nn.ModuleList(
            build_op(name, C, 2 if reduction and j < 2 else 1, affine=True) for name, j in pairs
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            s = 0
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                # As DARTS: identities are never dropped (a dropped skip would cut the only path).
                if self.training and drop_prob > 0.0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                s = s + h
            states.append(s)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier for an 8×8 input (the 2/3-depth feature map on CIFAR)."""

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8×8 → 2×2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS's ImageNet auxiliary classifier (its code says "14×14"; at 224×224 the map is 7×7).

    DARTS's code omits the BatchNorm after the 2×2 conv ("due to a typo", kept for consistency with its
    paper); so does this one, to keep the published parameter count.
    """

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class _Network(nn.Module):
    """Shared stacking: cells with reductions at 1/3 and 2/3, aux head after the 2/3 cell.

    With ``channels_last`` (the default) weights and activations are laid out channels-last and ``forward``
    converts its input: the fused depthwise op and PyTorch's 1×1 convolutions, BatchNorm and pooling are all
    faster so on the CPU (an 8-cell DARTS_V2 network at batch 64: 360 ms a step against 499 ms NCHW).
    Values and state-dict keys are the same either way.
    """

    memory_format: torch.memory_format = torch.contiguous_format

    def _set_layout(self, channels_last: bool) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def _stack(
        self, genotype: Genotype, C: int, layers: int, C_prev_prev: int, C_prev: int, reduction_prev: bool
    ) -> tuple[int, int]:
        self.cells = nn.ModuleList()
        C_curr = C
        C_aux = C_prev
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = GenotypeCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_aux = C_prev
        return C_prev, C_aux

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux


class NetworkCIFAR(_Network):
    """DARTS's CIFAR network: stem 3C, ``layers`` cells, optional auxiliary head at 2/3 depth.

    ``forward`` returns ``(logits, logits_aux)``; ``logits_aux`` is ``None`` unless training with
    ``auxiliary=True``. ``drop_path_prob`` is an attribute so a schedule can change it per epoch.
    """

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype,
        drop_path_prob: float = 0.0,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem)
        )
        C_prev, C_aux = self._stack(genotype, C, layers, C_stem, C_stem, False)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._set_layout(channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.stem(x.contiguous(memory_format=self.memory_format))
        out, logits_aux = self._run_cells(s, s)
        return self.classifier(self.global_pooling(out).flatten(1)), logits_aux


class NetworkImageNet(_Network):
    """DARTS's ImageNet network: two stride-2 stems (×8 down), cells, aux head at 2/3 depth."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype,
        drop_path_prob: float = 0.0,
        in_channels: int = 3,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # The first cell's s0 comes from stem0 at twice stem1's resolution, hence reduction_prev=True.
        C_prev, C_aux = self._stack(genotype, C, layers, C, C, True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)
        # DARTS uses AvgPool2d(7), i.e. global pooling at 224×224; adaptive pooling is the same there and
        # also works at other input sizes.
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._set_layout(channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = self.stem0(x.contiguous(memory_format=self.memory_format))
        s1 = self.stem1(s0)
        out, logits_aux = self._run_cells(s0, s1)
        return self.classifier(self.global_pooling(out).flatten(1)), logits_aux


def build_network(
    genotype: Genotype | str,
    channels: int = 36,
    cells: int = 20,
    num_classes: int = 10,
    auxiliary: bool = True,
    drop_path_prob: float = 0.2,
    dataset: str = "cifar",
    channels_last: bool = True,
) -> NetworkCIFAR | NetworkImageNet:
    """The final network for ``genotype`` (a Genotype, preset name, string or file).

    Defaults are DARTS's CIFAR evaluation setting; for ImageNet DARTS uses ``channels=48, cells=14,
    num_classes=1000``. ``dataset`` is ``"cifar"`` (any 32×32-style input) or ``"imagenet"``.
    ``channels_last``: the layout of weights and activations (see ``_Network``).
    """
    g = load_genotype(genotype)
    validate_genotype(g)
    kind = dataset.lower()
    if kind.startswith("cifar"):
        return NetworkCIFAR(channels, num_classes, cells, auxiliary, g, drop_path_prob,
                            channels_last=channels_last)
    if kind == "imagenet":
        return NetworkImageNet(channels, num_classes, cells, auxiliary, g, drop_path_prob,
                               channels_last=channels_last)
    raise ValueError(f"dataset must be 'cifar' or 'imagenet', got {dataset!r}")
