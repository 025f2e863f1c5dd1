"""NVIDIA DALI pipelines for ImageNet-style folders: decode, random-resized crop, flip and normalize off the
training loop, on the GPU (``device="mixed"`` decoding) when CUDA is there, on the CPU otherwise.

    loaders = make_image_search_loaders("/data/imagenet", batch_size=64, split=0.5, rank=r, world_size=n)
    for images, labels in loaders.train: ...

* **Reader.** ``fn.readers.file(file_root=…, file_list=…, shard_id=rank, num_shards=world_size,
  random_shuffle=…, pad_last_batch=True, name="Reader")``. The file list is the validated one of
  :func:`~hnas_fast.data.imagenet.scan_image_folder` (corrupt files are counted, reported and left out before
  the pipeline exists; DALI's decoders raise on them, which would end the run mid-epoch), written in a
  seeded class-mixing order because DALI shards a list into contiguous pieces.
* **Iterator.** ``DALIGenericIterator(…, reader_name="Reader", last_batch_policy=PARTIAL)``: the epoch size
  and the shard come from the reader, the padding of the last batch is dropped, so each image is yielded
  exactly once per epoch across the ranks. DALI moves each rank to the next shard every epoch
  (``stick_to_shard=False``), which keeps the union exact and varies what a rank sees.
* **CPU pipelines** use ``device_id=None``. ``device_id=-1`` is a trap: DALI takes it as "no device
  given" in some places and as an invalid CUDA id in others.
* **Train/val for two-level search**: the list is split once (seeded) into the weights' and the
  architecture's part, each read by its own pipeline with training augmentation (DARTS's split of the
  training set); ``split=1`` gives one-level search a single pipeline.

:func:`make_image_search_loaders` falls back to the torchvision ``DataLoader`` path of
:mod:`hnas_fast.data.imagenet` (same options, list and sharding) when DALI is not installed or
``backend="torchvision"``.
"""

from __future__ import annotations

import functools
import importlib
import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from hnas_fast.data.imagenet import (
    ImageList,
    ImageOptions,
    Validate,
    make_torchvision_loader,
    resolve_split_root,
    scan_image_folder,
    split_image_list,
)

Backend = Literal["auto", "dali", "torchvision"]

__all__ = ["DaliLoader", "ImageSearchLoaders", "build_image_pipeline", "dali_available",
           "make_dali_loader", "make_image_search_loaders"]


@functools.cache
def dali_available() -> bool:
    """Whether ``nvidia.dali`` and its PyTorch plugin import (``pip install nvidia-dali-cuda130``).

    A real import, not a package lookup: an installed DALI can still fail to load its libraries.
    """
    try:
        importlib.import_module("nvidia.dali")
        importlib.import_module("nvidia.dali.plugin.pytorch")
    except Exception:  # ImportError, or OSError from a missing shared library
        return False
    return True


def build_image_pipeline(file_root: str | Path, file_list: str | Path, batch_size: int, options: ImageOptions,
                         train: bool, shard_id: int = 0, num_shards: int = 1, shuffle: bool | None = None,
                         num_threads: int = 2, device: str | torch.device = "cpu", seed: int = 0) -> Any:
    """A built DALI pipeline yielding ``(images [N,3,S,S] float, labels [N,1] int32)`` for one shard.

    ``device`` is ``"cpu"`` (CPU decoding and augmentation, ``device_id=None``) or a CUDA device (decoding
    with ``device="mixed"``, augmentation on that GPU).
    """
    from nvidia.dali import fn, pipeline_def, types

    device = torch.device(device)
    gpu = device.type == "cuda"
    shuffle = train if shuffle is None else shuffle
    mean = [255 * m for m in options.mean]  # the decoder yields 0..255; torchvision's stats are on 0..1
    std = [255 * s for s in options.std]

    @pipeline_def
    def pipeline():  # DALI traces this once into its graph
        jpegs, labels = fn.readers.file(file_root=str(file_root), file_list=str(file_list), shard_id=shard_id,
                                        num_shards=num_shards, random_shuffle=shuffle, pad_last_batch=True,
                                        name="Reader")
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if train:
            images = fn.random_resized_crop(images, size=options.image_size,
                                            random_area=[options.min_area, 1.0])
            crop: dict[str, Any] = {}
            mirror = fn.random.coin_flip(probability=0.5) if options.flip else 0
        else:
            images = fn.resize(images, resize_shorter=options.eval_resize)
            crop = {"crop": (options.image_size, options.image_size)}  # centered by default
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                          mirror=mirror, **crop)
        return images, (labels.gpu() if gpu else labels)

    pipe = pipeline(batch_size=batch_size, num_threads=num_threads,
                    device_id=(device.index if device.index is not None else torch.cuda.current_device())
                    if gpu else None, seed=seed, prefetch_queue_depth=2)
    pipe.build()
    return pipe


