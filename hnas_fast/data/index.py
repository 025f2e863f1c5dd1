"""The file index of an image folder: listed and screened once, by rank 0, for every rank and every rerun.

At ImageNet scale, screening 1.28 M files (:func:`~hnas_fast.data.imagenet.scan_image_folder`) takes
minutes, and under ``torchrun`` every rank used to do it at once. Now rank 0 lists the folder, and when an
index with the same *key* exists it loads it; otherwise it screens the folder and writes the index
(``<index_dir>/<key>.json``, atomically). The other ranks wait for rank 0's answer (the index's path,
passed by the ``share`` function the caller provides: a broadcast from rank 0) and read the file; they
never list, open or warn.

The key is a SHA-256 of the index format, the folder's resolved path, the validation mode, and every
image's relative path, size and modification time: adding, removing, replacing or touching a file makes a
new index; an unchanged folder is never screened twice. (Without screening, only the paths: the index is
then just the listing, shared so that every rank trains on the same one.) ``index_dir`` must be visible
to every rank (the search puts it next to its run directories, which are shared already).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from hnas_fast.data.imagenet import ImageList, Validate, relative_paths, scan_image_folder, warn_bad_images
from hnas_fast.files import atomic_write_text

__all__ = ["INDEX_FORMAT", "index_key", "indexed_image_list", "load_index", "shared_image_list"]

INDEX_FORMAT = 1


def _list(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    classes, class_to_idx = find_classes(str(root))
    found = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    return classes, found


def _stat_lines(root: Path, paths: list[str]) -> str:
    lines = []
    for path, rel in zip(paths, relative_paths(paths, root)):
        st = os.stat(path)
        lines.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n")
    return "".join(lines)


def index_key(root: Path, found: list[tuple[str, int]], validate: Validate, workers: int = 8) -> str:
    """The key of ``root``'s listing ``found`` (absolute paths and labels) for ``validate``.

    Without screening (``"none"``) the index is the listing alone, so its key is the names alone: no file
    is stat()ed, which at ImageNet scale costs more than the listing itself.
    """
    h = hashlib.sha256(f"{INDEX_FORMAT}\0{root.resolve()}\0{validate}\n".encode())
    paths = [p for p, _ in found]
    if validate == "none":
        h.update("\n".join(paths).encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:32]
    chunks = [paths[i : i + 2048] for i in range(0, len(paths), 2048)]
    # Threads over chunks: a stat() is a round trip on a network file system, and the chunks keep the
    # per-task overhead small on a local one.
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(chunks)))) as pool:
        for text in pool.map(lambda c: _stat_lines(root, c), chunks):
            h.update(text.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def _save(images: ImageList, path: Path, key: str, validate: Validate) -> None:
    record = {"format": INDEX_FORMAT, "key": key, "root": str(images.root.resolve()), "validate": validate,
              "classes": images.classes, "samples": images.samples, "bad": images.bad}
    atomic_write_text(path, json.dumps(record, separators=(",", ":")))


def load_index(path: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """The :class:`ImageList` stored at ``path`` (``root`` overrides the stored folder: same files)."""
    record = json.loads(Path(path).read_text())
    if record.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: image index format {record.get('format')!r}, expected {INDEX_FORMAT}")
    return ImageList(Path(root) if root is not None else Path(record["root"]), list(record["classes"]),
                     [(rel, int(label)) for rel, label in record["samples"]],
                     [(rel, reason) for rel, reason in record["bad"]])


def indexed_image_list(root: str | os.PathLike, validate: Validate = "header", workers: int = 8,
                       index_dir: str | os.PathLike | None = None) -> tuple[ImageList, Path | None, bool]:
    """``(images, index path, whether it was found)``: the folder's index loaded when its key matches,
    else the folder screened (and, with ``index_dir``, the index written). Warns about bad files either
    way (a reused index still has them)."""
    root = Path(root).expanduser()
    if validate not in ("none", "header", "decode"):
        raise ValueError(f"validate must be 'none', 'header' or 'decode', got {validate!r}")
    if index_dir is None:
        return scan_image_folder(root, validate, workers, stacklevel=3), None, False
    classes, found = _list(root)
    if not found:
        raise ValueError(f"image folder {root} holds no images with extensions {IMG_EXTENSIONS}")
    key = index_key(root, found, validate, workers)
    path = Path(index_dir).expanduser() / f"{key}.json"
    if path.is_file():
        try:
            images = load_index(path, root)
        except (ValueError, KeyError, TypeError):  # unreadable or foreign: screen again, overwrite
            images = None
        if images is not None:
            warn_bad_images(images, len(found), stacklevel=3)
            return images, path, True
    images = scan_image_folder(root, validate, workers, listing=(classes, found), stacklevel=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(images, path, key, validate)
    return images, path, False


def shared_image_list(root: str | os.PathLike, validate: Validate = "header", workers: int = 8,
                      index_dir: str | os.PathLike | None = None, rank: int = 0,
                      share: Callable[[Path | None], Path | None] | None = None) -> ImageList:
    """The folder's :class:`ImageList` on every rank, screened by rank 0 only.

    ``share(x)`` must return rank 0's ``x`` on every rank (a broadcast; ``None`` on one process). Without
    ``index_dir`` (or ``share``) each rank lists and screens by itself, and only rank 0 warns.
    """
    if share is None or index_dir is None:
        if rank == 0:
            return indexed_image_list(root, validate, workers, index_dir)[0]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return scan_image_folder(root, validate, workers)
    if rank == 0:
        try:
            images, path, _ = indexed_image_list(root, validate, workers, index_dir)
        except BaseException:
            share(None)  # the other ranks must not wait forever; they raise below
            raise
        share(path)
        return images
    path = share(None)
    if path is None:
        raise RuntimeError(f"rank 0 could not list the image folder {root}; see its error")
    return load_index(path, Path(root).expanduser())
