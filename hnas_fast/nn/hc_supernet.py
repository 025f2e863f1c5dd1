"""Hc-DAS (H-DAS §3.1): a cell-level supernet whose every stage has its own architecture parameters.

DARTS shares one normal and one reduction cell across the whole network. Hc-DAS gives each of the three
stages its own normal cell and each of the two reductions its own reduction cell: five ``[num_edges, K]``
logit tensors instead of two, over the same supernet (8 cells, C=16 on CIFAR).

Its result is a :class:`StageGenotypes`: one DARTS :data:`Genotype` per stage, whose ``normal`` is the
stage's normal cell and whose ``reduce`` is the reduction cell that *opens* the stage (halves the resolution
into it). The first stage has no reduction before it: its ``reduce`` field is not used by any network and
Hc-DAS writes the second stage's reduction cell there, so that every entry stays a valid DARTS genotype
(``[DARTS_V2] * 3`` is the ordinary shared-cell network).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.genotypes.cell import (
    Genotype,
    Ranking,
    derive_genotype,
    genotype_from_json,
    genotype_to_json,
    load_genotype,
    validate_genotype,
)
from hnas_fast.nn.supernet import Supernet
from hnas_fast.spaces import SearchSpace, get_space

__all__ = [
    "HcSupernet",
    "StageGenotypes",
    "as_stage_genotypes",
    "build_hc_supernet",
    "load_stage_genotypes",
    "save_stage_genotypes",
    "stage_genotypes_from_json",
    "stage_genotypes_to_json",
]


@dataclass(frozen=True)
class StageGenotypes:
    """Stage-specific cells: ``stages[s].normal`` is stage ``s``'s normal cell, ``stages[s].reduce`` the
    reduction cell that opens stage ``s`` (unused for ``s = 0``)."""

    stages: tuple[Genotype, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("StageGenotypes needs at least one stage")
        for g in self.stages:
            validate_genotype(g)

    @property
    def num_stages(self) -> int:
        """Number of stages."""
        return len(self.stages)


def stage_genotypes_to_json(g: StageGenotypes, ranking: str | None = None) -> dict[str, Any]:
    """``{"stages": [genotype JSON, ...]}`` (``ranking`` recorded when given)."""
    d: dict[str, Any] = {"stages": [genotype_to_json(s) for s in g.stages]}
    if ranking is not None:
        d["ranking"] = ranking
    return d


def stage_genotypes_from_json(d: dict[str, Any] | str) -> StageGenotypes:
    """Inverse of :func:`stage_genotypes_to_json`."""
    if isinstance(d, str):
        d = json.loads(d)
    if not isinstance(d, dict) or not isinstance(d.get("stages"), list):
        raise ValueError("stage genotypes JSON must be an object with a 'stages' list")
    return StageGenotypes(tuple(genotype_from_json(s) for s in d["stages"]))


def save_stage_genotypes(g: StageGenotypes, path: str | os.PathLike[str], ranking: str | None = None) -> Path:
    """Write ``g`` as JSON."""
    p = Path(path)
    p.write_text(json.dumps(stage_genotypes_to_json(g, ranking), indent=1) + "\n")
    return p


def load_stage_genotypes(source: str | os.PathLike[str]) -> StageGenotypes:
    """Stage genotypes from JSON text or a JSON file holding ``{"stages": [...]}``."""
    text = os.fspath(source)
    if text.lstrip().startswith("{"):
        return stage_genotypes_from_json(text)
    p = Path(text)
    if not p.is_file():
        raise FileNotFoundError(f"stage genotypes file not found: {p}")
    return stage_genotypes_from_json(p.read_text())


def as_stage_genotypes(
    cells: StageGenotypes | Genotype | str | os.PathLike[str] | Sequence[Genotype | str], num_stages: int
) -> StageGenotypes:
    """Per-stage cells for a ``num_stages`` network from: a :class:`StageGenotypes`, a list of genotypes (one
    per stage), or one genotype (any form :func:`load_genotype` reads, or a stage-genotypes JSON file) shared
    by every stage. A count that does not match ``num_stages`` raises ``ValueError``."""
    if isinstance(cells, (str, os.PathLike)):
        text = os.fspath(cells)
        is_stages = (text.lstrip().startswith("{") and '"stages"' in text) or (
            Path(text).is_file() and '"stages"' in Path(text).read_text())
        cells = load_stage_genotypes(text) if is_stages else load_genotype(text)
    if isinstance(cells, Genotype):
        validate_genotype(cells)
        return StageGenotypes((cells,) * num_stages)
    if not isinstance(cells, StageGenotypes):
        cells = StageGenotypes(tuple(load_genotype(c) for c in cells))
    if cells.num_stages != num_stages:
        raise ValueError(f"{cells.num_stages} stage cell genotype(s) given for a network of "
                         f"{num_stages} stages")
    return cells


class HcSupernet(Supernet):
    """The DARTS supernet with stage-specific architecture parameters.

    ``alphas_normal_stages[s]`` drives the normal cells of stage ``s``; ``alphas_reduce_stages[r]`` the
    reduction cell ``r`` (which opens stage ``r + 1``). Everything else (cells, weights, op set) is
    :class:`~hnas_fast.nn.supernet.Supernet`'s.
    """

    def __init__(self, space: SearchSpace, cells: int = 8, **kwargs: Any) -> None:
        super().__init__(space, cells=cells, **kwargs)
        # Replace the shared logits with one tensor per stage / per reduction.
        del self.alphas_normal, self.alphas_reduce
        k = space.num_ops
        stages = len(self.reduction_at) + 1
        self.alphas_normal_stages = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(self.num_edges, k)) for _ in range(stages))
        self.alphas_reduce_stages = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(self.num_edges, k)) for _ in range(stages - 1))
        # Stage of each cell: the number of reductions at or before it (a reduction cell opens its stage).
        self._stage_of = [sum(1 for r in self.reduction_at if r <= i) for i in range(cells)]

    @property
    def num_stages(self) -> int:
        """Stages (reductions + 1)."""
        return len(self.alphas_normal_stages)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The normal logits of every stage, then the reduction logits."""
        return [*self.alphas_normal_stages, *self.alphas_reduce_stages]

    def edge_weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # type: ignore[override]
        """Softmaxed logits: (per-stage normal, per-reduction reduce)."""
        return ([F.softmax(a, dim=-1) for a in self.alphas_normal_stages],
                [F.softmax(a, dim=-1) for a in self.alphas_reduce_stages])

    def forward(self, x: torch.Tensor,  # type: ignore[override]
                weights: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None) -> torch.Tensor:
        """Logits for ``x``; ``weights`` (per-stage normal, per-reduction) overrides the softmaxed alphas."""
        w_normal, w_reduce = self.edge_weights() if weights is None else weights
        s0 = s1 = self.stem(x.contiguous(memory_format=self.memory_format))
        for i, cell in enumerate(self.cells):
            stage = self._stage_of[i]
            w = w_reduce[stage - 1] if cell.reduction else w_normal[stage]
            s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def genotype(self, ranking: Ranking = "weight") -> StageGenotypes:  # type: ignore[override]
        """The stage-specific cells (see :class:`StageGenotypes`)."""
        out = []
        for s, a_normal in enumerate(self.alphas_normal_stages):
            a_reduce = self.alphas_reduce_stages[max(s - 1, 0)]
            out.append(derive_genotype(a_normal, a_reduce, self.space.ops, self.nodes, self.multiplier,
                                       ranking))
        return StageGenotypes(tuple(out))


def build_hc_supernet(space: str | SearchSpace = "darts", cells: int = 8, channels: int = 16,
                      **kwargs: Any) -> HcSupernet:
    """Hc-DAS's search network (defaults: the paper's CIFAR setting, 8 cells, C=16, the DARTS ops);
    ``kwargs`` as :func:`~hnas_fast.nn.supernet.build_supernet`."""
    return HcSupernet(get_space(space), cells=cells, channels=channels, **kwargs)
