"""The data plan: load the in-distribution set, split it with a recorded seed, attach the OOD sets."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..config import RunConfig
from ..errors import ConfigError, DataError
from ..params import parse_params
from ..registry import DATASETS
from .base import DataBundle, OodSet, Split, check_images, conform


def _stratified_split(y: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Indices for each fraction, stratified by class (scikit-learn does the drawing)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    parts = []
    rest = idx
    remaining = 1.0
    for frac in fractions:
        if frac <= 0:
            parts.append(np.array([], dtype=np.int64))
            continue
        take = frac / remaining
        try:
            rest, part = train_test_split(rest, test_size=take, random_state=seed, stratify=y[rest])
        except ValueError:  # too few examples per class to stratify (tiny sets): draw uniformly
            rest, part = train_test_split(rest, test_size=take, random_state=seed)
        parts.append(np.sort(part))
        remaining -= frac
    return [np.sort(rest)] + parts


def _cap(idx: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if cap and len(idx) > cap:
        rng = np.random.default_rng(seed + 7919)
        idx = np.sort(rng.choice(idx, size=cap, replace=False))
    return idx


def load_dataset(name: str, options: dict, where: str, like=None, size=None, seed=0, **extra):
    plugin_cls = DATASETS.get(name)
    params = parse_params(plugin_cls.Params, options, f"{where}.options")
    return plugin_cls(params).load(like=like, size=size, seed=seed, **extra)


def build_data(cfg: RunConfig) -> DataBundle:
    dc = cfg.data
    plugin_cls = DATASETS.get(dc.dataset)
    if getattr(plugin_cls, "ood_only", False):
        raise ConfigError(f"data.dataset: {dc.dataset!r} is an OOD-only set and cannot be trained on")
    loaded = load_dataset(dc.dataset, dc.options, "data", seed=dc.split_seed)
    check_images(loaded.x, f"dataset {dc.dataset!r}")
    y = loaded.y.numpy()
    if y.min() < 0 or y.max() >= loaded.num_classes:
        raise DataError(f"dataset {dc.dataset!r}: labels must lie in [0, {loaded.num_classes - 1}]")
    seed = dc.split_seed
    if loaded.x_test is None:
        train_idx, val_idx, test_idx = _stratified_split(y, [dc.val_fraction, dc.test_fraction], seed)
        full_x, full_y = loaded.x, loaded.y
        train = Split(full_x[train_idx], full_y[train_idx], train_idx)
        val = Split(full_x[val_idx], full_y[val_idx], val_idx)
        test = Split(full_x[test_idx], full_y[test_idx], test_idx)
    else:
        check_images(loaded.x_test, f"dataset {dc.dataset!r} (test split)")
        train_idx, val_idx = _stratified_split(y, [dc.val_fraction], seed)
        train = Split(loaded.x[train_idx], loaded.y[train_idx], train_idx)
        val = Split(loaded.x[val_idx], loaded.y[val_idx], val_idx)
        test_idx = np.arange(len(loaded.y_test))
        test = Split(loaded.x_test, loaded.y_test, test_idx)
    if dc.max_train:
        train = train.subset(np.searchsorted(train.indices, _cap(train.indices, dc.max_train, seed)))
        if len(val):
            val = val.subset(np.searchsorted(val.indices, _cap(val.indices, max(1, dc.max_train // 5),
                                                                 seed + 1)))
    if dc.max_test:
        test = test.subset(np.searchsorted(test.indices, _cap(test.indices, dc.max_test, seed + 2)))
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"dataset {dc.dataset!r}: the split left no training or test examples")
    shape = tuple(int(s) for s in train.x.shape[1:])
    mean = tuple(float(m) for m in train.x.mean(dim=(0, 2, 3)))
    std = tuple(max(float(s), 1e-3) for s in train.x.std(dim=(0, 2, 3)))
    ood = {}
    for i, (set_name, oc) in enumerate(cfg.ood):
        where = f"data.ood.{set_name}"
        _check_fits_in_memory(oc.size, shape, f"{where}.size")
        extra = {}
        if getattr(DATASETS.get(oc.dataset), "needs_id_pool", False):
            # sets derived from in-distribution images (rotated digits) draw from train and val, never test
            extra["pool"] = Split(torch.cat([train.x, val.x]), torch.cat([train.y, val.y]))
        got = load_dataset(oc.dataset, oc.options, where, like=shape, size=oc.size, seed=seed + 101 + i,
                           **extra)
        x = got.x_test if got.x_test is not None else got.x
        x = conform(x, shape)
        if len(x) > oc.size:
            pick = np.random.default_rng(seed + 211 + i).choice(len(x), size=oc.size, replace=False)
            x = x[torch.as_tensor(np.sort(pick))]
        check_images(x, f"OOD set {set_name!r}")
        ood[set_name] = OodSet(name=set_name, dataset=oc.dataset, group=oc.group, x=x)
    return DataBundle(
        name=dc.dataset, num_classes=loaded.num_classes, input_shape=shape,
        train=train, val=val, test=test, mean=mean, std=std, ood=ood,
        class_names=loaded.class_names, split_seed=seed,
    )


def _check_fits_in_memory(n: int, shape: tuple[int, ...], where: str) -> None:
    """Refuse a set whose float32 images would need more than half of the memory available now."""
    need = 4 * n * math.prod(shape)
    try:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no check
        return
    if need > avail // 2:
        raise DataError(f"{where}: {n:,} images of shape {shape} need {need / 2**20:,.0f} MiB, more than half "
                        f"of the {avail / 2**20:,.0f} MiB available; use a smaller size")


def split_record(data: DataBundle) -> dict:
    """The recorded split (source indices of each part), written into the run directory."""
    def idx(s: Split):
        return [int(i) for i in s.indices] if s.indices is not None else None
    return {"dataset": data.name, "split_seed": data.split_seed,
            "train": idx(data.train), "val": idx(data.val), "test": idx(data.test),
            "ood": {k: {"dataset": v.dataset, "group": v.group, "size": int(len(v.x))}
                    for k, v in data.ood.items()}}
