"""``python -m hnas_fast.confusion``: match the search network's depth to the final network by gradient
confusion (StacNAS Table 6).

Writes ``confusion.json`` (every setting's ζ, ζ/P, the gap to the target, the best setting) and
``confusion.png`` to ``--out``, and prints the table. Bad input prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hnas_fast.analysis.confusion import PAPER_GRID, match_depth, parse_grid
from hnas_fast.genotypes.cell import load_genotype
from hnas_fast.spaces import resolve_space


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m hnas_fast.confusion", description=__doc__.split("\n\n")[0])
    p.add_argument("--target-cells", type=int, default=20, help="final network depth (default 20)")
    p.add_argument("--target-channels", type=int, default=36, help="final network width (default 36)")
    p.add_argument("--genotype", default="DARTS_V2",
                   help="final network's cell: preset name, Genotype(...) string or file (default DARTS_V2)")
    p.add_argument("--space", default="s1/stage1",
                   help="search supernet's space (default s1/stage1, StacNAS stage 1)")
    p.add_argument("--grid", default=None,
                   help="search settings CELLSxCHANNELS,... (default: StacNAS Table 6, "
                        "5x16,11x10,14x16,17x32,17x16,20x16)")
    p.add_argument("--m", type=int, default=10, help="minibatches per draw (default 10)")
    p.add_argument("--draws", type=int, default=1, help="draws averaged (paper: 10; default 1)")
    p.add_argument("--criterion", default="normalized", choices=("normalized", "cosine"),
                   help="match on zeta/P (the paper, default) or on the scale-free cosine confusion")
    p.add_argument("--train-steps", type=int, default=0,
                   help="training steps before measuring (paper: 100 epochs; default 0 = at init)")
    p.add_argument("--data", default="digits", help="digits | cifar10 | cifar100 | folder (default digits)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--backend", default=None, help="grad_gram backend (default automatic)")
    p.add_argument("--out", default="confusion", help="output directory (default ./confusion)")
    p.add_argument("--no-plot", action="store_true", help="skip confusion.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        grid = parse_grid(args.grid) if args.grid is not None else list(PAPER_GRID)
        if args.m < 2:
            raise ValueError(f"--m must be >= 2 (confusion compares pairs of minibatches), got {args.m}")
        if args.draws < 1:
            raise ValueError(f"--draws must be >= 1, got {args.draws}")
        if args.train_steps < 0:
            raise ValueError(f"--train-steps must be >= 0, got {args.train_steps}")
        load_genotype(args.genotype)
        resolve_space(args.space)
    except (ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        match = match_depth(
            (args.target_cells, args.target_channels), grid, genotype=args.genotype, space=args.space,
            data=args.data, data_dir=args.data_dir, image_size=args.image_size, batch_size=args.batch_size,
            m=args.m, draws=args.draws, train_steps=args.train_steps, seed=args.seed, device=args.device,
            backend=args.backend, criterion=args.criterion, log=lambda s: print(s, file=sys.stderr),
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = match.to_dict()
    data["settings"] = {k: v for k, v in vars(args).items() if k != "no_plot"}
    (out / "confusion.json").write_text(json.dumps(data, indent=1) + "\n")
    if not args.no_plot:
        from hnas_fast.viz.confusion import plot_confusion

        plot_confusion(match, out / "confusion.png")
    print(match.table())
    print(f"closest search setting: {match.best[0]} cells, {match.best[1]} channels; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
