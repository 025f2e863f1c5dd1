"""``python -m hnas_fast.search``: run an architecture search (default: a quick search on digits).

Settings are layered: ``--preset`` < ``--config FILE`` (JSON/YAML) < flags. A bad setting prints one line on
stderr and exits with code 2 before anything is written; a NaN/inf loss exits with code 1, leaving the
last good checkpoint as it was.

On several processes, launch it with ``torchrun``; ``--batch-size`` is then the global batch (divided among
the processes), rank 0 writes the run directory, and ``--resume`` may use another number of processes:

    torchrun --nproc_per_node=4 -m hnas_fast.search --data imagenet --data-dir DIR --batch-size 256 ...
    torchrun --nproc_per_node=4 -m hnas_fast.search --strategy stacnas --data imagenet --data-dir DIR ...
    python -m hnas_fast.search --resume RUN_DIR      # a search or a pipeline, where it stopped
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hnas_fast.distributed import cleanup, is_main_process
from hnas_fast.search.pipeline import PIPELINE_STATE, PipelineResult, run_pipeline
from hnas_fast.search.presets import (
    IMAGE_BACKENDS,
    PRESETS,
    VALIDATE_MODES,
    ConfigError,
    load_config_file,
    make_config,
)
from hnas_fast.search.runner import SearchRun
from hnas_fast.search.strategy import STRATEGIES, NonFiniteLossError

# flag -> SearchConfig field, for flags whose value goes straight into the config
_FLAGS = {
    "strategy": "strategy", "data": "data", "data_dir": "data_dir", "space": "space", "cells": "cells",
    "channels": "channels", "nodes": "nodes", "stem_multiplier": "stem_multiplier", "epochs": "epochs",
    "batch_size": "batch_size", "split": "split", "image_size": "image_size", "backend": "backend",
    "ranking": "ranking", "seed": "seed", "out": "out", "max_steps": "max_steps",
    "checkpoint_every": "checkpoint_every", "workers": "workers", "device": "device",
    "grad_clip": "grad_clip", "runs_dir": "runs_dir", "dali": "dali", "validate": "image_validate",
    "groups": "groups", "stage2_cells": "stage2_cells", "stage2_channels": "stage2_channels",
    "stage2_epochs": "stage2_epochs", "correlation_epochs": "correlation_epochs",
    "correlation_images": "correlation_images", "correlation_threshold": "correlation_threshold",
    "hdas_mode": "hdas_mode", "hdas_strategy": "hdas_strategy", "cell_genotype": "cell_genotype",
    "cells_per_stage": "cells_per_stage", "window": "window", "depth_weight": "depth_weight",
    "comp_weight": "comp_weight", "n_min": "n_min", "hdas_stem_multiplier": "hdas_stem_multiplier",
}
_SWITCHES = {"memory_saving": ("memory_saving", True), "deterministic": ("deterministic", True),
             "no_plots": ("plots", False), "quiet": ("quiet", True), "check_sync": ("check_sync", True),
             "inherit_weights": ("inherit_weights", True), "no_second_pass": ("second_pass", False)}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface: every strategy reads the same flags, config file and presets."""
    p = argparse.ArgumentParser(prog="python -m hnas_fast.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)} (default: default)")
    p.add_argument("--config", help="JSON or YAML file of settings, flat or by section (over the preset)")
    p.add_argument("--strategy", help=f"{' | '.join(STRATEGIES)} (one search) | stacnas (the two-stage "
                   "StacNAS pipeline) | hdas (H-DAS: --hdas-mode hcdas, hsdas, stacnas+hdas)")
    p.add_argument("--data", help="digits | cifar10 | cifar100 | folder | imagenet (an ImageNet-style "
                   "folder through DALI or torchvision, corrupt files skipped)")
    p.add_argument("--data-dir", help="local folder with the data (cifar-10-batches-py, ImageFolder, ...)")
    p.add_argument("--dali", choices=IMAGE_BACKENDS,
                   help="--data imagenet: image pipeline (auto: DALI when installed, else torchvision)")
    p.add_argument("--validate", choices=VALIDATE_MODES,
                   help="--data imagenet: check each file before the search (default header)")
    p.add_argument("--space", help="darts | s1..s5 | NAME/stage1 | NAME/groupI | path.json")
    p.add_argument("--cells", type=int, help="supernet depth (StacNAS: stage 1's; Hc-DAS: its supernet's)")
    p.add_argument("--channels", type=int, help="C of the first cells (every search of a pipeline)")
    p.add_argument("--nodes", type=int, help="intermediate nodes per cell (default 4)")
    p.add_argument("--stem-multiplier", type=int, help="stem width in C of the cell supernets (default 3)")
    p.add_argument("--epochs", type=int, help="epochs of each search (StacNAS: stage 1's)")
    p.add_argument("--batch-size", type=int, help="global batch: divided among torchrun's processes")
    p.add_argument("--split", type=float, help="fraction of the training set for weights (two-level)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--memory-saving", action="store_true", help="recompute candidates in backward")
    p.add_argument("--backend", help="auto | cpp | cuda | triton | reference (mixed-edge kernels)")
    p.add_argument("--ranking", help="weight (DARTS) | logit (StacNAS, H-DAS) edge ranking for the genotype")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--device", help="auto | cpu | cuda[:i]")
    p.add_argument("--workers", type=int, help="data-loader worker processes (0: exact resume)")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (and at each epoch end)")
    p.add_argument("--out", help="run directory (default runs/<preset>-<timestamp>)")
    p.add_argument("--runs-dir", help="parent of timestamped run directories (default runs)")
    p.add_argument("--resume", metavar="DIR", help="continue the run or pipeline in DIR where it stopped")
    p.add_argument("--max-steps", type=int,
                   help="stop (with a checkpoint) after this many steps in all (a pipeline: all stages)")
    p.add_argument("--no-plots", action="store_true", help="skip the cell diagrams")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    p.add_argument("--check-sync", action="store_true",
                   help="under torchrun: assert identical alphas on every rank after each step (debugging)")
    st = p.add_argument_group("StacNAS (--strategy stacnas, --hdas-mode stacnas+hdas)")
    st.add_argument("--groups", help="preset (the space groups) | correlation (cluster first) | FILE.json")
    st.add_argument("--stage2-cells", type=int,
                    help="stage-2 depth (default: --cells x 20/14, the paper's 14 -> 20)")
    st.add_argument("--stage2-channels", type=int, help="stage-2 C (default: --channels)")
    st.add_argument("--stage2-epochs", type=int, help="stage-2 epochs (default: --epochs)")
    st.add_argument("--inherit-weights", action="store_true", help="stage 2 starts from stage-1 weights")
    st.add_argument("--correlation-epochs", type=int, help="--groups correlation: pre-training epochs")
    st.add_argument("--correlation-images", type=int, help="--groups correlation: images correlated")
    st.add_argument("--correlation-threshold", type=float, help="--groups correlation: clustering cut")
    hd = p.add_argument_group("H-DAS (--strategy hdas)")
    hd.add_argument("--hdas-mode", help="hcdas | hsdas | stacnas+hdas (default hsdas)")
    hd.add_argument("--hdas-strategy", help=f"optimization of the H-DAS searches: {' | '.join(STRATEGIES)} "
                    "(default darts)")
    hd.add_argument("--cell-genotype", help="cells Hs-DAS wires: preset, Genotype string, or JSON file")
    hd.add_argument("--cells-per-stage", type=int, nargs="+", help="cells of each stage, e.g. 6 6 6")
    hd.add_argument("--window", type=int, help="sliding window m (0: none; default 3)")
    hd.add_argument("--depth-weight", type=float, help="delta, weight of the depth loss")
    hd.add_argument("--comp-weight", type=float, help="gamma, weight of the complexity loss")
    hd.add_argument("--n-min", type=int, help="fewest cells per stage: turns on the distribution search")
    hd.add_argument("--no-second-pass", action="store_true", help="stop after the distribution search")
    hd.add_argument("--hdas-stem-multiplier", type=int, help="Hs-DAS stem width in C (default 4)")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    for flag, (field, value) in _SWITCHES.items():
        if getattr(args, flag):
            out[field] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0: finished or stopped at --max-steps; 1: non-finite loss;
    2: bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(parser, args)
    finally:
        cleanup()  # leave torchrun's process group (a no-op on one process)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        file_layer = load_config_file(args.config) if args.config else {}
        cfg = make_config(args.preset, file_layer, _overrides(args))
        pipeline = cfg.pipeline if args.resume is None else (Path(args.resume) / PIPELINE_STATE).is_file()
        if pipeline:
            log = None if cfg.quiet else (lambda m: print(m, file=sys.stderr))
            return _report_pipeline(run_pipeline(cfg, resume=args.resume, log=log))
        run = SearchRun(cfg, resume=args.resume)
        result = run.run()
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"{parser.prog}: stopped: {e}", file=sys.stderr)
        return 1
    if run.ctx.is_main:
        state = "finished" if result.finished else f"stopped after step {result.steps} (--max-steps)"
        print(f"search {state}: run directory {result.run_dir}")
        print(f"genotype: {result.run_dir / 'genotype.json'} ({result.run_dir / 'genotype.txt'})")
    return 0


def _report_pipeline(result: PipelineResult) -> int:
    if not is_main_process():
        return 0
    cfg = json.loads((result.run_dir / "config.json").read_text())
    what = cfg["strategy"] if cfg["strategy"] == "stacnas" else f"hdas ({cfg['hdas_mode']})"
    if not result.finished:
        print(f"{what} stopped after {result.steps} steps (--max-steps): run directory {result.run_dir}; "
              f"--resume {result.run_dir} continues it")
        return 0
    print(f"{what} finished after {result.steps} steps: run directory {result.run_dir}")
    print(f"result: {result.summary}")
    for f in result.files:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
