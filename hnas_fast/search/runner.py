"""The search loop: data, supernet, strategy, logs, atomic resumable checkpoints and the genotype.

A run directory holds ``config.json``, ``log.jsonl`` (one line per step and per epoch), ``alphas.jsonl``
(softmaxed architecture parameters per epoch), ``checkpoint.pt``, ``genotype.json``, ``genotype.txt`` (the
DARTS string) and ``normal.png``/``reduce.png``.

Resuming (``resume=DIR``) restores the model, both optimizers, the schedule, the epoch and the step within
it, and every RNG (torch, CUDA, numpy, python, and the samplers' generators), then replays the interrupted
epoch from the checkpointed step. With ``workers=0`` on the CPU the resumed run is bitwise the run that was
never interrupted (``deterministic=True`` extends that to CUDA kernels); worker processes reseed per epoch
pass, so with ``workers>0`` augmentations after a resume differ.
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hnas_fast.data.loaders import make_search_loaders, sampler_of
from hnas_fast.search.genotype import Genotype, genotype_to_json, genotype_to_str
from hnas_fast.search.presets import ConfigError, SearchConfig, config_from_dict
from hnas_fast.search.strategy import NonFiniteLossError, SearchStrategy, make_strategy
from hnas_fast.spaces import SearchSpace, get_space, load_space

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


# ------------------------------------------------------------------------------------------------ files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``.

    A reader (or a crash) sees either the old file or the complete new one, never a torn write.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (temporary file, fsync, ``os.replace``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by this module (tensors and plain containers only: ``weights_only``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class JsonlLog:
    """Append-only JSON-lines file, flushed per line; ``truncate`` drops lines after a checkpoint's count."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = sum(1 for _ in path.open()) if path.exists() else 0

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1

    def truncate(self, lines: int) -> None:
        kept = self.path.read_text().splitlines(keepends=True)[:lines] if self.path.exists() else []
        atomic_write_text(self.path, "".join(kept))
        self.lines = len(kept)


# ------------------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, as tensors and plain containers."""
    mt, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": mt, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ setup
def resolve_space(spec: str | SearchSpace) -> SearchSpace:
    """A space from a name (``darts``, ``s1``..``s5``), ``NAME/stage1`` (StacNAS group keys),
    ``NAME/groupI`` (StacNAS stage 2 on group I), or a ``.json``/``.yaml`` file."""
    if isinstance(spec, SearchSpace):
        return spec
    if Path(spec).suffix.lower() in (".json", ".yaml", ".yml"):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"search-space file not found: {spec}")
        return load_space(spec)
    base, _, view = spec.partition("/")
    space = get_space(base)
    if not view:
        return space
    if view == "stage1":
        return space.stage1()
    m = re.fullmatch(r"group(\d+)", view)
    if m:
        return space.subspace(int(m.group(1)))
    raise ValueError(f"unknown space view {view!r} in {spec!r}; use NAME/stage1 or NAME/groupI")


def _device(cfg: SearchConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def new_run_dir(cfg: SearchConfig) -> Path:
    """``cfg.out`` (refused if it already holds a run) or a fresh ``runs_dir/<name>-<timestamp>``."""
    if cfg.out:
        d = Path(cfg.out)
        if (d / CHECKPOINT).exists() or (d / "config.json").exists():
            raise ConfigError(f"{d} already holds a run; pass --resume {d} to continue it, or another --out")
        return d
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = Path(cfg.runs_dir) / f"{cfg.name}-{stamp}"
    i = 1
    while d.exists():
        d = Path(cfg.runs_dir) / f"{cfg.name}-{stamp}-{i}"
        i += 1
    return d


def _softmaxed_alphas(model: nn.Module) -> dict[str, list]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names.get(id(p), f"arch{i}"): torch.softmax(p.detach().float().cpu(), dim=-1).tolist()
            for i, p in enumerate(model.arch_parameters())}


def _progress_enabled(cfg: SearchConfig) -> bool:
    return not cfg.quiet and sys.stderr.isatty()


@dataclass
class SearchResult:
    """What a search produced."""

    run_dir: Path
    genotype: Genotype
    steps: int
    finished: bool


@dataclass
class _Position:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    val_step: int = 0  # validation batches consumed in the current validation pass
    elapsed: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)  # metric sums over this epoch's steps so far
    n: int = 0


