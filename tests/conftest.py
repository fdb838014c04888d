"""Shared fixtures: data location, a throwaway MLflow store, cached datasets (real and synthetic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_SHARED_DATA = REPO.parent / "shared" / "data"
if _SHARED_DATA.is_dir():
    os.environ.setdefault("HAT_DATA", str(_SHARED_DATA))

_RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def real_data_available() -> bool:
    from hat.data import data_root

    raw = data_root() / "FashionMNIST" / "raw"
    return all((raw / f).is_file() for f in _RAW_FILES)


@pytest.fixture
def tmp_tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(scope="session")
def shared_tracking_uri(tmp_path_factory) -> str:
    """One throwaway MLflow store for the session (creating a SQLite store costs seconds); runs are looked up by id."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow_store')}/mlflow.db"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The Fashion-MNIST folder; skips the test when the data is not there (CI has it)."""
    if not real_data_available():
        pytest.skip("Fashion-MNIST not found (set HAT_DATA); CI has it")
    from hat.data import data_root

    return data_root()


@pytest.fixture(scope="session")
def smoke_data(data_dir):
    """Real Fashion-MNIST with the smoke preset's validation size, loaded once per session."""
    from hat import data as hat_data
    from hat.config import PRESETS

    return hat_data.load(None, "cpu", val_size=PRESETS["smoke"]["val_size"])


def make_toy_data(n_train: int = 400, n_eval: int = 100, dim: int = 6, seed: int = 0):
    """Synthetic, learnable 10-class data in the `hat.data.Data` layout (no files needed).

    Every training row is distinct, so a batch can be mapped back to its example indices.
    """
    from hat.data import NUM_CLASSES, Data

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(NUM_CLASSES, dim, generator=g) * 2

    def split(n):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        x = centers[y] + 0.5 * torch.randn(n, dim, generator=g)
        return x.float(), y.long()

    xtr, ytr = split(n_train)
    xv, yv = split(n_eval)
    xt, yt = split(n_eval)
    return Data(xtr, ytr, xv, yv, xt, yt)


@pytest.fixture(scope="session")
def toy_data():
    return make_toy_data()
