"""NVIDIA DALI pipelines for ImageNet-style folders: decode, random-resized crop, flip and normalize off the
training loop, on the GPU (``device="mixed"`` decoding) when CUDA is there, on the CPU otherwise.

    loaders = make_image_search_loaders("/data/imagenet", batch_size=64, split=0.5, rank=r, world_size=n)
    for images, labels in loaders.train: ...

* **Files in, not a DALI reader.** :class:`DaliLoader` reads each batch's files itself and feeds their
  bytes through ``fn.external_source``. DALI's own reader cannot skip a file its decoder then fails on
  (a failure invalidates the whole pipeline, and nothing tells which sample of the batch caused it; the
  message names the file only sometimes), so a corrupt file mid-epoch used to end the run. Knowing each
  batch's files, the loader finds the culprit, records it and goes on (see :class:`DaliLoader`). The order
  and sharding are the torchvision path's :class:`~hnas_fast.data.imagenet.ShardedSampler`: the same
  files reach the same rank in the same order whichever backend decodes them.
* **The file list** is the one of :mod:`hnas_fast.data.index` (screened once by rank 0 when
  ``validate`` is not ``"none"``), split once (seeded) into the weights' and the architecture's part,
  each read by its own pipeline with training augmentation (DARTS's split of the training set);
  ``split=1`` gives one-level search a single pipeline.
* **CPU pipelines** use ``device_id=None``. ``device_id=-1`` is a trap: DALI takes it as "no device
  given" in some places and as an invalid CUDA id in others.

:func:`make_image_search_loaders` falls back to the torchvision ``DataLoader`` path of
:mod:`hnas_fast.data.imagenet` (same options, list and sharding) when DALI is not installed or
``backend="torchvision"``.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hnas_fast.data.bad_files import BadFileLog, usable_batches
from hnas_fast.data.imagenet import (
    ImageList,
    ImageOptions,
    ShardedSampler,
    Validate,
    make_torchvision_loader,
    resolve_split_root,
    split_image_list,
)
from hnas_fast.data.index import shared_image_list

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


def build_image_pipeline(batch_size: int, options: ImageOptions, train: bool, num_threads: int = 2,
                         device: str | torch.device = "cpu", seed: int = 0) -> Any:
    """A built DALI pipeline: encoded files fed as ``"encoded"`` (a batch of 1-D ``uint8`` arrays, at most
    ``batch_size``) in, images ``[N, 3, S, S]`` float out, augmented for training or evaluation.

    ``device`` is ``"cpu"`` (CPU decoding and augmentation, ``device_id=None``) or a CUDA device (decoding
    with ``device="mixed"``, augmentation on that GPU).
    """
    from nvidia.dali import fn, pipeline_def, types

    device = torch.device(device)
    gpu = device.type == "cuda"
    mean = [255 * m for m in options.mean]  # the decoder yields 0..255; torchvision's stats are on 0..1
    std = [255 * s for s in options.std]

    @pipeline_def
    def pipeline():  # DALI traces this once into its graph
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if train:
            images = fn.random_resized_crop(images, size=options.image_size,
                                            random_area=[options.min_area, 1.0])
            crop: dict[str, Any] = {}
            mirror = fn.random.coin_flip(probability=0.5) if options.flip else 0
        else:
            images = fn.resize(images, resize_shorter=options.eval_resize)
            crop = {"crop": (options.image_size, options.image_size)}  # centered by default
            mirror = 0
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                        mirror=mirror, **crop)

    # One batch in flight: the loader itself runs the pipeline a batch ahead, on its own thread.
    pipe = pipeline(batch_size=batch_size, num_threads=num_threads,
                    device_id=(device.index if device.index is not None else torch.cuda.current_device())
                    if gpu else None, seed=seed, prefetch_queue_depth=1)
    pipe.build()
    return pipe


def _read(path: Path) -> np.ndarray | str:
    """The file's bytes, or why they cannot be had (a zero-byte file is refused here: DALI's decoders
    reject it with an error that does not name the file)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return data if data.size else "empty file"


