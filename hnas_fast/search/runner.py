"""The search loop: data, supernet, strategy, logs, atomic resumable checkpoints and the genotype.

A run directory holds ``config.json``, ``log.jsonl`` (one line per step and per epoch), ``alphas.jsonl``
(softmaxed architecture parameters per epoch), ``checkpoint.pt``, ``genotype.json``, ``genotype.txt`` (the
DARTS string) and ``normal.png``/``reduce.png``.

Resuming (``resume=DIR``) restores the model, both optimizers, the schedule, the epoch and the step within
it, and every RNG (torch, CUDA, numpy, python, and the samplers' generators), then replays the interrupted
epoch from the checkpointed step. With ``workers=0`` on the CPU the resumed run is bitwise the run that was
never interrupted (``deterministic=True`` extends that to CUDA kernels); worker processes reseed per epoch
pass, so with ``workers>0`` augmentations after a resume differ.

**Several processes** (``torchrun --nproc_per_node=N -m hnas_fast.search ...``, see
:mod:`hnas_fast.distributed`): ``batch_size`` is the global batch, split evenly among the processes, each
of which reads its own share of the data; rank 0's weights and alphas are broadcast at the start, the
gradients averaged before every optimizer step, so every rank holds identical alphas after every step
(``check_sync`` asserts it). Rank 0 alone chooses the run directory and writes logs, checkpoints and
outputs; logged metrics are averaged over the ranks. Every rank reads the checkpoint (a shared file
system). A checkpoint records its ``world_size`` and resumes on any number of processes: the digits,
CIFAR and folder loaders shard one global permutation per pass, so the interrupted epoch goes on from the
checkpointed step exactly where the other process count left it (``reshard: true`` in the resume
record); every rank restores rank 0's RNG state (all ranks seed alike and draw alike). The ``imagenet``
pipelines (DALI, torchvision) take their order from a :class:`~hnas_fast.data.imagenet.ShardedSampler`
(one seeded permutation per pass, indexed by the epoch, or by the count of validation passes, which the
checkpoint records): they resume mid-pass the same way, after the samples the checkpointed steps used, on
any number of processes; their augmentations after a resume differ.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from hnas_fast.data.bad_files import BAD_FILES_NAME, read_bad_files, shown_bad_files, write_bad_files
from hnas_fast.data.dali import dali_available, make_image_search_loaders
from hnas_fast.data.imagenet import ImageOptions, ShardedSampler
from hnas_fast.data.loaders import ResumableSampler, make_search_loaders, sampler_of
from hnas_fast.distributed import (
    DistributedContext,
    GradientAverager,
    all_gather_object,
    assert_identical,
    broadcast_buffers,
    broadcast_module,
    broadcast_object,
    equal_steps,
    init_distributed,
)
from hnas_fast.files import atomic_torch_save, atomic_write_json
from hnas_fast.search.loop import JsonlLog, NonFiniteLossError, capture_rng, restore_rng, seed_everything
from hnas_fast.search.presets import ConfigError, SearchConfig, config_from_dict
from hnas_fast.search.stages import Stage
from hnas_fast.search.strategy import SearchStrategy, make_strategy

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


# ------------------------------------------------------------------------------------------------ files
def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by this module (tensors and plain containers only: ``weights_only``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------ setup
def _device(cfg: SearchConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def init_context(cfg: SearchConfig) -> DistributedContext:
    """torchrun's process group (or a single-process context); ``--device cpu`` forces gloo on CPUs."""
    if cfg.device in ("auto", "cuda"):
        return init_distributed()  # under torchrun each process takes GPU LOCAL_RANK when CUDA is there
    return init_distributed(device=cfg.device)


def _mean_over_ranks(metrics: dict[str, float], ctx: DistributedContext) -> dict[str, float]:
    """Each metric averaged over the ranks, in one all-reduce (every rank logs the same keys)."""
    if not ctx.distributed:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (t / ctx.world_size).tolist()))


