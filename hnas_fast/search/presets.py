"""The one search configuration: one dataclass for every strategy and pipeline, presets named after the
papers, and its one validator.

A configuration is built in layers: a preset, then a JSON/YAML file (``--config``), then command-line
flags; ``validate`` then rejects inconsistent combinations with one clear message (``ConfigError``).

Presets (design.md §3):

* ``darts``: DARTS CIFAR search, two-level first order, 8 cells, C=16, 50 epochs, batch 64, split 0.5.
* ``darts2``: the same with the second-order (unrolled) architecture gradient.
* ``stacnas_stage1``: StacNAS stage 1, one-level on all the training data, 14 cells, 80 epochs, clip 3,
  edges carry the group key operators of space S1 (``s1/stage1``), edges ranked by logit.
* ``stacnas_stage2``: StacNAS stage 2, 20 cells, 80 epochs; its space (the winning group's members) comes
  from stage 1, so it must be given: ``--space s1/group2`` or a JSON file.
* ``stacnas``: the StacNAS pipeline (stage 1 at 14 cells, stage 2 at 20, 80 epochs each, space S1).
* ``hdas``: Hs-DAS over DARTS_V2 cells, 6 cells per stage, window 3; ``hcdas``: Hc-DAS, 8 cells.
* ``default``: a quick CPU search on the embedded digits (5 cells, C=8, 16x16, two-level first order).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hnas_fast.data.loaders import DATASETS
from hnas_fast.search.strategy import STRATEGIES

BACKENDS = ("auto", "cpp", "cuda", "triton", "reference")
RANKINGS = ("weight", "logit")
IMAGE_BACKENDS = ("auto", "dali", "torchvision")  # --data imagenet: DALI when importable, or torchvision
VALIDATE_MODES = ("header", "decode", "none")  # --data imagenet: the corrupt-file scan before the search


class ConfigError(ValueError):
    """An inconsistent or unknown configuration value."""


#: ``strategy`` values that run a pipeline of several searches instead of one (:mod:`.pipeline`).
PIPELINES = ("stacnas", "hdas")
HDAS_MODES = ("hcdas", "hsdas", "stacnas+hdas")

#: Which section of the configuration each setting belongs to (the order ``config.json`` lists them in,
#: and the groups of ``--help``); every strategy reads the same sections.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data", "data_dir", "image_size", "batch_size", "split", "workers", "dali", "image_validate"),
    "supernet": ("space", "cells", "channels", "nodes", "stem_multiplier", "memory_saving", "backend"),
    "optimizer": ("epochs", "w_lr", "w_lr_min", "w_momentum", "w_wd", "grad_clip", "a_lr", "a_betas",
                  "a_wd"),
    "architecture": ("strategy", "ranking"),
    "stacnas": ("groups", "stage2_cells", "stage2_channels", "stage2_epochs", "inherit_weights",
                "correlation_epochs", "correlation_images", "correlation_threshold"),
    "hdas": ("hdas_mode", "hdas_strategy", "cell_genotype", "cells_per_stage", "window", "depth_weight",
             "comp_weight", "n_min", "second_pass", "hdas_stem_multiplier"),
    "run": ("name", "seed", "deterministic", "device", "checkpoint_every", "max_steps", "out", "runs_dir",
            "quiet", "plots", "check_sync"),
}


@dataclass
class SearchConfig:
    """Everything a search or pipeline depends on, for every strategy; stored as ``config.json`` in the
    run directory (and, for a pipeline, each stage's effective settings in its stage directory).

    ``strategy`` is a single search (``one-level``, ``darts``, ``darts2``) or a pipeline: ``stacnas``
    (stage 1 over the groups' key operators at ``cells``/``channels``/``epochs``, stage 2 over each edge's
    winning group at the ``stage2_*`` sizes) or ``hdas`` (``hdas_mode``: Hc-DAS, Hs-DAS, or StacNAS
    cells then Hs-DAS; its searches optimize with ``hdas_strategy``). See :data:`SECTIONS`.
    """

    name: str = "default"
    strategy: str = "darts"
    # data
    data: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    batch_size: int = 64
    split: float = 0.5
    workers: int = 0
    dali: str = "auto"  # imagenet only: image pipeline (auto | dali | torchvision)
    # imagenet only, --validate (the field name ``validate`` is the method): the corrupt-file scan
    image_validate: str = "header"  # header | decode | none
    # supernet
    space: str | None = "darts"
    cells: int = 8
    channels: int = 16
    nodes: int = 4
    stem_multiplier: int = 3
    memory_saving: bool = False
    backend: str = "auto"
    ranking: str = "weight"
    # optimization
    epochs: int = 50
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_wd: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_wd: float = 1e-3
    # StacNAS (strategy stacnas; hdas_mode stacnas+hdas)
    groups: str = "preset"  # preset (the space's groups) | correlation (cluster first) | FILE.json
    stage2_cells: int | None = None  # None: cells x 20/14 (the paper's 14 -> 20)
    stage2_channels: int | None = None  # None: channels
    stage2_epochs: int | None = None  # None: epochs
    inherit_weights: bool = False
    correlation_epochs: int = 80
    correlation_images: int = 10_000
    correlation_threshold: float = 0.25
    # H-DAS (strategy hdas)
    hdas_mode: str = "hsdas"
    hdas_strategy: str = "darts"  # the optimization of the H-DAS searches
    cell_genotype: str = "DARTS_V2"  # Hs-DAS cells: a preset name, Genotype string or JSON file
    cells_per_stage: tuple[int, ...] = (6, 6, 6)
    window: int = 3  # sliding window m; 0: none
    depth_weight: float = 1.0
    comp_weight: float = 0.1
    n_min: int | None = None  # fewest cells per stage: turns on the distribution search
    second_pass: bool = True
    hdas_stem_multiplier: int = 4
    # run control
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    checkpoint_every: int = 50
    max_steps: int | None = None
    out: str | None = None
    runs_dir: str = "runs"
    quiet: bool = False
    plots: bool = True
    check_sync: bool = False  # several processes: assert identical alphas on all ranks after every step

    @property
    def pipeline(self) -> bool:
        """True when the strategy is a pipeline of several searches."""
        return self.strategy in PIPELINES

    @property
    def one_level(self) -> bool:
        """True when the strategy trains weights and alphas on the same data (no validation split)."""
        if self.strategy == "stacnas":
            return True
        name = self.hdas_strategy if self.strategy == "hdas" else self.strategy
        return not STRATEGIES[name].needs_val

    @property
    def stage2_size(self) -> tuple[int, int, int]:
        """StacNAS stage 2's (cells, channels, epochs), defaults resolved."""
        cells = self.stage2_cells or max(self.cells, round(self.cells * 20 / 14))
        return cells, self.stage2_channels or self.channels, self.stage2_epochs or self.epochs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["a_betas"] = list(self.a_betas)
        d["cells_per_stage"] = list(self.cells_per_stage)
        return d

    def validate(self) -> SearchConfig:
        """Raise ``ConfigError`` on the first inconsistency; return ``self`` when all is well."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.strategy in STRATEGIES or self.strategy in PIPELINES,
             f"unknown strategy {self.strategy!r}; choose one of {', '.join([*STRATEGIES, *PIPELINES])}")
        need(self.data in DATASETS, f"unknown data set {self.data!r}; choose one of {', '.join(DATASETS)}")
        need(self.data != "digits" or self.data_dir is None,
             "data_dir is given but data is digits (embedded); pick --data cifar10|cifar100|folder|imagenet")
        need(self.data == "digits" or self.data_dir is not None, f"--data {self.data} needs --data-dir")
        need(self.space is not None and str(self.space) != "",
             f"preset {self.name!r} needs --space (e.g. s1/group2 or a JSON file with the ops)")
        need(self.cells >= 3, f"cells must be >= 3 (two reduction cells and a normal one), got {self.cells}")
        need(self.channels >= 1, f"channels must be >= 1, got {self.channels}")
        need(self.nodes >= 2, f"nodes must be >= 2 (a genotype keeps two inputs per node), got {self.nodes}")
        need(self.stem_multiplier >= 1, f"stem_multiplier must be >= 1, got {self.stem_multiplier}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.hdas_strategy in STRATEGIES,
             f"unknown hdas_strategy {self.hdas_strategy!r}; choose one of {', '.join(STRATEGIES)}")
        need(self.one_level or 0.0 < self.split < 1.0,
             f"split must be in (0, 1) for two-level search ({self.strategy}), got {self.split}")
        need(self.image_size is None or self.image_size >= 8,
             f"image_size must be >= 8, got {self.image_size}")
        need(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        need(self.dali in IMAGE_BACKENDS,
             f"unknown image pipeline {self.dali!r}; choose one of {', '.join(IMAGE_BACKENDS)}")
        need(self.image_validate in VALIDATE_MODES,
             f"unknown validate mode {self.image_validate!r}; choose one of {', '.join(VALIDATE_MODES)}")
        need(self.backend in BACKENDS,
             f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        need(self.ranking in RANKINGS,
             f"unknown ranking {self.ranking!r}; choose one of {', '.join(RANKINGS)}")
        need(self.w_lr > 0 and 0 <= self.w_lr_min <= self.w_lr,
             f"need 0 <= w_lr_min <= w_lr and w_lr > 0, got w_lr={self.w_lr}, w_lr_min={self.w_lr_min}")
        need(self.a_lr >= 0, f"a_lr must be >= 0, got {self.a_lr}")
        need(len(self.a_betas) == 2 and all(0 <= b < 1 for b in self.a_betas),
             f"a_betas must be two numbers in [0, 1), got {self.a_betas}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        # StacNAS
        need(self.groups in ("preset", "correlation") or self.groups.endswith((".json", ".yaml", ".yml")),
             f"groups must be preset, correlation or a .json/.yaml space file, got {self.groups!r}")
        for name in ("stage2_cells", "stage2_channels", "stage2_epochs"):
            v = getattr(self, name)
            low = 3 if name == "stage2_cells" else 1
            need(v is None or v >= low, f"{name} must be >= {low}, got {v}")
        for name in ("correlation_epochs", "correlation_images"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(0 <= self.correlation_threshold <= 1,
             f"correlation_threshold must be in [0, 1], got {self.correlation_threshold}")
        # H-DAS
        need(self.hdas_mode in HDAS_MODES,
             f"unknown hdas_mode {self.hdas_mode!r}; choose one of {', '.join(HDAS_MODES)}")
        need(len(self.cells_per_stage) >= 1 and min(self.cells_per_stage) >= 1,
             f"cells_per_stage must list >= 1 cells per stage, got {list(self.cells_per_stage)}")
        need(self.window >= 0, f"window must be >= 0 (0: none), got {self.window}")
        if self.window:
            for s, n in enumerate(self.cells_per_stage):
                need(2 <= self.window <= n + 1,
                     f"window {self.window} does not fit stage {s} ({n} cells): it must be in [2, {n + 1}] "
                     "(or 0: none)")
        if self.n_min is not None:
            need(1 <= self.n_min <= min(self.cells_per_stage),
                 f"n_min must be in 1..{min(self.cells_per_stage)} (the smallest stage), got {self.n_min}")
            # The second pass searches stages of as few as n_min cells: the window must fit them too.
            need(not self.window or self.window <= self.n_min + 1,
                 f"window {self.window} does not fit a stage of n_min={self.n_min} cells: it must be "
                 f"<= {self.n_min + 1}")
        need(self.depth_weight >= 0, f"depth_weight must be >= 0, got {self.depth_weight}")
        need(self.comp_weight >= 0, f"comp_weight must be >= 0, got {self.comp_weight}")
        need(self.hdas_stem_multiplier >= 1,
             f"hdas_stem_multiplier must be >= 1, got {self.hdas_stem_multiplier}")
        need(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
             f"device must be auto, cpu or cuda[:i], got {self.device!r}")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "darts": dict(strategy="darts", data="cifar10", cells=8, channels=16, epochs=50, batch_size=64, split=0.5,
                  space="darts", ranking="weight", grad_clip=5.0),
    "darts2": dict(strategy="darts2", data="cifar10", cells=8, channels=16, epochs=50, batch_size=64,
                   split=0.5, space="darts", ranking="weight", grad_clip=5.0),
    # The StacNAS pipeline on CIFAR (design.md §3): stage 1 14 cells, stage 2 20 cells, 80 epochs each.
    "stacnas": dict(strategy="stacnas", data="cifar10", cells=14, channels=16, epochs=80, stage2_cells=20,
                    batch_size=64, space="s1", ranking="logit", grad_clip=3.0),
    "stacnas_stage1": dict(strategy="one-level", data="cifar10", cells=14, channels=16, epochs=80,
                           batch_size=64, space="s1/stage1", ranking="logit", grad_clip=3.0),
    "stacnas_stage2": dict(strategy="one-level", data="cifar10", cells=20, channels=16, epochs=80,
                           batch_size=64, space=None, ranking="logit", grad_clip=3.0),
    # H-DAS on CIFAR: Hs-DAS over DARTS_V2 cells, 6 cells per stage, window 3, 50 epochs; Hc-DAS 8 cells.
    "hdas": dict(strategy="hdas", hdas_mode="hsdas", data="cifar10", channels=16, epochs=50, batch_size=64,
                 cells_per_stage=(6, 6, 6), window=3, cell_genotype="DARTS_V2", space="darts"),
    "hcdas": dict(strategy="hdas", hdas_mode="hcdas", data="cifar10", cells=8, channels=16, epochs=50,
                  batch_size=64, space="darts"),
    # 12 steps per epoch (719 training images, batch 64), ~1.8 s per two-level step on 2 cores: about
    # 1 minute on an idle machine; measured 4 min 22 s wall on the shared 2-core machine under load
    # (load average 3-4), reaching ~0.90 validation accuracy.
    "default": dict(strategy="darts", data="digits", image_size=16, cells=5, channels=8, epochs=2,
                    batch_size=64, split=0.5, space="darts", ranking="weight", grad_clip=5.0,
                    checkpoint_every=10),
}

#: Settings a strategy brings along when it is picked over a preset of another strategy (a layer between
#: the preset and the file): ``--strategy stacnas`` on the default preset ranks by logit, clips at 3 and
#: searches space S1, as the StacNAS paper; H-DAS on the digits keeps its stage DAGs small.
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "stacnas": dict(ranking="logit", grad_clip=3.0, space="s1"),
    "hdas": dict(),
}
DEMO_STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {"hdas": dict(cells_per_stage=(2, 2, 2))}

_FIELDS = {f.name: f for f in dataclasses.fields(SearchConfig)}
_OPTIONAL_INT = {"image_size", "max_steps", "stage2_cells", "stage2_channels", "stage2_epochs", "n_min"}


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML mapping of ``SearchConfig`` fields (hyphens or underscores), flat or grouped by
    :data:`SECTIONS` (``{"optimizer": {"epochs": 1}, "stacnas": {"stage2_epochs": 1}}``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # malformed file: report where
        raise ConfigError(f"cannot parse config file {p}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings, got {type(data).__name__}")
    return flatten_sections(data)


def flatten_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Settings grouped by section (a mapping under a section name) merged into one flat mapping.

    ``data`` is both a section and a setting: a mapping under it is the section, a string the setting.
    """
    flat: dict[str, Any] = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        if k in SECTIONS and isinstance(value, dict):
            for sub, v in value.items():
                s = sub.replace("-", "_")
                if s not in SECTIONS[k]:
                    raise ConfigError(f"unknown setting {sub!r} in section {key!r}; known there: "
                                      f"{', '.join(SECTIONS[k])}")
                flat[s] = v
        else:
            flat[k] = value
    return flat


def _coerce(name: str, value: Any) -> Any:
    if name == "a_betas":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"a_betas must be a pair of numbers, got {value!r}")
        try:
            return (float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            raise ConfigError(f"a_betas must be a pair of numbers, got {value!r}") from None
    if name == "cells_per_stage":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise ConfigError(f"cells_per_stage must be a list of integers, got {value!r}")
        return tuple(value)
    if name in _OPTIONAL_INT:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    default = _FIELDS[name].default
    if value is None:
        if default is None or name == "space":
            return None
        raise ConfigError(f"{name} must not be null")
    if isinstance(default, str) or default is None:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name} must be a {type(default).__name__}, got {value!r}")
    if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {type(default).__name__}, got {value!r}") from None


