"""``python -m hnas_fast.train``: train and evaluate the final network of what a search found (DARTS's
``train.py``): a DARTS/StacNAS cell (NetworkCIFAR of ``--cells`` cells), Hc-DAS stage-specific cells (the
H-DAS network, a chain of ``--cells`` cells) or Hs-DAS stage DAGs (the H-DAS network; its cell counts come
from the macro genotype), given as a file or as the search's run directory.

SGD (lr 0.025 cosine to 0, momentum 0.9, weight decay 3e-4, gradient-norm clip 5), auxiliary head weighted
0.4, drop path rising linearly to 0.2, cutout 16: DARTS's CIFAR-10 evaluation setting (design.md §3). The
run directory holds ``config.json``, ``log.jsonl``, an atomic resumable ``checkpoint.pt`` and, once the last
epoch ends, ``result.json`` with the final test accuracy. Exit codes: 0 done (or stopped at
``--max-steps``), 1 NaN/inf loss, 2 bad input (nothing written).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hnas_fast.data.bad_files import BAD_FILES_NAME, read_bad_files, shown_bad_files, write_bad_files
from hnas_fast.data.loaders import DATASETS, make_final_loaders, sampler_of
from hnas_fast.files import atomic_torch_save, atomic_write_json
from hnas_fast.genotypes.cell import (
    Genotype,
    genotype_from_json,
    genotype_to_json,
    genotype_to_str,
    load_genotype,
)
from hnas_fast.genotypes.macro import (
    MacroGenotype,
    chain_macro_genotype,
    load_macro_genotype,
    macro_from_json,
    macro_to_json,
)
from hnas_fast.nn.hc_supernet import (
    StageGenotypes,
    as_stage_genotypes,
    load_stage_genotypes,
    stage_genotypes_from_json,
    stage_genotypes_to_json,
)
from hnas_fast.nn.hdas_network import build_hdas_network
from hnas_fast.nn.network import build_network
from hnas_fast.search.loop import (
    JsonlLog,
    NonFiniteLossError,
    capture_rng,
    final_network_step,
    restore_rng,
    seed_everything,
    weight_optimizer,
)
from hnas_fast.search.runner import CHECKPOINT, load_checkpoint
from hnas_fast.search.stages import CellSearch, StageCellSearch, StageDAGSearch

PROG = "python -m hnas_fast.train"
# Settings that shape the result; stored in config.json and taken from there on --resume.
_STORED = ("genotype", "data", "data_dir", "image_size", "cells", "channels", "epochs", "batch_size", "lr",
           "lr_min", "momentum", "weight_decay", "grad_clip", "auxiliary_weight", "drop_path", "cutout",
           "seed", "deterministic", "device", "workers", "checkpoint_every", "eval_every")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (defaults: DARTS's CIFAR-10 evaluation)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--genotype", help="what a search found: a run directory (search or pipeline), its "
                   "genotype.json / genotype.txt, stage_genotypes.json (Hc-DAS), macro_genotype.json "
                   "(Hs-DAS, with cell_genotypes.json beside it), a preset (DARTS_V2) or a Genotype(...) "
                   "string")
    p.add_argument("--data", default="digits", choices=DATASETS)
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=int, default=32,
                   help="input size (digits are upscaled; the auxiliary head needs 32)")
    p.add_argument("--cells", type=int, default=20)
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--epochs", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--lr", type=float, default=0.025)
    p.add_argument("--lr-min", type=float, default=0.0)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=3e-4)
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--auxiliary-weight", type=float, default=0.4, help="0 disables the auxiliary head")
    p.add_argument("--drop-path", type=float, default=0.2, help="final drop-path probability")
    p.add_argument("--cutout", type=int, default=16, help="cutout length for CIFAR/folder data (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200,
                   help="steps between checkpoints (and one per epoch)")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between test evaluations (and the last)")
    p.add_argument("--out", help="run directory (default runs/train-<timestamp>)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--resume", metavar="DIR", help="continue the training run in DIR")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps in all")
    p.add_argument("--quiet", action="store_true")
    return p


def _validate(cfg: dict[str, Any]) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    need(cfg["genotype"] is not None, "--genotype is required (e.g. DARTS_V2 or runs/<search>/genotype.json)")
    need(cfg["cells"] >= 3, f"cells must be >= 3, got {cfg['cells']}")
    need(cfg["channels"] >= 1, f"channels must be >= 1, got {cfg['channels']}")
    need(cfg["epochs"] >= 1, f"epochs must be >= 1, got {cfg['epochs']}")
    need(cfg["batch_size"] >= 1, f"batch_size must be >= 1, got {cfg['batch_size']}")
    need(cfg["lr"] > 0 and 0 <= cfg["lr_min"] <= cfg["lr"], "need lr > 0 and 0 <= lr_min <= lr")
    need(0 <= cfg["drop_path"] < 1, f"drop_path must be in [0, 1), got {cfg['drop_path']}")
    need(cfg["auxiliary_weight"] >= 0, f"auxiliary_weight must be >= 0, got {cfg['auxiliary_weight']}")
    need(cfg["cutout"] >= 0, f"cutout must be >= 0, got {cfg['cutout']}")
    need(cfg["checkpoint_every"] >= 1 and cfg["eval_every"] >= 1,
         "checkpoint_every and eval_every must be >= 1")
    # DARTS's CIFAR auxiliary head pools a 8x8 map (the 2/3-depth size of a 32x32 input) down to 2x2.
    need(cfg["auxiliary_weight"] == 0 or cfg["image_size"] >= 32,
         f"the auxiliary head needs --image-size >= 32 (got {cfg['image_size']}); or --auxiliary-weight 0")
    need(cfg["max_steps"] is None or cfg["max_steps"] >= 1, f"max_steps must be >= 1, got {cfg['max_steps']}")


class _Stop(Exception):
    pass


@dataclass(frozen=True)
class Architecture:
    """What a search found, in one of three kinds: ``cell`` (a DARTS/StacNAS cell genotype), ``stages``
    (Hc-DAS: one cell per stage) or ``macro`` (Hs-DAS: per-stage cells wired by stage DAGs)."""

    kind: str
    cells: Genotype | StageGenotypes
    macro: MacroGenotype | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form (what ``config.json`` stores and :func:`load_architecture` reads back)."""
        if self.kind == "cell":
            return {"kind": "cell", "genotype": genotype_to_json(self.cells)}
        out = {"kind": self.kind, "cells": stage_genotypes_to_json(self.cells)}
        if self.macro is not None:
            out["macro"] = macro_to_json(self.macro)
        return out

    def describe(self) -> str:
        """One line, as the search that found it describes it."""
        if self.kind == "cell":
            return CellSearch.describe(self.cells)
        if self.kind == "stages":
            return StageCellSearch.describe(self.cells)
        return StageDAGSearch.describe(self.macro)