def _all_true(flag: bool, ctx: DistributedContext) -> bool:
    """Whether ``flag`` holds on every rank (so all ranks take the same branch around a collective)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _finish_pass(batches: Any) -> None:
    """Run an iterator that stopped at the common step count to its end (at most a batch or two).

    A rank whose shard holds one batch more than the common count leaves its pass unfinished; a DALI
    iterator refuses to reset mid-pass, and its next pass would begin with this one's remainder.
    """
    for _ in batches:
        pass


def _part_size(loader: Any) -> int:
    """Images in a loader's part of the data, all ranks together."""
    if isinstance(getattr(loader, "sampler", None), ResumableSampler):
        return len(loader.sampler.indices)
    if hasattr(loader, "images"):  # DaliLoader
        return len(loader.images)
    return len(loader.dataset)


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


def choose_run_dir(cfg: SearchConfig, ctx: DistributedContext) -> Path:
    """Rank 0 picks the directory (:func:`new_run_dir`: a timestamp, or a refused ``--out``) and tells
    the others; a refusal is raised on every rank, so none waits for the others."""
    run_dir, error = None, None
    if ctx.is_main:
        try:
            run_dir = new_run_dir(cfg)
        except ConfigError as e:
            error = str(e)
    run_dir, error = broadcast_object((run_dir, error), ctx)
    if error is not None:
        raise ConfigError(error)
    assert run_dir is not None
    return run_dir


def stored_config(run_dir: Path, cli: SearchConfig, marker: str) -> SearchConfig:
    """The config stored in ``run_dir`` (which must also hold ``marker``, its checkpoint or pipeline
    state), with the run-control settings of this invocation (``cli``): everything that shapes the
    result is stored, ``max_steps``, ``quiet`` and ``check_sync`` are not."""
    for name in ("config.json", marker):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"cannot resume {run_dir}: no {name} there")
    stored = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    stored.max_steps, stored.quiet, stored.check_sync = cli.max_steps, cli.quiet, cli.check_sync
    return stored


def _softmaxed_alphas(model: nn.Module) -> dict[str, list]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names.get(id(p), f"arch{i}"): torch.softmax(p.detach().float().cpu(), dim=-1).tolist()
            for i, p in enumerate(model.arch_parameters())}


def _progress_enabled(cfg: SearchConfig) -> bool:
    return not cfg.quiet and sys.stderr.isatty()