def _check_keys(layer: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in layer.items():
        k = key.replace("-", "_")
        if k not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(_FIELDS))}")
        out[k] = value
    return out


def make_config(preset: str = "default", *overrides: dict[str, Any]) -> SearchConfig:
    """Preset, then the strategy's defaults (:data:`STRATEGY_DEFAULTS`, when the overrides pick another
    strategy than the preset's), then each override mapping in turn (unknown keys are an error);
    validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    layers = [_check_keys(flatten_sections(layer)) for layer in overrides]
    values: dict[str, Any] = {"name": preset, **PRESETS[preset]}
    strategy = next((layer["strategy"] for layer in reversed(layers) if "strategy" in layer),
                    values.get("strategy"))
    if strategy != values.get("strategy"):
        values.update(STRATEGY_DEFAULTS.get(strategy, {}))
        if preset == "default":
            values.update(DEMO_STRATEGY_DEFAULTS.get(strategy, {}))
    for layer in layers:
        values.update(layer)
    return SearchConfig(**{k: _coerce(k, v) for k, v in values.items()}).validate()


def config_from_dict(d: dict[str, Any]) -> SearchConfig:
    """Rebuild a validated config from ``SearchConfig.to_dict()`` output (e.g. a run's ``config.json``)."""
    unknown = sorted(set(d) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} in stored config")
    return SearchConfig(**{k: _coerce(k, v) for k, v in d.items()}).validate()


__all__ = ["BACKENDS", "HDAS_MODES", "IMAGE_BACKENDS", "PIPELINES", "PRESETS", "RANKINGS", "SECTIONS",
           "STRATEGY_DEFAULTS", "VALIDATE_MODES", "ConfigError", "SearchConfig", "config_from_dict",
           "flatten_sections", "load_config_file", "make_config"]
