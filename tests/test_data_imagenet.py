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

from hnas_fast.data.bad_files import BadFileLog, fill_empty_batches, read_bad_files, write_bad_files
from hnas_fast.data.dali import dali_available, make_dali_loader, make_image_search_loaders
from hnas_fast.data.imagenet import (
    ImageOptions,
    ShardedSampler,
    make_torchvision_loader,
    relative_paths,
    scan_image_folder,
    split_image_list,
)
from hnas_fast.data.index import indexed_image_list, shared_image_list

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
                                device="cpu", seed=5) for r in range(2)]
    assert [len(ld) for ld in loaders] == [2, 2]  # shards of 8 and 7 images, batches of 4
    orders = []
    for epoch in range(2):  # a new seeded order per epoch, the same rule as the torchvision path
        seen = []
        for ld in loaders:
            ld.sampler.set_epoch(epoch)
            for x, y in ld:
                assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
                seen += _ids(x, y)
        assert sorted(seen) == list(range(CLASSES * PER_CLASS))
        orders.append(seen)
    assert orders[0] != orders[1]
    # Evaluation: shorter-side resize and center crop, unshuffled, in file-list order.
    ev = make_dali_loader(images, 4, OPTIONS, train=False, num_threads=1, device="cpu")
    order = [i for x, y in ev for i in _ids(x, y)]
    assert order == sorted(order) == list(range(CLASSES * PER_CLASS))


@needs_dali
def test_dali_search_loaders_split_and_report(folder, tmp_path):
    with pytest.warns(UserWarning, match="3 of 18"):
        data = make_image_search_loaders(folder, batch_size=4, split=0.5, seed=1, options=OPTIONS,
                                         backend="dali", num_threads=1, device="cpu")
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
    assert total == CLASSES * PER_CLASS - 1 and [rel for rel, _ in ld.bad.entries()] == [images.samples[0][0]]


def test_torchvision_backend_of_search_loaders(folder):
    with pytest.warns(UserWarning, match="3 of 18"):
        data = make_image_search_loaders(folder, batch_size=4, split=1.0, options=OPTIONS,
                                         backend="torchvision", num_threads=0)
    assert data.val is None and data.backend == "torchvision"
    assert sorted(i for x, y in data.train for i in _ids(x, y)) == list(range(CLASSES * PER_CLASS))


# ------------------------------------------------------------------------------------------ data faults
BAD = ("c0/garbage.jpg", "c1/empty.jpg", "c2/truncated.jpg")


@pytest.fixture
def faulty(folder):
    """``folder`` plus a PNG named ``.jpg`` (an image like any other: id 15, class c1) and a ``.txt`` file
    (not an image extension: never listed)."""
    img = np.empty((22, 26, 3), dtype=np.uint8)
    img[:] = _colour(CLASSES * PER_CLASS, 1)
    Image.fromarray(img).save(folder / "train" / "c1" / "really a png.jpg", format="PNG")
    (folder / "train" / "c2" / "notes.txt").write_text("not an image")
    return folder


GOOD = list(range(CLASSES * PER_CLASS + 1))  # the solid-colour ids, the PNG included


def _backends() -> list[str]:
    return ["torchvision", "dali"] if dali_available() else ["torchvision"]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("validate", ["none", "header"])
