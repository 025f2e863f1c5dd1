"""Search configurations: one dataclass, presets named after the papers, and their validation.

A configuration is built in layers: a preset, then a JSON/YAML file (``--config``), then command-line
flags; ``validate`` then rejects inconsistent combinations with one clear message (``ConfigError``).

Presets (design.md §3):

* ``darts``: DARTS CIFAR search, two-level first order, 8 cells, C=16, 50 epochs, batch 64, split 0.5.
* ``darts2``: the same with the second-order (unrolled) architecture gradient.
* ``stacnas_stage1``: StacNAS stage 1, one-level on all the training data, 14 cells, 80 epochs, clip 3,
  edges carry the group key operators of space S1 (``s1/stage1``), edges ranked by logit.
* ``stacnas_stage2``: StacNAS stage 2, 20 cells, 80 epochs; its space (the winning group's members) comes
  from stage 1, so it must be given: ``--space s1/group2`` or a JSON file.
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


@dataclass
class SearchConfig:
    """Everything a search run depends on; stored as ``config.json`` in the run directory."""

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
    def one_level(self) -> bool:
        """True when the strategy trains weights and alphas on the same data (no validation split)."""
        return not STRATEGIES[self.strategy].needs_val

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["a_betas"] = list(self.a_betas)
        return d

    def validate(self) -> SearchConfig:
        """Raise ``ConfigError`` on the first inconsistency; return ``self`` when all is well."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.strategy in STRATEGIES,
             f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        need(self.data in DATASETS, f"unknown data set {self.data!r}; choose one of {', '.join(DATASETS)}")
        need(self.data == "digits" or self.data_dir is not None, f"--data {self.data} needs --data-dir")
        need(self.space is not None and str(self.space) != "",
             f"preset {self.name!r} needs --space (e.g. s1/group2 or a JSON file with the ops)")
        need(self.cells >= 3, f"cells must be >= 3 (two reduction cells and a normal one), got {self.cells}")
        need(self.channels >= 1, f"channels must be >= 1, got {self.channels}")
        need(self.nodes >= 2, f"nodes must be >= 2 (a genotype keeps two inputs per node), got {self.nodes}")
        need(self.stem_multiplier >= 1, f"stem_multiplier must be >= 1, got {self.stem_multiplier}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
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
    "stacnas_stage1": dict(strategy="one-level", data="cifar10", cells=14, channels=16, epochs=80,
                           batch_size=64, space="s1/stage1", ranking="logit", grad_clip=3.0),
    "stacnas_stage2": dict(strategy="one-level", data="cifar10", cells=20, channels=16, epochs=80,
                           batch_size=64, space=None, ranking="logit", grad_clip=3.0),
    # 12 steps per epoch (719 training images, batch 64), ~1.8 s per two-level step on 2 cores: about
    # 1 minute on an idle machine; measured 4 min 22 s wall on the shared 2-core machine under load
    # (load average 3-4), reaching ~0.90 validation accuracy.
    "default": dict(strategy="darts", data="digits", image_size=16, cells=5, channels=8, epochs=2,
                    batch_size=64, split=0.5, space="darts", ranking="weight", grad_clip=5.0,
                    checkpoint_every=10),
}

_FIELDS = {f.name: f for f in dataclasses.fields(SearchConfig)}


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML mapping of ``SearchConfig`` fields (hyphens or underscores)."""
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
    return data


def _coerce(name: str, value: Any) -> Any:
    if name == "a_betas":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"a_betas must be a pair of numbers, got {value!r}")
        return (float(value[0]), float(value[1]))
    default = _FIELDS[name].default
    if value is None or isinstance(default, (str, dict)) or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {type(default).__name__}, got {value!r}") from None


def make_config(preset: str = "default", *overrides: dict[str, Any]) -> SearchConfig:
    """Preset, then each override mapping in turn (unknown keys are an error); validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = {"name": preset, **PRESETS[preset]}
    for layer in overrides:
        for key, value in layer.items():
            k = key.replace("-", "_")
            if k not in _FIELDS:
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(_FIELDS))}")
            values[k] = value
    return SearchConfig(**{k: _coerce(k, v) for k, v in values.items()}).validate()


def config_from_dict(d: dict[str, Any]) -> SearchConfig:
    """Rebuild a validated config from ``SearchConfig.to_dict()`` output (e.g. a run's ``config.json``)."""
    unknown = sorted(set(d) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} in stored config")
    return SearchConfig(**{k: _coerce(k, v) for k, v in d.items()}).validate()


__all__ = ["BACKENDS", "IMAGE_BACKENDS", "PRESETS", "RANKINGS", "VALIDATE_MODES", "ConfigError",
           "SearchConfig", "config_from_dict", "load_config_file", "make_config"]
