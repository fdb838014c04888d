"""Study figures: learning curves per arm, paired differences per hypothesis, tuning traces, arm colours.

Every study figure is drawn by matplotlib through `hat.plots.pyplot` and written by `hat.plots.save_figure`.
"""

from __future__ import annotations

from pathlib import Path

from hat.plots import pyplot, save_figure

CONTROL_COLOR = "#333333"
VERDICT_COLORS = {"supported": "#1a7f37", "negligible": "#b35900", "refuted": "#cf222e", "inconclusive": "#6e7781",
                  "untestable": "#8250df"}


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
    plt = pyplot()
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

    plt = pyplot()
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


def verdict_figure(verdicts: list, title: str, margin: float | None = None):
    """The study's answer at a glance: one row per hypothesis (`studies.lib.verdicts.Verdict` values, in order), its
    mean paired difference (diamond) and 95% CI (bar) against zero and the equivalence band ±margin (grey), drawn
    and labelled in the colour of its verdict (`VERDICT_COLORS`), the verdict word at the right. One panel per
    compared metric (its margin from `studies.lib.analysis.metric_margin`, `margin` overriding accuracy metrics);
    verdicts that are not one paired comparison (no metric, or no finite difference) are listed in a last panel
    with their word only. Returns the figure."""
    import math

    from matplotlib.patches import Patch

    from studies.lib.analysis import METRICS, metric_margin

    plt = pyplot()
    paired = [v for v in verdicts if v.metric and math.isfinite(v.diff)]
    other = [v for v in verdicts if v not in paired]
    metrics = list(dict.fromkeys(v.metric for v in paired))
    groups = [(m, [v for v in paired if v.metric == m]) for m in metrics] + ([("", other)] if other else [])
    if not groups:
        groups = [("", [])]
    heights = [max(1, len(vs)) * 0.32 + (0.75 if m else 0.1) for m, vs in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8.4, sum(heights) + 1.4), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, layout="constrained")
    for ax, (metric, vs) in zip(axes[:, 0], groups):
        ys = list(range(len(vs)))[::-1]
        ax.set_ylim(-0.6, max(len(vs), 1) - 0.4)
        ax.set_yticks(ys, [v.key for v in vs], fontsize=8.5)
        for tick, v in zip(ax.get_yticklabels(), vs):
            tick.set_color(VERDICT_COLORS.get(v.word, "k"))
        if not metric:  # composite verdicts: the word only
            ax.set_xticks([])
            ax.set_xlim(0, 1)
            for y, v in zip(ys, vs):
                why = "no finite difference" if v.metric else "not one paired difference"
                ax.text(0.01, y, f"{v.word}  ({why}: see the report)", va="center", fontsize=8.5,
                        color=VERDICT_COLORS.get(v.word, "k"), fontweight="bold")
            for side in ("top", "right", "bottom"):
                ax.spines[side].set_visible(False)
            continue
        m = metric_margin(metric, margin) if metric in METRICS else math.nan
        unit = METRICS[metric].unit if metric in METRICS else ""
        if math.isfinite(m):
            ax.axvspan(-m, m, color="0.88", lw=0, zorder=0)
        ax.axvline(0, color="k", lw=0.8, ls=":", zorder=1)
        for y, v in zip(ys, vs):
            c = VERDICT_COLORS.get(v.word, "k")
            lo, hi = v.ci
            if math.isfinite(lo) and math.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=c, lw=3, solid_capstyle="butt", zorder=2)
                ax.plot([lo, lo, math.nan, hi, hi], [y - 0.18, y + 0.18, math.nan, y - 0.18, y + 0.18], color=c, lw=1.5,
                        zorder=2)
            ax.plot([v.diff], [y], "D", ms=7, color=c, mec="k", mew=0.6, zorder=3)
            ax.text(1.01, y, v.word, transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=8.5,
                    color=c, fontweight="bold")
        finite = [x for v in vs for x in (v.diff, *v.ci) if math.isfinite(x)] + ([-m, m] if math.isfinite(m) else [])
        lo, hi = min(finite), max(finite)
        pad = 0.06 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel(f"{metric}: arm − control ({unit})" if unit else f"{metric}: arm − control", fontsize=8.5)
        ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=VERDICT_COLORS[w], label=w) for w in VERDICT_COLORS if any(v.word == w for v in verdicts)]
    handles += [Patch(color="0.88", label="±margin (differences too small to matter)"),
                plt.Line2D([], [], color="0.3", marker="D", lw=3, label="mean difference, 95% CI")]
    fig.legend(handles=handles, fontsize=7.5, loc="outside lower center", ncol=min(len(handles), 4))
    suptitle(fig, title)
    return fig


