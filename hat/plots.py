"""Figures (matplotlib, Agg backend: works headless)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run_curve(curve: list[dict], path: str | Path, title: str) -> Path:
    """Validation/test accuracy and training loss of one run against epochs."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [e["epoch"] for e in curve]
    ax1.plot(ep, [e["val_acc"] for e in curve], label="validation")
    ax1.plot(ep, [e["test_acc"] for e in curve], label="test", linestyle="--")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("accuracy (%)")
    ax1.legend()
    ax2.plot(ep[1:], [e["train_loss"] for e in curve[1:]])
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("training loss")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
