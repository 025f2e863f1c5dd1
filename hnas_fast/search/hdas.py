"""H-DAS search procedures: Hc-DAS (stage-specific cells), Hs-DAS (stage DAGs, optionally the distribution
of cells first), and StacNAS + Hs-DAS (StacNAS finds the cell, Hs-DAS the stage structure).

Every procedure trains with a strategy of :mod:`hnas_fast.search.strategy` (two-level first order by
default, as the paper) on the loaders of :func:`~hnas_fast.data.loaders.make_search_loaders`. Hs-DAS adds
``δ·L_depth`` (and ``γ·L_comp`` in the distribution search) to the architecture objective through the
strategy's ``add_loss_term`` hook. A run directory holds ``config.json``, ``log.jsonl`` and:

* Hc-DAS: ``stage_genotypes.json`` and ``stage{s}_normal.png`` / ``stage{s}_reduce.png``;
* Hs-DAS: ``cell_genotypes.json`` (the cells it wired), ``macro_genotype.json`` and ``stages.png`` /
  ``stages.svg``; a distribution search first writes the same under ``distribution/`` plus
  ``distribution/cells_per_stage.json``, then (``second_pass``) searches again with the chosen counts, as
  the paper does ("searching again with a fixed number of cells ... improves the performance");
* StacNAS + Hs-DAS: the StacNAS run under ``stacnas/`` and the Hs-DAS outputs at the top.

Settings not given by the paper and chosen here: ``comp_weight`` γ = 0.1 (the paper leaves γ open);
the window m = 3 (the paper states m = 3 for its ImageNet stage search and uses a window for CIFAR); the
weight decay of the weights stays DARTS's 3e-4 (the paper's appendix prints 2.7e-3 for H-DAS; set
``w_wd`` to use it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hnas_fast.nn.hc_supernet import (
    HcSupernet,
    StageGenotypes,
    as_stage_genotypes,
    build_hc_supernet,
    save_stage_genotypes,
)
from hnas_fast.nn.stage_dag import StageDAGSupernet
from hnas_fast.search.macro_genotype import MacroGenotype, save_macro_genotype

__all__ = ["HDAS_MODES", "HDASConfig", "HDASResult", "run_hcdas", "run_hdas", "run_hdas_from_config",
           "run_hsdas", "run_stacnas_hdas"]

HDAS_MODES = ("hcdas", "hsdas", "stacnas+hdas")


@dataclass
class HDASConfig:
    """Settings of an H-DAS search; defaults are the paper's CIFAR settings (design.md §3).

    ``mode``: ``hcdas`` | ``hsdas`` | ``stacnas+hdas``. Hc-DAS uses ``space``, ``cells``, ``nodes``,
    ``hc_stem_multiplier``; Hs-DAS uses ``cell_genotype`` (a genotype preset, string or file, or a
    stage-genotypes JSON file), ``cells_per_stage``, ``window``, ``depth_weight`` (δ), ``stem_multiplier``
    and, for the distribution search, ``n_min`` (with over-parameterized ``cells_per_stage``),
    ``comp_weight`` (γ) and ``second_pass``. ``stacnas`` holds overrides of
    :class:`~hnas_fast.search.stacnas.StacNASConfig` for ``stacnas+hdas``. ``max_steps`` caps each search.
    """

    mode: str = "hsdas"
    strategy: str = "darts"
    data: str = "cifar10"
    data_dir: str | None = None
    image_size: int | None = None
    batch_size: int = 64
    split: float = 0.5
    workers: int = 0
    epochs: int = 50
    max_steps: int | None = None
    channels: int = 16
    # Hc-DAS
    space: str = "darts"
    cells: int = 8
    nodes: int = 4
    hc_stem_multiplier: int = 3
    # Hs-DAS
    cell_genotype: str = "DARTS_V2"
    cells_per_stage: tuple[int, ...] = (6, 6, 6)
    window: int | None = 3
    depth_weight: float = 1.0
    comp_weight: float = 0.1
    n_min: int | None = None
    second_pass: bool = True
    stem_multiplier: int = 4
    # StacNAS + Hs-DAS
    stacnas: dict[str, Any] = field(default_factory=dict)
    # optimization
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_wd: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_wd: float = 1e-3
    ranking: str = "weight"
    memory_saving: bool = False
    backend: str = "auto"
    seed: int = 0
    device: str = "auto"
    plots: bool = True

    def validate(self) -> HDASConfig:
        """Raise ``ValueError`` naming the first bad setting; return ``self``."""
        from hnas_fast.search.strategy import STRATEGIES

        if self.mode not in HDAS_MODES:
            raise ValueError(f"unknown H-DAS mode {self.mode!r}; choose one of {', '.join(HDAS_MODES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.ranking not in ("weight", "logit"):
            raise ValueError(f"ranking must be 'weight' or 'logit', got {self.ranking!r}")
        self.cells_per_stage = tuple(int(n) for n in self.cells_per_stage)
        if not self.cells_per_stage or min(self.cells_per_stage) < 1:
            raise ValueError(f"cells_per_stage must list >= 1 cells per stage, got {self.cells_per_stage}")
        if self.window is not None:
            for s, n in enumerate(self.cells_per_stage):
                if not 2 <= self.window <= n + 1:
                    raise ValueError(f"window {self.window} does not fit stage {s} ({n} cells): it must "
                                     f"be in [2, {n + 1}]")
        if self.n_min is not None and not 1 <= self.n_min <= min(self.cells_per_stage):
            raise ValueError(f"n_min must be in 1..{min(self.cells_per_stage)}, got {self.n_min}")
        if self.n_min is not None and self.window is not None and self.window > self.n_min + 1:
            # The second pass searches stages of as few as n_min cells: the window must fit them too.
            raise ValueError(f"window {self.window} does not fit a stage of n_min={self.n_min} cells: "
                             f"it must be <= {self.n_min + 1}")
        for name in ("epochs", "batch_size", "channels", "cells", "stem_multiplier", "hc_stem_multiplier"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth_weight < 0 or self.comp_weight < 0:
            raise ValueError("depth_weight and comp_weight must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["a_betas"] = list(self.a_betas)
        d["cells_per_stage"] = list(self.cells_per_stage)
        return d


@dataclass
class HDASResult:
    """What a search produced (``macro``/``cells`` are ``None`` where the procedure does not make them)."""

    out: Path | None
    cells: StageGenotypes | None
    macro: MacroGenotype | None
    steps: int
    history: list[dict[str, float]]
    cells_per_stage: tuple[int, ...] | None = None


# ------------------------------------------------------------------------------------------ helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def _train(model: nn.Module, cfg: HDASConfig, loaders: tuple[Any, Any], out: Path | None,
           terms: list[tuple[str, Callable[[nn.Module], torch.Tensor]]], say: Callable[[str], None],
           tag: str) -> tuple[int, list[dict[str, float]]]:
    from hnas_fast.search.strategy import make_strategy

    strategy = make_strategy(
        cfg.strategy, model, epochs=cfg.epochs, w_lr=cfg.w_lr, w_lr_min=cfg.w_lr_min,
        w_momentum=cfg.w_momentum, w_wd=cfg.w_wd, grad_clip=cfg.grad_clip or None, a_lr=cfg.a_lr,
        a_betas=tuple(cfg.a_betas), a_wd=cfg.a_wd, loss_terms=terms)
    train_loader, val_loader = loaders
    val_iter = _cycle(val_loader) if (val_loader is not None and strategy.needs_val) else None
    log = (out / "log.jsonl").open("a") if out is not None else None
    history: list[dict[str, float]] = []
    steps = 0
    try:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            n = 0
            for batch in train_loader:
                metrics = strategy.step(batch, next(val_iter) if val_iter is not None else None)
                steps += 1
                n += 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                if log is not None:
                    log.write(json.dumps({"type": "step", "search": tag, "epoch": epoch, "step": steps,
                                          **{k: round(v, 6) for k, v in metrics.items()}}) + "\n")
                if cfg.max_steps is not None and steps >= cfg.max_steps:
                    break
            strategy.end_epoch()
            rec = {"epoch": epoch, **{k: v / max(n, 1) for k, v in sums.items()},
                   "time": time.perf_counter() - t0}
            history.append(rec)
            say(f"{tag} epoch {epoch + 1}/{cfg.epochs}: loss {rec.get('loss', math.nan):.4f} "
                f"acc {rec.get('acc', math.nan):.3f} ({rec['time']:.1f} s)")
            if log is not None:
                log.write(json.dumps({"type": "epoch", "search": tag, **rec}) + "\n")
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
    finally:
        if log is not None:
            log.close()
    return steps, history


def _loaders(cfg: HDASConfig) -> tuple[tuple[Any, Any], int, int]:
    from hnas_fast.data.loaders import make_search_loaders
    from hnas_fast.search.strategy import STRATEGIES

    one_level = not STRATEGIES[cfg.strategy].needs_val
    train, val, num_classes, in_ch, _ = make_search_loaders(
        cfg.data, cfg.data_dir, cfg.batch_size, cfg.split, one_level, cfg.seed, cfg.workers, cfg.image_size)
    return (train, val), num_classes, in_ch


def _start(cfg: HDASConfig, out_dir: str | Path | None) -> Path | None:
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", cfg.to_dict())
    return out


# ------------------------------------------------------------------------------------------ searches
def run_hcdas(config: HDASConfig, out_dir: str | Path | None = None,
              log: Callable[[str], None] | None = None) -> HDASResult:
    """Hc-DAS: search stage-specific cells (three normal, two reduction) on the DARTS supernet."""
    cfg = config.validate()
    say = log or (lambda _m: None)
    out = _start(cfg, out_dir)
    torch.manual_seed(cfg.seed)
    loaders, num_classes, in_ch = _loaders(cfg)
    model: HcSupernet = build_hc_supernet(
        cfg.space, cells=cfg.cells, channels=cfg.channels, num_classes=num_classes, nodes=cfg.nodes,
        multiplier=cfg.nodes, stem_multiplier=cfg.hc_stem_multiplier, in_channels=in_ch,
        memory_saving=cfg.memory_saving, mixed_backend=None if cfg.backend == "auto" else cfg.backend,
    ).to(_device(cfg.device))
    steps, history = _train(model, cfg, loaders, out, [], say, "hcdas")
    cells = model.genotype(cfg.ranking)
    if out is not None:
        save_stage_genotypes(cells, out / "stage_genotypes.json", cfg.ranking)
        if cfg.plots:
            from hnas_fast.viz.cells import plot_cell

            for s, g in enumerate(cells.stages):
                plot_cell(g, "normal", out / f"stage{s}_normal.png")
                if s > 0:
                    plot_cell(g, "reduce", out / f"stage{s}_reduce.png")
    return HDASResult(out, cells, None, steps, history)


def _write_hsdas(out: Path, macro: MacroGenotype, cells: StageGenotypes, plots: bool) -> None:
    save_macro_genotype(macro, out / "macro_genotype.json")
    save_stage_genotypes(cells, out / "cell_genotypes.json")
    if plots:
        from hnas_fast.viz.stages import plot_stages

        plot_stages(macro, out / "stages.png")
        plot_stages(macro, out / "stages.svg")


def run_hsdas(config: HDASConfig, out_dir: str | Path | None = None,
              cell_genotypes: StageGenotypes | Any = None,
              log: Callable[[str], None] | None = None) -> HDASResult:
    """Hs-DAS: search the stage DAGs over fixed cells (``cell_genotypes``, else ``config.cell_genotype``),
    with the depth loss; with ``n_min`` first the distribution of cells (β, complexity loss), then, with
    ``second_pass``, the DAGs again at the chosen cell counts."""
    cfg = config.validate()
    say = log or (lambda _m: None)
    out = _start(cfg, out_dir)
    stages = len(cfg.cells_per_stage)
    cells = as_stage_genotypes(cell_genotypes if cell_genotypes is not None else cfg.cell_genotype, stages)
    torch.manual_seed(cfg.seed)
    loaders, num_classes, in_ch = _loaders(cfg)
    device = _device(cfg.device)

    def search(cells_per_stage: tuple[int, ...], n_min: int | None, where: Path | None,
               tag: str) -> tuple[MacroGenotype, int, list[dict[str, float]]]:
        model = StageDAGSupernet(
            cells, cells_per_stage, cfg.channels, num_classes, window=cfg.window, n_min=n_min,
            stem_multiplier=cfg.stem_multiplier, in_channels=in_ch, memory_saving=cfg.memory_saving,
            mixed_backend=None if cfg.backend == "auto" else cfg.backend).to(device)
        terms: list[tuple[str, Callable[[nn.Module], torch.Tensor]]] = []
        if cfg.depth_weight:
            terms.append(("depth_loss", lambda m: cfg.depth_weight * m.depth_loss()))
        if n_min is not None and cfg.comp_weight:
            terms.append(("comp_loss", lambda m: cfg.comp_weight * m.complexity_loss()))
        if where is not None:
            where.mkdir(parents=True, exist_ok=True)
        steps, history = _train(model, cfg, loaders, where, terms, say, tag)
        macro = model.macro_genotype(cfg.ranking)
        if where is not None:
            _write_hsdas(where, macro, cells, cfg.plots)
            if n_min is not None:
                _write_json(where / "cells_per_stage.json", {
                    "cells_per_stage": list(macro.cells_per_stage),
                    "pair_weights": [w.detach().cpu().tolist() for w in model.pair_weights() or []]})
        return macro, steps, history

    if cfg.n_min is None:
        macro, steps, history = search(cfg.cells_per_stage, None, out, "hsdas")
        return HDASResult(out, cells, macro, steps, history, macro.cells_per_stage)
    dist_dir = out / "distribution" if out is not None else None
    macro, steps, history = search(cfg.cells_per_stage, cfg.n_min, dist_dir, "distribution")
    chosen = macro.cells_per_stage
    say(f"distribution search chose {list(chosen)} cells per stage")
    if not cfg.second_pass:
        if out is not None:
            _write_hsdas(out, macro, cells, cfg.plots)
        return HDASResult(out, cells, macro, steps, history, chosen)
    torch.manual_seed(cfg.seed + 1)
    macro2, steps2, history2 = search(chosen, None, out, "hsdas")
    return HDASResult(out, cells, macro2, steps + steps2, history + history2, chosen)


def run_stacnas_hdas(config: HDASConfig, out_dir: str | Path | None = None,
                     log: Callable[[str], None] | None = None) -> HDASResult:
    """StacNAS finds the cell (``config.stacnas`` overrides its settings; data, seed, device, budget and
    plots are shared), then Hs-DAS wires it into stage DAGs."""
    from hnas_fast.search.stacnas import StacNASConfig, run_stacnas

    cfg = config.validate()
    out = _start(cfg, out_dir)
    shared = {"data": cfg.data, "data_dir": cfg.data_dir, "image_size": cfg.image_size,
              "batch_size": cfg.batch_size, "seed": cfg.seed, "device": cfg.device,
              "max_steps": cfg.max_steps, "plots": cfg.plots, "memory_saving": cfg.memory_saving,
              "backend": cfg.backend, "out": str(out / "stacnas") if out is not None else None}
    st_cfg = StacNASConfig(**{**shared, **cfg.stacnas})
    st = run_stacnas(st_cfg, log=log)
    res = run_hsdas(dataclasses.replace(cfg, mode="hsdas"), out, cell_genotypes=st.genotype, log=log)
    if out is not None:  # run_hsdas rewrote config.json with mode hsdas: keep the pipeline's
        _write_json(out / "config.json", cfg.to_dict())
    return res


def run_hdas(config: HDASConfig, out_dir: str | Path | None = None,
             log: Callable[[str], None] | None = None) -> HDASResult:
    """Dispatch on ``config.mode``."""
    cfg = config.validate()
    if cfg.mode == "hcdas":
        return run_hcdas(cfg, out_dir, log)
    if cfg.mode == "hsdas":
        return run_hsdas(cfg, out_dir, log=log)
    return run_stacnas_hdas(cfg, out_dir, log)


_FIELDS = {f.name for f in dataclasses.fields(HDASConfig)}
# SearchConfig fields that carry over to H-DAS under the same name.
_SHARED = ("data", "data_dir", "image_size", "batch_size", "split", "workers", "epochs", "max_steps",
           "channels", "space", "cells", "nodes", "w_lr", "w_lr_min", "w_momentum", "w_wd", "grad_clip",
           "a_lr", "a_betas", "a_wd", "ranking", "memory_saving", "backend", "seed", "device", "plots")


def run_hdas_from_config(config: dict[str, Any] | Any, out_dir: str | Path | None = None,
                         log: Callable[[str], None] | None = None) -> HDASResult:
    """Run H-DAS from a dict of :class:`HDASConfig` fields (hyphens or underscores) or from a
    :class:`~hnas_fast.search.presets.SearchConfig`: its shared fields (data, epochs, channels, optimizer
    settings, ...) carry over, its ``strategy`` is used when it names a strategy (``hdas`` itself means
    the default two-level first order), and any H-DAS field it carries (``mode``, ``cell_genotype``,
    ``cells_per_stage``, ``window``, ``depth_weight``, ``comp_weight``, ``n_min``, ``second_pass``,
    ``stem_multiplier``, ``stacnas``), as an attribute or in an ``extra``/``hdas`` mapping, too.
    ``out_dir`` defaults to the config's ``out``."""
    from hnas_fast.search.strategy import STRATEGIES

    values: dict[str, Any] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            values[k.replace("-", "_")] = v
    else:
        for k in _SHARED:
            if hasattr(config, k):
                values[k] = getattr(config, k)
        strategy = getattr(config, "strategy", None)
        if strategy in STRATEGIES:
            values["strategy"] = strategy
        for k in _FIELDS - set(_SHARED) - {"strategy"}:
            v = getattr(config, k, None)
            if v is not None and k != "stem_multiplier":
                values[k] = v
        for name in ("extra", "hdas"):
            extra = getattr(config, name, None)
            if isinstance(extra, dict):
                values.update({k.replace("-", "_"): v for k, v in extra.items()})
        if out_dir is None:
            out_dir = getattr(config, "out", None)
    if values.get("strategy") == "hdas":
        values.pop("strategy")
    if out_dir is None:
        out_dir = values.pop("out", None)
    values.pop("out", None)
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown H-DAS setting(s) {unknown}; known: {', '.join(sorted(_FIELDS))}")
    if "a_betas" in values:
        values["a_betas"] = tuple(values["a_betas"])
    if "cells_per_stage" in values:
        values["cells_per_stage"] = tuple(values["cells_per_stage"])
    return run_hdas(HDASConfig(**values), out_dir, log)


