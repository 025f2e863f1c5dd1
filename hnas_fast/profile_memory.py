"""``python -m hnas_fast.profile_memory``: memory of the search supernet per depth, and what fits.

Example (the issue's table, plus the final CIFAR size and the largest batch within 16 GiB)::

    python -m hnas_fast.profile_memory --cells 5,8,14,20 --channels 16 --batch 64 --space darts \\
        --modes normal,memory_saving --backends fused,reference --final --fit-gib 16 --out profile/

Writes ``memory_profile.csv`` and ``memory_profile.png`` to ``--out`` and prints the table. The method
(meta-device saved-tensor count, subprocess peak, linear fit in the batch) is described in
:mod:`hnas_fast.analysis.memory_profile`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hnas_fast.analysis.memory_profile import (
    GIB,
    MIXED_BACKENDS,
    MODES,
    MemoryConfig,
    format_table,
    largest_batch,
    plot_profile,
    profile,
    write_csv,
)

# The final CIFAR network's size (design.md §3): searching at it removes the depth gap.
FINAL_CELLS, FINAL_CHANNELS, FINAL_BATCH = 20, 36, 64


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hnas_fast.profile_memory", description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=_ints, default=[5, 8, 14, 20], help="comma-separated depths")
    p.add_argument("--channels", type=_ints, default=[16], help="comma-separated widths C")
    p.add_argument("--batch", type=_ints, default=[64], help="comma-separated batch sizes")
    p.add_argument("--space", type=lambda s: [v for v in s.split(",") if v], default=["darts"],
                   help="comma-separated search spaces")
    p.add_argument("--modes", type=_choices(MODES), default=list(MODES))
    p.add_argument("--backends", type=_choices(tuple(MIXED_BACKENDS)), default=list(MIXED_BACKENDS))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--final", action="store_true",
                   help=f"also profile the final CIFAR size ({FINAL_CELLS} cells, C={FINAL_CHANNELS}, "
                        f"batch {FINAL_BATCH}) in every mode and backend")
    p.add_argument("--fit-gib", type=float, default=None,
                   help="also report, per configuration, the largest batch that fits in this many GiB")
    p.add_argument("--fit-metric", choices=("footprint", "peak"), default=None,
                   help="what must fit: parameters+gradients+saved tensors (cheap, a lower bound) or the "
                        "measured peak (default: peak on CUDA, where a step is fast and the peak is what "
                        "runs out; footprint on the CPU)")
    p.add_argument("--no-peak", action="store_true", help="skip the forward+backward peak measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device of the peak measurement (cpu or cuda[:i])")
    p.add_argument("--count-device", default="meta",
                   help="device on which saved tensors are counted: meta (no memory, any size) or cpu/cuda")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the peak subprocess (CPU)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the CSV and the plot")
    return p


def configs_from_args(args: argparse.Namespace) -> list[MemoryConfig]:
    """Every combination of the listed settings, then the final-size ones when ``--final``."""
    sizes = list(itertools.product(args.space, args.cells, args.channels, args.batch))
    if args.final:
        sizes += [(space, FINAL_CELLS, FINAL_CHANNELS, FINAL_BATCH) for space in args.space]
    out: list[MemoryConfig] = []
    for (space, cells, channels, batch), mode, backend in itertools.product(sizes, args.modes, args.backends):
        cfg = MemoryConfig(space=space, cells=cells, channels=channels, batch=batch, mode=mode,
                           backend=backend, image_size=args.image_size, num_classes=args.num_classes)
        if cfg not in out:
            out.append(cfg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    configs = configs_from_args(args)
    if args.fit_metric is None:
        args.fit_metric = "peak" if args.device.startswith("cuda") else "footprint"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = profile(configs, peak=not args.no_peak, device=args.device, threads=args.threads,
                   count_device=args.count_device, log=log)
    fits = []
    if args.fit_gib is not None:
        for row in rows:
            try:
                fit = largest_batch(row.config, int(args.fit_gib * GIB), metric=args.fit_metric,
                                    device=args.device, threads=args.threads, count_device=args.count_device)
            except ValueError as e:
                row.note = (row.note + "; " if row.note else "") + str(e)
                continue
            row.max_batch = fit.batch
            fits.append(fit)
    print(format_table(rows))
    for fit in fits:
        print(fit.describe())
    write_csv(rows, args.out / "memory_profile.csv")
    plot_profile(rows, args.out / "memory_profile.png")
    print(f"wrote {args.out / 'memory_profile.csv'} and {args.out / 'memory_profile.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
