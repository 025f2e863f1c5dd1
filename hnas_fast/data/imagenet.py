"""ImageNet-style folders (``root/<class>/<image>``) for direct search: a validated file list, the seeded
weight/architecture split, rank sharding, and the torchvision ``DataLoader`` path.

The torchvision path is the fallback of the DALI pipelines in :mod:`hnas_fast.data.dali` and takes the
same :class:`ImageOptions` (random-resized crop, flip, normalize for training; shorter-side resize and
center crop for evaluation), the same validated file list and the same sharding rule, so switching
backends changes speed, not data.

**Corrupt images.** Before any loader exists, the folder can be screened (once, by rank 0: see
:mod:`hnas_fast.data.index`): every file is opened with PIL, and either its header is checked
(``validate="header"``: ``Image.verify()`` plus, for JPEGs, the end-of-image marker in the file's last
4 KiB; cheap, catches garbage, wrong formats and truncated files) or it is fully decoded
(``validate="decode"``: also catches damage inside the compressed data, at the cost of one decode per
image). Bad files are counted, reported (a warning with the first few paths, and :attr:`ImageList.bad`
with the reason of each) and left out of the list the readers get. Whatever the screening, a file that
fails when it is loaded (``validate="none"``, damage the header check misses, a file changed during the
run) is skipped too: see :mod:`hnas_fast.data.bad_files`. A file with an image extension whose content is
another image format (a PNG named ``.jpg``) is an image like any other; files without an image extension
are not listed at all.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from hnas_fast.data.bad_files import SkippingDataLoader, Unreadable, shown_bad_files
from hnas_fast.data.folder import IMAGENET_MEAN, IMAGENET_STD

Validate = Literal["none", "header", "decode"]

__all__ = ["ImageList", "ImageListDataset", "ImageOptions", "ShardedSampler", "TorchvisionLoader",
           "make_torchvision_loader", "relative_paths", "resolve_split_root", "scan_image_folder",
           "split_image_list", "torchvision_transform", "warn_bad_images"]


@dataclass(frozen=True)
class ImageOptions:
    """Augmentation shared by the DALI and torchvision paths.

    Args:
        image_size: side of the square crops.
        min_area: lower bound of the random-resized crop's area fraction (upper bound 1; aspect ratio
            3/4..4/3, the torchvision and DALI default).
        flip: random horizontal flip (probability 0.5) for training.
        val_resize: evaluation resizes the shorter side to this, then center-crops ``image_size``
            (default ``round(image_size · 8 / 7)``: 256 for 224, the ImageNet convention).
    """

    image_size: int = 224
    min_area: float = 0.08
    flip: bool = True
    val_resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 1 or not 0 < self.min_area <= 1:
            raise ValueError(f"need image_size >= 1 and 0 < min_area <= 1, got {self}")

    @property
    def eval_resize(self) -> int:
        return self.val_resize or round(self.image_size * 8 / 7)


@dataclass
class ImageList:
    """The readable images of a folder: ``samples`` as (path relative to ``root``, label)."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int]) -> ImageList:
        """The samples at ``indices`` (same root, classes; the bad files stay reported once, here)."""
        return ImageList(self.root, self.classes, [self.samples[i] for i in indices], [])

    def write_file_list(self, path: str | os.PathLike) -> Path:
        """Write DALI's ``file_list`` format: one ``<path relative to root> <label>`` per line.

        DALI takes the last whitespace-separated token as the label, so paths may contain spaces; a
        newline in a file name cannot be written and is rejected.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if any("\n" in rel for rel, _ in self.samples):
            raise ValueError("a file name contains a newline; DALI's file_list cannot express it")
        # Ranks on one machine may write the same list at once: write aside, then rename atomically.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{rel} {label}\n" for rel, label in self.samples))
        os.replace(tmp, path)
        return path


def resolve_split_root(data_dir: str | os.PathLike, train: bool = True) -> Path:
    """``data_dir/train`` (or ``val``/``test`` for ``train=False``) when present, else ``data_dir`` itself."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {data_dir}")
    names = ("train",) if train else ("val", "test")
    for name in names:
        if (data_dir / name).is_dir():
            return data_dir / name
    if (data_dir / "train").is_dir():
        raise FileNotFoundError(f"image folder {data_dir} has train/ but neither val/ nor test/")
    return data_dir