class DaliLoader:
    """Iterable of ``(images, labels)`` batches decoded and augmented by DALI; one pass per ``iter()``.

    ``len()`` is this shard's batch count; ``images`` are float ``[N, 3, S, S]`` and ``labels`` int64
    ``[N]``, on the pipeline's device. ``sampler.set_epoch(e)`` picks pass ``e``'s order.

    The loader reads the files itself and feeds their bytes to the pipeline, in the order of its
    :class:`~hnas_fast.data.imagenet.ShardedSampler` (the torchvision path's rule: one seeded permutation
    per pass, every ``world_size``-th file from ``rank`` on), so it knows which files each batch holds. That
    is what lets a corrupt file be skipped: DALI has no way to skip a sample that fails to decode (its
    operators process whole batches; a failure invalidates the pipeline). When a batch fails, each of its
    files is decoded alone by a one-sample pipeline of the same graph; those that fail are recorded in
    :attr:`bad` and never fed again, the pipeline is rebuilt, and the batch is decoded again without them.
    If no file fails alone, the batch is retried once on the rebuilt pipeline, then the error is raised.
    Batches are decoded one ahead on a background thread, overlapping the training step.
    """

    def __init__(self, images: ImageList, batch_size: int, options: ImageOptions, train: bool, rank: int = 0,
                 world_size: int = 1, shuffle: bool | None = None, num_threads: int = 2,
                 device: str | torch.device = "cpu", seed: int = 0, known_bad: Iterable[str] = ()) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = images
        self.batch_size, self.options, self.train = batch_size, options, train
        self.num_threads, self.device, self.seed = num_threads, torch.device(device), seed
        shuffle = train if shuffle is None else shuffle
        self.sampler = ShardedSampler(len(images), rank, world_size, shuffle, seed)
        self.bad = BadFileLog(known_bad)
        self.rebuilds = 0  # pipelines rebuilt after a decoding failure
        self._pipe: Any = None
        self._probe: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hnas_fast_dali")
        self._io = ThreadPoolExecutor(max_workers=max(1, num_threads), thread_name_prefix="hnas_fast_read")
        self._pipe = self._build(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return usable_batches(self._batches(), self.train)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = list(self.sampler)
        plan = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        ahead: Future | None = self._worker.submit(self._decode, plan[0]) if plan else None
        for k in range(len(plan)):
            assert ahead is not None
            batch = ahead.result()
            ahead = self._worker.submit(self._decode, plan[k + 1]) if k + 1 < len(plan) else None
            yield batch

    # ------------------------------------------------------------------------------ on the worker thread
    def _build(self, batch_size: int) -> Any:
        self.rebuilds += 1
        # A rebuilt pipeline must not replay the random crops of the one it replaces.
        return build_image_pipeline(batch_size, self.options, self.train, self.num_threads, self.device,
                                    self.seed + 7919 * (self.rebuilds - 1))

    def _run(self, pipe: Any, data: list[np.ndarray]) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        pipe.feed_input("encoded", data)
        (out,) = pipe.run()
        tensor = out.as_tensor()
        result = torch.empty(tuple(tensor.shape()), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor, result, cuda_stream=stream)
        if stream is not None:
            # The copy must be done before the next run() may recycle DALI's output buffer; this blocks
            # the loader's thread only.
            stream.synchronize()
        return result

    def _decode(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = self.images.samples
        todo = [i for i in indices if samples[i][0] not in self.bad]
        read = list(self._io.map(lambda i: _read(self.images.root / samples[i][0]), todo))
        keep, data = [], []
        for i, r in zip(todo, read):
            if isinstance(r, str):
                self.bad.add(samples[i][0], r)
            else:
                keep.append(i)
                data.append(r)
        retried = False
        # Each failed round removes a file or spends the one retry, so this ends.
        while keep:
            try:
                images = self._run(self._pipe, data)
                break
            except RuntimeError as e:  # the pipeline is invalid now
                self._pipe = self._build(self.batch_size)
                failed = {j for j, d in enumerate(data) if self._fails_alone(samples[keep[j]][0], d)}
                if not failed:
                    if retried:
                        names = ", ".join(samples[i][0] for i in keep)
                        raise RuntimeError(f"DALI failed twice on a batch in which every file decodes alone "
                                           f"({names}): {e}") from e
                    retried = True
                keep = [i for j, i in enumerate(keep) if j not in failed]
                data = [d for j, d in enumerate(data) if j not in failed]
        if not keep:
            return torch.empty(0, 3, self.options.image_size, self.options.image_size,
                               device=self.device), torch.empty(0, dtype=torch.long, device=self.device)
        labels = torch.tensor([samples[i][1] for i in keep], dtype=torch.long)
        return images, labels.to(self.device, non_blocking=True)

    def _fails_alone(self, rel: str, data: np.ndarray) -> bool:
        """Decode one file through a one-sample pipeline of the same graph; record it in :attr:`bad` if
        that fails."""
        if self._probe is None:
            self._probe = build_image_pipeline(1, self.options, self.train, 1, self.device, self.seed)
        try:
            self._run(self._probe, [data])
            return False
        except RuntimeError as e:
            self._probe = None  # invalid after the failure
            self.bad.add(rel, _dali_reason(e))
            return True


def _dali_reason(e: Exception) -> str:
    """The informative line of a DALI pipeline error (its text repeats boilerplate and a traceback)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    skip = ("Critical error", "Current pipeline", "Error in", "which was used", "File ", "encountered",
            "C++ context", "Stacktrace", "[frame")
    useful = [ln for ln in lines if not ln.startswith(skip)]
    return f"DALI: {useful[0] if useful else lines[0] if lines else type(e).__name__}"


def make_dali_loader(images: ImageList, batch_size: int, options: ImageOptions, train: bool, rank: int = 0,
                     world_size: int = 1, shuffle: bool | None = None, num_threads: int = 2,
                     device: str | torch.device = "cpu", seed: int = 0,
                     known_bad: Iterable[str] = ()) -> DaliLoader:
    """A :class:`DaliLoader` over ``images`` for shard ``rank`` of ``world_size``; files in ``known_bad``
    are skipped without being read."""
    return DaliLoader(images, batch_size, options, train, rank, world_size, shuffle, num_threads, device,
                      seed, known_bad)


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
                              index_dir: str | Path | None = None,
                              share: Callable[[Path | None], Path | None] | None = None,
                              known_bad: Iterable[str] = ()) -> ImageSearchLoaders:
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
        index_dir, share: where rank 0 keeps the folder's index, and the broadcast from rank 0 that hands
            its path to the other ranks (see :func:`~hnas_fast.data.index.shared_image_list`).
        known_bad: files (relative to the split's root) skipped without being read, e.g. the ones a
            resumed run found unreadable.
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
    images = shared_image_list(resolve_split_root(data_dir, train=True), validate, max(2, num_threads),
                               index_dir, rank, share)
    parts = split_image_list(images, split, seed)
    known_bad = tuple(known_bad)

    def loader(part: ImageList, offset: int) -> Iterable:
        if backend == "dali":
            return make_dali_loader(part, batch_size, options, True, rank, world_size, True, num_threads,
                                    device, seed + offset, known_bad)
        return make_torchvision_loader(part, batch_size, options, True, rank, world_size, True, seed + offset,
                                       num_threads, known_bad)

    train = loader(parts[0], 0)
    val = loader(parts[1], 1) if parts[1] is not None else None
    return ImageSearchLoaders(train, val, images.classes, backend, images.bad)
