"""Unreadable images met while loading: recorded once, never fatal, batches kept usable.

An ImageNet-scale folder always holds a few files that cannot be decoded (truncated downloads, zero-byte
files, HTML error pages saved as ``.jpg``). The pre-scan of :mod:`hnas_fast.data.imagenet` leaves out what
it finds, but it can be switched off (``validate="none"``), a header check misses damage inside the
compressed data, and files change during a days-long run. Both image pipelines therefore also skip a file
that fails when it is loaded, and report it here:

* :class:`BadFileLog` is a loader's record of them: each file once, in the order met, with its reason;
  :meth:`BadFileLog.take` hands the ones not yet reported to the search loop, which gathers them from every
  rank, counts them in ``log.jsonl`` and names them in the run's ``bad_files.txt``.
* A batch loses its unreadable samples (it comes out shorter). A batch in which *every* file failed is
  replaced by a repeat of this rank's previous batch (or, at the start of a pass, of the next one), see
  :func:`fill_empty_batches`: a rank never yields an empty batch (whose mean loss is NaN and whose
  BatchNorm statistics are undefined), and it yields exactly as many batches as its shard plans, so the
  ranks take the same steps and their collectives never diverge.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, default_collate

from hnas_fast.files import atomic_write_text

__all__ = ["BAD_FILES_NAME", "BadFileLog", "SkippingDataLoader", "Unreadable", "fill_empty_batches",
           "read_bad_files", "shown_bad_files", "skip_failed_collate", "usable_batches", "write_bad_files"]

BAD_FILES_NAME = "bad_files.txt"

B = TypeVar("B", bound=tuple)


class BadFileLog:
    """Files (paths relative to the image root) that failed to load, each once, with the first reason."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._reasons: dict[str, str] = {}
        self._taken = 0
        self.known: set[str] = set(known)  # skipped without trying (e.g. named by a resumed run)

    def __len__(self) -> int:
        return len(self._reasons)

    def __contains__(self, rel: object) -> bool:
        return rel in self._reasons or rel in self.known

    def add(self, rel: str, reason: str) -> bool:
        """Record ``rel``; ``False`` when it was recorded already."""
        if rel in self._reasons:
            return False
        self._reasons[rel] = reason.replace("\n", " ").strip() or "unreadable"
        return True

    def entries(self) -> list[tuple[str, str]]:
        return list(self._reasons.items())

    def take(self) -> list[tuple[str, str]]:
        """The entries recorded since the last ``take()``."""
        new = list(self._reasons.items())[self._taken :]
        self._taken = len(self._reasons)
        return new


@dataclass(frozen=True)
class Unreadable:
    """What a dataset returns for a sample whose file failed to load: its path relative to the root and
    why (instead of raising, which would end the epoch)."""

    rel: str
    reason: str


def skip_failed_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """``default_collate`` of the samples that loaded, and the ``(path, reason)`` of those that did not
    (the batch comes out shorter, or empty; never fails)."""
    bad = [(b.rel, b.reason) for b in batch if isinstance(b, Unreadable)]
    good = [b for b in batch if not isinstance(b, Unreadable)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images, labels = default_collate(good)
    return images, labels, bad


class SkippingDataLoader(DataLoader):
    """A ``DataLoader`` over a dataset that returns :class:`Unreadable` for files it cannot load: yields
    ``(images, labels)`` without them, records them in :attr:`bad`, and never an empty batch: for
    training (``fill_empty=True``) it is replaced as :func:`fill_empty_batches` says; for evaluation
    (``False``) it is left out, since a repeated batch would count its images twice. Everything else
    (sampler, generator, ``len()``) is the ``DataLoader``'s. Files in ``known_bad`` are not reported."""

    def __init__(self, *args: Any, known_bad: Iterable[str] = (), fill_empty: bool = True,
                 **kwargs: Any) -> None:
        kwargs["collate_fn"] = skip_failed_collate
        super().__init__(*args, **kwargs)
        self.bad = BadFileLog(known_bad)
        self.fill_empty = fill_empty

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        return usable_batches(self._batches(), self.fill_empty)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, bad in super().__iter__():
            for rel, reason in bad:
                if rel not in self.bad.known:
                    self.bad.add(rel, reason)
            yield images, labels


def shown_bad_files(entries: Iterable[tuple[str, str]], limit: int = 5) -> str:
    """``"path (reason); ..."`` for the first ``limit`` entries, ``" …"`` when there are more: the text of
    every unreadable-file warning."""
    entries = list(entries)
    return "; ".join(f"{p} ({r})" for p, r in entries[:limit]) + (" …" if len(entries) > limit else "")


def usable_batches(batches: Iterable[B], fill: bool) -> Iterator[B]:
    """Never an empty batch: for training (``fill``) each is replaced as :func:`fill_empty_batches` says;
    for evaluation it is left out, since a repeated batch would count its images twice."""
    if fill:
        return fill_empty_batches(batches)
    return (b for b in batches if len(b[-1]))


def fill_empty_batches(batches: Iterable[B]) -> Iterator[B]:
    """``batches`` with each empty one (``len(batch[-1]) == 0``: labels last) replaced by a repeat of the
    previous non-empty batch, or of the next one when none came before; as many batches out as in, unless
    every batch is empty (then none: there is nothing to train on, and the search loop ends the pass on
    every rank when one runs dry)."""
    last: B | None = None
    owed = 0  # empty batches met before the first non-empty one
    for batch in batches:
        if len(batch[-1]) == 0:
            if last is None:
                owed += 1
            else:
                yield last
            continue
        for _ in range(owed + 1):
            yield batch
        owed = 0
        last = batch


def write_bad_files(path: str | os.PathLike, entries: Iterable[tuple[str, str]]) -> Path:
    """Write ``bad_files.txt``: one ``<relative path>\\t<reason>`` per line (atomically)."""
    path = Path(path)
    atomic_write_text(path, "".join(f"{rel}\t{reason}\n" for rel, reason in entries))
    return path


def read_bad_files(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The entries of a ``bad_files.txt`` (none when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        rel, _, reason = line.partition("\t")
        if rel:
            out.append((rel, reason))
    return out
