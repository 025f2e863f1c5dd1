"""Image loading for ImageNet-style search: DALI's CPU pipeline vs the torchvision DataLoader on the same
JPEG folder, the same augmentation (random-resized crop 224, flip, normalize), batch and threads
(DALI's ``num_threads`` = the DataLoader's ``num_workers``). Reported as images per second over full
epochs, timed interleaved (design.md §4). The folder holds ImageNet-sized photos-like JPEGs
(375×500, smooth random content, quality 90), generated once per session.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from benchmarks.conftest import interleaved
from hnas_fast.data.dali import dali_available, make_dali_loader
from hnas_fast.data.imagenet import ImageOptions, make_torchvision_loader, scan_image_folder

N_IMAGES, CLASSES, BATCH = 192, 4, 32
OPTIONS = ImageOptions(image_size=224)

pytestmark = pytest.mark.skipif(not dali_available(), reason="nvidia.dali cannot be imported")


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        d = root / f"class{i % CLASSES}"
        d.mkdir(exist_ok=True)
        # Low-frequency noise upsampled: JPEG sizes (~40-80 KB) and decode cost close to real photos.
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(d / f"{i}.jpg", quality=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every generated file must pass the scan
        return scan_image_folder(root, validate="header")


def _epoch(loader):
    def run():
        n = 0
        for _, labels in loader:
            n += len(labels)
        assert n == N_IMAGES
        return n

    return run


@pytest.mark.parametrize("threads", [1, 2])
def test_dali_cpu_vs_torchvision(benchmark, jpeg_folder, threads):
    dali = make_dali_loader(jpeg_folder, BATCH, OPTIONS, train=True, num_threads=threads, device="cpu")
    torchvision = make_torchvision_loader(jpeg_folder, BATCH, OPTIONS, train=True, num_workers=threads)
    timing = interleaved(_epoch(dali), _epoch(torchvision), rounds=5)
    benchmark.extra_info.update({
        "threads": threads,
        "images": N_IMAGES,
        "dali_cpu_images_per_s": round(N_IMAGES / (timing["fused_ms"] / 1e3), 1),
        "torchvision_images_per_s": round(N_IMAGES / (timing["reference_ms"] / 1e3), 1),
        "dali_speedup_median_pair": round(timing["speedup_median_pair"], 3),
    })
    benchmark.pedantic(_epoch(dali), rounds=1, warmup_rounds=0)
