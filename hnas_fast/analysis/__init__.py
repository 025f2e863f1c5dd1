"""Analysis tools that read a supernet from the side (nothing below imports them): memory, gradient
confusion, space size. Operator correlation is part of StacNAS: :mod:`hnas_fast.search.correlation`.
"""

from hnas_fast.analysis.memory import SavedTensorMeter, saved_tensor_bytes

__all__ = ["SavedTensorMeter", "saved_tensor_bytes"]
