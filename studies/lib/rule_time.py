"""The meta-learned rule over time: the snapshot times a run can take, and how far the rule moves between them.

    snapshot_times       the paper's times fitted to a run's length (keep or scale)
    merge_same_step      times that fall on one training step merged, as the trainer does
    run_times            both, for a run's config and data
    functional_distance  mean |R_A − R_B| over a sample of the inputs rules see (`studies.lib.rule_inputs`)
    distances_over_time  per phase-1 run: the rule's scale, its distance to the previous and to the final snapshot
    distance_section     the report section of those distances, with a change point and its figure
"""

from __future__ import annotations

import numpy as np

from studies.lib import report, stats
from studies.lib import rule_analysis as ra
from studies.lib.figures import plot_distances
from studies.lib.rule_inputs import CHECKPOINTS, MAX_STEPS, SEED, rule_outputs, sample_rule_inputs

TIMES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)  # snapshot times (epochs) of the paper's 20-epoch run
TIMES_HORIZON = 20.0  # the run length TIMES are written for (--time-mode scale divides by it)


def snapshot_times(epochs: float, times=TIMES, mode: str = "keep") -> tuple[tuple[float, ...], str]:
    """Snapshot times for a run of `epochs` epochs, and a sentence saying how they were chosen.

    keep: the times <= epochs, plus `epochs` itself (the final rule); scale: every time * epochs / TIMES_HORIZON.
    """
    times = sorted({float(t) for t in times if t > 0})
    if mode == "keep":
        kept = [t for t in times if t <= epochs + 1e-9]
        out = tuple(sorted(set(kept) | {float(epochs)}))
        return out, (f"times <= the run's {epochs:g} epochs kept from {tuple(times)}" +
                     ("" if float(epochs) in kept else f", plus the last epoch {epochs:g}"))
    if mode == "scale":
        f = epochs / TIMES_HORIZON
        return tuple(t * f for t in times), f"times {tuple(times)} scaled by {epochs:g}/{TIMES_HORIZON:g}"
    raise ValueError(f"time mode must be 'keep' or 'scale', got {mode!r}")


def merge_same_step(times, steps_per_epoch: int, total: int) -> tuple[tuple[float, ...], list[float]]:
    """Times the trainer can snapshot: one per step (the last time mapped to a step wins, as in the trainer).

    Returns (kept times, dropped times). Times past the end of training are dropped.
    """
    by_step: dict[int, float] = {}
    dropped = []
    for t in sorted(times):
        if t * steps_per_epoch > total + 0.5:
            dropped.append(t)
            continue
        step = min(total, max(1, round(t * steps_per_epoch)))
        if step in by_step:
            dropped.append(by_step[step])
        by_step[step] = t
    return tuple(sorted(by_step.values())), dropped


def functional_distance(rule_a, rule_b, inputs: dict) -> float:
    """mean over the sample of |R_A - R_B|: 0 for a rule with itself, symmetric."""
    return float(np.mean(np.abs(rule_outputs(rule_a, inputs) - rule_outputs(rule_b, inputs))))


def distances_over_time(snaps: dict[int, dict[float, str]], inputs: dict) -> dict[int, dict[str, np.ndarray]]:
    """Per run: times t_k, mean |R| at t_k, distance(t_{k-1}, t_k) (NaN at k = 0) and distance(t_k, final)."""
    import rules
    from hat.snapshots import rule_from_snapshot

    out = {}
    for seed, by_t in sorted(snaps.items()):
        ts = sorted(by_t)
        outs = [rule_outputs(rules.build("snapshot", {"path": by_t[t]}, loader=rule_from_snapshot), inputs) for t in ts]
        step = [float("nan")] + [float(np.mean(np.abs(a - b))) for a, b in zip(outs, outs[1:])]
        out[seed] = {"t": np.array(ts), "scale": np.array([np.mean(np.abs(o)) for o in outs]),
                     "consecutive": np.array(step), "to_final": np.array([np.mean(np.abs(o - outs[-1])) for o in outs])}
    return out


