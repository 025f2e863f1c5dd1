"""``python -m hnas_fast.space_size``: search-space sizes of DARTS, Hc-DAS and Hs-DAS (H-DAS §6.2).

Without arguments it prints the paper's table (our exact count, its log10, the exponent the paper
states). ``--kind KIND`` with ``--cells``, ``--ops``, ``--window``, ... computes one size.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hnas_fast.analysis.space_size import log10, paper_table, space_size


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 on bad input)."""
    p = argparse.ArgumentParser(prog="python -m hnas_fast.space_size", description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", help="cell | darts | hcdas | stage | hsdas | hsdas+cells | distribution-stage "
                                  "| distribution (default: the paper's table)")
    p.add_argument("--nodes", type=int, help="intermediate nodes of a cell (cell, darts, hcdas)")
    p.add_argument("--ops", type=int, help="non-zero candidate ops per edge")
    p.add_argument("--cells", type=int, nargs="+", help="cells of a stage (stage: one number; hsdas: one per "
                                                        "stage)")
    p.add_argument("--window", type=int, help="sliding window m (stage, hsdas, distribution)")
    p.add_argument("--n-min", type=int, help="fewest cells per stage (distribution)")
    p.add_argument("--n-max", type=int, help="most cells per stage (distribution)")
    args = p.parse_args(argv)
    if args.kind is None:
        print(f"{'space':48s} {'log10(exact)':>12s} {'paper':>6s}")
        for row in paper_table():
            print(f"{row.name:48s} {row.log10:12.2f} {'1e' + str(row.paper_exponent):>6s}")
        return 0
    params: dict[str, object] = {}
    for name in ("nodes", "ops", "window", "n_min", "n_max"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.cells is not None:
        params["cells"] = args.cells[0] if args.kind == "stage" else tuple(args.cells)
    try:
        n = space_size(args.kind, **params)
    except (TypeError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.kind}: {n} (10^{log10(n):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
