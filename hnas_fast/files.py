"""Atomic file writes: a reader, or a crash, sees the old file or the complete new one, never a torn
write (temporary file in the same folder, fsync, ``os.replace``)."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_torch_save", "atomic_write_json", "atomic_write_text"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[IO], None]) -> None:
    """``write`` into a temporary file in ``path``'s folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically: a reader (or a crash) sees the old file or the complete new one."""
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (temporary file, fsync, ``os.replace``)."""
    _atomic_write(path, "w", lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON with a final newline, written atomically (the run directories' files)."""
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