def mean_distance_curves(dist: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times common to every run, and the mean consecutive / to-final distances there."""
    common_t = sorted(set.intersection(*[set(d["t"].tolist()) for d in dist.values()]))
    cons, fin = [], []
    for d in dist.values():
        pos = [d["t"].tolist().index(t) for t in common_t]
        cons.append(d["consecutive"][pos])
        fin.append(d["to_final"][pos])
    return np.array(common_t), np.mean(cons, axis=0), np.mean(fin, axis=0)


def distance_section(ctx, snaps: dict[int, dict[float, str]]) -> tuple[list[str], object]:
    """The exploratory 4-D view f(v_i, w_ij, v_j, t): report lines and the figure of the distances over time."""
    inputs = sample_rule_inputs(ctx.base, ctx.data)
    dist = distances_over_time(snaps, inputs)
    t_all, cons, fin = mean_distance_curves(dist)
    cp = ra.change_point(t_all[1:], cons[1:]) if len(t_all) >= 3 else None
    fig = plot_distances(dist, cp, mean_distance_curves(dist), ctx.out / "rule_distance.png",
                         f"{ctx.name}: the rule over time")
    scale = np.mean([[d["scale"][d["t"].tolist().index(t)] for t in t_all] for d in dist.values()], axis=0)
    gaps = np.diff(t_all, prepend=np.nan)
    rows = [{"t (epochs)": t, "mean |R(t)|": s, "distance to previous": c, "relative to |R|": c / s if s else float("nan"),
             "per epoch": c / g, "distance to final": f} for t, s, c, g, f in zip(t_all, scale, cons, gaps, fin)]
    cp_line = ("Too few snapshot times (< 3) for a change point." if cp is None else
               f"Change point (two-segment piecewise-constant least squares on the mean distance to the previous "
               f"snapshot; with log-spaced times, the change per step of the time grid): the rule changes phase "
               f"between t = {t_all[1:][cp.index - 1]:g} and t = {cp.t:g} epochs "
               f"(mean step {cp.mean_before:.3g} before, {cp.mean_after:.3g} from there on; R² = {cp.r2:.3f}).")
    lines = ["## The rule over time: f(v_i, w_ij, v_j, t) (exploratory)", "",
             f"Functional distance mean |R_A − R_B| over {len(inputs['pre'])} inputs (v_i, w_ij, v_j, |g_ij|) sampled "
             f"with seed {SEED} from a learner's training forward passes ({CHECKPOINTS} checkpoints "
             f"over up to {MAX_STEPS} backprop steps, layers weighted by their rule evaluations), "
             f"averaged over {len(dist)} phase-1 run(s):", "", stats.format_table(rows), "", cp_line, "",
             *report.figure_block([fig], ctx.out), ""]
    return lines, fig


def benefits(results: dict, names: list[str], seeds: list[int]) -> np.ndarray:
    """(arms, seeds) paired differences arm − control of test accuracy for the snapshot arms `names` (in time
    order), failures scored as chance."""
    from studies.lib import analysis

    ctl = analysis.metric_values(results, "control", seeds)
    return np.array([stats.paired_differences(analysis.metric_values(results, a, seeds), ctl)[0] for a in names])


def best_snapshot(results: dict, tuned: dict, names: list[str], seeds: list[int]) -> tuple[str, str]:
    """The single snapshot arm of `names` with the best validation accuracy, and how it was chosen (never on
    test)."""
    if all(tuned.get(a, {}).get("value") is not None for a in names):
        return max(names, key=lambda a: tuned[a]["value"]), "tuned validation accuracy on the tuning seeds"

    def val(a):
        v = np.array([results[(a, s)]["val_acc"] if results[(a, s)]["status"] == "ok" else np.nan for s in seeds])
        return float(np.mean(stats.fill_failures(v)[0]))

    return max(names, key=val), "mean validation accuracy over the final seeds (no tuning)"


def run_times(cfg, data, times=TIMES, mode: str = "keep") -> tuple[tuple[float, ...], str]:
    """The snapshot times a run of `cfg` on `data` takes (`snapshot_times`, then `merge_same_step`), and a sentence
    saying how they were chosen."""
    from studies.lib.rule_inputs import run_length

    spe, total = run_length(cfg, data)
    wanted, how = snapshot_times(cfg.epochs, times, mode)
    kept, merged = merge_same_step(wanted, spe, total)
    if merged:
        how += f"; {', '.join(f'{t:g}' for t in merged)} fell on the same training step as a later time and were merged"
    return kept, how


SHUFFLE_SEED = 0  # the order of the shuffled replay


def shuffled_order(k: int, seed: int = SHUFFLE_SEED) -> list[int]:
    """A seeded permutation of range(k) with no fixed point when k >= 2 (no snapshot replayed at its own time)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(k).tolist()
        if k < 2 or all(i != j for i, j in enumerate(order)):
            return order


def add_time_args(parser) -> None:
    """The snapshot-time flags of a study (--times, --time-mode)."""
    parser.add_argument("--times", type=float, nargs="+", default=list(TIMES), help=f"snapshot times (default {TIMES})")
    parser.add_argument("--time-mode", choices=("keep", "scale"), default="keep",
                        help="fit the times to a shorter run: keep those <= its length, or scale them by epochs/20")
