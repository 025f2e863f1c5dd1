"""How many bytes autograd keeps for backward: the memory a supernet step pays per depth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class SavedTensorMeter:
    """Context manager counting the distinct storages autograd saves for backward.

    Tensors that share storage (views, a tensor saved by two nodes) count once; parameters count too
    unless ``exclude`` holds them (they live anyway, so a memory comparison usually excludes them).
    """

    def __init__(self, exclude: list[torch.Tensor] | None = None) -> None:
        self._exclude = {t.untyped_storage().data_ptr() for t in (exclude or [])}
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._exclude and ptr not in self._seen:
            self._seen[ptr] = storage.nbytes()
        return t

    @property
    def bytes(self) -> int:
        """Distinct bytes saved so far."""
        return sum(self._seen.values())

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def saved_tensor_bytes(fn: Callable[[], Any], exclude: list[torch.Tensor] | None = None) -> int:
    """Bytes autograd saves for backward while running ``fn()`` (see ``SavedTensorMeter``)."""
    with SavedTensorMeter(exclude) as meter:
        fn()
    return meter.bytes
