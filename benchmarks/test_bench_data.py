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


@pytest.mark.parametrize("threads", [1, 2])
def test_dali_bytes_fed_vs_dali_reader(benchmark, jpeg_folder, threads, tmp_path):
    """The cost of feeding file bytes through ``external_source`` (what lets :class:`DaliLoader` skip a
    corrupt file) against DALI's own ``fn.readers.file``, per batch of the same 32 files, same graph
    after the source, interleaved. Both run synchronously (``run()``), so neither decodes ahead."""
    from nvidia.dali import fn, pipeline_def, types

    from hnas_fast.data.dali import build_image_pipeline

    file_list = tmp_path / "list.txt"
    file_list.write_text("".join(f"{rel} {label}\n" for rel, label in jpeg_folder.samples[:BATCH]))

    @pipeline_def
    def reader_pipeline():
        encoded, _ = fn.readers.file(file_root=str(jpeg_folder.root), file_list=str(file_list))
        images = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
        images = fn.random_resized_crop(images, size=OPTIONS.image_size,
                                        random_area=[OPTIONS.min_area, 1.0])
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                        mean=[255 * m for m in OPTIONS.mean],
                                        std=[255 * s for s in OPTIONS.std],
                                        mirror=fn.random.coin_flip(probability=0.5))

    reader = reader_pipeline(batch_size=BATCH, num_threads=threads, device_id=None, prefetch_queue_depth=1)
    reader.build()
    fed = build_image_pipeline(BATCH, OPTIONS, True, threads, "cpu")
    paths = [jpeg_folder.root / rel for rel, _ in jpeg_folder.samples[:BATCH]]

    def feed():
        fed.feed_input("encoded", [np.fromfile(p, dtype=np.uint8) for p in paths])
        fed.run()

    timing = interleaved(feed, reader.run, rounds=10)
    benchmark.extra_info.update({
        "threads": threads, "batch": BATCH,
        "fed_ms_per_batch": round(timing["fused_ms"], 2),
        "reader_ms_per_batch": round(timing["reference_ms"], 2),
        "reader_over_fed_median_pair": round(timing["speedup_median_pair"], 3),
    })
    benchmark.pedantic(feed, rounds=3, warmup_rounds=1)
