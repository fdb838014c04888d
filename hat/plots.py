"""Figures (matplotlib, Agg backend: works headless)."""

from __future__ import annotations

from pathlib import Path


def _plt():
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


CONTROL_COLOR = "#333333"
VERDICT_COLORS = {"supported": "#1a7f37", "negligible": "#b35900", "refuted": "#cf222e", "inconclusive": "#6e7781"}


def arm_colors(arms: list[str], control="control") -> dict[str, str]:
    """One colour per arm, fixed by the arm's position in `arms`: pass the same list to every figure of a study.

    `control`: the control arm's name, or a collection of names (studies with one control per condition). Controls
    are dark grey; the others take tab10 (tab20 beyond nine other arms), greys left out, in order."""
    import matplotlib

    controls = {control} if isinstance(control, str) else set(control)
    others = [a for a in arms if a not in controls]
    if len(others) <= 9:  # tab10 without its grey, which would read as the control
        palette = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
    else:  # tab20 without its greys
        palette = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (14, 15)]
    colors = {a: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, a in enumerate(others)}
    colors.update({a: CONTROL_COLOR for a in arms if a in controls})
    return colors


def suptitle(fig, title: str, fontsize: float = 10) -> None:
    """The figure's title, wrapped to its width."""
    import textwrap

    width = max(30, int(fig.get_size_inches()[0] * 72 / (0.6 * fontsize)))
    fig.suptitle(textwrap.fill(title, width), fontsize=fontsize)


