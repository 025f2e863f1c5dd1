"""Helper of tests/test_distributed_search.py: ``python -m hnas_fast.search`` with the gradient averaging
switched off, so that ``--check-sync`` must find ranks whose alphas differ (the test's negative control)."""

from __future__ import annotations

import sys

from hnas_fast.distributed import GradientAverager


def _no_hooks(self: GradientAverager, *optimizers: object) -> GradientAverager:
    return self


if __name__ == "__main__":
    GradientAverager.attach = _no_hooks  # type: ignore[method-assign]
    from hnas_fast.search.__main__ import main

    sys.exit(main(sys.argv[1:]))