# ------------------------------------------------------------------------------------------------ CLI
# flag -> HDASConfig field; these are the flags ``python -m hnas_fast.search --strategy hdas`` needs.
CLI_FLAGS: dict[str, tuple[str, type, str]] = {
    "--hdas-mode": ("mode", str, "hcdas | hsdas | stacnas+hdas (default hsdas)"),
    "--cell-genotype": ("cell_genotype", str, "cells Hs-DAS wires: preset, Genotype string, or JSON file"),
    "--cells-per-stage": ("cells_per_stage", int, "cells of each stage, e.g. 6 6 6"),
    "--window": ("window", int, "sliding window m (0: none)"),
    "--depth-weight": ("depth_weight", float, "delta, weight of the depth loss"),
    "--comp-weight": ("comp_weight", float, "gamma, weight of the complexity loss"),
    "--n-min": ("n_min", int, "fewest cells per stage: turns on the distribution search"),
    "--stem-multiplier": ("stem_multiplier", int, "Hs-DAS stem width in C (default 4)"),
}


def main(argv: list[str] | None = None) -> int:
    """``python -m hnas_fast.search.hdas``: run an H-DAS search; exit 2 on bad input."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m hnas_fast.search.hdas", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="JSON file of HDASConfig fields (flags override it)")
    for flag, (_, typ, text) in CLI_FLAGS.items():
        p.add_argument(flag, type=typ, nargs="+" if flag == "--cells-per-stage" else None, help=text)
    for flag, typ in (("--strategy", str), ("--data", str), ("--data-dir", str), ("--image-size", int),
                      ("--batch-size", int), ("--epochs", int), ("--max-steps", int), ("--channels", int),
                      ("--space", str), ("--cells", int), ("--seed", int), ("--device", str),
                      ("--ranking", str)):
        p.add_argument(flag, type=typ)
    p.add_argument("--no-second-pass", action="store_true", help="stop after the distribution search")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    values: dict[str, Any] = {}
    try:
        if args.config:
            values.update(json.loads(Path(args.config).read_text()))
        for flag, (name, _, _) in CLI_FLAGS.items():
            v = getattr(args, flag.lstrip("-").replace("-", "_"))
            if v is not None:
                values[name] = v
        for name in ("strategy", "data", "data_dir", "image_size", "batch_size", "epochs", "max_steps",
                     "channels", "space", "cells", "seed", "device", "ranking"):
            if getattr(args, name) is not None:
                values[name] = getattr(args, name)
        if values.get("window") == 0:
            values["window"] = None
        if args.no_second_pass:
            values["second_pass"] = False
        if args.no_plots:
            values["plots"] = False
        result = run_hdas_from_config(values, args.out, log=None if args.quiet else
                                      (lambda m: print(m, file=sys.stderr)))
    except (ValueError, FileNotFoundError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"H-DAS search done: {result.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
