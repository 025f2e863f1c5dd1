"""CIFAR-10/100 read from the standard python-pickle folders, with the DARTS transforms.

The data are never downloaded: ``data_dir`` must hold ``cifar-10-batches-py`` (or ``cifar-100-python``),
or be that folder itself. torchvision's classes check MD5 sums of the official archives; we only check that
the files are there, so any data set written in the same pickle format (a subset, a re-export) is readable.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from torchvision.datasets import CIFAR10, CIFAR100

# Channel statistics used by the DARTS code (utils._data_transforms_cifar10 / cifar100).
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class Cutout:
    """Zero one random ``length`` x ``length`` square (clipped at the borders) of a CHW tensor image.

    As in DeVries & Taylor and the DARTS code; the centre is drawn with numpy's global RNG there, we draw
    it with torch's so that one RNG state (saved in checkpoints) covers all augmentation.
    """

    def __init__(self, length: int) -> None:
        if length <= 0:
            raise ValueError(f"cutout length must be positive, got {length}")
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        y = int(torch.randint(h, ()).item())
        x = int(torch.randint(w, ()).item())
        y1, y2 = max(0, y - self.length // 2), min(h, y + self.length // 2)
        x1, x2 = max(0, x - self.length // 2), min(w, x + self.length // 2)
        mask = torch.ones((h, w), dtype=img.dtype)
        mask[y1:y2, x1:x2] = 0
        return img * mask

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


def cifar_transforms(
    train: bool, num_classes: int = 10, cutout: int = 0, image_size: int = 32
) -> T.Compose:
    """DARTS transforms: random crop (pad 4) and horizontal flip for training, then normalize; cutout last."""
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if num_classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    ops: list = []
    if image_size != 32:
        ops.append(T.Resize(image_size))
    if train:
        ops += [T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip()]
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if train and cutout > 0:
        ops.append(Cutout(cutout))
    return T.Compose(ops)


def _presence_only(self) -> bool:
    root = Path(self.root) / self.base_folder
    return all((root / name).is_file() for name, _ in self.train_list + self.test_list)


def _load_meta_no_md5(self) -> None:
    import pickle

    path = os.path.join(self.root, self.base_folder, self.meta["filename"])
    if os.path.isfile(path):
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
    else:  # the meta file only names classes; fall back to indices
        self.classes = [str(i) for i in range(int(np.max(self.targets)) + 1)]
    self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class LocalCIFAR10(CIFAR10):
    """CIFAR-10 from local files; file presence is checked instead of the official archives' MD5 sums."""

    _check_integrity = _presence_only
    _load_meta = _load_meta_no_md5


class LocalCIFAR100(CIFAR100):
    """CIFAR-100 (fine labels) from local files; presence checked instead of MD5 sums."""

    _check_integrity = _presence_only
    _load_meta = _load_meta_no_md5


def load_cifar(
    data_dir: str | os.PathLike,
    num_classes: int = 10,
    train: bool = True,
    transform: T.Compose | None = None,
) -> CIFAR10:
    """Open CIFAR-10 (``num_classes=10``) or CIFAR-100 from ``data_dir``.

    ``data_dir`` may be the folder holding ``cifar-10-batches-py`` or that folder itself. Raises
    ``FileNotFoundError`` naming the path and the expected files when they are missing.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    cls = LocalCIFAR10 if num_classes == 10 else LocalCIFAR100
    root = Path(data_dir).expanduser()
    if root.name == cls.base_folder:
        root = root.parent
    folder = root / cls.base_folder
    names = [n for n, _ in cls.train_list + cls.test_list]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-{num_classes} data not found: {folder} must contain {', '.join(names)} "
            f"(missing: {', '.join(missing)}); nothing is downloaded, pass --data-dir pointing at the folder "
            f"that holds {cls.base_folder}"
        )
    return cls(str(root), train=train, transform=transform, download=False)
