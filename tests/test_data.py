"""Data plan and dataset plugins, including the torchvision on-disk formats, fully offline."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import tiny_toml

from stf_eval.config import load_config
from stf_eval.data.base import check_images, conform
from stf_eval.data.plan import build_data
from stf_eval.errors import ConfigError, DataError


@pytest.mark.slow  # heavy: runs in CI's slow step (.ci/run)
def test_embedded_mnist5k_split_is_seeded_stratified_and_disjoint():
    cfg = load_config(text=tiny_toml(), overrides=["data.dataset='mnist5k'", "data.max_train=0",
                                                   "data.max_test=0"])
    a, b = build_data(cfg), build_data(cfg)
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.test) == 5000
    assert np.array_equal(a.test.indices, b.test.indices)
    assert not set(a.train.indices) & set(a.test.indices)
    assert not set(a.val.indices) & set(a.test.indices)
    counts = np.bincount(a.test.y.numpy(), minlength=10)
    assert counts.min() == counts.max() == 150  # stratified: 30% of 500 per class
    assert 0.0 <= float(a.train.x.min()) and float(a.train.x.max()) <= 1.0
    c = build_data(load_config(text=tiny_toml(), overrides=["data.dataset='mnist5k'", "data.split_seed=1"]))
    assert not np.array_equal(a.test.indices[:50], c.test.indices[:50])


def test_caps_and_fingerprint(tiny_data):
    assert len(tiny_data.train) == 600 and len(tiny_data.test) == 300
    fp = tiny_data.train.fingerprint
    assert len(fp) == 16 and fp != tiny_data.test.fingerprint


def _write_idx(path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype_code = 0x08
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root, folder: str, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"),
                                          ("kmnist", "KMNIST")])
def test_torchvision_mnist_family_from_tiny_files(tmp_path, name, folder):
    _fake_mnist(tmp_path, folder)
    cfg = load_config(text=tiny_toml(), overrides=[f"data.dataset='{name}'", f"data.options.root='{tmp_path}'",
                                                   "data.max_train=0", "data.max_test=0"])
    data = build_data(cfg)
    assert data.input_shape == (1, 28, 28)
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 40
    assert float(data.train.x.max()) <= 1.0


def test_torchvision_cifar10_from_tiny_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(np.arange(n) % 10)}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(10)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(20)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # the real files carry md5 sums; tiny stand-ins cannot match them
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    cfg = load_config(text=tiny_toml(), overrides=["data.dataset='cifar10'", f"data.options.root='{tmp_path}'",
                                                   "data.max_train=0", "data.max_test=0"])
    data = build_data(cfg)
    assert data.input_shape == (3, 32, 32) and len(data.test) == 20
    assert data.class_names[0] == "c0"


def test_missing_torchvision_set_says_how_to_get_it(tmp_path):
    cfg = load_config(text=tiny_toml(), overrides=["data.dataset='svhn'", f"data.options.root='{tmp_path}'"])
    with pytest.raises(DataError, match="download = true"):
        build_data(cfg)


def test_conform_and_checks():
    rgb = torch.rand(4, 3, 32, 32)
    gray = conform(rgb, (1, 28, 28))
    assert gray.shape == (4, 1, 28, 28) and 0 <= float(gray.min()) and float(gray.max()) <= 1
    assert conform(torch.rand(2, 1, 8, 8), (3, 32, 32)).shape == (2, 3, 32, 32)
    bad = torch.rand(2, 1, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        check_images(bad, "x")
    with pytest.raises(DataError, match="shape"):
        check_images(torch.rand(2, 8, 8), "x")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        check_images(torch.rand(2, 1, 8, 8) * 255, "x")


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "eel"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    cfg = load_config(text=tiny_toml(), overrides=["data.dataset='image_folder'",
                                                   f"data.options={{root='{tmp_path}', size=16, channels=1}}",
                                                   "data.max_train=0", "data.max_test=0"])
    data = build_data(cfg)
    assert data.input_shape == (1, 16, 16) and data.num_classes == 3
    assert data.class_names == ("cat", "dog", "eel")
    assert len(data.train) + len(data.val) + len(data.test) == 36
    with pytest.raises(ConfigError, match="data.options.root: expected a folder"):
        load_config(text=tiny_toml(), overrides=["data.dataset='image_folder'"])
