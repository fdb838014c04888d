"""The study figures (studies.lib.figures) rendered on synthetic but realistic study data: written, non-empty, of the
expected pixel size, with one drawn element per arm / hypothesis / trial, consistent colours, titles and labels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from studies.lib import figures as plots

ARMS = ["control", "converged", "hebb", "final", "early"]
SEEDS = 5
EPOCHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def synthetic_curves(diverged: tuple[str, int] = ("hebb", 3)) -> dict[str, list[list[dict]]]:
    """Learning curves like a quick study's: accuracy rising from chance, arm offsets, seed noise."""
    rng = np.random.default_rng(0)
    out = {}
    for k, arm in enumerate(ARMS):
        runs = []
        for s in range(SEEDS):
            if (arm, s) == diverged:
                runs.append([])  # a diverged run: no curve
                continue
            top = 80 - 4 * k + rng.normal(0, 1.5)
            runs.append([{"epoch": e, "step": int(e * 200), "seconds": e * 10, "train_loss": 2.3 - e,
                          "val_acc": 10 + (top - 10) * (1 - np.exp(-6 * e)) + rng.normal(0, 0.5),
                          "test_acc": 0.0} for e in EPOCHS])
        out[arm] = runs
    return out


def png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def check_written(fig, path, write):
    """Save `fig` through `write`, then check the PNG exists, is non-empty and has the figure's pixel size."""
    expected = plots.figure_pixels(fig)
    out = write(path)
    assert out == path and path.is_file() and path.stat().st_size > 5000
    assert png_size(path) == expected
    return expected


def check_labels(fig):
    assert fig._suptitle is not None and fig._suptitle.get_text().strip()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert visible
    for ax in visible:  # every panel: a title or a shared label on its row/column
        assert ax.get_title() or ax.get_xlabel() or ax.get_ylabel()
    assert any(ax.get_xlabel() for ax in visible) and any(ax.get_ylabel() for ax in visible)
    assert any("(" in ax.get_ylabel() and ")" in ax.get_ylabel() for ax in visible)  # a unit in brackets


def test_curves_with_one_control_per_condition(tmp_path):
    """As in studies.labels: each arm has its own control (control@θ); controls get no panel and draw in grey."""
    base = synthetic_curves(diverged=("x", 0))
    curves = {"control@0.1": base["control"], "hat@0.1": base["converged"], "control@1": base["hebb"],
              "hat@1": base["final"]}
    ref = {"hat@0.1": "control@0.1", "hat@1": "control@1"}
    colors = plots.arm_colors(list(curves), set(ref.values()))
    assert colors["control@0.1"] == colors["control@1"] == plots.CONTROL_COLOR != colors["hat@0.1"]
    fig = plots.curves_figure(curves, "labels: validation accuracy", colors, control=ref)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["hat@0.1", "hat@1"]
    for ax, arm in zip(visible, ["hat@0.1", "hat@1"]):
        assert [t.get_text().split(" ")[0] for t in ax.get_legend().get_texts()] == [ref[arm], arm]
    check_written(fig, tmp_path / "c.png", lambda p: plots.save_figure(fig, p))


def test_arm_colors_fixed_by_position_and_distinct():
    c = plots.arm_colors(ARMS)
    assert c["control"] == plots.CONTROL_COLOR
    assert len(set(c.values())) == len(ARMS)
    rgb = {a: matplotlib.colors.to_rgb(v) for a, v in c.items() if a != "control"}
    assert all(max(v) - min(v) > 0.1 for v in rgb.values())  # no other arm is grey like the control
    assert plots.arm_colors(ARMS) == c  # deterministic: the same list gives the same colours in every figure
    many = plots.arm_colors(["control", *[f"a{i}" for i in range(14)]])
    assert len(set(many.values())) == 15


def test_learning_curves_median_iqr_small_multiples(tmp_path):
    curves = synthetic_curves()
    colors = plots.arm_colors(ARMS)
    fig = plots.curves_figure(curves, "study: validation accuracy, median and IQR", colors)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(ARMS) - 1  # one panel per non-control arm
    for ax, arm in zip(visible, ARMS[1:]):
        lines = ax.get_lines()
        assert len(lines) == 2  # the control and the arm
        assert [to_hex(ln.get_color()) for ln in lines] == [colors["control"], colors[arm]]
        assert arm in ax.get_title()
        # the arm's line is the median over its non-diverged seeds, the band its 25th-75th percentiles
        runs = [r for r in curves[arm] if r]
        ys = np.array([[e["val_acc"] for e in r] for r in runs])
        np.testing.assert_allclose(lines[1].get_ydata(), np.median(ys, axis=0))
        band = ax.collections[1].get_paths()[0].vertices[:, 1]
        lo, hi = np.percentile(ys, [25, 75], axis=0)
        assert band.min() == pytest.approx(lo.min()) and band.max() == pytest.approx(hi.max())
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [f"control (n={SEEDS})", f"{arm} (n={len(runs)})"]
    assert "1 of 5 diverged" in visible[ARMS[1:].index("hebb")].get_title()
    check_labels(fig)
    assert visible[0].get_ylabel() == "validation accuracy (%)" and visible[-1].get_xlabel() == "epoch"
    w, h = check_written(fig, tmp_path / "curves.png", lambda p: plots.save_figure(fig, p))
    assert w > h  # 2 rows of 3 panels: wider than high

    # the public wrapper writes the same figure
    path = tmp_path / "curves2.png"
    assert plots.plot_learning_curves(curves, path, "t", colors) == path and png_size(path) == (w, h)