def grid(n: int, ncols: int) -> tuple[int, int]:
    """(rows, cols) of a small-multiples grid for n panels, at most `ncols` wide."""
    cols = max(1, min(ncols, n))
    return -(-max(n, 1) // cols), cols


def _band(runs: list[list[dict]], key: str, x: str):
    """(x, 25th percentile, median, 75th percentile) over seeds, on the evaluations every run has."""
    import numpy as np

    n = min(len(r) for r in runs)
    xs = np.array([runs[0][i][x] for i in range(n)], float)
    ys = np.array([[r[i][key] for i in range(n)] for r in runs], float)  # (seeds, evals)
    q25, q50, q75 = np.nanpercentile(ys, [25, 50, 75], axis=0)
    return xs, q25, q50, q75


def curves_figure(curves: dict[str, list[list[dict]]], title: str, colors: dict[str, str] | None = None,
                  control="control", key: str = "val_acc", x: str = "epoch", ncols: int = 3,
                  ylabel: str = "validation accuracy (%)", xlabel: str = "epoch"):
    """Learning curves as small multiples: one panel per arm, each showing the arm's median over seeds (line)
    and interquartile range (band) against its control's, in grey. curves: {arm: [curve of each seed]}, a curve a
    list of evaluation dicts; a seed whose run diverged is an empty list, left out and counted in the panel title.
    control: the control's name, or {arm: its control} (arms without one are drawn alone; controls get no panel of
    their own unless no other arm is left). Panels share both axes. Returns the figure (each panel: one line per
    drawn arm, labelled by arm)."""
    plt = _plt()
    reference = ({a: control for a in curves if a != control and control in curves} if isinstance(control, str)
                 else {a: c for a, c in control.items() if a in curves and c in curves})
    controls = set(reference.values()) | ({control} if isinstance(control, str) else set())
    colors = colors or arm_colors(list(curves), controls)
    panels = [a for a in curves if a not in controls] or list(curves)
    rows, cols = grid(len(panels), ncols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    for ax, arm in zip(axes.flat, panels):
        for name in ([reference[arm]] if arm in reference else []) + [arm]:
            runs = [r for r in curves[name] if r]
            if not runs:
                continue
            ctl = name in controls and name != arm
            xs, lo, med, hi = _band(runs, key, x)
            ax.fill_between(xs, lo, hi, color=colors[name], alpha=0.18 if ctl else 0.3, linewidth=0)
            ax.plot(xs, med, color=colors[name], lw=1.2 if ctl else 1.8, label=f"{name} (n={len(runs)})",
                    marker="o" if len(xs) <= 6 else None, ms=3)
        n_all, n_ok = len(curves[arm]), sum(1 for r in curves[arm] if r)
        ax.set_title(arm + (f" ({n_all - n_ok} of {n_all} diverged)" if n_ok < n_all else ""), fontsize=9,
                     color=colors[arm])
        if ax.get_lines():
            ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    suptitle(fig, title)
    return fig


def plot_learning_curves(curves: dict[str, list[list[dict]]], path: str | Path, title: str,
                         colors: dict[str, str] | None = None, **kw) -> Path:
    """`curves_figure` written to `path` (PNG, 110 dpi)."""
    return save_figure(curves_figure(curves, title, colors, **kw), path)


def differences_figure(rows: list[dict], title: str, colors: dict[str, str] | None = None):
    """Paired differences per hypothesis, one panel per metric.

    rows: one dict per hypothesis with "key", "arm", "d" (per-seed differences arm - control, diverged runs
    already scored as the failure value), "mean", "lo", "hi" (95% CI), "margin", "verdict", "metric", "unit".
    Draws the per-seed differences (dots, the arm's colour), the mean with its 95% CI (black), the equivalence
    band ±margin (grey) and zero, and writes the verdict above each hypothesis."""
    import numpy as np
    from matplotlib.patches import Rectangle

    plt = _plt()
    colors = colors or arm_colors([r["arm"] for r in rows])
    metrics = list(dict.fromkeys(r["metric"] for r in rows)) or ["test_acc"]
    widths = [max(2.0, 0.85 * sum(r["metric"] == m for r in rows) + 1.2) for m in metrics]
    fig, axes = plt.subplots(1, len(metrics), figsize=(sum(widths) + 0.6, 4.8), squeeze=False,
                             gridspec_kw={"width_ratios": widths}, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        mine = [r for r in rows if r["metric"] == metric]
        for i, r in enumerate(mine):
            d = np.asarray(r["d"], float)
            m = float(r["margin"])
            ax.add_patch(Rectangle((i - 0.42, -m), 0.84, 2 * m, color="0.85", zorder=0, lw=0))
            jitter = np.linspace(-0.18, 0.18, len(d)) if len(d) > 1 else np.zeros(len(d))
            ax.scatter(i + jitter, d, s=16, color=colors.get(r["arm"], "C0"), alpha=0.75, zorder=2)
            lo, hi = r["lo"], r["hi"]
            if np.isfinite(lo) and np.isfinite(hi):
                ax.errorbar([i + 0.3], [r["mean"]], yerr=[[r["mean"] - lo], [hi - r["mean"]]], fmt="D", ms=5,
                            color="k", capsize=4, lw=1.4, zorder=3)
            elif np.isfinite(r["mean"]):
                ax.plot([i + 0.3], [r["mean"]], "D", ms=5, color="k", zorder=3)
            ax.text(i, 1.01, r["verdict"], transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7.5, rotation=20, color=VERDICT_COLORS.get(r["verdict"], "k"), fontweight="bold")
        ax.axhline(0, color="k", lw=0.8, ls=":")
        ax.set_xlim(-0.6, len(mine) - 0.4)
        ax.set_xticks(range(len(mine)), [f"{r['key']}\n({r['arm']})" for r in mine], rotation=35, ha="right",
                      fontsize=8)
        ax.set_xlabel("hypothesis (arm)")
        ax.set_ylabel(f"{metric}: arm − control ({mine[0]['unit'] if mine else ''})")
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Line2D([], [], color="k", marker="D", ls="-", label="mean, 95% CI"),
               Rectangle((0, 0), 1, 1, color="0.85", label="±margin (equivalence band)"),
               plt.Line2D([], [], color="0.5", marker="o", ls="", label="one seed")]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=3)
    suptitle(fig, title)
    return fig


def plot_differences(rows: list[dict], path: str | Path, title: str, colors: dict[str, str] | None = None) -> Path:
    """`differences_figure` written to `path` (PNG, 110 dpi)."""
    return save_figure(differences_figure(rows, title, colors), path)


def tuning_figure(traces: dict[str, list[dict]], title: str, colors: dict[str, str] | None = None, ncols: int = 5):
    """Tuning per arm as small multiples: each trial's objective (dots; pruned trials as crosses at their last
    reported value), the best so far among the counted complete trials (step line) and the chosen trial (star).
    traces: {arm: [{"number", "state", "value" (None unless complete), "last" (last reported value),
    "counted" (within the arm's budget)}, ...]}."""
    plt = _plt()
    colors = colors or arm_colors(list(traces))
    arms = list(traces) or ["(no tuning)"]
    rows, cols = grid(len(arms), ncols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows + 0.9), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, arm in zip(axes.flat, arms):
        ts = traces.get(arm, [])
        c = colors.get(arm, "C0")
        done = [t for t in ts if t["state"] == "COMPLETE" and t["value"] is not None]
        pruned = [t for t in ts if t["state"] == "PRUNED" and t.get("last") is not None]
        ax.scatter([t["number"] for t in done], [t["value"] for t in done], s=18, zorder=3, label="complete",
                   color=[c if t.get("counted", True) else "none" for t in done], edgecolor=c)
        if pruned:
            ax.scatter([t["number"] for t in pruned], [t["last"] for t in pruned], color=c, marker="x", s=22,
                       zorder=3, label="pruned (last value)")
        best, xs, ys = None, [], []
        for t in sorted(done, key=lambda t: t["number"]):
            if t.get("counted", True) and (best is None or t["value"] > best["value"]):
                best = t
            if best is not None:
                xs.append(t["number"])
                ys.append(best["value"])
        if xs:
            ax.step(xs, ys, where="post", color=c, lw=1.4, label="best so far")
            ax.scatter([best["number"]], [best["value"]], marker="*", s=110, color=c, edgecolor="k", zorder=4,
                       label="chosen")
        ax.set_title(arm, fontsize=9, color=c)
        ax.set_xlabel("trial")
        ax.grid(alpha=0.3)
        if ts:
            ax.set_xticks(sorted({t["number"] for t in ts}))
    for ax in axes.flat[len(arms):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("objective: val acc (%)")
    handles = [plt.Line2D([], [], color="0.3", marker="o", ls="", label="complete trial"),
               plt.Line2D([], [], color="0.3", marker="o", mfc="none", ls="", label="complete, not counted"),
               plt.Line2D([], [], color="0.3", marker="x", ls="", label="pruned (last reported value)"),
               plt.Line2D([], [], color="0.3", ls="-", label="best so far"),
               plt.Line2D([], [], color="0.3", marker="*", mec="k", ms=10, ls="", label="chosen")]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=5)
    suptitle(fig, title)
    return fig


def plot_tuning(traces: dict[str, list[dict]], path: str | Path, title: str, colors: dict[str, str] | None = None,
                ncols: int = 5) -> Path:
    """`tuning_figure` written to `path` (PNG, 110 dpi)."""
    return save_figure(tuning_figure(traces, title, colors, ncols), path)


def figure_pixels(fig, dpi: int = 110) -> tuple[int, int]:
    """(width, height) in pixels of `fig` saved by `save_figure` at `dpi`."""
    w, h = fig.get_size_inches()
    return round(w * dpi), round(h * dpi)
