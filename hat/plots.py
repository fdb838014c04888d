"""Figures (matplotlib, Agg backend: works headless)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close `fig`; the path written."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


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
    return save_figure(fig, path, dpi=100)


def plot_curves_ci(curves: dict[str, list[list[dict]]], path: str | Path, title: str, key: str = "val_acc",
                   x: str = "epoch") -> Path:
    """Mean learning curve per arm with a 95% t-CI band across seeds.

    curves: {arm: [curve of seed 0, curve of seed 1, ...]}, each curve a list of
    evaluation dicts; seeds whose run diverged are passed as empty lists and skipped.
    """
    import numpy as np

    from studies.stats import mean_ci_t

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        xs = np.array([runs[0][i][x] for i in range(n)])
        ys = np.array([[r[i][key] for i in range(n)] for r in runs])  # (seeds, evals)
        stats = [mean_ci_t(ys[:, i]) for i in range(n)]
        m = np.array([s[0] for s in stats])
        ax.plot(xs, m, label=f"{arm} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats], alpha=0.2)
    ax.set_xlabel(x)
    ax.set_ylabel(key.replace("_", " ") + " (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_paired_differences(diffs: dict[str, np.ndarray], path: str | Path, title: str) -> Path:  # noqa: F821
    """Per-seed paired differences (arm - control) as points, with the mean."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(diffs) + 2), 4))
    for i, d in enumerate(diffs.values()):
        d = np.asarray(d, dtype=float)
        jitter = np.linspace(-0.15, 0.15, len(d)) if len(d) > 1 else np.zeros(1)
        ax.scatter(i + jitter, d, s=14, alpha=0.7)
        ax.hlines(np.mean(d), i - 0.3, i + 0.3, color="k")
    ax.axhline(0, color="grey", linestyle=":")
    ax.set_xticks(range(len(diffs)), list(diffs), rotation=30, ha="right")
    ax.set_ylabel("test acc − control (points)")
    ax.set_title(title)
    return save_figure(fig, path)
