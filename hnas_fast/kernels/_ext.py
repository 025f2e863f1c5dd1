"""Loading of the compiled extension ``hnas_fast._C`` (which also registers the C++/CUDA ops)."""

from __future__ import annotations

from typing import Any

_UNSET = object()
_ext: Any = _UNSET


def load_extension() -> Any | None:
    """Import ``hnas_fast._C`` once; ``None`` when the extension was not built."""
    global _ext
    if _ext is _UNSET:
        try:
            from hnas_fast import _C
        except ImportError:
            _ext = None
        else:
            _ext = _C
    return _ext


def extension_available() -> bool:
    """Whether the compiled ops (``torch.ops.hnas_fast.*``) are registered."""
    return load_extension() is not None


def build_info() -> dict[str, Any]:
    """The extension's build information, or ``{"built": False}`` without it."""
    ext = load_extension()
    if ext is None:
        return {"built": False}
    return {"built": True, **ext.build_info()}
