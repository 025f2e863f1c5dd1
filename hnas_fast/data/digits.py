"""The embedded default dataset: scikit-learn's 8x8 handwritten digits, upscaled to RGB-like tensors.

1,797 grayscale images in 10 classes ship with scikit-learn, so a search runs with no download. Images are
upscaled bilinearly (the search network's reduction cells need more than 8x8 pixels), replicated to three
channels so the stems built for RGB data apply unchanged, and normalized with the statistics of the
training part. The train/test partition is a fixed, stratified 80/20 split that never depends on the run
seed, so every run reports accuracy on the same held-out images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

NUM_CLASSES = 10
DEFAULT_IMAGE_SIZE = 16
TEST_FRACTION = 0.2
# The partition seed is a property of the dataset, not of a run: changing the run seed must not move images
# between the training and the test part.
_PARTITION_SEED = 20240601


def _partition(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split: per class, a fixed shuffle, then the last TEST_FRACTION of it goes to test."""
    g = torch.Generator().manual_seed(_PARTITION_SEED)
    train_idx, test_idx = [], []
    for c in range(NUM_CLASSES):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = round(idx.numel() * TEST_FRACTION)
        test_idx.append(idx[idx.numel() - n_test:])
        train_idx.append(idx[: idx.numel() - n_test])
    return torch.sort(torch.cat(train_idx)).values, torch.sort(torch.cat(test_idx)).values


def load_digits_dataset(train: bool = True, image_size: int = DEFAULT_IMAGE_SIZE) -> TensorDataset:
    """Return the training (1,438 images) or test (359 images) part as a ``TensorDataset``.

    Items are ``(image, label)`` with ``image`` a float32 tensor of shape ``(3, image_size, image_size)``,
    zero mean and unit variance over the training part, and ``label`` an int64 scalar.
    """
    if image_size < 8:
        raise ValueError(f"digits image_size must be >= 8 (the source images are 8x8), got {image_size}")
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel range 0..16
    targets = torch.as_tensor(bunch.target, dtype=torch.int64)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    train_idx, test_idx = _partition(targets)
    mean = images[train_idx].mean()
    std = images[train_idx].std()
    images = ((images - mean) / std).expand(-1, 3, -1, -1).contiguous()
    idx = train_idx if train else test_idx
    return TensorDataset(images[idx], targets[idx])
