"""Helper of tests/test_pipelines_cli.py: ``python -m hnas_fast.search`` with every BatchNorm normalizing by
its running statistics (as in eval mode), so that a sample's output does not depend on the rest of its batch
and 2 ranks with half batches must find what 1 process with the whole batch finds."""

from __future__ import annotations

import sys

import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _batch_independent(self: _BatchNorm, x):
    return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


if __name__ == "__main__":
    _BatchNorm.forward = _batch_independent  # type: ignore[method-assign]
    from hnas_fast.nn.operations import PoolBN
    from hnas_fast.search.__main__ import main

    # The fused pooling candidates normalize inside their kernel, not through BatchNorm.forward: run them
    # as their two modules so that they take the patched forward too.
    PoolBN.forward = nn.Sequential.forward  # type: ignore[method-assign]

    sys.exit(main(sys.argv[1:]))
