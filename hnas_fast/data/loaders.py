"""Data loaders for search and final training, with samplers whose position can be saved and restored.

Search follows DARTS: the training set is split once (a seeded permutation, so class-sorted layouts such as
ImageFolder do not put whole classes on one side) into a weight-training part and an architecture-validation
part (``split`` = fraction for weights, 0.5 in DARTS). One-level search (StacNAS) trains on all of it.

Every loader owns its ``torch.Generator``s (the sampler's for the order, the loader's for worker seeds), so
creating an iterator never draws from torch's global RNG and a resumed run can replay an epoch exactly:
``ResumableSampler.state_dict()`` captures the generator as it was when the current pass began, and
``load_state_dict(state, skip=n)`` restarts that pass after its first ``n`` samples (``skip=None``: go on
with a new pass from the generator's saved current state).

**Several processes** (``rank`` of ``world_size``): every rank holds the same split and the same sampler
generator; each pass draws one permutation of the whole part (identical on every rank) and rank ``r`` takes
every ``world_size``-th sample of it from ``r`` on. With a global batch of ``world_size × b``, after ``k``
steps exactly the first ``k × world_size × b`` samples of the permutation have been used, on any number of
processes, so a run checkpointed on N processes resumes mid-epoch on M (``skip`` counts samples of the
global permutation). One process (the default) is the plain, unsharded sampler.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hnas_fast.data import digits, folder
from hnas_fast.data.bad_files import SkippingDataLoader
from hnas_fast.data.cifar import cifar_transforms, load_cifar
from hnas_fast.data.folder import TolerantImageFolder

# ``imagenet`` is an ImageNet-style folder searched through hnas_fast.data.dali (DALI or torchvision, with a
# corrupt-file scan); for final training it opens like ``folder``.
DATASETS = ("digits", "cifar10", "cifar100", "folder", "imagenet")


class ResumableSampler(Sampler[int]):
    """Random permutation of ``indices`` per pass, drawn from its own generator; resumable mid-pass.

    With ``world_size > 1`` it yields rank ``rank``'s share (every ``world_size``-th sample) of the pass's
    permutation, which is the same on every rank (same ``seed``); ``len()`` is that share's size.
    """

    def __init__(self, indices: Sequence[int], seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.indices = torch.as_tensor(list(indices), dtype=torch.int64)
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self._pass_state: torch.Tensor | None = None  # generator state when the current pass began
        self._resume: tuple[torch.Tensor, int] | None = None

    def __len__(self) -> int:
        return len(range(self.rank, len(self.indices), self.world_size))

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None:
            state, skip = self._resume
            self.generator.set_state(state)
            self._resume = None
        self._pass_state = self.generator.get_state()
        order = torch.randperm(len(self.indices), generator=self.generator) if self.shuffle else None
        idx = self.indices[order] if order is not None else self.indices
        # Skip first, then shard: ``skip`` counts samples of the global order, whatever the process count.
        return iter(idx[skip:][self.rank :: self.world_size].tolist())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``pass_state``: the generator when the current pass began; ``gen_state``: the generator now."""
        now = self.generator.get_state()
        start = self._pass_state if self._pass_state is not None else now
        return {"pass_state": start.clone(), "gen_state": now.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor], skip: int | None = None) -> None:
        """With ``skip`` an int, the next pass replays the saved pass from its ``skip``-th sample (counted in
        the permutation all ranks share) on; with ``skip=None`` the generator continues from ``gen_state``
        (the next pass is a new one)."""
        if skip is None:
            self.generator.set_state(state["gen_state"].clone())
            self._resume = None
        else:
            self._resume = (state["pass_state"].clone(), int(skip))


