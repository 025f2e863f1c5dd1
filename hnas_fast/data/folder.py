"""Image folders in torchvision's ImageFolder layout (``root/<class>/<image>``).

``data_dir`` is either one ImageFolder root (search only), or holds ``train/`` and ``val/`` (or ``test/``)
ImageFolder roots; final training evaluates on ``val/`` (or ``test/``). Images are resized to a square
``image_size`` and normalized with ImageNet statistics. A file that fails to load is not fatal: the
dataset returns an :class:`~hnas_fast.data.bad_files.Unreadable` for it, which the loaders of
:mod:`hnas_fast.data.loaders` drop and record (see :mod:`hnas_fast.data.bad_files`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torchvision.transforms as T
from torchvision.datasets import ImageFolder

from hnas_fast.data.bad_files import Unreadable
from hnas_fast.data.cifar import Cutout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 32


def folder_transforms(train: bool, image_size: int = DEFAULT_IMAGE_SIZE, cutout: int = 0) -> T.Compose:
    """Resize the short side and center-crop to ``image_size``; random crop (pad 4) and flip when training."""
    ops: list = [T.Resize(image_size), T.CenterCrop(image_size)]
    if train:
        ops += [T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()]
    ops += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and cutout > 0:
        ops.append(Cutout(cutout))
    return T.Compose(ops)


def _split_root(data_dir: Path, train: bool) -> Path:
    if train:
        return data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    for name in ("val", "test"):
        if (data_dir / name).is_dir():
            return data_dir / name
    # A single root holds only training images: evaluating on them would report training accuracy.
    raise FileNotFoundError(f"image folder {data_dir} has neither val/ nor test/ to evaluate on; "
                            f"lay it out as {data_dir}/train/<class>/... and {data_dir}/val/<class>/...")


class TolerantImageFolder(ImageFolder):
    """``ImageFolder`` whose unreadable files come out as :class:`Unreadable` samples instead of raising."""

    def __getitem__(self, index: int) -> tuple | Unreadable:
        try:
            return super().__getitem__(index)
        except Exception as e:  # PIL raises many types; one bad file must not end an epoch
            return Unreadable(os.path.relpath(self.samples[index][0], self.root), f"{type(e).__name__}: {e}")


def load_image_folder(
    data_dir: str | os.PathLike, train: bool = True, transform: T.Compose | None = None
) -> TolerantImageFolder:
    """Open the training (or evaluation) ImageFolder under ``data_dir``; clear errors when absent or empty."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {data_dir}")
    root = _split_root(data_dir, train)
    if not any(p.is_dir() for p in root.iterdir()):
        raise ValueError(f"image folder {root} is empty: expected one sub-folder of images per class")
    try:
        return TolerantImageFolder(str(root), transform=transform)
    except FileNotFoundError as e:  # torchvision's message lacks the root when no class has a valid image
        raise ValueError(f"image folder {root} holds no readable images: {e}") from e