def _fault_injection(run_dir: Path, step: int) -> None:
    """``HNAS_FAST_KILL_AT=NAME:STEP`` SIGKILLs this process right after step STEP of the run whose
    directory is called NAME: the crash tests' deterministic kill (nothing is flushed or cleaned up)."""
    spec = os.environ.get("HNAS_FAST_KILL_AT")
    if spec and spec == f"{run_dir.name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class SearchResult:
    """What a search produced: a cell ``Genotype``, or what the stage derives (``StageGenotypes``,
    ``MacroGenotype``)."""

    run_dir: Path
    genotype: Any
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

    def __init__(self, cfg: SearchConfig, resume: str | os.PathLike | None = None,
                 stage: Stage | None = None) -> None:
        self.resume_dir = Path(resume) if resume is not None else None
        if self.resume_dir is not None:
            cfg = stored_config(self.resume_dir, cfg, CHECKPOINT)
        self.cfg = cfg.validate()
        if cfg.pipeline:
            raise ConfigError(f"strategy {cfg.strategy} is a pipeline of searches: run it with "
                              "hnas_fast.search.pipeline.run_pipeline")
        self.stage = stage if stage is not None else Stage()
        self.ctx = init_context(cfg)
        ws = self.ctx.world_size
        if cfg.batch_size % ws:
            raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must divide by the "
                              f"{ws} processes (e.g. {max(ws, cfg.batch_size // ws * ws)})")
        self.device = self.ctx.device if self.ctx.distributed else _device(cfg)
        # Everything that can fail on bad input happens before the run directory is created.
        self.space = self.stage.space(cfg)
        # Unreadable images: the screening's, then those met while loading (gathered from every rank).
        self.bad_files: dict[str, str] = {}
        if self.resume_dir is not None:  # each file stays named once across the resume
            self.bad_files.update(read_bad_files(self.resume_dir / BAD_FILES_NAME))
        self.image_backend: str | None = None
        if cfg.data == "imagenet":
            num_classes, in_ch = self._image_loaders(cfg)
        else:
            self.train_loader, self.val_loader, num_classes, in_ch, self.image_size = make_search_loaders(
                cfg.data, cfg.data_dir, cfg.batch_size // ws, cfg.split, cfg.one_level, cfg.seed, cfg.workers,
                cfg.image_size, rank=self.ctx.rank, world_size=ws,
            )
        # Digits/CIFAR/folder loaders carry generator state; the image pipelines' samplers are indexed by
        # the pass instead (see the module docstring). Both resume mid-pass.
        self._resumable = all(isinstance(getattr(dl, "sampler", None), ResumableSampler)
                              for dl in self._loaders().values())
        self._train_skip = 0  # image path: samples of the first pass's permutation used before a resume
        # Loaders over image files record the ones that fail to load (the same kinds on every rank).
        self._tracks_bad_files = all(hasattr(dl, "bad") for dl in self._loaders().values())
        self.run_dir = self.resume_dir if self.resume_dir is not None else choose_run_dir(cfg, self.ctx)
        seed_everything(cfg.seed)
        self.model = self.stage.build(cfg, self.space, num_classes, in_ch).to(self.device)
        if self.resume_dir is None:
            self.stage.init_weights(self.model)
        broadcast_module(self.model, self.ctx)  # every rank starts from rank 0's weights and alphas
        self.strategy: SearchStrategy = make_strategy(
            cfg.strategy, self.model, epochs=cfg.epochs, w_lr=cfg.w_lr, w_lr_min=cfg.w_lr_min,
            w_momentum=cfg.w_momentum, w_wd=cfg.w_wd, grad_clip=cfg.grad_clip, a_lr=cfg.a_lr,
            a_betas=cfg.a_betas, a_wd=cfg.a_wd, loss_terms=self.stage.loss_terms(cfg),
        )
        # Averages every gradient across ranks before each optimizer step (a no-op on one process).
        self.averager = GradientAverager(self.model.parameters(), self.ctx).attach(
            self.strategy.w_opt, self.strategy.a_opt)
        self.pos = _Position()
        self._resume_state: dict[str, Any] | None = None
        if self.resume_dir is not None:
            self._resume_state = load_checkpoint(self.resume_dir / CHECKPOINT)

    def _image_loaders(self, cfg: SearchConfig) -> tuple[int, int]:
        """``--data imagenet``: the DALI or torchvision loaders of this rank's shard; ``(classes, 3)``."""
        options = ImageOptions(image_size=cfg.image_size) if cfg.image_size else ImageOptions()
        if cfg.dali == "dali" and not dali_available():
            raise ConfigError("--dali dali needs NVIDIA DALI (pip install nvidia-dali-cuda130); "
                              "--dali torchvision reads the same folder without it")
        use_dali = cfg.dali == "dali" or (cfg.dali == "auto" and dali_available())
        # The folder index lives next to the run directories (shared by the ranks, reused by reruns).
        if self.resume_dir is not None:
            runs_root = self.resume_dir.parent
        else:
            runs_root = Path(cfg.out).expanduser().parent if cfg.out else Path(cfg.runs_dir).expanduser()
        loaders = make_image_search_loaders(
            cfg.data_dir or "", cfg.batch_size // self.ctx.world_size,
            split=1.0 if cfg.one_level else cfg.split, seed=cfg.seed, options=options,
            rank=self.ctx.rank, world_size=self.ctx.world_size, backend=cfg.dali,
            # --workers is the DataLoader's worker count (0: in process) or DALI's thread count (>= 1).
            num_threads=max(1, cfg.workers) if use_dali else cfg.workers,
            device=self.device, validate=cfg.image_validate, index_dir=runs_root / ".image_index",
            share=lambda path: broadcast_object(path, self.ctx), known_bad=tuple(self.bad_files),
        )
        self.train_loader, self.val_loader = loaders.train, loaders.val
        self.image_size = options.image_size
        self.image_backend = loaders.backend
        self.bad_files.update(loaders.bad)
        return loaders.num_classes, 3

    def _sync_bad_files(self) -> None:
        """Gather the unreadable files every rank's loaders met since the last call (a collective: every
        rank calls it at the same point); rank 0 warns about the new ones and rewrites ``bad_files.txt``."""
        if not self._tracks_bad_files:
            return
        mine = [e for dl in self._loaders().values() for e in dl.bad.take()]
        new = {}
        for entries in all_gather_object(mine, self.ctx):
            for rel, reason in entries:
                if rel not in self.bad_files and rel not in new:
                    new[rel] = reason
        self.bad_files.update(new)
        if self.cfg.check_sync:  # every rank merged the same lists, so holds the same record
            count = torch.tensor([len(self.bad_files)], dtype=torch.float64, device=self.ctx.device)
            assert_identical([count], self.ctx, "bad file counts")
        if not self.ctx.is_main:
            return
        if new:
            warnings.warn(f"{len(new)} more unreadable image(s) skipped while loading: "
                          f"{shown_bad_files(new.items())} (all in {self.run_dir / BAD_FILES_NAME})",
                          stacklevel=2)
        if new or not (self.run_dir / BAD_FILES_NAME).exists():
            write_bad_files(self.run_dir / BAD_FILES_NAME, self.bad_files.items())

    # -------------------------------------------------------------------------------------------- state
    def _checkpoint(self) -> None:
        """Save the run's state (rank 0 writes; every rank takes part and waits for the file)."""
        self._sync_bad_files()
        # BatchNorm running statistics are the only per-rank state: save (and go on with) rank 0's.
        broadcast_buffers(self.model, self.ctx)
        if self.cfg.check_sync:
            assert_identical(self.model.parameters(), self.ctx, "weights and alphas")
        loaders = self._loaders() if self._resumable else {}
        state = {
            "format": CHECKPOINT_FORMAT, "world_size": self.ctx.world_size,
            "epoch": self.pos.epoch, "step_in_epoch": self.pos.step_in_epoch,
            "global_step": self.pos.global_step, "val_step": self.pos.val_step, "elapsed": self.pos.elapsed,
            "val_passes": self._val_passes,
            "epoch_sums": dict(self.pos.sums), "epoch_n": self.pos.n,
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": capture_rng(),
            "samplers": {k: sampler_of(dl).state_dict() for k, dl in loaders.items()},
            "loader_generators": {k: dl.generator.get_state() for k, dl in loaders.items()},
            "log_lines": {"log": self.log.lines, "alphas": self.alphas_log.lines},
            "genotype": self.stage.to_json(self._result(), self.cfg.ranking),
        }
        if self.ctx.is_main:
            atomic_torch_save(state, self.run_dir / CHECKPOINT)
        if self.ctx.distributed:
            dist.barrier()  # no rank runs ahead of (or, at the end, exits before) the saved file

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
        self.stored_world_size = int(state.get("world_size", 1))
        self._val_passes = int(state.get("val_passes", 0))
        bs = self.cfg.batch_size  # global: the samplers skip samples of the permutation all ranks share
        if not self._resumable:
            self._train_skip = self.pos.step_in_epoch * bs
        for k, dl in (self._loaders() if self._resumable else {}).items():
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
                # A resumed run first goes on with the pass it was in (when it had begun one).
                continuing = self._val_resumed and self._val_passes > 0
                sampler = getattr(self.val_loader, "sampler", None)
                if isinstance(sampler, ShardedSampler):  # image path: the pass's order from its index
                    if continuing:
                        sampler.set_epoch(self._val_passes - 1, skip=self.pos.val_step * self.cfg.batch_size)
                    else:
                        sampler.set_epoch(self._val_passes)
                if not continuing:
                    self._val_passes += 1
                self._val_iter = iter(self.val_loader)
                self.pos.val_step = 0 if not self._val_resumed else self.pos.val_step
                self._val_resumed = False
            # A pass ends after the same number of batches on every rank (a longer shard drops its last),
            # also when a resume on another process count finds the replayed pass already used up.
            if self.pos.val_step >= self._val_steps:
                _finish_pass(self._val_iter)
                self._val_iter = None
                continue
            try:
                batch = next(self._val_iter)
                self.pos.val_step += 1
                return batch
            except StopIteration:
                self._val_iter = None
        raise ValueError("the validation loader yields no batches")

    def _progress_line(self, steps_per_epoch: int, metrics: dict[str, float], dt: float) -> None:
        """Off a terminal (a log file, a batch job): a line every tenth of an epoch or minute, whichever
        comes first, with the step, loss and images/s, so an hours-long epoch shows progress."""
        if self.cfg.quiet or not self.ctx.is_main or _progress_enabled(self.cfg):
            return
        now = time.perf_counter()
        every = max(1, steps_per_epoch // 10)
        if self.pos.step_in_epoch % every and now - self._last_line < 60:
            return
        self._last_line = now
        print(f"{self._tag}epoch {self.pos.epoch + 1}/{self.cfg.epochs} step {self.pos.step_in_epoch}/"
              f"{steps_per_epoch}: loss={metrics['loss']:.4g} acc={metrics['acc']:.3f} "
              f"{self.cfg.batch_size / max(dt, 1e-9):.1f} images/s", file=sys.stderr)

    @property
    def _tag(self) -> str:
        """Prefix of the console lines: the stage's name inside a pipeline."""
        return "" if self.stage.name == "search" else f"{self.stage.name} "

    def _result(self) -> Any:
        return self.stage.result(self.model, self.cfg.ranking)

    def _write_outputs(self) -> Any:
        result = self._result()
        if self.ctx.is_main:
            self.stage.write_outputs(result, self.model, self.run_dir, self.cfg)
        return result

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
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = JsonlLog(self.run_dir / "log.jsonl", enabled=ctx.is_main)
        self.alphas_log = JsonlLog(self.run_dir / "alphas.jsonl", enabled=ctx.is_main)
        self._val_iter = None
        self._val_resumed = False
        self._last_line = time.perf_counter()
        self._val_passes = 0
        self._val_steps = equal_steps(len(self.val_loader), ctx) if self.val_loader is not None else 0
        if self._resume_state is not None:
            self._restore(self._resume_state)
            self._val_resumed = True
            record = {"type": "resume", "step": self.pos.global_step, "epoch": self.pos.epoch,
                      "threads": torch.get_num_threads(), "world_size": ctx.world_size,
                      "reshard": self.stored_world_size != ctx.world_size}
            self.log.write(record)
        else:
            if ctx.is_main:
                atomic_write_json(self.run_dir / "config.json", cfg.to_dict())
            # Bitwise reproducibility on the CPU also needs the same thread count: it is logged.
            record = {"type": "start", "step": 0, "device": str(self.device),
                      "threads": torch.get_num_threads(), "world_size": ctx.world_size,
                      "space": self.space.name, "ops": list(self.space.ops),
                      "train_size": _part_size(self.train_loader),
                      "val_size": _part_size(self.val_loader) if self.val_loader is not None else 0}
            if cfg.data == "imagenet":
                record.update(image_backend=self.image_backend)
            if self._tracks_bad_files:
                record.update(bad_files=len(self.bad_files))
            self.log.write(record)
            self.alphas_log.write({"epoch": 0, "step": 0, "alphas": _softmaxed_alphas(self.model)})
            self._checkpoint()
        # Every rank must take the same number of steps, or a gradient all-reduce waits forever.
        steps_per_epoch = equal_steps(len(self.train_loader), ctx)
        if steps_per_epoch == 0:
            raise ValueError("the training loader yields no batches on some process")
        stopped = False
        try:
            from tqdm import tqdm

            while self.pos.epoch < cfg.epochs and not stopped:
                t_epoch = time.perf_counter()
                bar = tqdm(total=steps_per_epoch, initial=self.pos.step_in_epoch, leave=False,
                           desc=f"epoch {self.pos.epoch + 1}/{cfg.epochs}",
                           disable=not (ctx.is_main and _progress_enabled(cfg)))
                sampler = getattr(self.train_loader, "sampler", None)
                if isinstance(sampler, ShardedSampler):  # image path: the epoch's order from its index
                    sampler.set_epoch(self.pos.epoch, skip=self._train_skip)
                    self._train_skip = 0
                batches = iter(self.train_loader)
                while self.pos.step_in_epoch < steps_per_epoch:
                    batch = next(batches, None)
                    # A shard that ran dry on any rank ends the epoch on all of them (same collectives).
                    if not _all_true(batch is not None, ctx):
                        break
                    t0 = time.perf_counter()
                    metrics = _mean_over_ranks(self.strategy.step(batch, self._next_val()), ctx)
                    if cfg.check_sync:
                        assert_identical(self.model.arch_parameters(), ctx, "alphas")
                    dt = time.perf_counter() - t0
                    self.pos.step_in_epoch += 1
                    self.pos.global_step += 1
                    self.pos.elapsed += dt
                    for k, v in metrics.items():
                        self.pos.sums[k] = self.pos.sums.get(k, 0.0) + v
                    self.pos.n += 1
                    self.log.write({"type": "step", "epoch": self.pos.epoch, "step": self.pos.global_step,
                                    **{k: round(v, 6) for k, v in metrics.items()}, "time": round(dt, 4)})
                    _fault_injection(self.run_dir, self.pos.global_step)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc']:.3f}")
                    bar.update(1)
                    self._progress_line(steps_per_epoch, metrics, dt)
                    if cfg.max_steps is not None and self.pos.global_step >= cfg.max_steps:
                        stopped = True
                        break
                    if self.pos.global_step % cfg.checkpoint_every == 0:
                        self._checkpoint()
                bar.close()
                if not stopped:
                    _finish_pass(batches)
                if stopped:
                    self.log.write({"type": "stop", "step": self.pos.global_step, "reason": "max_steps"})
                    self._checkpoint()
                    break
                self.strategy.end_epoch()
                self._sync_bad_files()
                described = self.stage.describe(self._result())
                means = {k: round(v / max(self.pos.n, 1), 6) for k, v in self.pos.sums.items()}
                self.log.write({"type": "epoch", "epoch": self.pos.epoch, "step": self.pos.global_step,
                                **means, "time": round(time.perf_counter() - t_epoch, 3),
                                **({"bad_files": len(self.bad_files)} if self._tracks_bad_files else {}),
                                "elapsed": round(self.pos.elapsed, 3), "genotype": described})
                self.alphas_log.write({"epoch": self.pos.epoch + 1, "step": self.pos.global_step,
                                       "alphas": _softmaxed_alphas(self.model)})
                if ctx.is_main and not cfg.quiet:
                    print(f"{self._tag}epoch {self.pos.epoch + 1}/{cfg.epochs}: " +
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
                            "genotype": self.stage.describe(genotype)})
        return SearchResult(self.run_dir, genotype, self.pos.global_step, finished=not stopped)


def run_search(cfg: SearchConfig, resume: str | os.PathLike | None = None) -> SearchResult:
    """Build a :class:`SearchRun` and run it."""
    return SearchRun(cfg, resume).run()


__all__ = ["CHECKPOINT", "SearchResult", "SearchRun", "load_checkpoint", "run_search"]