class DaliLoader:
    """Iterable of ``(images, labels)`` batches over a DALI pipeline; one pass per ``iter()``.

    ``len()`` is this shard's batch count; ``images`` are float ``[N, 3, S, S]`` and ``labels`` int64
    ``[N]``, on the pipeline's device. ``bad`` lists the files the scan left out.
    """

    def __init__(self, pipeline: Any, images: ImageList) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.pipeline = pipeline
        self.images = images
        self._iterator = DALIGenericIterator([pipeline], ["images", "labels"], reader_name="Reader",
                                             last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        meta = pipeline.reader_meta("Reader")
        # The iterator's pass covers the largest shard; smaller shards end on a partial batch.
        self.shard_size = math.ceil(meta["epoch_size"] / meta["number_of_shards"])

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.pipeline.max_batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self._iterator:
            out = batch[0]
            yield out["images"], out["labels"].reshape(-1).long()


def make_dali_loader(images: ImageList, batch_size: int, options: ImageOptions, train: bool, rank: int = 0,
                     world_size: int = 1, shuffle: bool | None = None, num_threads: int = 2,
                     device: str | torch.device = "cpu", seed: int = 0,
                     list_dir: str | Path | None = None) -> DaliLoader:
    """A :class:`DaliLoader` over ``images`` for shard ``rank`` of ``world_size``; the file list goes to
    ``list_dir`` (a fresh temporary folder by default)."""
    list_dir = Path(list_dir) if list_dir is not None else Path(tempfile.mkdtemp(prefix="hnas_fast_dali_"))
    kind = "train" if train else "eval"
    file_list = images.write_file_list(list_dir / f"{kind}_seed{seed}_n{len(images)}.txt")
    pipe = build_image_pipeline(images.root, file_list, batch_size, options, train, rank, world_size, shuffle,
                                num_threads, device, seed)
    return DaliLoader(pipe, images)


@dataclass
class ImageSearchLoaders:
    """Loaders of an image-folder search: ``train`` (weights), ``val`` (architecture; ``None`` for
    one-level search), the class names, the backend used and the files skipped as unreadable."""

    train: Iterable
    val: Iterable | None
    classes: list[str]
    backend: str
    bad: list[tuple[str, str]]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def make_image_search_loaders(data_dir: str | Path, batch_size: int, split: float = 0.5, seed: int = 0,
                              options: ImageOptions | None = None, rank: int = 0, world_size: int = 1,
                              backend: Backend = "auto", num_threads: int = 2,
                              device: str | torch.device | None = None, validate: Validate = "header",
                              list_dir: str | Path | None = None) -> ImageSearchLoaders:
    """Search loaders over the training images of ``data_dir`` (``data_dir/train`` if present).

    Args:
        split: fraction of the (validated, seeded-shuffled) images for the weights; the rest trains the
            architecture. ``1`` is one-level search (``val`` is ``None``).
        rank, world_size: this process's shard; every rank must pass the same ``seed``.
        backend: ``"dali"``, ``"torchvision"`` or ``"auto"`` (DALI when importable).
        num_threads: DALI's CPU threads, or the ``DataLoader``'s workers.
        device: where DALI decodes and augments (default: the current CUDA device when there is one);
            the torchvision path always produces CPU tensors.
        validate: the pre-scan's check of every file (see :mod:`hnas_fast.data.imagenet`).
    """
    options = options or ImageOptions()
    if backend not in ("auto", "dali", "torchvision"):
        raise ValueError(f"backend must be 'auto', 'dali' or 'torchvision', got {backend!r}")
    if backend == "auto":
        backend = "dali" if dali_available() else "torchvision"
    if backend == "dali" and not dali_available():
        raise RuntimeError("backend='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda130")
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    images = scan_image_folder(resolve_split_root(data_dir, train=True), validate=validate,
                               workers=max(2, num_threads))
    parts = split_image_list(images, split, seed)

    def loader(part: ImageList, offset: int) -> Iterable:
        if backend == "dali":
            return make_dali_loader(part, batch_size, options, True, rank, world_size, True, num_threads,
                                    device, seed + offset, list_dir)
        return make_torchvision_loader(part, batch_size, options, True, rank, world_size, True, seed + offset,
                                       num_threads)

    train = loader(parts[0], 0)
    val = loader(parts[1], 1) if parts[1] is not None else None
    return ImageSearchLoaders(train, val, images.classes, backend, images.bad)
