"""How many bytes autograd keeps for backward: the memory a supernet step pays per depth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class SavedTensorMeter:
    """Context manager counting the distinct storages autograd saves for backward.

    Tensors that share storage (views, a tensor saved by two nodes) count once; parameters count too
    unless ``exclude`` holds them (they live anyway, so a memory comparison usually excludes them).
    Storages are told apart by identity, not address, so counting also works on the ``meta`` device
    (where every storage has address 0) and costs no memory there.
    """

    def __init__(self, exclude: list[torch.Tensor] | None = None) -> None:
        self._exclude = {_storage_key(t) for t in (exclude or [])}
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen[key] = t.untyped_storage().nbytes()
        # Returning ``t`` itself would let an output's grad_fn hold the output (a reference cycle that
        # autograd otherwise avoids), so every graph measured here would leak; a detached alias does not.
        return t.detach()

    @property
    def bytes(self) -> int:
        """Distinct bytes saved so far."""
        return sum(self._seen.values())

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def _storage_key(t: torch.Tensor) -> int:
    # The C++ storage object's address: stable while the graph keeps the storage alive.
    return t.untyped_storage()._cdata


def saved_tensor_bytes(fn: Callable[[], Any], exclude: list[torch.Tensor] | None = None) -> int:
    """Bytes autograd saves for backward while running ``fn()`` (see ``SavedTensorMeter``)."""
    with SavedTensorMeter(exclude) as meter:
        fn()
    return meter.bytes