def difference_rows():
    rng = np.random.default_rng(1)
    rows = []
    for key, arm, metric, unit, verdict, shift in [
            ("H-converged", "converged", "test_acc", "accuracy points", "supported", -8.0),
            ("X-hebb", "hebb", "test_acc", "accuracy points", "refuted", 0.1),
            ("H-frozen-final", "final", "test_acc", "accuracy points", "inconclusive", 1.0),
            ("H-stable", "early", "val_std_last", "points of std", "negligible", -0.1)]:
        d = shift + rng.normal(0, 1.0, SEEDS)
        half = 2.776 * d.std(ddof=1) / np.sqrt(SEEDS)
        rows.append({"key": key, "arm": arm, "d": d, "mean": d.mean(), "lo": d.mean() - half, "hi": d.mean() + half,
                     "margin": 0.5 if metric == "test_acc" else 0.25, "verdict": verdict, "metric": metric,
                     "unit": unit})
    return rows


def test_paired_differences_ci_band_and_verdicts(tmp_path):
    rows = difference_rows()
    colors = plots.arm_colors(ARMS)
    fig = plots.differences_figure(rows, "study: paired differences", colors)
    assert len(fig.axes) == 2  # one panel per metric
    for ax, metric in zip(fig.axes, ["test_acc", "val_std_last"]):
        mine = [r for r in rows if r["metric"] == metric]
        # the equivalence band: one rectangle per hypothesis spanning -margin..+margin
        bands = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(bands) == len(mine)
        for b, r in zip(bands, mine):
            assert b.get_y() == pytest.approx(-r["margin"]) and b.get_height() == pytest.approx(2 * r["margin"])
        # the seeds: one scatter per hypothesis in the arm's colour, with every seed
        dots = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(dots) == len(mine)
        for c, r in zip(dots, mine):
            assert len(c.get_offsets()) == SEEDS
            np.testing.assert_allclose(np.asarray(c.get_offsets())[:, 1], r["d"])
            assert to_hex(c.get_facecolor()[0]) == colors[r["arm"]]
        # the 95% CIs: error bars from lo to hi around the mean
        segs = [seg for coll in ax.collections if not isinstance(coll, PathCollection) for seg in coll.get_segments()]
        assert len(segs) == len(mine)
        for seg, r in zip(segs, mine):
            assert sorted(seg[:, 1]) == pytest.approx([r["lo"], r["hi"]])
        # the verdict of every hypothesis, above it
        texts = [t.get_text() for t in ax.texts]
        assert texts == [r["verdict"] for r in mine]
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == [f"{r['key']}\n({r['arm']})" for r in mine]
        assert ax.get_ylabel() == f"{metric}: arm − control ({mine[0]['unit']})"
    check_labels(fig)
    check_written(fig, tmp_path / "diffs.png", lambda p: plots.save_figure(fig, p))


def test_curves_and_differences_share_arm_colours():
    colors = plots.arm_colors(ARMS)
    cf = plots.curves_figure(synthetic_curves(), "t", colors)
    df = plots.differences_figure(difference_rows(), "t", colors)
    curve_colors = {ax.get_title().split(" ")[0]: to_hex(ax.get_lines()[1].get_color())
                    for ax in cf.axes if ax.get_visible()}
    diff_colors = {r["arm"]: to_hex(c.get_facecolor()[0]) for ax in df.axes
                   for c, r in zip([c for c in ax.collections if isinstance(c, PathCollection)],
                                   [r for r in difference_rows() if r["metric"] in ax.get_ylabel()])}
    assert diff_colors and all(curve_colors[a] == c for a, c in diff_colors.items())


def tuning_traces():
    rng = np.random.default_rng(2)
    out = {}
    for arm in ARMS:
        ts = []
        for n in range(5):
            pruned = n == 3
            v = float(60 + 10 * rng.random())
            ts.append({"number": n, "state": "PRUNED" if pruned else "COMPLETE", "value": None if pruned else v,
                       "last": v - 20 if pruned else v, "counted": True, "params": {"lr_adam": 1e-3}})
        out[arm] = ts
    out["hebb"].append({"number": 5, "state": "COMPLETE", "value": 99.0, "last": 99.0, "counted": False})
    return out


def test_tuning_best_so_far_small_multiples(tmp_path):
    traces = tuning_traces()
    colors = plots.arm_colors(ARMS)
    fig = plots.tuning_figure(traces, "study: tuning", colors, ncols=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(ARMS) and len(fig.axes) == 6  # 2 x 3 grid, one panel hidden
    for ax, arm in zip(visible, ARMS):
        ts = traces[arm]
        assert ax.get_title() == arm
        done = [t for t in ts if t["state"] == "COMPLETE"]
        step = ax.get_lines()[0]
        counted = [t["value"] for t in done if t["counted"]]
        best_so_far = np.maximum.accumulate(counted)
        np.testing.assert_allclose(step.get_ydata()[: len(counted)], best_so_far)
        assert to_hex(step.get_color()) == colors[arm]
        scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(scatters[0].get_offsets()) == len(done)  # complete trials
        assert len(scatters[1].get_offsets()) == 1  # the pruned one, at its last value
        star = np.asarray(scatters[-1].get_offsets())[0]
        assert star[1] == pytest.approx(max(counted))  # the chosen trial: best counted, not the uncounted 99
    check_labels(fig)
    check_written(fig, tmp_path / "tuning.png", lambda p: plots.save_figure(fig, p))
