"""Image-folder search data: the validated file list (corrupt files skipped and counted), the seeded split,
rank shards that see every image exactly once per epoch, through DALI's CPU pipeline and the torchvision
fallback. Each generated image is one solid colour that encodes its id, so a crop still tells which file
it came from."""

from __future__ import annotations

import collections
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from hnas_fast.data.dali import dali_available, make_dali_loader, make_image_search_loaders
from hnas_fast.data.imagenet import (
    ImageOptions,
    ShardedSampler,
    make_torchvision_loader,
    scan_image_folder,
    split_image_list,
)

CLASSES, PER_CLASS, SIZE = 3, 5, 16
OPTIONS = ImageOptions(image_size=SIZE, min_area=0.3)
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia.dali cannot be imported")


def _colour(i: int, label: int) -> tuple[int, int, int]:
    return (16 * i + 8, 60 * label + 30, 128)


@pytest.fixture
def folder(tmp_path):
    """``train/c<k>/`` with 15 solid-colour JPEGs of varied sizes, 2 garbage ``.jpg`` and 1 truncated JPEG."""
    root = tmp_path / "data"
    i = 0
    for label in range(CLASSES):
        d = root / "train" / f"c{label}"
        d.mkdir(parents=True)
        for j in range(PER_CLASS):
            img = np.empty((20 + 3 * j, 24 + 2 * i, 3), dtype=np.uint8)
            img[:] = _colour(i, label)
            Image.fromarray(img).save(d / f"img {j}.jpg", quality=95)
            i += 1
    (root / "train" / "c0" / "garbage.jpg").write_bytes(os.urandom(500))
    (root / "train" / "c1" / "empty.jpg").write_bytes(b"")
    whole = (root / "train" / "c2" / "img 0.jpg").read_bytes()
    (root / "train" / "c2" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    return root


def _ids(images: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Recover the id of each solid-colour image (and check its label) from a normalized batch."""
    mean = torch.tensor(OPTIONS.mean).view(1, 3, 1, 1)
    std = torch.tensor(OPTIONS.std).view(1, 3, 1, 1)
    pixels = (images.float().cpu() * std + mean) * 255
    assert pixels.std(dim=(2, 3)).max() < 3  # still solid: a crop of one image, not a mix
    rgb = pixels.mean(dim=(2, 3))
    ids = ((rgb[:, 0] - 8) / 16).round().long().tolist()
    assert ((rgb[:, 1] - 30) / 60).round().long().tolist() == labels.cpu().tolist()
    return ids


def _scan(folder):
    with pytest.warns(UserWarning, match="3 of 18 images"):
        return scan_image_folder(folder / "train", validate="header", workers=2)


def test_scan_skips_and_counts_corrupt_files(folder):
    images = _scan(folder)
    assert len(images) == CLASSES * PER_CLASS and images.classes == ["c0", "c1", "c2"]
    assert sorted(p for p, _ in images.bad) == ["c0/garbage.jpg", "c1/empty.jpg", "c2/truncated.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(scan_image_folder(folder / "train", validate="decode", workers=2)) == CLASSES * PER_CLASS
        assert len(scan_image_folder(folder / "train", validate="none")) == CLASSES * PER_CLASS + 3


def test_split_is_seeded_disjoint_and_complete(folder):
    images = _scan(folder)
    a, b = split_image_list(images, 0.6, seed=3)
    assert len(a) == 9 and len(b) == 6
    assert sorted(a.samples + b.samples) == sorted(images.samples)
    assert split_image_list(images, 0.6, seed=3)[0].samples == a.samples
    assert split_image_list(images, 1.0, seed=3)[1] is None


@needs_dali
def test_dali_cpu_pipeline_shapes_labels_and_shards(folder, tmp_path):
    images = _scan(folder)
    loaders = [make_dali_loader(images, 4, OPTIONS, train=True, rank=r, world_size=2, num_threads=1,
                                device="cpu", seed=5, list_dir=tmp_path / "lists") for r in range(2)]
    assert [len(ld) for ld in loaders] == [2, 2]  # shards of 8 and 7 images, batches of 4
    for _epoch in range(2):  # DALI moves each rank to the other shard in the second epoch
        seen = []
        for ld in loaders:
            for x, y in ld:
                assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
                seen += _ids(x, y)
        assert sorted(seen) == list(range(CLASSES * PER_CLASS))
    # Evaluation: shorter-side resize and center crop, unshuffled, in file-list order.
    ev = make_dali_loader(images, 4, OPTIONS, train=False, num_threads=1, device="cpu",
                          list_dir=tmp_path / "lists")
    order = [i for x, y in ev for i in _ids(x, y)]
    assert order == sorted(order) == list(range(CLASSES * PER_CLASS))


@needs_dali
def test_dali_search_loaders_split_and_report(folder, tmp_path):
    with pytest.warns(UserWarning, match="3 of 18"):
        data = make_image_search_loaders(folder, batch_size=4, split=0.5, seed=1, options=OPTIONS,
                                         backend="dali", num_threads=1, device="cpu", list_dir=tmp_path)
    assert data.backend == "dali" and data.num_classes == CLASSES and len(data.bad) == 3
    train = [i for x, y in data.train for i in _ids(x, y)]
    val = [i for x, y in data.val for i in _ids(x, y)]
    assert len(train) == 8 and len(val) == 7 and sorted(train + val) == list(range(CLASSES * PER_CLASS))


def test_torchvision_fallback_same_options_shards_and_load_failures(folder):
    images = _scan(folder)
    seen = []
    for rank in range(2):
        ld = make_torchvision_loader(images, 4, OPTIONS, train=True, rank=rank, world_size=2, num_workers=0)
        ld.sampler.set_epoch(1)
        for x, y in ld:
            assert x.shape[1:] == (3, SIZE, SIZE) and y.dtype == torch.int64
            seen += _ids(x, y)
    assert sorted(seen) == list(range(CLASSES * PER_CLASS))
    assert collections.Counter(len(ShardedSampler(15, r, 2)) for r in range(2)) == {8: 1, 7: 1}

    # A file that breaks after the scan is skipped at load time and counted, never fatal.
    (images.root / images.samples[0][0]).write_bytes(b"broken")
    ld = make_torchvision_loader(images, 4, OPTIONS, train=False, num_workers=0)
    total = sum(len(y) for _, y in ld)
    assert total == CLASSES * PER_CLASS - 1 and ld.dataset.failures == 1


def test_torchvision_backend_of_search_loaders(folder):
    with pytest.warns(UserWarning, match="3 of 18"):
        data = make_image_search_loaders(folder, batch_size=4, split=1.0, options=OPTIONS,
                                         backend="torchvision", num_threads=0)
    assert data.val is None and data.backend == "torchvision"
    assert sorted(i for x, y in data.train for i in _ids(x, y)) == list(range(CLASSES * PER_CLASS))
