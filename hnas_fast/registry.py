"""The op registry: every op name a search space or genotype may use, and the factory that builds it.

It sits below :mod:`hnas_fast.spaces`, :mod:`hnas_fast.genotypes` and ``nn/`` so that spaces and
genotypes check op names without importing any module. The DARTS operations are registered by
:mod:`hnas_fast.nn.operations`, which the package root imports, so the registry is full as soon as any
``hnas_fast`` module is.

A factory is ``(C, stride, affine) -> nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["OPS", "OpFactory", "UnknownOpError", "get_op", "needs_search_bn", "register_op", "unregister_op"]

OpFactory = Callable[[int, int, bool], Any]

OPS: dict[str, OpFactory] = {}
# Ops followed by BatchNorm2d(C, affine=False) in the search network. DARTS's rule is "'pool' in the
# name"; user ops choose with register_op(search_bn=...).
_SEARCH_BN: set[str] = set()
_BUILTIN: set[str] = set()


class UnknownOpError(KeyError, ValueError):
    """An op name that is not registered; catchable as ``KeyError`` or ``ValueError``."""

    def __str__(self) -> str:  # KeyError would repr() the message and quote it
        return str(self.args[0]) if self.args else ""


def _known() -> str:
    return ", ".join(sorted(OPS))


def register_builtin_ops(factories: Mapping[str, OpFactory]) -> None:
    """Register the package's own ops (DARTS's rule for the search BN); they cannot be unregistered."""
    for name, factory in factories.items():
        register_op(name, factory, overwrite=True)
        _BUILTIN.add(name)


def register_op(
    name: str, factory: OpFactory, *, overwrite: bool = False, search_bn: bool | None = None
) -> None:
    """Register a user operation under ``name``.

    Args:
        name: the op's name as it appears in spaces and genotypes.
        factory: ``(C, stride, affine) -> nn.Module``; stride 1 must keep H×W, stride 2 halve it.
        overwrite: replace an existing op of that name instead of raising.
        search_bn: follow the op by ``BatchNorm2d(C, affine=False)`` in the search network;
            ``None`` applies DARTS's rule (``"pool" in name``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"op name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for op {name!r} must be callable, got {type(factory).__name__}")
    if name in OPS and not overwrite:
        raise ValueError(f"op {name!r} is already registered (pass overwrite=True to replace it)")
    OPS[name] = factory
    if search_bn is None:
        search_bn = "pool" in name
    if search_bn:
        _SEARCH_BN.add(name)
    else:
        _SEARCH_BN.discard(name)


def unregister_op(name: str) -> None:
    """Remove a user op (built-in DARTS ops cannot be removed)."""
    if name in _BUILTIN:
        raise ValueError(f"cannot unregister built-in op {name!r}")
    get_op(name)
    del OPS[name]
    _SEARCH_BN.discard(name)


def get_op(name: str) -> OpFactory:
    """Return the factory registered as ``name``; :class:`UnknownOpError` listing the known names if not."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise UnknownOpError(f"unknown op {name!r}; known ops: {_known()}") from None


def needs_search_bn(name: str) -> bool:
    """Whether the search network follows op ``name`` with a non-affine BatchNorm."""
    get_op(name)
    return name in _SEARCH_BN