def load_architecture(spec: str | os.PathLike) -> Architecture:
    """An architecture from a run directory (a search or pipeline: its ``macro_genotype.json`` with
    ``cell_genotypes.json``, else ``stage_genotypes.json``, else ``genotype.json``), one of those files, a
    stored :meth:`Architecture.to_json` string, or any genotype :func:`load_genotype` reads (a preset,
    a ``Genotype(...)`` string, ``genotype.txt``)."""
    text = os.fspath(spec)
    if text.lstrip().startswith("{") and '"kind"' in text:
        d = json.loads(text)
        if d["kind"] == "cell":
            return Architecture("cell", genotype_from_json(d["genotype"]))
        cells = stage_genotypes_from_json(d["cells"])
        return Architecture(d["kind"], cells, macro_from_json(d["macro"]) if "macro" in d else None)
    p = Path(text)
    try:
        is_dir, is_file = p.is_dir(), p.is_file()
    except OSError:  # a Genotype(...) string longer than a file name
        is_dir = is_file = False
    if is_dir:
        for name in ("macro_genotype.json", "stage_genotypes.json", "genotype.json"):
            if (p / name).is_file():
                return load_architecture(p / name)
        raise FileNotFoundError(f"{p} holds no macro_genotype.json, stage_genotypes.json or genotype.json")
    content = p.read_text() if is_file and p.suffix == ".json" else ""
    if p.name == "macro_genotype.json" or ('"stages"' in content and '"output"' in content):
        macro = load_macro_genotype(p)
        cells_file = p.with_name("cell_genotypes.json")
        if not cells_file.is_file():
            raise FileNotFoundError(f"{cells_file} (the cells of {p}) not found")
        return Architecture("macro", as_stage_genotypes(cells_file, len(macro.stages)), macro)
    if '"stages"' in content:
        return Architecture("stages", load_stage_genotypes(p))
    return Architecture("cell", load_genotype(text))