def _has_jpeg_end(path: str, tail: int = 4096) -> bool:
    """Whether the JPEG's end-of-image marker (FF D9) is in its last ``tail`` bytes.

    ``verify()`` reads JPEG headers only, so a truncated file passes it, and DALI's decoder then stops the
    pipeline ("Premature end of JPEG data"); a truncated stream lacks the final marker. Some writers
    append data after it, hence a window rather than the last two bytes.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - tail))
        return b"\xff\xd9" in f.read()


def _check(path: str, validate: Validate) -> str | None:
    """``None`` when ``path`` passes ``validate``, else the reason it does not."""
    try:
        with Image.open(path) as img:
            if validate == "header":
                fmt = img.format
                img.verify()
                if fmt == "JPEG" and not _has_jpeg_end(path):
                    return "truncated JPEG (no end-of-image marker)"
            else:
                img.load()
                if img.mode not in ("RGB", "L", "RGBA", "CMYK", "P", "LA", "I;16", "I", "F"):
                    return f"unsupported mode {img.mode}"
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb…)
        return f"{type(e).__name__}: {e}"
    return None


def relative_paths(paths: list[str], root: Path) -> list[str]:
    """``os.path.relpath(p, root)`` of each path; a prefix cut where the listing joined them onto
    ``root`` (relpath costs more than the stat() of the file at ImageNet scale)."""
    prefix = os.path.join(str(root), "")
    n = len(prefix)
    return [p[n:] if p.startswith(prefix) else os.path.relpath(p, root) for p in paths]


def warn_bad_images(images: ImageList, total: int, stacklevel: int = 2) -> None:
    """Warn once about the files a screening left out of ``images`` (of ``total`` listed)."""
    if images.bad:
        warnings.warn(f"{len(images.bad)} of {total} images under {images.root} are unreadable and skipped: "
                      f"{shown_bad_files(images.bad)}", stacklevel=stacklevel + 1)


def _check_chunk(paths: list[str], validate: Validate) -> list[str | None]:
    return [_check(p, validate) for p in paths]


def _check_all(paths: list[str], validate: Validate, workers: int) -> list[str | None]:
    """:func:`_check` of every path, in order, on ``workers`` forked processes (chunks of files, so the
    inter-process traffic is a few messages per thousand files)."""
    chunk = 512
    if workers <= 1 or len(paths) <= chunk or "fork" not in multiprocessing.get_all_start_methods():
        return _check_chunk(paths, validate)
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    # fork: the children only run PIL on files, never torch, so the parent's state is safe to copy, and
    # they start in milliseconds where spawned ones would import torch again.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return [r for part in pool.map(_check_chunk, chunks, [validate] * len(chunks)) for r in part]


def scan_image_folder(root: str | os.PathLike, validate: Validate = "header", workers: int = 8,
                      listing: tuple[list[str], list[tuple[str, int]]] | None = None,
                      stacklevel: int = 2) -> ImageList:
    """List ``root/<class>/<image>`` (classes and labels as torchvision's ``ImageFolder``), check each file.

    Args:
        root: the folder of class folders.
        validate: ``"header"`` (PIL ``verify()``), ``"decode"`` (full decode) or ``"none"``.
        workers: processes for the checks (PIL's header parsing is Python code that holds the GIL, so
            threads would not add up); ``1`` checks in this process.
        listing: ``(classes, [(absolute path, label)])`` when the caller has listed ``root`` already.
    """
    root = Path(root).expanduser()
    if validate not in ("none", "header", "decode"):
        raise ValueError(f"validate must be 'none', 'header' or 'decode', got {validate!r}")
    if listing is None:
        classes, class_to_idx = find_classes(str(root))
        found = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    else:
        classes, found = listing
    if not found:
        raise ValueError(f"image folder {root} holds no images with extensions {IMG_EXTENSIONS}")
    if validate == "none":
        reasons: list[str | None] = [None] * len(found)
    else:
        reasons = _check_all([p for p, _ in found], validate, workers)
    samples, bad = [], []
    for (_, label), rel, reason in zip(found, relative_paths([p for p, _ in found], root), reasons):
        if reason is None:
            samples.append((rel, label))
        else:
            bad.append((rel, reason))
    images = ImageList(root, classes, samples, bad)
    warn_bad_images(images, len(found), stacklevel)
    if not samples:
        raise ValueError(f"image folder {root}: none of its {len(found)} images is readable")
    return images


def split_image_list(images: ImageList, split: float, seed: int) -> tuple[ImageList, ImageList | None]:
    """Seeded permutation, then ``split`` of it for the weights and the rest for the architecture.

    The permutation also mixes the classes, which matters for DALI: its reader shards a file list into
    contiguous pieces, so a class-sorted list would give each rank a few classes only. ``split >= 1``
    returns ``(all of it, None)`` (one-level search).
    """
    if not 0 < split <= 1:
        raise ValueError(f"split must be in (0, 1], got {split}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    if split >= 1:
        return images.subset(order), None
    n_train = round(split * len(order))
    if not 0 < n_train < len(order):
        raise ValueError(f"split={split} of {len(order)} images leaves one side empty")
    return images.subset(order[:n_train]), images.subset(order[n_train:])


def torchvision_transform(options: ImageOptions, train: bool) -> T.Compose:
    """The torchvision equivalent of the DALI pipeline's augmentation for ``options``."""
    if train:
        ops: list = [T.RandomResizedCrop(options.image_size, scale=(options.min_area, 1.0))]
        if options.flip:
            ops.append(T.RandomHorizontalFlip())
    else:
        ops = [T.Resize(options.eval_resize), T.CenterCrop(options.image_size)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(options.mean, options.std)])


