"""A run's figure, and the matplotlib setup every figure shares (Agg backend: works headless).

Study figures live in `studies.lib.figures`."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out (tight, unless the figure has a layout engine of its own), write and close `fig`; the path written."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_run_curve(curve: list[dict], path: str | Path, title: str) -> Path:
    """Validation/test accuracy and training loss of one run against epochs."""
    plt = pyplot()
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
    return save_figure(fig, path, dpi=100)
