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
import shutil
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


RAW_FILES = {  # file: (magic number, bytes per item, header bytes, size of the standard file)
    "train-images-idx3-ubyte": (0x803, 28 * 28, 16, 47_040_016),
    "train-labels-idx1-ubyte": (0x801, 1, 8, 60_008),
    "t10k-images-idx3-ubyte": (0x803, 28 * 28, 16, 7_840_016),
    "t10k-labels-idx1-ubyte": (0x801, 1, 8, 10_008),
}
SPLIT_SIZES = {"train": 60_000, "t10k": 10_000}  # items of each split's files: the training and the test set
SPLIT_SLACK = 0.1  # a copy may hold up to this fraction fewer items per split (deduplicated, as the offline copy)


def check_raw_files(root: Path) -> int:
    """Check the raw files present under `root`/FashionMNIST/raw against their headers; DataError naming the
    first broken file (truncated, padded, foreign, or images and labels of different lengths). Returns how
    many of the four files are present."""
    raw = root / "FashionMNIST" / "raw"
    counts, present = {}, 0
    for name, (magic, item, header, standard) in RAW_FILES.items():
        f = raw / name
        if not f.is_file():
            continue
        present += 1
        size = f.stat().st_size
        fix = (f"delete it to download it again, or point HAT_DATA / --data at a good copy (the standard file has "
               f"{standard:,} bytes)")
        try:
            with open(f, "rb") as fh:
                head = fh.read(header)
        except OSError as e:
            raise DataError(f"data file {f} cannot be read ({e}); {fix}") from None
        if len(head) < header or int.from_bytes(head[:4], "big") != magic:
            raise DataError(f"data file {f} is not a Fashion-MNIST idx file ({size:,} bytes, bad header); {fix}")
        n = int.from_bytes(head[4:8], "big")
        dims = [int.from_bytes(head[8 + 4 * i : 12 + 4 * i], "big") for i in range((header - 8) // 4)]
        if dims and dims != [28, 28]:
            raise DataError(f"data file {f} holds {dims[0]}x{dims[1]} images, not 28x28; {fix}")
        want = header + n * item
        if size != want:
            kind = "truncated" if size < want else "longer than its header says"
            raise DataError(f"data file {f} is {kind}: {size:,} bytes, expected {want:,} for the {n:,} items its "
                            f"header declares; {fix}")
        counts[name] = n
    for split in ("train", "t10k"):
        a, b = counts.get(f"{split}-images-idx3-ubyte"), counts.get(f"{split}-labels-idx1-ubyte")
        if a is not None and b is not None and a != b:
            raise DataError(f"data files {raw}/{split}-*: {a:,} images but {b:,} labels; "
                            "point HAT_DATA / --data at a good copy")
    for name, n in counts.items():  # each split has its standard size: swapped or foreign files are not read
        split = name.split("-", 1)[0]
        standard = SPLIT_SIZES[split]
        low = round(standard * (1 - SPLIT_SLACK))
        if not low <= n <= standard:
            role = "training" if split == "train" else "test"
            other = [s for s, size in SPLIT_SIZES.items() if s != split and round(size * (1 - SPLIT_SLACK)) <= n <= size]
            hint = (f": that is the size of the {'training' if other[0] == 'train' else 'test'} set, so the train and "
                    "t10k files look swapped") if other else ""
            raise DataError(f"data file {raw / name} holds {n:,} items, but Fashion-MNIST's {role} set has {standard:,} "
                            f"(a copy may hold up to {SPLIT_SLACK:.0%} fewer){hint}; point HAT_DATA / --data at a good "
                            "copy")
    return present


def _load_split(root: Path, train: bool):
    import torchvision

    if check_raw_files(root) == len(RAW_FILES):
        try:
            return torchvision.datasets.FashionMNIST(str(root), train=train, download=False)
        except Exception as e:
            raise DataError(f"Fashion-MNIST in {root.resolve()} could not be read ({type(e).__name__}: {e}); "
                            "point HAT_DATA / --data at a good copy") from None
    created = [d for d in (root, root / "FashionMNIST", root / "FashionMNIST" / "raw") if not d.exists()]
    try:
        ds = torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
    except Exception as e:
        for d in reversed(created):  # a failed download leaves the data folder as it found it
            shutil.rmtree(d, ignore_errors=True)
        raise DataError(
            f"Fashion-MNIST is not in {root.resolve()} and could not be downloaded ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); point the project at a local copy in "
            "torchvision's layout (<dir>/FashionMNIST/raw/*-ubyte): export HAT_DATA=/path/to/dir or --data /path/to/dir"
        ) from None
    check_raw_files(root)
    return ds


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
