"""Analysis tools that read a supernet from the side: memory, correlation, gradient confusion."""

from hnas_fast.analysis.memory import SavedTensorMeter, saved_tensor_bytes

__all__ = ["SavedTensorMeter", "saved_tensor_bytes"]
