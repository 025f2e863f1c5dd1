"""Pipelines: a short sequence of searches, each a :class:`~hnas_fast.search.runner.SearchRun` (the one
loop) in its own stage directory, with a resumable ``pipeline.json`` that says which stages are done.

* ``strategy="stacnas"``: ``correlation/`` (only with ``groups="correlation"``: a full-space supernet,
  then the operator correlations clustered into groups) → ``stage1/`` (the groups' key operators,
  one-level) → ``stage2/`` (each edge over its winning group's members, one-level).
* ``strategy="hdas"``: ``hdas_mode="hcdas"``: ``hcdas/`` (stage-specific cells); ``"hsdas"``:
  ``distribution/`` (with ``n_min``: the distribution of cells) → ``hsdas/`` (the stage DAGs);
  ``"stacnas+hdas"``: the StacNAS stages under ``stacnas/``, then Hs-DAS over the cell they found.

Every stage directory is a complete run directory (its effective ``config.json``, logs, checkpoint,
result). The pipeline directory holds the pipeline's ``config.json``, ``pipeline.json`` and the final
result: ``genotype.json``/``genotype.txt``/``stacnas.json``/``space.json`` (StacNAS),
``stage_genotypes.json`` (Hc-DAS), ``macro_genotype.json``/``cell_genotypes.json`` (Hs-DAS).

Resuming (``resume=DIR``) skips the stages ``pipeline.json`` marks done, reading their results from their
files, and resumes the interrupted stage from its own checkpoint (or starts it again when it was killed
before its first one); each stage is seeded from the config alone, so a resumed pipeline finds what an
uninterrupted one finds. ``max_steps`` counts the steps of all stages together. Under ``torchrun`` every
rank runs the pipeline, each stage is a distributed search, and rank 0 alone writes.

Decisions where the papers are silent: the winning group of an edge is the group of its strongest
non-``none`` key operator by logit; StacNAS ranks genotype edges by logit (``STRATEGY_DEFAULTS``); the
second Hs-DAS pass is seeded with ``seed + 1`` (a new supernet, not a continuation of the first).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from hnas_fast.distributed import DistributedContext, broadcast_object
from hnas_fast.files import atomic_write_json
from hnas_fast.genotypes.cell import Genotype, genotype_from_json, genotype_to_json, genotype_to_str
from hnas_fast.genotypes.macro import MacroGenotype, macro_from_json
from hnas_fast.nn.hc_supernet import StageGenotypes, as_stage_genotypes, load_stage_genotypes
from hnas_fast.search.correlation import operator_correlation, space_from_correlation
from hnas_fast.search.presets import ConfigError, SearchConfig
from hnas_fast.search.runner import (
    CHECKPOINT,
    SearchRun,
    choose_run_dir,
    init_context,
    load_checkpoint,
    stored_config,
)
from hnas_fast.search.stacnas import (
    genotype_diagnostics,
    stage_two_edge_ops,
    winning_groups,
)
from hnas_fast.search.stages import (
    CellSearch,
    StacNASStageTwo,
    Stage,
    StageCellSearch,
    StageDAGSearch,
    write_hsdas,
)
from hnas_fast.spaces import SearchSpace, load_space, resolve_space

__all__ = ["PIPELINE_STATE", "PipelineResult", "run_pipeline"]

PIPELINE_STATE = "pipeline.json"
_FORMAT = 1


@dataclass
class PipelineResult:
    """What a pipeline produced: its directory, whether every stage finished, the steps of all stages,
    the final result (a ``Genotype``, ``StageGenotypes`` or ``MacroGenotype``; ``None`` when stopped) and
    the result files."""

    run_dir: Path
    finished: bool
    steps: int
    result: Any = None
    files: list[Path] = field(default_factory=list)
    summary: str = ""  # one line: the stage's description of the result


class _Stopped(Exception):
    """A stage stopped at ``max_steps``: the pipeline stops too (resumable)."""


class _Pipeline:
    def __init__(self, cfg: SearchConfig, run_dir: Path, ctx: DistributedContext,
                 say: Callable[[str], None]) -> None:
        self.cfg, self.run_dir, self.ctx, self.say = cfg, run_dir, ctx, say
        path = run_dir / PIPELINE_STATE
        self.state: dict[str, Any] = (json.loads(path.read_text()) if path.is_file()
                                      else {"format": _FORMAT, "strategy": cfg.strategy, "done": {}})
        if self.state.get("format") != _FORMAT:
            raise ConfigError(f"{path}: unknown pipeline format {self.state.get('format')}")

    # ------------------------------------------------------------------------------------------ files
    def _write_json(self, path: Path, data: Any) -> None:
        if self.ctx.is_main:
            atomic_write_json(path, data)

    def _barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()

    @property
    def steps(self) -> int:
        return sum(int(d["steps"]) for d in self.state["done"].values())

    # ------------------------------------------------------------------------------------------ stages
    def done(self, key: str) -> dict[str, Any] | None:
        return self.state["done"].get(key)

    def run_stage(self, key: str, stage: Stage, **settings: Any) -> SearchRun:
        """Run (or resume) the search of stage ``key`` (its directory, relative to the pipeline's) with
        the pipeline's config changed by ``settings``; raises ``_Stopped`` when it stops at max_steps."""
        d = self.run_dir / key
        remaining = None
        if self.cfg.max_steps is not None:
            remaining = self.cfg.max_steps - self.steps
            if remaining <= 0:
                raise _Stopped
        cfg = dataclasses.replace(self.cfg, **settings, name=d.name, out=str(d), max_steps=remaining)
        resume = broadcast_object((d / CHECKPOINT).is_file(), self.ctx)
        if not resume and self.ctx.is_main and d.exists():
            shutil.rmtree(d)  # killed before its first checkpoint: nothing in it to keep
        self._barrier()
        self.say(f"{key}: {'resuming' if resume else 'starting'} ({cfg.strategy}, {cfg.epochs} epochs)")
        run = SearchRun(cfg, resume=d if resume else None, stage=stage)
        res = run.run()
        if not res.finished:
            raise _Stopped
        return run

    def mark_done(self, key: str, steps: int, **info: Any) -> None:
        self.state["done"][key] = {"steps": steps, **info}
        self._write_json(self.run_dir / PIPELINE_STATE, self.state)
        self._barrier()

    # ------------------------------------------------------------------------------------------ StacNAS
    def stacnas(self, where: str) -> tuple[Genotype, list[Path]]:
        """The StacNAS stages under ``where`` ('' or a subdirectory); returns the genotype and its files."""
        cfg, top = self.cfg, self.run_dir / where
        prefix = f"{where}/" if where else ""
        if self.ctx.is_main:
            top.mkdir(parents=True, exist_ok=True)
        self._barrier()
        space = _grouped_space(cfg)
        one = dict(strategy="one-level")
        if cfg.groups == "correlation":
            if self.done(prefix + "correlation") is None:
                full = CellSearch(space, "correlation")
                run = self.run_stage(prefix + "correlation", full, **one, epochs=cfg.correlation_epochs,
                                     space=space.name)
                if self.ctx.is_main:
                    grouped = self._correlate(run, space, top)
                    atomic_write_json(top / "space.json", grouped.to_dict())
                self._barrier()
                self.mark_done(prefix + "correlation", run.pos.global_step)
            space = load_space(top / "space.json")
        else:
            self._write_json(top / "space.json", space.to_dict())
        self.say(f"groups: {[list(g) for g in space.groups]}; key operators {list(space.representatives)}")

        stage1_space = space.stage1()
        key1 = prefix + "stage1"
        if self.done(key1) is None:
            run = self.run_stage(key1, CellSearch(stage1_space, "stage1"), **one,
                                 space=f"{space.name}/stage1")
            win_n, win_r = winning_groups(run.model, space)
            self._write_json(self.run_dir / key1 / "winners.json", {
                "winning_normal": win_n, "winning_reduce": win_r,
                "stage1_genotype": genotype_to_json(run.model.genotype(cfg.ranking), cfg.ranking)})
            self.mark_done(key1, run.pos.global_step)
            del run
        winners = json.loads((self.run_dir / key1 / "winners.json").read_text())
        win_n, win_r = winners["winning_normal"], winners["winning_reduce"]
        normal_ops, reduce_ops = stage_two_edge_ops(space, win_n), stage_two_edge_ops(space, win_r)

        key2 = prefix + "stage2"
        cells2, channels2, epochs2 = cfg.stage2_size
        source = None
        if cfg.inherit_weights:
            def source(target: nn.Module) -> nn.Module:
                stage1_cfg = dataclasses.replace(cfg, strategy="one-level")
                model = CellSearch(stage1_space).build(stage1_cfg, stage1_space,
                                                       target.classifier.out_features,
                                                       target.stem[0].in_channels)
                model.load_state_dict(load_checkpoint(self.run_dir / key1 / CHECKPOINT)["model"])
                return model
        stage2 = StacNASStageTwo(space, normal_ops, reduce_ops, source)
        if self.done(key2) is None:
            run = self.run_stage(key2, stage2, **one, cells=cells2, channels=channels2, epochs=epochs2,
                                 space=space.name)
            genotype = run.model.genotype(cfg.ranking)
            summary = {
                "space": space.to_dict(), "stage1_ops": list(stage1_space.ops),
                "winning_groups": {"normal": [list(space.groups[g]) for g in win_n],
                                   "reduce": [list(space.groups[g]) for g in win_r]},
                "stage2_edge_ops": {"normal": [list(e) for e in normal_ops],
                                    "reduce": [list(e) for e in reduce_ops]},
                "stage1_genotype": winners["stage1_genotype"],
                "genotype": genotype_to_json(genotype, cfg.ranking),
                "diagnostics": genotype_diagnostics(genotype, run.model),
                "inherited_tensors": stage2.inherited if run.resume_dir is None else None,
                "stages": [k for k in (prefix + "correlation", key1, key2) if (self.run_dir / k).is_dir()],
            }
            self._write_json(top / "stacnas.json", summary)
            if self.ctx.is_main:
                CellSearch().write_outputs(genotype, run.model, top, cfg)
            self.mark_done(key2, run.pos.global_step)
        genotype = genotype_from_json((top / "genotype.json").read_text())
        self.say(f"genotype: {genotype_to_str(genotype)}")
        files = [top / n for n in ("genotype.json", "genotype.txt", "stacnas.json", "space.json")]
        return genotype, files

    def _correlate(self, run: SearchRun, space: SearchSpace, top: Path) -> SearchSpace:
        cfg = self.cfg
        result = operator_correlation(run.model, run.train_loader, images=cfg.correlation_images,
                                      device=run.device)
        grouped = space_from_correlation(space, result, cfg.correlation_threshold,
                                         name=f"{space.name}-clustered")
        result.meta.update(space=space.name, threshold=cfg.correlation_threshold)
        result.save(top / "correlation.json")
        if cfg.plots:
            from hnas_fast.viz.heatmap import plot_correlation

            plot_correlation(result.mean, result.ops, top / "correlation.png", groups=grouped.groups,
                             title=f"operator correlation ({space.name})")
        return grouped

    # ------------------------------------------------------------------------------------------ H-DAS
    def hcdas(self) -> tuple[StageGenotypes, list[Path]]:
        cfg = self.cfg
        if self.done("hcdas") is None:
            stage = StageCellSearch()
            run = self.run_stage("hcdas", stage, strategy=cfg.hdas_strategy)
            cells = stage.result(run.model, cfg.ranking)
            if self.ctx.is_main:
                stage.write_outputs(cells, run.model, self.run_dir, cfg)
            self.mark_done("hcdas", run.pos.global_step)
        path = self.run_dir / "stage_genotypes.json"
        return load_stage_genotypes(path), [path]

    def hsdas(self, cells: StageGenotypes) -> tuple[MacroGenotype, list[Path]]:
        cfg = self.cfg
        counts = tuple(cfg.cells_per_stage)
        if cfg.n_min is not None:
            if self.done("distribution") is None:
                stage = StageDAGSearch(cells, counts, cfg.n_min, name="distribution")
                run = self.run_stage("distribution", stage, strategy=cfg.hdas_strategy)
                macro = stage.result(run.model, cfg.ranking)
                self.mark_done("distribution", run.pos.global_step,
                               cells_per_stage=list(macro.cells_per_stage))
            counts = tuple(self.done("distribution")["cells_per_stage"])
            self.say(f"distribution search chose {list(counts)} cells per stage")
            if not cfg.second_pass:
                macro = macro_from_json((self.run_dir / "distribution" / "macro_genotype.json").read_text())
                if self.ctx.is_main:
                    write_hsdas(self.run_dir, macro, cells, cfg.plots)
                self._barrier()
                return macro, self._hsdas_files()
        if self.done("hsdas") is None:
            stage = StageDAGSearch(cells, counts, None)
            seed = cfg.seed + 1 if cfg.n_min is not None else cfg.seed
            run = self.run_stage("hsdas", stage, strategy=cfg.hdas_strategy, seed=seed)
            macro = stage.result(run.model, cfg.ranking)
            if self.ctx.is_main:
                write_hsdas(self.run_dir, macro, cells, cfg.plots)
            self.mark_done("hsdas", run.pos.global_step)
        macro = macro_from_json((self.run_dir / "macro_genotype.json").read_text())
        return macro, self._hsdas_files()

    def _hsdas_files(self) -> list[Path]:
        return [self.run_dir / "macro_genotype.json", self.run_dir / "cell_genotypes.json"]


def _grouped_space(cfg: SearchConfig) -> SearchSpace:
    """The full space StacNAS groups: ``cfg.space`` (its base: ``s1/stage1`` means ``s1``), its groups
    replaced by a ``groups`` file's."""
    spec = cfg.space or "s1"
    if not spec.endswith((".json", ".yaml", ".yml")):
        spec = spec.split("/", 1)[0]
    space = resolve_space(spec)
    if cfg.groups not in ("preset", "correlation"):
        if not Path(cfg.groups).is_file():
            raise ConfigError(f"groups file not found: {cfg.groups}")
        grouped = load_space(cfg.groups)
        if set(grouped.ops) != set(space.ops):
            raise ConfigError(f"groups file {cfg.groups} has ops {list(grouped.ops)}, space {space.name!r} "
                              f"has {list(space.ops)}")
        space = grouped
    return space


def _check(cfg: SearchConfig) -> None:
    """Everything that can fail on bad input, before anything is written."""
    if cfg.strategy == "stacnas" or cfg.hdas_mode == "stacnas+hdas":
        _grouped_space(cfg)
    elif cfg.hdas_mode == "hcdas":
        resolve_space(cfg.space or "")
    else:
        try:
            as_stage_genotypes(cfg.cell_genotype, len(cfg.cells_per_stage))
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise ConfigError(f"cell_genotype {cfg.cell_genotype!r}: {e}") from None


def _stored(run_dir: Path, cli: SearchConfig) -> SearchConfig:
    stored = stored_config(run_dir, cli, PIPELINE_STATE)
    if not stored.pipeline:
        raise ConfigError(f"{run_dir} holds a {stored.strategy} search, not a pipeline")
    return stored


def run_pipeline(cfg: SearchConfig, resume: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> PipelineResult:
    """Run (or, with ``resume``, continue) the pipeline ``cfg.strategy`` names; ``log`` gets one line
    per stage (rank 0). Raises ``ConfigError``/``FileNotFoundError`` on bad input before writing, and
    ``NonFiniteLossError`` from a stage (its last checkpoint kept)."""
    if resume is not None:
        cfg = _stored(Path(resume), cfg)
    cfg = cfg.validate()
    if not cfg.pipeline:
        raise ConfigError(f"strategy {cfg.strategy} is a single search: run it with SearchRun")
    _check(cfg)
    ctx = init_context(cfg)
    say = log if (log is not None and ctx.is_main) else (lambda _m: None)
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = choose_run_dir(cfg, ctx)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "config.json", cfg.to_dict())
    pipe = _Pipeline(cfg, run_dir, ctx, say)
    if resume is None:
        pipe._write_json(run_dir / PIPELINE_STATE, pipe.state)
        pipe._barrier()
    try:
        return _run(pipe, cfg)
    except (ConfigError, ValueError, FileNotFoundError):
        # Bad input the first search found (a data folder, say) before any step: write nothing.
        if resume is None and ctx.is_main and not any(run_dir.rglob(CHECKPOINT)):
            for name in ("config.json", PIPELINE_STATE, "space.json"):
                (run_dir / name).unlink(missing_ok=True)
            for d in sorted((p for p in run_dir.rglob("*") if p.is_dir()), reverse=True):
                if not any(d.iterdir()):
                    d.rmdir()
            if not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise


def _run(pipe: _Pipeline, cfg: SearchConfig) -> PipelineResult:
    run_dir = pipe.run_dir
    try:
        if cfg.strategy == "stacnas":
            result, files = pipe.stacnas("")
            summary = CellSearch.describe(result)
        elif cfg.hdas_mode == "hcdas":
            result, files = pipe.hcdas()
            summary = StageCellSearch.describe(result)
        else:
            if cfg.hdas_mode == "stacnas+hdas":
                cell, _ = pipe.stacnas("stacnas")
                cells = as_stage_genotypes(cell, len(cfg.cells_per_stage))
            else:
                cells = as_stage_genotypes(cfg.cell_genotype, len(cfg.cells_per_stage))
            result, files = pipe.hsdas(cells)
            summary = StageDAGSearch.describe(result)
    except _Stopped:
        return PipelineResult(run_dir, False, _steps_so_far(run_dir, pipe))
    return PipelineResult(run_dir, True, pipe.steps, result, files, summary)


def _steps_so_far(run_dir: Path, pipe: _Pipeline) -> int:
    """Steps of the done stages plus the stopped stage's checkpointed ones."""
    steps = pipe.steps
    for ckpt in run_dir.rglob(CHECKPOINT):
        key = str(ckpt.parent.relative_to(run_dir))
        if key not in pipe.state["done"]:
            steps += int(load_checkpoint(ckpt)["global_step"])
    return steps