def _stage_counts(cells: int, stages: int) -> list[int]:
    """Normal cells per stage of a ``cells``-deep network with a reduction cell between stages, spread
    evenly (DARTS's 20 cells over 3 stages: 6, 6, 6 and two reductions)."""
    normal = cells - (stages - 1)
    if normal < stages:
        raise ValueError(f"cells must be >= {2 * stages - 1} for {stages} stages, got {cells}")
    return [normal // stages + (1 if s < normal % stages else 0) for s in range(stages)]


def build_final_network(arch: Architecture, cells: int, channels: int, num_classes: int,
                        auxiliary: bool) -> nn.Module:
    """The final network of ``arch``: NetworkCIFAR for a cell; the H-DAS network for per-stage cells (a
    chain of ``cells`` cells) or stage DAGs (their own cell counts; ``cells`` is not used)."""
    if arch.kind == "cell":
        return build_network(arch.cells, channels=channels, cells=cells, num_classes=num_classes,
                             auxiliary=auxiliary, drop_path_prob=0.0, dataset="cifar")
    macro = arch.macro or chain_macro_genotype(_stage_counts(cells, arch.cells.num_stages))
    return build_hdas_network(arch.cells, macro, channels=channels, num_classes=num_classes,
                              auxiliary=auxiliary, drop_path_prob=0.0)


class TrainRun:
    """Final training of one genotype; ``run()`` returns the result dict written to ``result.json``."""

    def __init__(self, cfg: dict[str, Any], resume: str | None = None) -> None:
        self.resume_dir = Path(resume) if resume else None
        if self.resume_dir is not None:
            for name in ("config.json", CHECKPOINT):
                if not (self.resume_dir / name).is_file():
                    raise FileNotFoundError(f"cannot resume {self.resume_dir}: no {name} there")
            stored = json.loads((self.resume_dir / "config.json").read_text())
            cfg = {**cfg, **{k: stored[k] for k in _STORED}}
        _validate(cfg)
        self.cfg = cfg
        self.arch = load_architecture(cfg["genotype"])  # ValueError naming an unknown op
        self.train_loader, self.test_loader, num_classes, in_ch, _ = make_final_loaders(
            cfg["data"], cfg["data_dir"], cfg["batch_size"], cfg["cutout"], cfg["seed"], cfg["workers"],
            cfg["image_size"])
        if in_ch != 3:
            raise ValueError(f"the final network takes 3-channel images, data {cfg['data']} has {in_ch}")
        dev = cfg["device"]
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev)
        seed_everything(cfg["seed"])
        self.model = build_final_network(self.arch, cfg["cells"], cfg["channels"], num_classes,
                                         cfg["auxiliary_weight"] > 0).to(self.device)
        self.params = sum(p.numel() for n, p in self.model.named_parameters() if "auxiliary" not in n)
        self.opt, self.sched = weight_optimizer(self.model.parameters(), epochs=cfg["epochs"], lr=cfg["lr"],
                                                lr_min=cfg["lr_min"], momentum=cfg["momentum"],
                                                weight_decay=cfg["weight_decay"])
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.sums: dict[str, float] = {}
        self.best_acc = 0.0
        self._last_eval: tuple[int, float, float] | None = None
        if self.resume_dir is not None:
            self.run_dir = self.resume_dir
        elif cfg["out"]:
            self.run_dir = Path(cfg["out"])
            if (self.run_dir / CHECKPOINT).exists():
                raise ValueError(f"{self.run_dir} already holds a run; pass --resume {self.run_dir}")
        else:
            self.run_dir = Path(cfg["runs_dir"]) / f"train-{time.strftime('%Y%m%d-%H%M%S')}"

    # ---------------------------------------------------------------------------------------- state
    def _checkpoint(self) -> None:
        atomic_torch_save({
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "sums": dict(self.sums), "best_acc": self.best_acc,
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "rng": capture_rng(), "sampler": sampler_of(self.train_loader).state_dict(),
            "loader_generator": self.train_loader.generator.get_state(), "log_lines": self.log.lines,
        }, self.run_dir / CHECKPOINT)

    def _restore(self) -> None:
        st = load_checkpoint(self.run_dir / CHECKPOINT)
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.epoch, self.step_in_epoch, self.global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        self.sums, self.best_acc = dict(st["sums"]), st["best_acc"]
        self.train_loader.generator.set_state(st["loader_generator"])
        skip = self.step_in_epoch * self.cfg["batch_size"] if self.step_in_epoch else None
        sampler_of(self.train_loader).load_state_dict(st["sampler"], skip=skip)
        self.log.truncate(st["log_lines"])
        restore_rng(st["rng"])

    def _bad_files(self) -> int | None:
        """Record the image files the loaders failed to load since the last call in ``bad_files.txt``
        (each once, warning about the new ones); the total, or ``None`` for data without files."""
        loaders = [dl for dl in (self.train_loader, self.test_loader) if hasattr(dl, "bad")]
        if not loaders:
            return None
        new = {rel: reason for dl in loaders for rel, reason in dl.bad.take() if rel not in self._bad}
        if new:
            self._bad.update(new)
            warnings.warn(f"{len(new)} unreadable image(s) skipped: {shown_bad_files(new.items())} "
                          f"(all in {self.run_dir / BAD_FILES_NAME})", stacklevel=2)
            write_bad_files(self.run_dir / BAD_FILES_NAME, self._bad.items())
        return len(self._bad)

    # ---------------------------------------------------------------------------------------- loop
    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the current model (eval mode)."""
        self.model.eval()
        loss = correct = n = 0.0
        for x, y in self.test_loader:
            x, y = x.to(self.device), y.to(self.device)
            logits, _ = self.model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            n += y.numel()
        self.model.train()
        return loss / n, correct / n

    def run(self) -> dict[str, Any]:
        """Train (or continue), evaluate, write ``result.json``; return its content."""
        prev = torch.are_deterministic_algorithms_enabled()
        if self.cfg["deterministic"]:
            torch.use_deterministic_algorithms(True)
        try:
            return self._run()
        finally:
            torch.use_deterministic_algorithms(prev)

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = JsonlLog(self.run_dir / "log.jsonl")
        self._bad: dict[str, str] = dict(read_bad_files(self.run_dir / BAD_FILES_NAME))
        if self.resume_dir is not None:
            self._restore()
            self.log.write({"type": "resume", "step": self.global_step, "epoch": self.epoch})
        else:
            stored = {k: cfg[k] for k in _STORED}
            # The architecture itself, not the path it came from: the run stays resumable on its own.
            stored["genotype"] = (genotype_to_str(self.arch.cells) if self.arch.kind == "cell"
                                  else json.dumps(self.arch.to_json()))
            atomic_write_json(self.run_dir / "config.json", stored)
            self.log.write({"type": "start", "step": 0, "params": self.params, "device": str(self.device),
                            "kind": self.arch.kind, "genotype": self.arch.describe()})
            self._checkpoint()
        from tqdm import tqdm

        show = not cfg["quiet"] and sys.stderr.isatty()
        stopped = False
        try:
            while self.epoch < cfg["epochs"]:
                self.model.drop_path_prob = cfg["drop_path"] * self.epoch / cfg["epochs"]  # DARTS schedule
                bar = tqdm(total=len(self.train_loader), initial=self.step_in_epoch, leave=False,
                           disable=not show, desc=f"epoch {self.epoch + 1}/{cfg['epochs']}")
                t0 = time.perf_counter()
                for x, y in self.train_loader:
                    m = final_network_step(self.model, self.opt, (x, y), grad_clip=cfg["grad_clip"],
                                           auxiliary_weight=cfg["auxiliary_weight"])
                    self.step_in_epoch += 1
                    self.global_step += 1
                    for k, v in m.items():
                        self.sums[k] = self.sums.get(k, 0.0) + v
                    self.sums["n"] = self.sums.get("n", 0.0) + 1
                    self.log.write({"type": "step", "epoch": self.epoch, "step": self.global_step,
                                    "lr": self.opt.param_groups[0]["lr"], **m})
                    bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['acc']:.3f}")
                    bar.update(1)
                    if cfg["max_steps"] is not None and self.global_step >= cfg["max_steps"]:
                        raise _Stop
                    if self.global_step % cfg["checkpoint_every"] == 0:
                        self._checkpoint()
                bar.close()
                self.sched.step()
                n = max(self.sums.pop("n", 1.0), 1.0)
                rec: dict[str, Any] = {"type": "epoch", "epoch": self.epoch, "step": self.global_step,
                                       **{f"train_{k}": v / n for k, v in self.sums.items()},
                                       "time": round(time.perf_counter() - t0, 3)}
                last = self.epoch + 1 == cfg["epochs"]
                if last or (self.epoch + 1) % cfg["eval_every"] == 0:
                    rec["test_loss"], rec["test_acc"] = self.evaluate()
                    self._last_eval = (self.global_step, rec["test_loss"], rec["test_acc"])
                    self.best_acc = max(self.best_acc, rec["test_acc"])
                bad = self._bad_files()
                if bad is not None:
                    rec["bad_files"] = bad
                self.log.write(rec)
                if not cfg["quiet"]:
                    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in rec.items() if k != "type"), file=sys.stderr)
                self.epoch += 1
                self.step_in_epoch = 0
                self.sums = {}
                self._checkpoint()
        except _Stop:
            stopped = True
            self.log.write({"type": "stop", "step": self.global_step, "reason": "max_steps"})
            self._checkpoint()
        except NonFiniteLossError as e:
            self.log.write({"type": "error", "step": self.global_step + 1, "reason": str(e)})
            raise NonFiniteLossError(
                f"{e}; the last good checkpoint {self.run_dir / CHECKPOINT} is unchanged") from e
        if stopped:  # not finished: no final accuracy yet; --resume continues
            return {"finished": False, "steps": self.global_step, "epochs": self.epoch}
        if self._last_eval is not None and self._last_eval[0] == self.global_step:
            _, test_loss, test_acc = self._last_eval
        else:
            test_loss, test_acc = self.evaluate()
        bad = self._bad_files()
        result = {"finished": True, "epochs": self.epoch, "steps": self.global_step,
                  **({"bad_files": bad} if bad is not None else {}),
                  "test_acc": test_acc, "test_loss": test_loss,
                  "best_test_acc": max(self.best_acc, test_acc),
                  "params": self.params, "architecture": self.arch.to_json(), "data": cfg["data"]}
        atomic_write_json(self.run_dir / "result.json", result)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = {k: v for k, v in vars(args).items() if k != "resume"}
    try:
        run = TrainRun(cfg, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"{run.arch.kind} architecture: {run.arch.describe()}; {run.params / 1e6:.3f} M parameters "
          "(without the auxiliary head)")
    try:
        result = run.run()
    except NonFiniteLossError as e:
        print(f"{PROG}: stopped: {e}", file=sys.stderr)
        return 1
    if result["finished"]:
        print(f"test accuracy {result['test_acc']:.4f}; run directory {run.run_dir}")
    else:
        print(f"stopped after step {result['steps']} (--max-steps); resume with --resume {run.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