def test_bad_files_never_stop_a_pass_on_either_pipeline(faulty, backend, validate):
    """Two ranks, two epochs: every good image exactly once per epoch across the ranks, every bad file
    recorded (by the screening, or by the rank whose shard met it), as many batches as planned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the screening's warning (validate="header")
        data = [make_image_search_loaders(faulty, batch_size=3, split=1.0, seed=2, options=OPTIONS, rank=r,
                                          world_size=2, backend=backend, num_threads=1, device="cpu",
                                          validate=validate) for r in range(2)]
    assert [len(d.bad) for d in data] == [0 if validate == "none" else 3] * 2
    met: list[str] = []
    for epoch in range(2):
        seen = []
        for d in data:
            d.train.sampler.set_epoch(epoch)
            batches = list(d.train)
            assert len(batches) == len(d.train)  # filled, never dropped
            for x, y in batches:
                assert len(y) > 0 and x.shape[1:] == (3, SIZE, SIZE)
                seen += _ids(x, y)
            met += [rel for rel, _ in d.train.bad.take()]
        assert sorted(seen) == GOOD
    # Each failing file is recorded by the rank that met it, once per rank (the search loop merges the
    # ranks' records into one list).
    assert sorted(set(met)) == ([] if validate == "header" else sorted(BAD))
    assert all(len(d.train.bad.entries()) == len(set(d.train.bad.entries())) for d in data)
    assert sorted(p for p, _ in data[0].bad) == (sorted(BAD) if validate == "header" else [])


@pytest.mark.parametrize("backend", _backends())
def test_a_batch_of_only_bad_files_is_filled(tmp_path, backend):
    """Unshuffled order, batches of 2: the first batch holds only the two bad files. In training it is
    replaced by a repeat of the next batch (the loader still yields its 3 planned batches); in evaluation
    it is left out (a repeat would count images twice)."""
    root = tmp_path / "c0"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"")
    (root / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    for i in range(4):
        img = np.empty((20, 20, 3), dtype=np.uint8)
        img[:] = _colour(i, 0)
        Image.fromarray(img).save(root / f"img{i}.jpg", quality=95)
    images = scan_image_folder(tmp_path, validate="none")

    def make(train, known_bad=()):
        if backend == "dali":
            return make_dali_loader(images, 2, OPTIONS, train=train, shuffle=False, num_threads=1,
                                    device="cpu", known_bad=known_bad)
        return make_torchvision_loader(images, 2, OPTIONS, train=train, shuffle=False, num_workers=0,
                                       known_bad=known_bad)

    ld = make(train=True)
    ids = [_ids(x, y) for x, y in ld]
    assert ids == [[0, 1], [0, 1], [2, 3]]
    assert sorted(rel for rel, _ in ld.bad.entries()) == ["c0/a.jpg", "c0/b.jpg"]
    assert [_ids(x, y) for x, y in make(train=False)] == [[0, 1], [2, 3]]
    # Known bad files (a resumed run's) are not even opened, and not reported again.
    again = make(train=True, known_bad=["c0/a.jpg", "c0/b.jpg"])
    assert [_ids(x, y) for x, y in again] == ids and len(again.bad) == 0


def test_fill_empty_batches_keeps_the_count():
    e = (torch.empty(0), torch.empty(0))

    def b(v):
        return (torch.tensor([v]), torch.tensor([v]))

    out = [int(y) for _, y in fill_empty_batches([e, e, b(1), e, b(2), e])]
    assert out == [1, 1, 1, 1, 2, 2]
    assert list(fill_empty_batches([e, e])) == []


@needs_dali
def test_dali_failure_inside_a_decodable_header_is_found_by_the_probe(tmp_path):
    """A JPEG whose header passes but whose data is cut: the batch fails in DALI, the one-sample probe
    names the file, the rebuilt pipeline decodes the rest of the batch."""
    root = tmp_path / "c0"
    root.mkdir()
    for i in range(3):
        img = np.empty((24, 24, 3), dtype=np.uint8)
        img[:] = _colour(i, 0)
        Image.fromarray(img).save(root / f"img{i}.jpg", quality=95)
    whole = (root / "img1.jpg").read_bytes()
    (root / "img1.jpg").write_bytes(whole[: len(whole) // 2])
    images = scan_image_folder(tmp_path, validate="none")
    ld = make_dali_loader(images, 3, OPTIONS, train=False, num_threads=1, device="cpu")
    assert [_ids(x, y) for x, y in ld] == [[0, 2]]
    ((rel, reason),) = ld.bad.entries()
    assert rel == "c0/img1.jpg" and reason.startswith("DALI") and ld.rebuilds == 2
    assert [_ids(x, y) for x, y in ld] == [[0, 2]] and ld.rebuilds == 2  # not retried in the next pass


@needs_dali
def test_dali_batch_failure_no_file_explains_is_raised_after_one_retry(folder, monkeypatch):
    """When the batch fails but every file decodes alone, the loader retries once on a fresh pipeline,
    then raises naming the batch's files (it never loops, never drops good files)."""
    images = _scan(folder)
    ld = make_dali_loader(images, 4, OPTIONS, train=False, num_threads=1, device="cpu")
    real = ld._run
    calls = []

    def flaky(pipe, data):
        calls.append(len(data))
        if len(data) > 1:
            raise RuntimeError("Critical error in pipeline:\nsomething unrelated to any file")
        return real(pipe, data)

    monkeypatch.setattr(ld, "_run", flaky)
    with pytest.raises(RuntimeError, match=r"failed twice .*img 0\.jpg"):
        next(iter(ld))
    assert calls == [4, 1, 1, 1, 1, 4, 1, 1, 1, 1] and len(ld.bad) == 0


