"""Fashion-MNIST held as tensors on the training device.

The data folder is, in order: the `root` argument (CLI `--data`), the
environment variable HAT_DATA, or `data/`. It uses torchvision's layout
(`<root>/FashionMNIST/raw/*-ubyte`). Missing files are downloaded; offline
that fails with a message saying how to point at a local copy.

Splits: a fixed validation set (`val_size` examples, chosen by a constant
seed, the same for every run) is carved out of the training set for tuning;
the test set is only for final reporting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SPLIT_SEED = 20190601  # fixed: the validation split never depends on the run seed
NUM_CLASSES = 10


class DataError(RuntimeError):
    pass


@dataclass
class Data:
    x_train: Tensor  # (N, 784) float32 in [0, 1]
    y_train: Tensor  # (N,) int64
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def device(self) -> torch.device:
        return self.x_train.device


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("HAT_DATA") or "data")


def _load_split(root: Path, train: bool):
    import torchvision

    try:
        return torchvision.datasets.FashionMNIST(str(root), train=train, download=False)
    except RuntimeError:
        pass
    try:
        return torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
    except Exception as e:
        raise DataError(
            f"Fashion-MNIST is not in {root.resolve()} and could not be downloaded ({type(e).__name__}: {e}).\n"
            "Point the project at a local copy in torchvision's layout (<dir>/FashionMNIST/raw/*-ubyte):\n"
            "  export HAT_DATA=/path/to/dir      or      --data /path/to/dir"
        ) from None


_CACHE: dict[tuple, Data] = {}


def load(root: str | os.PathLike | None = None, device: torch.device | str = "cpu", val_size: int = 5000) -> Data:
    """The whole dataset as tensors on `device` (cached per process)."""
    root = data_root(root)
    key = (str(root.resolve()), str(device), val_size)
    if key in _CACHE:
        return _CACHE[key]
    tr, te = _load_split(root, True), _load_split(root, False)
    x = tr.data.reshape(len(tr.data), -1).float() / 255.0  # (N, 28, 28) -> (N, 784)
    y = tr.targets.long()
    if not 0 < val_size < len(x):
        raise DataError(f"val_size must be in (0, {len(x)}), got {val_size}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = perm[:val_size], perm[val_size:]
    xt = te.data.reshape(len(te.data), -1).float() / 255.0  # (M, 784)
    data = Data(x[train], y[train], x[val], y[val], xt, te.targets.long())
    data = Data(*(t.to(device) for t in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test)))
    _CACHE[key] = data
    return data


def label_mask(n: int, fraction: float, seed: int, device) -> Tensor:
    """(n,) bool: the fixed labeled subset of a seed: max(1, round(fraction * n)) examples."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * n))
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))[:k]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return mask.to(device)