def _loader(ds: Dataset, indices: Sequence[int], batch_size: int, seed: int, shuffle: bool,
            workers: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    sampler = ResumableSampler(indices, seed, shuffle, rank, world_size)
    # The loader's own generator seeds the workers; without it DataLoader draws from the global RNG.
    gen = torch.Generator().manual_seed(seed + 7919)
    kwargs: dict[str, Any] = dict(batch_size=batch_size, sampler=sampler, num_workers=workers,
                                  generator=gen, pin_memory=torch.cuda.is_available(), drop_last=False,
                                  persistent_workers=False)
    if isinstance(ds, TolerantImageFolder):
        # Image files can fail to load: the loader drops and records them. Only evaluation passes are
        # unshuffled; they leave an all-bad batch out instead of repeating another.
        return SkippingDataLoader(ds, fill_empty=shuffle, **kwargs)
    return DataLoader(ds, **kwargs)


def _require_dir(data: str, data_dir: str | os.PathLike | None) -> str:
    if data_dir is None:
        raise ValueError(f"--data {data} needs --data-dir (a local folder; nothing is downloaded)")
    if not os.path.isdir(os.path.expanduser(str(data_dir))):
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    return str(data_dir)


def open_dataset(data: str, data_dir: str | os.PathLike | None, train: bool, augment: bool,
                 image_size: int | None = None, cutout: int = 0) -> tuple[Dataset, int, int, int]:
    """Return ``(dataset, num_classes, in_channels, image_size)`` for a named data source.

    ``augment`` turns on the training transforms (crop, flip, cutout); digits are never augmented (a flipped
    digit is another symbol).
    """
    if data == "digits":
        size = image_size or digits.DEFAULT_IMAGE_SIZE
        return digits.load_digits_dataset(train=train, image_size=size), digits.NUM_CLASSES, 3, size
    if data in ("cifar10", "cifar100"):
        n = 10 if data == "cifar10" else 100
        size = image_size or 32
        tf = cifar_transforms(augment, n, cutout if augment else 0, size)
        return load_cifar(_require_dir(data, data_dir), n, train, tf), n, 3, size
    if data in ("folder", "imagenet"):
        size = image_size or folder.DEFAULT_IMAGE_SIZE
        ds = folder.load_image_folder(_require_dir(data, data_dir), train,
                                      folder.folder_transforms(augment, size, cutout))
        return ds, len(ds.classes), 3, size
    raise ValueError(f"unknown data set {data!r}; choose one of {', '.join(DATASETS)}")


def make_search_loaders(
    data: str = "digits",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    split: float = 0.5,
    one_level: bool = False,
    seed: int = 0,
    workers: int = 0,
    image_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader, DataLoader | None, int, int, int]:
    """Loaders for architecture search: ``(train, val or None, num_classes, in_channels, image_size)``.

    Two-level: the training set is split (seeded permutation) into ``split`` for weights and the rest for
    architecture validation, both augmented as in DARTS's search. One-level: all of it trains, ``val`` is
    None. Same ``seed`` → same split and same batch order.

    ``rank``/``world_size``: this process's share of each part (see the module docstring); ``batch_size``
    is then the per-process batch, and every rank must pass the same ``seed``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not one_level and not 0.0 < split < 1.0:
        raise ValueError(f"split must be in (0, 1) for two-level search, got {split}")
    ds, num_classes, in_ch, size = open_dataset(data, data_dir, True, True, image_size)
    n = len(ds)
    if n == 0:
        raise ValueError(f"data set {data} at {data_dir} is empty")
    if one_level:
        if n < world_size:
            raise ValueError(f"{n} images cannot be shared by {world_size} processes")
        train = _loader(ds, range(n), batch_size, seed, True, workers, rank, world_size)
        return train, None, num_classes, in_ch, size
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int(n * split)
    if n_train == 0 or n_train == n:
        raise ValueError(f"split {split} of {n} images leaves one side empty")
    if min(n_train, n - n_train) < world_size:
        raise ValueError(f"split {split} of {n} images leaves a side too small for {world_size} processes")
    train = _loader(ds, perm[:n_train], batch_size, seed + 1, True, workers, rank, world_size)
    val = _loader(ds, perm[n_train:], batch_size, seed + 2, True, workers, rank, world_size)
    return train, val, num_classes, in_ch, size


def make_final_loaders(
    data: str = "digits",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 96,
    cutout: int = 0,
    seed: int = 0,
    workers: int = 0,
    image_size: int | None = None,
    eval_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader, int, int, int]:
    """Loaders for final training: ``(train, test, num_classes, in_channels, image_size)``.

    The whole training set, augmented (with ``cutout`` when > 0), and the test set in a fixed order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    train_ds, num_classes, in_ch, size = open_dataset(data, data_dir, True, True, image_size, cutout)
    test_ds, _, _, _ = open_dataset(data, data_dir, False, False, size)
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise ValueError(f"data set {data} at {data_dir} has an empty train or test part")
    train = _loader(train_ds, range(len(train_ds)), batch_size, seed + 1, True, workers)
    test = _loader(test_ds, range(len(test_ds)), eval_batch_size or batch_size, seed + 3, False, workers)
    return train, test, num_classes, in_ch, size


def sampler_of(loader: DataLoader) -> ResumableSampler:
    """The resumable sampler behind a loader made here."""
    s: Any = loader.sampler
    if not isinstance(s, ResumableSampler):
        raise TypeError("loader was not made by hnas_fast.data.loaders")
    return s


__all__ = ["DATASETS", "ResumableSampler", "make_final_loaders", "make_search_loaders",
           "open_dataset", "sampler_of"]