class SearchRun:
    """One search run: build everything from a config (or a run directory to resume), then ``run()``.

    Between the two, ``run.strategy.add_loss_term(fn, name)`` adds terms to the architecture objective
    (e.g. H-DAS's depth and complexity losses); ``run.model`` is the supernet.
    """

    def __init__(self, cfg: SearchConfig, resume: str | os.PathLike | None = None) -> None:
        self.resume_dir = Path(resume) if resume is not None else None
        if self.resume_dir is not None:
            cfg = self._stored_config(self.resume_dir, cfg)
        self.cfg = cfg.validate()
        # Everything that can fail on bad input happens before the run directory is created.
        self.space = resolve_space(cfg.space or "")
        self.train_loader, self.val_loader, num_classes, in_ch, self.image_size = make_search_loaders(
            cfg.data, cfg.data_dir, cfg.batch_size, cfg.split, cfg.one_level, cfg.seed, cfg.workers,
            cfg.image_size,
        )
        self.device = _device(cfg)
        self.run_dir = self.resume_dir if self.resume_dir is not None else new_run_dir(cfg)
        seed_everything(cfg.seed)
        from hnas_fast.nn.supernet import build_supernet

        self.model = build_supernet(
            self.space, cells=cfg.cells, channels=cfg.channels, num_classes=num_classes, nodes=cfg.nodes,
            multiplier=cfg.nodes,  # the cell output concatenates every intermediate node, as in DARTS
            stem_multiplier=cfg.stem_multiplier, in_channels=in_ch, memory_saving=cfg.memory_saving,
            mixed_backend=None if cfg.backend == "auto" else cfg.backend,
        ).to(self.device)
        self.strategy: SearchStrategy = make_strategy(
            cfg.strategy, self.model, epochs=cfg.epochs, w_lr=cfg.w_lr, w_lr_min=cfg.w_lr_min,
            w_momentum=cfg.w_momentum, w_wd=cfg.w_wd, grad_clip=cfg.grad_clip, a_lr=cfg.a_lr,
            a_betas=cfg.a_betas, a_wd=cfg.a_wd,
        )
        self.pos = _Position()
        self._resume_state: dict[str, Any] | None = None
        if self.resume_dir is not None:
            self._resume_state = load_checkpoint(self.resume_dir / CHECKPOINT)

    @staticmethod
    def _stored_config(run_dir: Path, cli: SearchConfig) -> SearchConfig:
        for name in ("config.json", CHECKPOINT):
            if not (run_dir / name).is_file():
                raise FileNotFoundError(f"cannot resume {run_dir}: no {name} there")
        stored = config_from_dict(json.loads((run_dir / "config.json").read_text()))
        # Run-control settings come from this invocation; everything that shapes the result is stored.
        stored.max_steps, stored.quiet = cli.max_steps, cli.quiet
        return stored

    # -------------------------------------------------------------------------------------------- state
    def _checkpoint(self) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.pos.epoch, "step_in_epoch": self.pos.step_in_epoch,
            "global_step": self.pos.global_step, "val_step": self.pos.val_step, "elapsed": self.pos.elapsed,
            "epoch_sums": dict(self.pos.sums), "epoch_n": self.pos.n,
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": capture_rng(),
            "samplers": {k: sampler_of(dl).state_dict() for k, dl in self._loaders().items()},
            "loader_generators": {k: dl.generator.get_state() for k, dl in self._loaders().items()},
            "log_lines": {"log": self.log.lines, "alphas": self.alphas_log.lines},
            "genotype": genotype_to_json(self.model.genotype(self.cfg.ranking), self.cfg.ranking),
        }
        atomic_torch_save(state, self.run_dir / CHECKPOINT)

    def _loaders(self) -> dict[str, DataLoader]:
        out = {"train": self.train_loader}
        if self.val_loader is not None:
            out["val"] = self.val_loader
        return out

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.run_dir / CHECKPOINT}: unknown checkpoint format {state.get('format')}")
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.pos = _Position(state["epoch"], state["step_in_epoch"], state["global_step"], state["val_step"],
                             state["elapsed"], dict(state["epoch_sums"]), state["epoch_n"])
        bs = self.cfg.batch_size
        for k, dl in self._loaders().items():
            dl.generator.set_state(state["loader_generators"][k])
            # Replay the interrupted pass from where it stopped (a finished epoch resumes at a new pass).
            if k == "train":
                skip = self.pos.step_in_epoch * bs if self.pos.step_in_epoch else None
            else:
                skip = self.pos.val_step * bs
            sampler_of(dl).load_state_dict(state["samplers"][k], skip=skip)
        self.log.truncate(state["log_lines"]["log"])
        self.alphas_log.truncate(state["log_lines"]["alphas"])
        restore_rng(state["rng"])

    # -------------------------------------------------------------------------------------------- loop
    def _next_val(self) -> Any:
        if self.val_loader is None:
            return None
        for _ in range(2):  # at most one new pass
            if self._val_iter is None:
                self._val_iter = iter(self.val_loader)
                self.pos.val_step = 0 if not self._val_resumed else self.pos.val_step
                self._val_resumed = False
            try:
                batch = next(self._val_iter)
                self.pos.val_step += 1
                return batch
            except StopIteration:
                self._val_iter = None
        raise ValueError("the validation loader yields no batches")

    def _write_outputs(self) -> Genotype:
        g = self.model.genotype(self.cfg.ranking)
        atomic_write_text(self.run_dir / "genotype.json",
                          json.dumps(genotype_to_json(g, self.cfg.ranking), indent=1) + "\n")
        atomic_write_text(self.run_dir / "genotype.txt", genotype_to_str(g) + "\n")
        if self.cfg.plots:
            from hnas_fast.viz.cells import plot_cell

            for which in ("normal", "reduce"):
                plot_cell(g, which, self.run_dir / f"{which}.png")
        return g

    def run(self) -> SearchResult:
        """Run (or continue) the search; raises ``NonFiniteLossError`` on a NaN/inf loss.

        ``deterministic`` turns on ``torch.use_deterministic_algorithms`` for the run only.
        """
        prev = torch.are_deterministic_algorithms_enabled()
        if self.cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before first use
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        try:
            return self._run()
        finally:
            torch.use_deterministic_algorithms(prev)

    def _run(self) -> SearchResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = JsonlLog(self.run_dir / "log.jsonl")
        self.alphas_log = JsonlLog(self.run_dir / "alphas.jsonl")
        self._val_iter = None
        self._val_resumed = False
        if self._resume_state is not None:
            self._restore(self._resume_state)
            self._val_resumed = True
            self.log.write({"type": "resume", "step": self.pos.global_step, "epoch": self.pos.epoch,
                            "threads": torch.get_num_threads()})
        else:
            atomic_write_text(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1) + "\n")
            # Bitwise reproducibility on the CPU also needs the same thread count: it is logged.
            self.log.write({"type": "start", "step": 0, "device": str(self.device),
                            "threads": torch.get_num_threads(),
                            "space": self.space.name, "ops": list(self.space.ops),
                            "train_size": len(sampler_of(self.train_loader)),
                            "val_size": len(sampler_of(self.val_loader)) if self.val_loader else 0})
            self.alphas_log.write({"epoch": 0, "step": 0, "alphas": _softmaxed_alphas(self.model)})
            self._checkpoint()
        steps_per_epoch = len(self.train_loader)
        stopped = False
        try:
            from tqdm import tqdm

            while self.pos.epoch < cfg.epochs and not stopped:
                t_epoch = time.perf_counter()
                bar = tqdm(total=steps_per_epoch, initial=self.pos.step_in_epoch, leave=False,
                           desc=f"epoch {self.pos.epoch + 1}/{cfg.epochs}",
                           disable=not _progress_enabled(cfg))
                for batch in self.train_loader:
                    t0 = time.perf_counter()
                    metrics = self.strategy.step(batch, self._next_val())
                    dt = time.perf_counter() - t0
                    self.pos.step_in_epoch += 1
                    self.pos.global_step += 1
                    self.pos.elapsed += dt
                    for k, v in metrics.items():
                        self.pos.sums[k] = self.pos.sums.get(k, 0.0) + v
                    self.pos.n += 1
                    self.log.write({"type": "step", "epoch": self.pos.epoch, "step": self.pos.global_step,
                                    **{k: round(v, 6) for k, v in metrics.items()}, "time": round(dt, 4)})
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc']:.3f}")
                    bar.update(1)
                    if cfg.max_steps is not None and self.pos.global_step >= cfg.max_steps:
                        stopped = True
                        break
                    if self.pos.global_step % cfg.checkpoint_every == 0:
                        self._checkpoint()
                bar.close()
                if stopped:
                    self.log.write({"type": "stop", "step": self.pos.global_step, "reason": "max_steps"})
                    self._checkpoint()
                    break
                self.strategy.end_epoch()
                g = self.model.genotype(cfg.ranking)
                means = {k: round(v / max(self.pos.n, 1), 6) for k, v in self.pos.sums.items()}
                self.log.write({"type": "epoch", "epoch": self.pos.epoch, "step": self.pos.global_step,
                                **means, "time": round(time.perf_counter() - t_epoch, 3),
                                "elapsed": round(self.pos.elapsed, 3), "genotype": genotype_to_str(g)})
                self.alphas_log.write({"epoch": self.pos.epoch + 1, "step": self.pos.global_step,
                                       "alphas": _softmaxed_alphas(self.model)})
                if not cfg.quiet:
                    print(f"epoch {self.pos.epoch + 1}/{cfg.epochs}: " +
                          " ".join(f"{k}={v:.4g}" for k, v in means.items() if k != "lr"), file=sys.stderr)
                self.pos.epoch += 1
                self.pos.step_in_epoch = 0
                self.pos.sums, self.pos.n = {}, 0
                self._checkpoint()
        except NonFiniteLossError as e:
            self.log.write({"type": "error", "step": self.pos.global_step + 1, "reason": str(e)})
            raise NonFiniteLossError(
                f"{e} (step {self.pos.global_step + 1}); the last good checkpoint is "
                f"{self.run_dir / CHECKPOINT}, left as it was"
            ) from e
        genotype = self._write_outputs()
        if not stopped:
            self.log.write({"type": "done", "step": self.pos.global_step,
                            "genotype": genotype_to_str(genotype)})
        return SearchResult(self.run_dir, genotype, self.pos.global_step, finished=not stopped)


def run_search(cfg: SearchConfig, resume: str | os.PathLike | None = None) -> SearchResult:
    """Build a :class:`SearchRun` and run it."""
    return SearchRun(cfg, resume).run()


__all__ = ["CHECKPOINT", "JsonlLog", "SearchResult", "SearchRun", "atomic_torch_save", "atomic_write_text",
           "capture_rng", "load_checkpoint", "resolve_space", "restore_rng", "run_search", "seed_everything"]