def plot_verdicts(verdicts: list, path: str | Path, title: str, margin: float | None = None) -> Path:
    """`verdict_figure` written to `path` (PNG, 110 dpi)."""
    return save_figure(verdict_figure(verdicts, title, margin), path)


def tuning_figure(traces: dict[str, list[dict]], title: str, colors: dict[str, str] | None = None, ncols: int = 5):
    """Tuning per arm as small multiples: each trial's objective (dots; pruned trials as crosses at their last
    reported value), the best so far among the counted complete trials (step line) and the chosen trial (star).
    traces: {arm: [{"number", "state", "value" (None unless complete), "last" (last reported value),
    "counted" (within the arm's budget)}, ...]}."""
    plt = pyplot()
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


def plot_difference_curves(curves: dict, path: str | Path, title: str, mark: float | None = None) -> Path:
    """Mean paired difference arm − control along training with its 95% band, per arm ({arm: (x, mean, lo,
    hi)}); a dashed line at epoch `mark`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, (x, m, lo, hi) in curves.items():
        if len(x):
            ax.plot(x, m, label=f"{arm} − control")
            ax.fill_between(x, lo, hi, alpha=0.2)
    ax.axhline(0, color="grey", linestyle=":")
    if mark is not None:
        ax.axvline(mark, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("paired Δ validation accuracy (points)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_theta(results: dict, thetas: list[float], seeds: list[int], path: str | Path, title: str) -> Path:
    """Mean test accuracy (95% t-CI) of the control and HAT against the label fraction θ (studies.labels)."""
    from studies.lib import analysis, stats

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("control", "hat"):
        ms, los, his = [], [], []
        for t in thetas:
            v = analysis.metric_values(results, f"{method}@{t:g}", seeds)
            m, lo, hi = stats.mean_ci_t(stats.fill_failures(v)[0])
            ms.append(m)
            los.append(lo)
            his.append(hi)
        ax.plot(thetas, ms, marker="o", label=method)
        ax.fill_between(thetas, los, his, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("label fraction θ")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_benefit(times, b, replay, path: str | Path, title: str, early: float) -> Path:
    """Mean paired difference snap@t - control (95% t-CI) against t, with the replay's as a band
    (studies.rule_over_time); a dashed line at the last `early` time."""
    import math

    from studies.lib import stats

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ci = [stats.mean_ci_t(row) for row in b]
    ax.plot(times, [c[0] for c in ci], marker="o", label="frozen snapshot at t − control")
    ax.fill_between(times, [c[1] for c in ci], [c[2] for c in ci], alpha=0.2)
    m, lo, hi = stats.mean_ci_t(replay)
    ax.axhline(m, color="C1", label="replay − control")
    if math.isfinite(lo):
        ax.axhspan(lo, hi, color="C1", alpha=0.15)
    ax.axhline(0, color="grey", linestyle=":")
    ax.axvline(early, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("snapshot time t (epochs)")
    ax.set_ylabel("paired Δ test accuracy (points)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_distances(dist: dict, cp, means: tuple, path: str | Path, title: str) -> Path:
    """Left: distance between consecutive snapshots against t; right: distance to the final snapshot
    (studies.rule_over_time). `means`: the mean curves (t, consecutive, to final) over the runs; `cp`: a change point."""

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for d in dist.values():
        ax1.plot(d["t"][1:], d["consecutive"][1:], color="grey", alpha=0.5, linewidth=0.8)
        ax2.plot(d["t"], d["to_final"], color="grey", alpha=0.5, linewidth=0.8)
    t, cons, fin = means
    ax1.plot(t[1:], cons[1:], marker="o", color="C0", label=f"mean over {len(dist)} run(s)")
    ax2.plot(t, fin, marker="o", color="C0", label=f"mean over {len(dist)} run(s)")
    if cp is not None:
        before = t[1:][cp.index - 1]  # last time of the first segment (the series starts at t[1])
        ax1.axvline(cp.t, color="C3", linestyle="--", label=f"change point: t = {cp.t:g}")
        ax1.hlines([cp.mean_before, cp.mean_after], [t[1], cp.t], [before, t[-1]], colors="C3")
    for ax, lab in ((ax1, "mean |R(t_{k-1}) − R(t_k)|"), (ax2, "mean |R(t) − R(final)|")):
        ax.set_xscale("log")
        ax.set_xlabel("snapshot time t (epochs)")
        ax.set_ylabel(lab)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_partial_dependence(fns: list, X, path: Path, title: str, grid_n: int = 25, slope: float = 2.0) -> Path:
    """One panel per input: every M_i (thin), the mean rule with a 95% t-band across the M_i, slope·v_j dashed
    (studies.rule_form)."""
    import numpy as np

    from studies.lib import rule_analysis as ra
    from studies.lib import stats

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    labels = {"vi": "v_i (pre)", "w": "w_ij", "vj": "v_j (post)"}
    for ax, feat in zip(axes, ra.FEATURES):
        grid = ra.quantile_grid(X, feat, grid_n)
        P = np.array([ra.partial_dependence(f, X, feat, grid) for f in fns])  # (N, G)
        if len(fns) <= 20:
            for p in P:
                ax.plot(grid, p, color="tab:blue", alpha=0.3, linewidth=0.8)
        band = [stats.mean_ci_t(P[:, g]) for g in range(len(grid))]
        ax.plot(grid, P.mean(0), color="k", linewidth=2, label=f"mean of {len(fns)} M_i")
        if len(fns) > 1:
            ax.fill_between(grid, [b[1] for b in band], [b[2] for b in band], color="k", alpha=0.15, label="95% CI")
        ax.plot(grid, ra.partial_dependence(lambda vi, w, vj: slope * vj, X, feat, grid), "r--",
                linewidth=1, label="2·v_j (paper)")
        ax.set_xlabel(labels[feat])
        ax.set_ylabel("mean M output")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_heatmap(fn, X, path: Path, title: str, grid_n: int = 25) -> Path:
    """The mean output of `fn` over a (v_i, v_j) grid, w_ij from the sample X (studies.rule_form)."""
    from studies.lib import rule_analysis as ra

    plt = pyplot()
    gi, gj = ra.quantile_grid(X, "vi", grid_n), ra.quantile_grid(X, "vj", grid_n)
    H = ra.heatmap(fn, X, gi, gj)  # (Gi, Gj)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(H.T, origin="lower", aspect="auto", extent=(gi[0], gi[-1], gj[0], gj[-1]), cmap="coolwarm")
    fig.colorbar(im, ax=ax, label="mean M output (w_ij from the sample)")
    ax.set_xlabel("v_i (pre)")
    ax.set_ylabel("v_j (post)")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_r2(a: dict, path: Path, title: str, threshold: float) -> Path:
    """R² of polynomial fits against their degree, per M_i and for the mean rule (studies.rule_form)."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    d = np.array(a["degrees"])
    for row in a["r2"]:
        ax.plot(d, row, color="tab:blue", alpha=0.3, linewidth=0.8)
    ax.plot(d, a["r2_mean"], "k-o", label="mean rule (held out)")
    ax.plot(d, a["r2_in_mean"], "k:", label="mean rule (in sample)")
    ax.axhline(a["lin_mean"], color="tab:red", linestyle="--", label="a + b·v_j, mean rule (held out)")
    ax.axhline(threshold, color="grey", linestyle=":", label=f"threshold {threshold}")
    ax.set_xlabel("polynomial degree in (v_i, w_ij, v_j)")
    ax.set_ylabel("R²")
    ax.set_ylim(min(0.0, np.nanmin(a["r2_mean"]) if np.isfinite(a["r2_mean"]).any() else 0.0), 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_distance_matrix(D, labels: list[str], path: str | Path, title: str) -> Path:
    """The distances between every pair of meta-learned rules, problems separated by white lines (studies.transfer)."""

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    im = ax.imshow(D, cmap="viridis")
    fig.colorbar(im, ax=ax, label="mean |R_a − R_b| over the pooled inputs")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    bounds = [k + 0.5 for k in range(len(labels) - 1) if labels[k] != labels[k + 1]]
    for b in bounds:
        ax.axhline(b, color="w", linewidth=1)
        ax.axvline(b, color="w", linewidth=1)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_dose(rows: list[dict], rho_m: float, stopped: dict, best: dict, path: Path, title: str) -> Path:
    """Left: Δ test accuracy against the rate, mean and 95% t-CI per rule (rate 0, the control, drawn at the left
    edge); runs with divergences marked with their count, the matched magnitude (triangle) and the best grid rate
    (star). Right: the relative update norm against the rate, with rho_M (studies.dose_response)."""
    import math

    import numpy as np

    plt = pyplot()
    rules_ = list(dict.fromkeys(r["rule"] for r in rows))
    pos = [r["rate"] for r in rows if r["rate"] > 0]
    x0 = min(pos) / 10 if pos else 1e-6  # where rate 0 is drawn
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for k, rule in enumerate(rules_):
        color = f"C{k % 10}"
        grid = sorted((r for r in rows if r["rule"] == rule and r["note"] != "matched magnitude"),
                      key=lambda r: r["rate"])
        x = np.array([r["rate"] if r["rate"] > 0 else x0 for r in grid])
        m = np.array([r["Δ test acc"] for r in grid])
        lo, hi = np.array([r["ci_lo"] for r in grid]), np.array([r["ci_hi"] for r in grid])
        ax.plot(x, m, "-o", color=color, ms=3, label=rule)
        ax.fill_between(x, np.where(np.isfinite(lo), lo, m), np.where(np.isfinite(hi), hi, m), color=color, alpha=0.15)
        for r, xi in zip(grid, x):
            if r["diverged"]:
                ax.plot([xi], [r["Δ test acc"]], "x", color=color, ms=8, mew=2)
                ax.annotate(f"{r['diverged']}/{r['n']}", (xi, r["Δ test acc"]), textcoords="offset points",
                            xytext=(3, 4), fontsize=7, color=color)
        for r in rows:
            if r["rule"] == rule and r["note"] == "matched magnitude":
                ax.errorbar([r["rate"]], [r["Δ test acc"]], yerr=[[r["Δ test acc"] - r["ci_lo"]],
                            [r["ci_hi"] - r["Δ test acc"]]] if math.isfinite(r["ci_lo"]) else None,
                            fmt="^", color=color, ms=9, mec="k", capsize=3)
        b = [r for r in grid if best.get(rule) is not None and r["rate"] == best[rule]]
        if b:
            ax.plot([b[0]["rate"]], [b[0]["Δ test acc"]], "*", color=color, ms=13, mec="k")
        ns = [r for r in grid if r["rate"] > 0 and math.isfinite(r["rel norm"]) and r["rel norm"] > 0]
        if ns:
            ax2.plot([r["rate"] for r in ns], [r["rel norm"] for r in ns], "-o", color=color, ms=3, label=rule)
        for r in rows:  # the magnitude the matched runs actually had
            if r["rule"] == rule and r["note"] == "matched magnitude" and math.isfinite(r["rel norm"]) and r["rel norm"] > 0:
                ax2.plot([r["rate"]], [r["rel norm"]], "^", color=color, ms=9, mec="k")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"rate (leftmost point: rate 0 = the control, drawn at {x0:.0e})")
    ax.set_ylabel("test accuracy − control (points), mean and 95% t-CI")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("▲ matched magnitude, ★ best rate (validation), × diverged (k/n)", fontsize=8)
    if math.isfinite(rho_m):
        ax2.axhline(rho_m, color="k", ls="--", lw=1, label="ρ_M (phase-1 mlp)")
    ax2.set_xscale("log")
    if any(math.isfinite(r["rel norm"]) and r["rel norm"] > 0 for r in rows):
        ax2.set_yscale("log")
    ax2.set_xlabel("rate")
    ax2.set_ylabel("ρ = |local update| / |optimizer step| (hidden layers)")
    ax2.set_title("▲ ρ reached by the matched-rate runs", fontsize=8)
    ax2.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_league(rows: list[dict], comps, hyps, rank_p: dict, path: Path, title: str) -> Path:
    """Left: difference from the control with its 95% t-CI, arms ordered by mean; right: bootstrap rank
    distribution (P(rank = k), darker = likelier) in the same order (studies.rule_league)."""
    import numpy as np

    plt = pyplot()
    by_arm = {h.arm: c for h, c in zip(hyps, comps)}
    order = [r["arm"] for r in rows]
    y = np.arange(len(order))[::-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.5 * len(order) + 2))
    for yi, a in zip(y, order):
        c = by_arm.get(a)
        m, lo, hi = (0.0, 0.0, 0.0) if c is None else (c.mean_diff, c.ci_lo, c.ci_hi)
        if c is not None and np.isfinite(lo):
            ax1.plot([lo, hi], [yi, yi], color="C0")
        ax1.plot([m], [yi], "o", color="k" if c is None else "C0")
    margin = next((c.margin for c in comps), None)
    ax1.axvline(0, color="grey", lw=0.8)
    if margin:
        for s in (-1, 1):
            ax1.axvline(s * margin, color="grey", lw=0.8, ls=":")
    ax1.set_yticks(y, order)
    ax1.set_xlabel("test accuracy − control (points), mean and 95% t-CI")
    mat = np.stack([rank_p[a] for a in order])  # (A, A)
    ax2.imshow(mat, aspect="auto", cmap="Blues", vmin=0, vmax=1, extent=(0.5, len(order) + 0.5, -0.5, len(order) - 0.5))
    for yi, a in zip(y, order):
        for k, p in enumerate(rank_p[a]):
            if p >= 0.005:
                ax2.text(k + 1, yi, f"{p:.2f}", ha="center", va="center", fontsize=7,
                         color="white" if p > 0.6 else "black")
    ax2.set_yticks(y, order)
    ax2.set_xticks(range(1, len(order) + 1))
    ax2.set_xlabel("rank (1 = best mean test accuracy), bootstrap over seeds")
    fig.suptitle(title)
    return save_figure(fig, path)
