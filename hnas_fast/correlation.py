"""``python -m hnas_fast.correlation``: operator correlation and clustering (StacNAS Appendix A).

Trains a supernet over the whole space (one-level, ``--train-steps``), runs ``--images`` training images
through it, correlates every pair of candidate ops (none and skip excluded) per edge, averages over
edges, clusters the ops into groups and writes to ``--out``: ``correlation.json`` (per-edge and mean
matrices), ``groups.json`` (a space config readable by :func:`hnas_fast.spaces.load_space` and by
``python -m hnas_fast.search --space groups.json``) and ``correlation.png`` (the heatmap, Figure 1).
Bad input prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hnas_fast.data.loaders import make_search_loaders
from hnas_fast.nn.supernet import build_supernet
from hnas_fast.search.correlation import DEFAULT_THRESHOLD, operator_correlation, space_from_correlation
from hnas_fast.search.loop import run_steps
from hnas_fast.search.strategy import OneLevel
from hnas_fast.spaces import resolve_space


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m hnas_fast.correlation", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="s1", help="darts | s1..s5 | a space file (default s1)")
    p.add_argument("--data", default="digits", help="digits | cifar10 | cifar100 | folder (default digits)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--cells", type=int, default=5, help="supernet depth (paper: 14; default 5)")
    p.add_argument("--channels", type=int, default=8, help="supernet width (paper: 16; default 8)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=200,
                   help="one-level training steps before measuring (paper: 80 epochs; default 200)")
    p.add_argument("--images", type=int, default=1000,
                   help="images run through the trained supernet (paper: > 10,000; default 1000)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"min average correlation to merge ops into a group (default {DEFAULT_THRESHOLD})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--out", default="correlation", help="output directory (default ./correlation)")
    p.add_argument("--no-plot", action="store_true", help="skip correlation.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.cells < 3 or args.channels < 1:
            raise ValueError(f"need --cells >= 3 and --channels >= 1, got {args.cells}, {args.channels}")
        if args.train_steps < 0 or args.images < 1 or args.batch_size < 1:
            raise ValueError("--train-steps must be >= 0, --images and --batch-size >= 1")
        if not -1.0 <= args.threshold <= 1.0 or math.isnan(args.threshold):
            raise ValueError(f"--threshold is a correlation in [-1, 1], got {args.threshold}")
        space = resolve_space(args.space)
        torch.manual_seed(args.seed)
        loader, _, num_classes, in_ch, size = make_search_loaders(
            args.data, args.data_dir, args.batch_size, one_level=True, seed=args.seed,
            image_size=args.image_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2

    device = torch.device(args.device) if args.device else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    model = build_supernet(space, cells=args.cells, channels=args.channels, num_classes=num_classes,
                           in_channels=in_ch).to(device)
    training: dict[str, float] = {}
    if args.train_steps > 0:
        # StacNAS's one-level search with its gradient clip of 3, on the search loop's pieces.
        strategy = OneLevel(model, epochs=max(1, math.ceil(args.train_steps / len(loader))), grad_clip=3.0)
        training = run_steps(strategy.step, loader, args.train_steps, end_pass=strategy.end_epoch)
        print(f"trained {args.train_steps} steps: mean loss {training['loss']:.4f} acc {training['acc']:.3f}",
              file=sys.stderr)
    result = operator_correlation(model, loader, images=args.images, device=device)
    grouped = space_from_correlation(space, result, args.threshold, name=f"{space.name}-clustered")
    result.meta.update(space=space.name, cells=args.cells, channels=args.channels,
                       train_steps=args.train_steps, threshold=args.threshold, data=args.data,
                       image_size=size, training=training)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "correlation.json")
    (out / "groups.json").write_text(json.dumps(grouped.to_dict(), indent=1) + "\n")
    if not args.no_plot:
        from hnas_fast.viz.heatmap import plot_correlation

        plot_correlation(result.mean, result.ops, out / "correlation.png", groups=grouped.groups,
                         title=f"operator correlation, {space.name} ({result.images} images)")
    width = max(len(op) for op in result.ops)
    print(" " * width + " " + " ".join(f"{op[:8]:>8}" for op in result.ops))
    for op, row in zip(result.ops, result.mean):
        print(f"{op:>{width}} " + " ".join(f"{v:8.3f}" for v in row))
    for g, rep in zip(grouped.groups, grouped.representatives):
        print(f"group {list(g)} key {rep}")
    print(f"wrote {out / 'correlation.json'}, {out / 'groups.json'}" +
          ("" if args.no_plot else f", {out / 'correlation.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