class ImageListDataset(Dataset):
    """Map-style dataset over an :class:`ImageList`; a file failing at load time yields an
    :class:`Unreadable` (set aside by :func:`skip_failed_collate`) instead of raising. Files in ``known_bad``
    are not tried."""

    def __init__(self, images: ImageList, transform: T.Compose | None,
                 known_bad: frozenset[str] = frozenset()) -> None:
        self.images = images
        self.transform = transform
        self.known_bad = known_bad

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Unreadable:
        rel, label = self.images.samples[index]
        if rel in self.known_bad:
            return Unreadable(rel, "known bad")
        try:
            with Image.open(self.images.root / rel) as img:
                img = img.convert("RGB")
        except Exception as e:  # PIL raises many types; a bad file must never end the epoch
            return Unreadable(rel, f"{type(e).__name__}: {e}")
        return (self.transform(img) if self.transform else img), label


class ShardedSampler(Sampler[int]):
    """Rank ``rank`` of ``world_size``: a seeded permutation per pass (``set_epoch``), every
    ``world_size``-th index from ``rank`` on, so each sample is seen exactly once per pass across ranks
    (no padding, unlike ``DistributedSampler``: shard sizes may differ by one).

    ``set_epoch(e, skip=n)`` restarts pass ``e`` after the first ``n`` samples of its permutation (the one
    all ranks share), so a run stopped after ``k`` steps of global batch ``B`` resumes with
    ``skip=k * B`` on any number of processes. ``len()`` is always the whole shard's.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed, self.epoch, self.skip = shuffle, seed, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        return iter(order[self.skip :][self.rank :: self.world_size])


class TorchvisionLoader:
    """The torchvision ``DataLoader`` of one rank's shard: ``(images, labels)`` batches, unreadable files
    skipped and recorded in :attr:`bad` (see :mod:`hnas_fast.data.bad_files`), never an empty batch.

    ``sampler.set_epoch(e)`` picks pass ``e``'s order; ``len()`` is the shard's batch count.
    """

    def __init__(self, images: ImageList, batch_size: int, options: ImageOptions, train: bool, rank: int = 0,
                 world_size: int = 1, shuffle: bool | None = None, seed: int = 0, num_workers: int = 2,
                 known_bad: Iterable[str] = ()) -> None:
        self.images = images
        known = frozenset(known_bad)
        self.dataset = ImageListDataset(images, torchvision_transform(options, train), known)
        shuffle = train if shuffle is None else shuffle
        self.sampler = ShardedSampler(len(images), rank, world_size, shuffle, seed)
        self.loader = SkippingDataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler,
                                         num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                                         persistent_workers=num_workers > 0,
                                         multiprocessing_context="fork" if num_workers > 0 else None,
                                         known_bad=known, fill_empty=train)
        self.bad = self.loader.bad

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.loader)


def make_torchvision_loader(images: ImageList, batch_size: int, options: ImageOptions, train: bool,
                            rank: int = 0, world_size: int = 1, shuffle: bool | None = None, seed: int = 0,
                            num_workers: int = 2, known_bad: Iterable[str] = ()) -> TorchvisionLoader:
    """A :class:`TorchvisionLoader` over ``images`` sharded for ``rank``; ``loader.sampler.set_epoch(e)``
    per epoch; files in ``known_bad`` are skipped without being opened."""
    return TorchvisionLoader(images, batch_size, options, train, rank, world_size, shuffle, seed, num_workers,
                             known_bad)
