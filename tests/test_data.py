"""Data: the embedded digits set, CIFAR pickle folders, ImageFolder trees, resumable deterministic loaders."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from hnas_fast.data import Cutout, load_digits_dataset, make_final_loaders, make_search_loaders
from hnas_fast.data.loaders import ResumableSampler, sampler_of


def _all_labels(loader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


# ---------------------------------------------------------------------------------------------- digits
def test_digits_shapes_split_and_normalization():
    train = load_digits_dataset(train=True, image_size=16)
    test = load_digits_dataset(train=False, image_size=16)
    assert len(train) + len(test) == 1797
    assert abs(len(test) - 0.2 * 1797) < 10
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    imgs = train.tensors[0]
    assert abs(float(imgs.mean())) < 1e-3 and abs(float(imgs.std()) - 1) < 1e-2
    assert torch.equal(imgs[:, 0], imgs[:, 2])  # grayscale replicated
    # stratified: every class on both sides
    assert set(train.tensors[1].tolist()) == set(test.tensors[1].tolist()) == set(range(10))


def test_digits_train_and_test_do_not_overlap():
    train = load_digits_dataset(True, 8).tensors[0].flatten(1)
    test = load_digits_dataset(False, 8).tensors[0].flatten(1)
    # Some digits images are exact duplicates in the source data; no more than a handful may match.
    matches = (torch.cdist(test, train) < 1e-6).any(1).sum().item()
    assert matches < 5


def test_digits_search_loaders_two_level_split_and_determinism():
    tr, va, n_cls, in_ch, size = make_search_loaders("digits", batch_size=32, split=0.5, seed=0)
    assert (n_cls, in_ch, size) == (10, 3, 16)
    s_tr, s_va = sampler_of(tr), sampler_of(va)
    assert len(s_tr) == 1438 // 2 and len(s_tr) + len(s_va) == 1438
    assert not set(s_tr.indices.tolist()) & set(s_va.indices.tolist())
    tr2, va2, *_ = make_search_loaders("digits", batch_size=32, split=0.5, seed=0)
    assert torch.equal(_all_labels(tr), _all_labels(tr2))
    assert torch.equal(_all_labels(va), _all_labels(va2))
    tr3, *_ = make_search_loaders("digits", batch_size=32, split=0.5, seed=1)
    assert not torch.equal(_all_labels(tr2), _all_labels(tr3))
    x, y = next(iter(tr))
    assert x.shape == (32, 3, 16, 16) and y.shape == (32,)


def test_digits_one_level_uses_all_training_data():
    tr, va, *_ = make_search_loaders("digits", batch_size=64, one_level=True, image_size=8)
    assert va is None
    assert len(sampler_of(tr)) == 1438
    assert next(iter(tr))[0].shape[-1] == 8


def test_bad_split_and_unknown_dataset():
    with pytest.raises(ValueError, match="split"):
        make_search_loaders("digits", split=1.0)
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        make_search_loaders("mnist")


def test_resumable_sampler_replays_a_pass_from_any_point():
    s = ResumableSampler(range(20), seed=5)
    first = list(iter(s))
    state = s.state_dict()
    second = list(iter(s))  # the next pass differs
    assert sorted(first) == list(range(20)) and first != second
    s2 = ResumableSampler(range(20), seed=99)
    s2.load_state_dict(state, skip=7)
    assert list(iter(s2)) == first[7:]
    assert list(iter(s2)) == second  # and the generator then continues as the original did
    s3 = ResumableSampler(range(20), seed=99)
    s3.load_state_dict(state, skip=None)  # resume at a pass boundary
    assert list(iter(s3)) == second


def test_final_loaders_digits():
    tr, te, n_cls, _, _ = make_final_loaders("digits", batch_size=100, image_size=16)
    assert n_cls == 10
    assert len(sampler_of(tr)) == 1438 and len(sampler_of(te)) == 359
    # test order is fixed
    assert torch.equal(_all_labels(te), _all_labels(te))


# ---------------------------------------------------------------------------------------------- CIFAR
def _fake_cifar(root, n_per_batch: int = 4, classes: int = 10):
    """The real on-disk format: python pickles of {'data': uint8 [N, 3072], 'labels': [...]}."""
    rng = np.random.default_rng(0)
    if classes == 10:
        folder, label_key = root / "cifar-10-batches-py", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta, meta_key = "batches.meta", "label_names"
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files, meta, meta_key = ["train", "test"], "meta", "fine_label_names"
    folder.mkdir(parents=True)
    for name in files:
        entry = {"batch_label": name, "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 label_key: rng.integers(0, classes, n_per_batch).tolist(),
                 "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / meta, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, f)
    return folder


def test_cifar10_reader_on_fake_pickles(tmp_path):
    folder = _fake_cifar(tmp_path)
    tr, va, n_cls, in_ch, size = make_search_loaders("cifar10", tmp_path, batch_size=4, split=0.5)
    assert (n_cls, in_ch, size) == (10, 3, 32)
    assert len(sampler_of(tr)) + len(sampler_of(va)) == 20
    x, _ = next(iter(tr))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    # the folder itself is accepted too
    tr2, _, _, _, _ = make_search_loaders("cifar10", folder, batch_size=4, one_level=True)
    assert len(sampler_of(tr2)) == 20
    tr3, te3, *_ = make_final_loaders("cifar10", tmp_path, batch_size=2, cutout=16)
    assert len(sampler_of(te3)) == 4
    x3, _ = next(iter(tr3))
    assert bool((x3 == 0).all(1).any())  # cutout applied to final-training batches


def test_cifar100_reader_on_fake_pickles(tmp_path):
    _fake_cifar(tmp_path, classes=100)
    tr, _, n_cls, _, _ = make_search_loaders("cifar100", tmp_path, batch_size=2, one_level=True)
    assert n_cls == 100 and len(sampler_of(tr)) == 4


def test_cifar_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        make_search_loaders("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        make_search_loaders("cifar10", tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="needs --data-dir"):
        make_search_loaders("cifar10", None)


def test_cutout_zeroes_one_square():
    torch.manual_seed(0)
    img = torch.rand(3, 32, 32) + 0.5
    out = Cutout(16)(img)
    zero = (out == 0).all(0)
    n = int(zero.sum())
    assert 0 < n <= 256
    rows, cols = zero.any(1).nonzero(), zero.any(0).nonzero()
    assert n == len(rows) * len(cols)  # a rectangle (clipped square)
    assert torch.equal(out[:, ~zero], img[:, ~zero])


# ---------------------------------------------------------------------------------------------- folder
def _fake_folder(root, split_dirs: bool = True):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("val", 2)) if split_dirs else ((".", 6),):
        for cls in ("cat", "dog", "eel"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.jpg")


def test_image_folder_train_val_layout(tmp_path):
    _fake_folder(tmp_path)
    tr, va, n_cls, in_ch, size = make_search_loaders("folder", tmp_path, batch_size=4, image_size=16)
    assert (n_cls, in_ch, size) == (3, 3, 16)
    assert len(sampler_of(tr)) + len(sampler_of(va)) == 18
    # a class-sorted layout is shuffled before the split: both sides see several classes
    labels = {y for _, y in tr.dataset.samples}
    assert len(labels) == 3
    x, _ = next(iter(tr))
    assert x.shape == (4, 3, 16, 16)
    _, te, *_ = make_final_loaders("folder", tmp_path, batch_size=4, image_size=16)
    assert len(sampler_of(te)) == 6


def test_image_folder_single_root_and_errors(tmp_path):
    _fake_folder(tmp_path / "flat", split_dirs=False)
    tr, _, n_cls, _, _ = make_search_loaders("folder", tmp_path / "flat", batch_size=4, one_level=True)
    assert n_cls == 3 and len(sampler_of(tr)) == 18
    with pytest.raises(FileNotFoundError, match="neither val/ nor test/"):
        make_final_loaders("folder", tmp_path / "flat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        make_search_loaders("folder", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nope"):
        make_search_loaders("folder", tmp_path / "nope")


def test_image_folder_loaders_skip_unreadable_files(tmp_path):
    """A zero-byte and a non-image ``.jpg`` in a folder: never fatal; training batches drop them (an all-bad
    one would be refilled), evaluation leaves them out, each recorded once per loader."""
    _fake_folder(tmp_path)
    (tmp_path / "train" / "cat" / "zero.jpg").write_bytes(b"")
    (tmp_path / "val" / "dog" / "page.jpg").write_bytes(b"<html>oops</html>")
    tr, te, *_ = make_final_loaders("folder", tmp_path, batch_size=4, image_size=16)
    for _ in range(2):
        assert sum(len(y) for _, y in tr) == 18 and sum(len(y) for _, y in te) == 6
    assert [rel for rel, _ in tr.bad.entries()] == [os.path.join("cat", "zero.jpg")]
    assert [rel for rel, _ in te.bad.entries()] == [os.path.join("dog", "page.jpg")]
    assert len(tr) == 5  # 19 files listed, batches of 4: the count the resume arithmetic relies on
