"""Modules of hnas_fast: the mixed edge, DARTS operations, cells, supernets and final networks."""

from hnas_fast.nn.mixed_op import MixedOp

__all__ = ["MixedOp"]