def test_bad_files_txt_round_trip(tmp_path):
    path = write_bad_files(tmp_path / "bad_files.txt", [("a b/c.jpg", "OSError: x"), ("d.jpg", "empty file")])
    assert read_bad_files(path) == [("a b/c.jpg", "OSError: x"), ("d.jpg", "empty file")]
    assert read_bad_files(tmp_path / "missing.txt") == []
    log = BadFileLog()
    assert log.add("x", "r1\nmore") and not log.add("x", "r2") and log.take() == [("x", "r1 more")]
    assert log.take() == [] and len(log) == 1


# ------------------------------------------------------------------------------------------ folder index
def test_index_is_built_once_by_rank_0_and_reused(faulty, tmp_path, monkeypatch):
    import hnas_fast.data.index as index

    calls = []
    real = index.scan_image_folder
    monkeypatch.setattr(index, "scan_image_folder", lambda *a, **k: calls.append(a) or real(*a, **k))
    shared: list = []
    root = faulty / "train"
    idx = tmp_path / "idx"
    with pytest.warns(UserWarning, match="3 of 19"):
        r0 = shared_image_list(root, "header", 2, idx, rank=0, share=lambda p: shared.append(p) or p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rank 1 neither screens nor warns
        r1 = shared_image_list(root, "header", 2, idx, rank=1, share=lambda _: shared[0])
    assert len(calls) == 1 and r1.samples == r0.samples and r1.bad == r0.bad and r1.classes == r0.classes
    assert list(idx.iterdir()) == [shared[0]]
    # A rerun on the unchanged folder reads the index (and still warns); a changed folder is screened.
    with pytest.warns(UserWarning, match="3 of 19"):
        again, path, hit = indexed_image_list(root, "header", 2, idx)
    assert hit and path == shared[0] and again.samples == r0.samples and len(calls) == 1
    (root / "c0" / "garbage.jpg").unlink()
    with pytest.warns(UserWarning, match="2 of 18"):
        changed, path2, hit = indexed_image_list(root, "header", 2, idx)
    assert not hit and path2 != path and len(calls) == 2 and len(changed.bad) == 2
    # Another validation mode is another index.
    assert not indexed_image_list(root, "none", 2, idx)[2]


def test_rank_0_failure_reaches_the_other_ranks(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        shared_image_list(tmp_path, "header", 1, tmp_path / "idx", rank=0, share=lambda p: p)
    with pytest.raises(RuntimeError, match="rank 0 could not list"):
        shared_image_list(tmp_path, "header", 1, tmp_path / "idx", rank=1, share=lambda _: None)


def test_screening_on_processes_matches_one_process(tmp_path):
    """Over 512 files the checks run on forked processes, in chunks; same verdicts, same order."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="JPEG")
    good = buf.getvalue()
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(330):
            data = good if i % 97 else good[: len(good) // 2]  # a truncated file now and then
            (tmp_path / f"c{c}" / f"{i:03d}.jpg").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = scan_image_folder(tmp_path, "header", workers=1)
        two = scan_image_folder(tmp_path, "header", workers=2)
    assert one.samples == two.samples and one.bad == two.bad and len(one.bad) == 8


def test_relative_paths_match_relpath(tmp_path):
    paths = [str(tmp_path / "a" / "b.jpg"), str(tmp_path / "c d.jpg"), "/elsewhere/x.jpg"]
    assert relative_paths(paths, tmp_path) == [os.path.relpath(p, tmp_path) for p in paths]
