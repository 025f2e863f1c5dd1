"""What one search of the loop searches: the supernet it builds, the extra architecture-loss terms, and
the result it derives and writes. :class:`~hnas_fast.search.runner.SearchRun` is the one loop; a
:class:`Stage` tells it what to search.

* :class:`CellSearch`: the DARTS cell search over a space (also StacNAS stage 1 and the correlation
  pre-training); writes ``genotype.json``, ``genotype.txt`` and ``normal.png``/``reduce.png``.
* :class:`StacNASStageTwo`: StacNAS stage 2, each edge over its winning group's members (optionally
  starting from stage-1 weights).
* :class:`StageCellSearch`: Hc-DAS, stage-specific cells; writes ``stage_genotypes.json``.
* :class:`StageDAGSearch`: Hs-DAS, the stage DAGs over fixed cells with the depth loss (and, with
  ``n_min``, the distribution of cells with β and the complexity loss); writes ``macro_genotype.json``,
  ``cell_genotypes.json`` (and ``cells_per_stage.json``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hnas_fast.files import atomic_write_json, atomic_write_text
from hnas_fast.genotypes.cell import Genotype, genotype_to_json, genotype_to_str
from hnas_fast.genotypes.macro import MacroGenotype, macro_to_json, save_macro_genotype
from hnas_fast.nn.hc_supernet import (
    StageGenotypes,
    build_hc_supernet,
    save_stage_genotypes,
    stage_genotypes_to_json,
)
from hnas_fast.nn.stage_dag import StageDAGSupernet
from hnas_fast.nn.supernet import build_supernet
from hnas_fast.search.presets import SearchConfig
from hnas_fast.search.stacnas import StageTwoSupernet, inherit_weights
from hnas_fast.spaces import SearchSpace, resolve_space

LossTerm = tuple[str, Callable[[nn.Module], torch.Tensor]]

__all__ = ["CellSearch", "StacNASStageTwo", "Stage", "StageCellSearch", "StageDAGSearch"]


def _backend(cfg: SearchConfig) -> str | None:
    return None if cfg.backend == "auto" else cfg.backend


class Stage:
    """A search's model and outputs (the base is the DARTS cell search over ``cfg.space``)."""

    #: Name of the search in the pipeline's log lines.
    name = "search"

    def space(self, cfg: SearchConfig) -> SearchSpace:
        """The op space the supernet's edges draw from (logged in the start record)."""
        return resolve_space(cfg.space or "")

    def build(self, cfg: SearchConfig, space: SearchSpace, num_classes: int, in_channels: int) -> nn.Module:
        """A freshly initialized supernet (the loop seeds the RNG just before)."""
        return build_supernet(
            space, cells=cfg.cells, channels=cfg.channels, num_classes=num_classes, nodes=cfg.nodes,
            multiplier=cfg.nodes,  # the cell output concatenates every intermediate node, as in DARTS
            stem_multiplier=cfg.stem_multiplier, in_channels=in_channels, memory_saving=cfg.memory_saving,
            mixed_backend=_backend(cfg))

    def init_weights(self, model: nn.Module) -> None:
        """Called once on a fresh start (never on resume), before rank 0's weights are broadcast."""

    def loss_terms(self, cfg: SearchConfig) -> list[LossTerm]:
        """Extra terms of the architecture objective."""
        return []

    def result(self, model: nn.Module, ranking: str) -> Any:
        """The discrete architecture the supernet holds now."""
        return model.genotype(ranking)

    @staticmethod
    def describe(result: Any) -> str:
        """One line for the epoch log and the pipeline's report."""
        return genotype_to_str(result)

    def to_json(self, result: Any, ranking: str) -> dict[str, Any]:
        """JSON form of ``result`` (kept in every checkpoint)."""
        return genotype_to_json(result, ranking)

    def write_outputs(self, result: Any, model: nn.Module, run_dir: Path, cfg: SearchConfig) -> None:
        """Write the result files into ``run_dir`` (rank 0 only)."""
        g: Genotype = result
        atomic_write_json(run_dir / "genotype.json", genotype_to_json(g, cfg.ranking))
        atomic_write_text(run_dir / "genotype.txt", genotype_to_str(g) + "\n")
        if cfg.plots:
            from hnas_fast.viz.cells import plot_cell

            for which in ("normal", "reduce"):
                plot_cell(g, which, run_dir / f"{which}.png")


class CellSearch(Stage):
    """The DARTS cell search over a given space (StacNAS stage 1, correlation pre-training)."""

    def __init__(self, space: SearchSpace | None = None, name: str = "search") -> None:
        self._space = space
        self.name = name

    def space(self, cfg: SearchConfig) -> SearchSpace:
        return self._space if self._space is not None else super().space(cfg)


