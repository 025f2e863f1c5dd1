"""``python -m hnas_fast.search``: run an architecture search (default: a quick search on digits).

Settings are layered: ``--preset`` < ``--config FILE`` (JSON/YAML) < flags. A bad setting prints one line on
stderr and exits with code 2 before anything is written; a NaN/inf loss exits with code 1, leaving the
last good checkpoint as it was.

On several processes, launch it with ``torchrun``; ``--batch-size`` is then the global batch (divided among
the processes), rank 0 writes the run directory, and ``--resume`` may use another number of processes:

    torchrun --nproc_per_node=4 -m hnas_fast.search --data imagenet --data-dir DIR --batch-size 256 ...
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from hnas_fast.search.presets import PRESETS, ConfigError, load_config_file, make_config

# flag -> SearchConfig field, for flags whose value goes straight into the config
_FLAGS = {
    "strategy": "strategy", "data": "data", "data_dir": "data_dir", "space": "space", "cells": "cells",
    "channels": "channels", "epochs": "epochs", "batch_size": "batch_size", "split": "split",
    "image_size": "image_size", "backend": "backend", "ranking": "ranking", "seed": "seed", "out": "out",
    "max_steps": "max_steps", "checkpoint_every": "checkpoint_every", "workers": "workers",
    "device": "device", "grad_clip": "grad_clip", "runs_dir": "runs_dir", "dali": "dali",
    "validate": "image_validate",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m hnas_fast.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)} (default: default)")
    p.add_argument("--config", help="JSON or YAML file of settings (applied over the preset)")
    p.add_argument("--strategy", help="one-level | darts (first order) | darts2 (second order) | "
                   "stacnas (two-stage StacNAS pipeline) | hdas (H-DAS: Hc-DAS, Hs-DAS, stacnas+hdas)")
    p.add_argument("--data", help="digits | cifar10 | cifar100 | folder | imagenet (an ImageNet-style "
                   "folder through DALI or torchvision, corrupt files skipped)")
    p.add_argument("--data-dir", help="local folder with the data (cifar-10-batches-py, ImageFolder, ...)")
    p.add_argument("--dali", choices=("auto", "dali", "torchvision"),
                   help="--data imagenet: image pipeline (auto: DALI when installed, else torchvision)")
    p.add_argument("--validate", choices=("header", "decode", "none"),
                   help="--data imagenet: check each file before the search (default header)")
    p.add_argument("--space", help="darts | s1..s5 | NAME/stage1 | NAME/groupI | path.json")
    p.add_argument("--cells", type=int)
    p.add_argument("--channels", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch: divided among torchrun's processes")
    p.add_argument("--split", type=float, help="fraction of the training set for weights (two-level)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--memory-saving", action="store_true", default=None,
                   help="recompute candidates in backward")
    p.add_argument("--backend", help="auto | cpp | cuda | triton | reference (mixed-edge kernels)")
    p.add_argument("--ranking", help="weight (DARTS) | logit (StacNAS, H-DAS) edge ranking for the genotype")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true", default=None)
    p.add_argument("--device", help="auto | cpu | cuda[:i]")
    p.add_argument("--workers", type=int, help="data-loader worker processes (0: exact resume)")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (and at each epoch end)")
    p.add_argument("--out", help="run directory (default runs/<preset>-<timestamp>)")
    p.add_argument("--runs-dir", help="parent of timestamped run directories (default runs)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps in all")
    p.add_argument("--no-plots", action="store_true", help="skip the cell diagrams")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    p.add_argument("--check-sync", action="store_true",
                   help="under torchrun: assert identical alphas on every rank after each step (debugging)")
    st = p.add_argument_group("StacNAS (--strategy stacnas): stage 1 uses --cells/--channels/--epochs")
    st.add_argument("--groups", help="preset (the space groups) | correlation (cluster first) | FILE.json")
    st.add_argument("--stage2-cells", type=int,
                    help="stage-2 depth (default: stage-1 cells x 20/14, the paper's 14 -> 20)")
    st.add_argument("--stage2-epochs", type=int, help="stage-2 epochs (default: as stage 1)")
    st.add_argument("--inherit-weights", action="store_true", help="stage 2 starts from stage-1 weights")
    hd = p.add_argument_group("H-DAS (--strategy hdas)")
    from hnas_fast.search.hdas import CLI_FLAGS

    for flag, (_, typ, text) in CLI_FLAGS.items():
        # --stem-multiplier already means the DARTS stem of the main parser.
        name = "--hdas-stem-multiplier" if flag == "--stem-multiplier" else flag
        hd.add_argument(name, type=typ, nargs="+" if flag == "--cells-per-stage" else None, help=text)
    hd.add_argument("--no-second-pass", action="store_true", help="stop after the distribution search")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    if args.memory_saving:
        out["memory_saving"] = True
    if args.deterministic:
        out["deterministic"] = True
    if args.no_plots:
        out["plots"] = False
    if args.quiet:
        out["quiet"] = True
    if args.check_sync:
        out["check_sync"] = True
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0: finished or stopped at --max-steps; 1: non-finite loss;
    2: bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.strategy in ("stacnas", "hdas") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Their pipelines chain several runs in one process and write directly: one process only.
        print(f"{parser.prog}: error: --strategy {args.strategy} runs on one process; launch it without "
              "torchrun", file=sys.stderr)
        return 2
    if args.strategy == "stacnas":
        return _main_stacnas(parser, args)
    if args.strategy == "hdas":
        return _main_hdas(parser, args)
    from hnas_fast.distributed import cleanup

    try:
        return _main_search(parser, args)
    finally:
        cleanup()  # leave torchrun's process group (a no-op on one process)


def _main_search(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """One search run (on one process, or on each of torchrun's)."""
    from hnas_fast.search.strategy import NonFiniteLossError

    try:
        file_layer = load_config_file(args.config) if args.config else {}
        cfg = make_config(args.preset, file_layer, _overrides(args))
        from hnas_fast.search.runner import SearchRun

        run = SearchRun(cfg, resume=args.resume)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        result = run.run()
    except NonFiniteLossError as e:
        print(f"{parser.prog}: stopped: {e}", file=sys.stderr)
        return 1
    if run.ctx.is_main:
        state = "finished" if result.finished else f"stopped after step {result.steps} (--max-steps)"
        print(f"search {state}: run directory {result.run_dir}")
        print(f"genotype: {result.run_dir / 'genotype.json'} ({result.run_dir / 'genotype.txt'})")
    return 0


def _main_stacnas(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The StacNAS pipeline: stage 1 over group representatives, stage 2 over each edge's winning group."""
    from hnas_fast.search.runner import new_run_dir
    from hnas_fast.search.stacnas import StacNASConfig, run_stacnas
    from hnas_fast.search.strategy import NonFiniteLossError

    if args.resume:
        print(f"{parser.prog}: error: --resume is not supported by --strategy stacnas", file=sys.stderr)
        return 2
    try:
        file_layer = load_config_file(args.config) if args.config else {}
        overrides = {**_overrides(args), "strategy": "one-level"}  # StacNAS optimizes one-level
        if args.space is None and args.preset == "default":
            overrides["space"] = "s1"
        cfg = make_config(args.preset, file_layer, overrides)
        stage2_cells = args.stage2_cells or max(cfg.cells, round(cfg.cells * 20 / 14))
        extra = {"stage2_cells": stage2_cells, "stage2_epochs": args.stage2_epochs or cfg.epochs,
                 "inherit_weights": bool(args.inherit_weights), "groups": args.groups or "preset"}
        out = new_run_dir(dataclasses.replace(cfg, name=f"stacnas-{cfg.name}"))
        stac = StacNASConfig.from_search_config(dataclasses.replace(cfg, out=str(out)), **extra)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        result = run_stacnas(stac, log=None if cfg.quiet else print)
    except NonFiniteLossError as e:
        print(f"{parser.prog}: stopped: {e}", file=sys.stderr)
        return 1
    print(f"stacnas finished: run directory {result.out}")
    print(f"genotype: {result.out / 'genotype.json'} ({result.out / 'genotype.txt'})")
    return 0


def _main_hdas(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """H-DAS: stage-specific cells (Hc-DAS) or the stage-level DAG search (Hs-DAS) over given cells."""
    import types

    from hnas_fast.search.hdas import CLI_FLAGS, run_hdas_from_config
    from hnas_fast.search.runner import new_run_dir
    from hnas_fast.search.strategy import NonFiniteLossError

    if args.resume:
        print(f"{parser.prog}: error: --resume is not supported by --strategy hdas", file=sys.stderr)
        return 2
    try:
        file_layer = load_config_file(args.config) if args.config else {}
        overrides = _overrides(args)
        overrides.pop("strategy")
        cfg = make_config(args.preset, file_layer, overrides)
        hdas: dict[str, Any] = {}
        for flag, (name, _, _) in CLI_FLAGS.items():
            dest = "hdas_stem_multiplier" if flag == "--stem-multiplier" else flag[2:].replace("-", "_")
            if getattr(args, dest) is not None:
                hdas[name] = getattr(args, dest)
        if args.no_second_pass:
            hdas["second_pass"] = False
        if args.preset == "default":  # the embedded-data preset: a stage DAG small enough for a CPU
            hdas.setdefault("cells_per_stage", [2, 2, 2])
        out = new_run_dir(dataclasses.replace(cfg, name=f"hdas-{cfg.name}"))
        # A SearchConfig's shared fields plus the H-DAS ones, as run_hdas_from_config reads them.
        config = types.SimpleNamespace(**dataclasses.asdict(cfg), hdas=hdas)
        result = run_hdas_from_config(config, out, log=None if cfg.quiet else print)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"{parser.prog}: stopped: {e}", file=sys.stderr)
        return 1
    print(f"hdas finished: run directory {result.out or out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