class StacNASStageTwo(Stage):
    """StacNAS stage 2: per-edge candidates (``normal_ops``/``reduce_ops``) of the full ``space``;
    ``source`` (given the new supernet, returns stage 1's) lends its weights when given."""

    name = "stage2"

    def __init__(self, space: SearchSpace, normal_ops: Sequence[Sequence[str]],
                 reduce_ops: Sequence[Sequence[str]],
                 source: Callable[[nn.Module], nn.Module] | None = None) -> None:
        self._space, self.normal_ops, self.reduce_ops, self.source = space, normal_ops, reduce_ops, source
        self.inherited = 0

    def space(self, cfg: SearchConfig) -> SearchSpace:
        return self._space

    def build(self, cfg: SearchConfig, space: SearchSpace, num_classes: int, in_channels: int) -> nn.Module:
        return StageTwoSupernet(
            space, self.normal_ops, self.reduce_ops, cells=cfg.cells, channels=cfg.channels,
            num_classes=num_classes, nodes=cfg.nodes, multiplier=cfg.nodes,
            stem_multiplier=cfg.stem_multiplier, in_channels=in_channels, memory_saving=cfg.memory_saving,
            mixed_backend=_backend(cfg))

    def init_weights(self, model: nn.Module) -> None:
        if self.source is not None:
            self.inherited = inherit_weights(model, self.source(model))


class StageCellSearch(Stage):
    """Hc-DAS: one normal cell per stage and one reduction cell per reduction."""

    name = "hcdas"

    def build(self, cfg: SearchConfig, space: SearchSpace, num_classes: int, in_channels: int) -> nn.Module:
        return build_hc_supernet(
            space, cells=cfg.cells, channels=cfg.channels, num_classes=num_classes, nodes=cfg.nodes,
            multiplier=cfg.nodes, stem_multiplier=cfg.stem_multiplier, in_channels=in_channels,
            memory_saving=cfg.memory_saving, mixed_backend=_backend(cfg))

    @staticmethod
    def describe(result: StageGenotypes) -> str:
        return f"{result.num_stages} stage-specific cells: " + " | ".join(
            genotype_to_str(g) for g in result.stages)

    def to_json(self, result: StageGenotypes, ranking: str) -> dict[str, Any]:
        return stage_genotypes_to_json(result, ranking)

    def write_outputs(self, result: StageGenotypes, model: nn.Module, run_dir: Path,
                      cfg: SearchConfig) -> None:
        save_stage_genotypes(result, run_dir / "stage_genotypes.json", cfg.ranking)
        if cfg.plots:
            from hnas_fast.viz.cells import plot_cell

            for s, g in enumerate(result.stages):
                plot_cell(g, "normal", run_dir / f"stage{s}_normal.png")
                if s > 0:
                    plot_cell(g, "reduce", run_dir / f"stage{s}_reduce.png")


class StageDAGSearch(Stage):
    """Hs-DAS over fixed ``cells``: ``cells_per_stage`` and ``n_min`` (distribution search) as given."""

    def __init__(self, cells: StageGenotypes, cells_per_stage: Sequence[int], n_min: int | None,
                 name: str = "hsdas") -> None:
        self.cells, self.cells_per_stage, self.n_min, self.name = cells, tuple(cells_per_stage), n_min, name

    def build(self, cfg: SearchConfig, space: SearchSpace, num_classes: int, in_channels: int) -> nn.Module:
        return StageDAGSupernet(
            self.cells, self.cells_per_stage, cfg.channels, num_classes, window=cfg.window or None,
            n_min=self.n_min, stem_multiplier=cfg.hdas_stem_multiplier, in_channels=in_channels,
            memory_saving=cfg.memory_saving, mixed_backend=_backend(cfg))

    def loss_terms(self, cfg: SearchConfig) -> list[LossTerm]:
        terms: list[LossTerm] = []
        if cfg.depth_weight:
            terms.append(("depth_loss", lambda m: cfg.depth_weight * m.depth_loss()))
        if self.n_min is not None and cfg.comp_weight:
            terms.append(("comp_loss", lambda m: cfg.comp_weight * m.complexity_loss()))
        return terms

    def result(self, model: nn.Module, ranking: str) -> MacroGenotype:
        return model.macro_genotype(ranking)

    @staticmethod
    def describe(result: MacroGenotype) -> str:
        return f"stage DAGs with {list(result.cells_per_stage)} cells per stage"

    def to_json(self, result: MacroGenotype, ranking: str) -> dict[str, Any]:
        return macro_to_json(result)

    def write_outputs(self, result: MacroGenotype, model: nn.Module, run_dir: Path,
                      cfg: SearchConfig) -> None:
        write_hsdas(run_dir, result, self.cells, cfg.plots)
        if self.n_min is not None:
            atomic_write_json(run_dir / "cells_per_stage.json", {
                "cells_per_stage": list(result.cells_per_stage),
                "pair_weights": [w.detach().cpu().tolist() for w in model.pair_weights() or []]})


def write_hsdas(out: Path, macro: MacroGenotype, cells: StageGenotypes, plots: bool) -> None:
    """An Hs-DAS result: ``macro_genotype.json``, ``cell_genotypes.json`` and ``stages.png``/``.svg``."""
    save_macro_genotype(macro, out / "macro_genotype.json")
    save_stage_genotypes(cells, out / "cell_genotypes.json")
    if plots:
        from hnas_fast.viz.stages import plot_stages

        plot_stages(macro, out / "stages.png")
        plot_stages(macro, out / "stages.svg")
