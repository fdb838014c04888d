"""The meta-learned rule over time: is M useful early, and is the useful rule transient? (H1, H3, Future Work)

Phase 1 trains `--hat-runs` HAT learners with a trainable meta-learner M and saves M at the snapshot times t
(default 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20 epochs: the paper's 20-epoch run). A shorter run keeps the times
<= its length and adds its last epoch (`--time-mode keep`, the default) or scales the times by epochs / 20
(`--time-mode scale`); times that fall on the same training step are merged, as the trainer does. Phase 2
applies each snapshot of the first HAT run, frozen, to fresh learners (arms `snap@t`), replays the snapshots in
time (arm `replay`, rule `schedule`: at training time t the snapshot taken at t), and runs the backprop control,
all paired over the same seeds and tuned on the same budget.

Hypotheses (the paper's words):
  H1  "M learns a useful rule early and degenerates once L converges". Family A (Holm, every arm against the
      control): H1-snap@t, snap@t > control, for every t. H1 is SUPPORTED if some early snapshot (t <= 0.5
      epochs; the first one if none is that early) is supported and the benefit snap@t - control decreases
      with t (`stats.trend_test` over log t, seed as random effect: slope < 0, p < 0.05); REFUTED if the slope
      is significantly positive, or every early snapshot is refuted; INCONCLUSIVE otherwise.
  H3  "the useful rule is transient: a different one at each time". Family B (Holm): H3-replay>snap@t, replay
      > snap@t, for every t. H3 is SUPPORTED if every comparison of family B is supported, REFUTED if any is
      refuted, INCONCLUSIVE otherwise. Also reported: replay against the control (H3-replay>control, in
      family A) and against the best single snapshot, chosen on validation accuracy (the tuning objective on
      the tuning seeds when tuned; otherwise the mean validation accuracy of the final seeds), never on test.
The 4-D view f(v_i, w_ij, v_j, t) (the paper's Future Work, exploratory: no verdict): the functional distance
between consecutive snapshots, mean |R_A - R_B| over inputs the rule actually sees (sampled from a learner's
training forward passes with a fixed seed), against t, for every phase-1 run, with a two-segment
piecewise-constant least-squares change point on the mean curve: where the rule changes phase.

Run:   python -m studies.rule_over_time                       # quick preset
       python -m studies.rule_over_time --preset paper        # paper scale (20 epochs), for a GPU
       python -m studies.rule_over_time --times 0.1 0.5 1     # other snapshot times
       python -m studies.rule_over_time --snapshots runs/rule_over_time-quick/snapshots   # reuse phase 1
"""

from __future__ import annotations

import math
import sys

import numpy as np

from studies.lib import analysis, common, progress, report, stats
from studies.lib import rule_analysis as ra
from studies.lib.analysis import Hypothesis
from studies.lib.common import PHASE1_SEED_BASE, Arm, snapshots_from_dir

STUDY = "rule_over_time"
TIMES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)  # snapshot times (epochs) of the paper's 20-epoch run
TIMES_HORIZON = 20.0  # the run length TIMES are written for (--time-mode scale divides by it)
EARLY_EPOCH = 0.5  # H1: snapshots taken at t <= this are "early"
DEFAULTS = {"snapshot_epochs": ()}  # phase-2 runs save nothing; phase 1 sets its own times
DISTANCE_SAMPLES = 8192  # (v_i, w_ij, v_j, |g_ij|) samples for the functional distance
DISTANCE_SEED = 0  # learner init, batches and synapse draws of the input sample
SAMPLE_MAX_STEPS = 400  # the sampling learner trains at most this many steps
SAMPLE_CHECKPOINTS = 4  # forward passes sampled along its training (the first at step 0)


# ---------------------------------------------------------------- snapshot times


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


def run_length(cfg, data) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run of `cfg` on `data`, as the trainer computes them."""
    from hat.trainer import splits, step_plan

    plan = step_plan(cfg, len(splits(cfg, data)[0]))
    return plan.steps_per_epoch, plan.total


# ---------------------------------------------------------------- phase 1


# ---------------------------------------------------------------- inputs the rule sees, functional distance


def sample_rule_inputs(cfg, data, n: int = DISTANCE_SAMPLES, seed: int = DISTANCE_SEED,
                       checkpoints: int = SAMPLE_CHECKPOINTS, max_steps: int = SAMPLE_MAX_STEPS) -> dict:
    """(v_i, w_ij, v_j, |g_ij|) as a rule sees them on a learner's training forward passes; (n,) CPU tensors.

    A learner of `cfg` (widths, act, logit ReLU in training) starts from `seed` and trains by plain backprop
    (cfg.optimizer, cfg.lr, cfg.batch_size, random batches of the training set) for min(max_steps, the run's
    steps) steps. At `checkpoints` evenly spaced steps (the first at step 0) the batch's forward pass is
    recorded with the gradient of its loss, and synapse-sample pairs are drawn from it: each layer in proportion
    to the B * O * I rule evaluations it gets, then (b, o, i) uniformly. Everything random comes from `seed`.
    """
    import torch
    import torch.nn.functional as F

    from hat.trainer import Learner

    gen = torch.Generator().manual_seed(seed)
    learner = Learner(cfg.widths, cfg.act, gen)
    opt = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)(learner.parameters(), lr=cfg.lr)
    x_all, y_all = data.x_train, data.y_train
    if cfg.train_limit:
        x_all, y_all = x_all[: cfg.train_limit], y_all[: cfg.train_limit]
    _, total = run_length(cfg, data)
    steps = min(max_steps, total)
    at = sorted({int(round(s)) for s in np.linspace(0, steps, checkpoints)})
    per = [n // len(at) + (1 if k < n % len(at) else 0) for k in range(len(at))]
    out = {k: [] for k in ("pre", "w", "post", "grad")}
    for step in range(steps + 1):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        xb, yb = x_all[idx.to(x_all.device)].cpu(), y_all[idx.to(y_all.device)].cpu()
        v, pres, posts = xb, [], []
        for layer, (w, b) in enumerate(zip(learner.weights, learner.biases)):
            pres.append(v.detach())
            v = learner.layer_act(layer, cfg.logit_relu)(v @ w.T + b)  # (B, O)
            posts.append(v.detach())
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(v, yb).backward()
        if step in at:
            m = per[at.index(step)]
            sizes = torch.tensor([float(p.shape[0] * w.numel()) for p, w in zip(pres, learner.weights)])
            layer_of = torch.multinomial(sizes / sizes.sum(), m, replacement=True, generator=gen)  # (m,)
            for layer in range(learner.n_layers):
                k = int((layer_of == layer).sum())
                if k == 0:
                    continue
                w = learner.weights[layer]
                o_, i_ = w.shape
                bi = torch.randint(0, pres[layer].shape[0], (k,), generator=gen)
                oi = torch.randint(0, o_, (k,), generator=gen)
                ii = torch.randint(0, i_, (k,), generator=gen)
                out["pre"].append(pres[layer][bi, ii])
                out["w"].append(w.detach()[oi, ii].clone())
                out["post"].append(posts[layer][bi, oi])
                out["grad"].append(w.grad[oi, ii].abs())
        if step < steps:
            opt.step()
    return {k: torch.cat(v).float() for k, v in out.items()}


def rule_outputs(rule, inputs: dict):
    """(n,) pointwise outputs R(v_i, w_ij, v_j[, |g_ij|]) of an elementwise rule on a sample, float64 numpy."""
    import torch

    rule = rule.to("cpu")
    dtype = next((p.dtype for p in rule.parameters()), torch.float32)
    x = [inputs[k].to(dtype) for k in ("pre", "w", "post", "grad")]
    with torch.no_grad():
        y = rule.pointwise(x[0], x[1], x[2], x[3] if rule.uses_grad else None)
    return torch.broadcast_to(y, x[0].shape).double().numpy()


def functional_distance(rule_a, rule_b, inputs: dict) -> float:
    """mean over the sample of |R_A - R_B|: 0 for a rule with itself, symmetric."""
    return float(np.mean(np.abs(rule_outputs(rule_a, inputs) - rule_outputs(rule_b, inputs))))


def distances_over_time(snaps: dict[int, dict[float, str]], inputs: dict) -> dict[int, dict[str, np.ndarray]]:
    """Per run: times t_k, mean |R| at t_k, distance(t_{k-1}, t_k) (NaN at k = 0) and distance(t_k, final)."""
    import rules

    out = {}
    for seed, by_t in sorted(snaps.items()):
        ts = sorted(by_t)
        outs = [rule_outputs(rules.get("snapshot", path=by_t[t]), inputs) for t in ts]
        step = [float("nan")] + [float(np.mean(np.abs(a - b))) for a, b in zip(outs, outs[1:])]
        out[seed] = {"t": np.array(ts), "scale": np.array([np.mean(np.abs(o)) for o in outs]),
                     "consecutive": np.array(step), "to_final": np.array([np.mean(np.abs(o - outs[-1])) for o in outs])}
    return out


# ---------------------------------------------------------------- arms and hypotheses


def arm_name(t: float) -> str:
    return f"snap@{t:g}"


def build_arms(source: dict[float, str]) -> list[Arm]:
    """control, one frozen snapshot per time of the source run, and the replay of them all."""
    ts = sorted(source)
    return ([common.control_arm()] +
            [common.rule_arm(arm_name(t), "snapshot", {"path": source[t]}, hypothesis="H1") for t in ts] +
            [common.rule_arm("replay", "schedule", {"paths": [source[t] for t in ts]}, hypothesis="H3")])


def control_family(times) -> list[Hypothesis]:
    """Family A: every arm against the control."""
    return ([Hypothesis(f"H1-{arm_name(t)}", f"the meta-learned rule frozen at t = {t:g} epochs helps a fresh "
                        "learner", arm_name(t), "greater") for t in sorted(times)] +
            [Hypothesis("H3-replay>control", "replaying M's snapshots in time helps a fresh learner", "replay",
                        "greater")])


def replay_family(times) -> list[Hypothesis]:
    """Family B: the replay against every single frozen snapshot."""
    return [Hypothesis(f"H3-replay>{arm_name(t)}", f"the replay beats the rule frozen at t = {t:g}", "replay",
                       "greater", control=arm_name(t)) for t in sorted(times)]


def early_times(times) -> list[float]:
    times = sorted(times)
    early = [t for t in times if t <= EARLY_EPOCH + 1e-9]
    return early or times[:1]


def h1_verdict(early_verdicts: list[str], slope: float, p: float, alpha: float = stats.ALPHA) -> str:
    """H1, by the rule in the module docstring (p: two-sided p-value of the log-t slope)."""
    significant = math.isfinite(p) and p < alpha
    if significant and slope > 0:
        return "refuted"
    if early_verdicts and all(v == "refuted" for v in early_verdicts):
        return "refuted"
    if "supported" in early_verdicts and significant and slope < 0:
        return "supported"
    return "inconclusive"


def h3_verdict(verdicts: list[str]) -> str:
    """H3: supported if the replay beats every single snapshot, refuted if any comparison is refuted."""
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    if "refuted" in verdicts:
        return "refuted"
    return "inconclusive"


def benefits(results: dict, times, seeds: list[int]) -> np.ndarray:
    """(times, seeds) paired differences snap@t - control of test accuracy, failures scored as chance."""
    ctl = analysis.metric_values(results, "control", seeds)
    return np.array([stats.paired_differences(analysis.metric_values(results, arm_name(t), seeds), ctl)[0]
                     for t in sorted(times)])


def best_snapshot(results: dict, tuned: dict, times, seeds: list[int]) -> tuple[str, str]:
    """The single snapshot arm with the best validation accuracy, and how it was chosen (never on test)."""
    names = [arm_name(t) for t in sorted(times)]
    if all(tuned.get(a, {}).get("value") is not None for a in names):
        return max(names, key=lambda a: tuned[a]["value"]), "tuned validation accuracy on the tuning seeds"

    def val(a):
        v = np.array([results[(a, s)]["val_acc"] if results[(a, s)]["status"] == "ok" else np.nan for s in seeds])
        return float(np.mean(stats.fill_failures(v)[0]))

    return max(names, key=val), "mean validation accuracy over the final seeds (no tuning)"


# ---------------------------------------------------------------- figures


def plot_benefit(times, b: np.ndarray, replay: np.ndarray, path, title: str):
    """Mean paired difference snap@t - control (95% t-CI) against t, with the replay's as a band."""
    from hat.plots import _plt, save_figure

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ci = [stats.mean_ci_t(row) for row in b]
    ax.plot(times, [c[0] for c in ci], marker="o", label="frozen snapshot at t − control")
    ax.fill_between(times, [c[1] for c in ci], [c[2] for c in ci], alpha=0.2)
    m, lo, hi = stats.mean_ci_t(replay)
    ax.axhline(m, color="C1", label="replay − control")
    if math.isfinite(lo):
        ax.axhspan(lo, hi, color="C1", alpha=0.15)
    ax.axhline(0, color="grey", linestyle=":")
    ax.axvline(EARLY_EPOCH, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("snapshot time t (epochs)")
    ax.set_ylabel("paired Δ test accuracy (points)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_distances(dist: dict, cp: dict | None, path, title: str):
    """Left: distance between consecutive snapshots against t; right: distance to the final snapshot."""
    from hat.plots import _plt, save_figure

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for d in dist.values():
        ax1.plot(d["t"][1:], d["consecutive"][1:], color="grey", alpha=0.5, linewidth=0.8)
        ax2.plot(d["t"], d["to_final"], color="grey", alpha=0.5, linewidth=0.8)
    t, cons, fin = mean_distance_curves(dist)
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


def mean_distance_curves(dist: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times common to every run, and the mean consecutive / to-final distances there."""
    common_t = sorted(set.intersection(*[set(d["t"].tolist()) for d in dist.values()]))
    cons, fin = [], []
    for d in dist.values():
        pos = [d["t"].tolist().index(t) for t in common_t]
        cons.append(d["consecutive"][pos])
        fin.append(d["to_final"][pos])
    return np.array(common_t), np.mean(cons, axis=0), np.mean(fin, axis=0)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = common.build_parser(__doc__, "python -m studies.rule_over_time")
    parser.add_argument("--times", type=float, nargs="+", default=list(TIMES), help=f"snapshot times (default {TIMES})")
    parser.add_argument("--time-mode", choices=("keep", "scale"), default="keep",
                        help="fit the times to a shorter run: keep those <= its length, or scale them by epochs/20")
    parser.add_argument("--snapshots", default=None, help="reuse the phase-1 snapshots in this folder (skips phase 1)")
    args = parser.parse_args(argv)
    ctx = common.make_context(STUDY, args, DEFAULTS)
    sc = ctx.scale
    seeds = list(range(sc.seeds))
    spe, total = run_length(ctx.base, ctx.data)
    wanted, how = snapshot_times(ctx.base.epochs, args.times, args.time_mode)
    times, merged = merge_same_step(wanted, spe, total)
    if merged:
        how += f"; {', '.join(f'{t:g}' for t in merged)} fell on the same training step as a later time and were merged"
    plan_arms = build_arms({t: "" for t in times})  # snapshot paths come from phase 1; the cost needs the rules only
    bar = progress.progress_bar(progress.plan(ctx.base, sc, plan_arms, 0 if args.snapshots else sc.hat_runs), STUDY,
                                ctx.progress)
    snaps = snapshots_from_dir(args.snapshots) if args.snapshots else common.train_meta_learners(ctx, times, bar)
    if args.snapshots:
        how = f"the times of the snapshots found in `{args.snapshots}`"
    source_seed = min(snaps)
    source = snaps[source_seed]
    times = tuple(sorted(source))
    arms = build_arms(source)
    tuned, results = common.tune_and_replicate(ctx, arms, seeds, bar)
    bar.close()
    if args.no_report:
        return 0

    fam_a = control_family(times)
    sections, files, comps_a = report.comparison_sections(ctx, arms, tuned, results, seeds, fam_a)
    by_key = {h.key: c for h, c in zip(fam_a, comps_a)}

    # H1: early snapshots help, and the benefit decreases with t
    b = benefits(results, times, seeds)  # (times, seeds)
    early = early_times(times)
    early_v = [by_key[f"H1-{arm_name(t)}"].verdict for t in early]
    if len(times) >= 2:
        # (times, seeds) -> (times * seeds,), time-major: t repeated per seed, seeds tiled per t
        trend = stats.trend_test(b.reshape(-1), np.repeat(times, len(seeds)), np.tile(seeds, len(times)))
    else:
        trend = {"coef": float("nan"), "se": float("nan"), "p": float("nan"), "method": "none", "formula": "n/a"}
    v1 = h1_verdict(early_v, trend["coef"], trend["p"])
    replay_d = stats.paired_differences(analysis.metric_values(results, "replay", seeds),
                                        analysis.metric_values(results, "control", seeds))[0]
    fig_b = plot_benefit(list(times), b, replay_d, ctx.out / "benefit_vs_time.png",
                         f"{ctx.name}: frozen snapshot at t against the control")
    rows = [{"t (epochs)": t, "early": t in early, "mean Δ vs control": float(np.mean(row)),
             "95% t-CI": "[{:+.2f}, {:+.2f}]".format(*stats.mean_ci_t(row)[1:]),
             "Holm p": by_key[f"H1-{arm_name(t)}"].p_holm, "verdict": by_key[f"H1-{arm_name(t)}"].verdict}
            for t, row in zip(times, b)]
    h1 = ["## H1: a useful rule early that degenerates", "",
          "Per snapshot time, the paired test-accuracy difference of the frozen snapshot against the control "
          "(family A above):", "", stats.format_table(rows), "",
          f"Trend of the benefit over log t ({trend['method']}: `{trend['formula']}`, seed as random effect): "
          f"slope {report.fmt(trend['coef'], '+.3g')} points per unit log t, SE {report.fmt(trend['se'], '.3g')}, "
          f"two-sided p = {report.fmt(trend['p'], '.3g')}.", "",
          f"- VERDICT H1: {v1.upper()} — M learns a useful rule early and degenerates once L converges "
          f"(early snapshots t <= {EARLY_EPOCH:g}: {', '.join(f'{arm_name(t)} {v}' for t, v in zip(early, early_v))}; "
          f"log-t slope {report.fmt(trend['coef'], '+.3g')}, p = {report.fmt(trend['p'], '.3g')}; rule: supported if "
          "some early snapshot is supported (Holm, family A) and the slope is negative with p < 0.05; refuted if the "
          "slope is significantly positive or every early snapshot is refuted; otherwise inconclusive)", "",
          *report.figure_block([fig_b], ctx.out), ""]

    # H3: the replay beats every single frozen snapshot
    fam_b = replay_family(times)
    comps_b = analysis.compare_hypotheses(results, seeds, fam_b, sc.margin, sc.n_boot)
    v3 = h3_verdict([c.verdict for c in comps_b])
    best, chosen = best_snapshot(results, tuned, times, seeds)
    cb = {h.control: c for h, c in zip(fam_b, comps_b)}[best]
    h3 = ["## H3: a transient rule (replay against every single snapshot, one Holm family)", "",
          analysis.comparison_table(comps_b, fam_b), "",
          *[f"- {line}" for line in analysis.verdict_lines(fam_b, comps_b)],
          f"- VERDICT H3: {v3.upper()} — the useful rule is transient: applying at time t the snapshot taken at t "
          f"beats every single frozen snapshot (rule: supported if all {len(fam_b)} comparisons above are "
          "supported, refuted if any is refuted, otherwise inconclusive)", "",
          f"Best single snapshot, chosen on {chosen}: `{best}`; replay − {best}: Δ = {cb.mean_diff:+.2f} "
          f"(95% CI [{cb.ci_lo:+.2f}, {cb.ci_hi:+.2f}], Holm p = {cb.p_holm:.3g}, {cb.verdict}). Replay against "
          f"the control: see H3-replay>control in family A (Δ = {by_key['H3-replay>control'].mean_diff:+.2f}, "
          f"{by_key['H3-replay>control'].verdict}).", ""]

    # the 4-D view: how far the rule moves between snapshots
    inputs = sample_rule_inputs(ctx.base, ctx.data)
    dist = distances_over_time(snaps, inputs)
    t_all, cons, fin = mean_distance_curves(dist)
    cp = ra.change_point(t_all[1:], cons[1:]) if len(t_all) >= 3 else None
    fig_d = plot_distances(dist, cp, ctx.out / "rule_distance.png", f"{ctx.name}: the rule over time")
    scale = np.mean([[d["scale"][d["t"].tolist().index(t)] for t in t_all] for d in dist.values()], axis=0)
    gaps = np.diff(t_all, prepend=np.nan)
    drows = [{"t (epochs)": t, "mean |R(t)|": s, "distance to previous": c, "relative to |R|": c / s if s else float("nan"),
              "per epoch": c / g, "distance to final": f} for t, s, c, g, f in zip(t_all, scale, cons, gaps, fin)]
    cp_line = ("Too few snapshot times (< 3) for a change point." if cp is None else
               f"Change point (two-segment piecewise-constant least squares on the mean distance to the previous "
               f"snapshot; with log-spaced times, the change per step of the time grid): the rule changes phase between t = {t_all[1:][cp.index - 1]:g} and t = {cp.t:g} epochs "
               f"(mean step {cp.mean_before:.3g} before, {cp.mean_after:.3g} from there on; R² = {cp.r2:.3f}).")
    view = ["## The rule over time: f(v_i, w_ij, v_j, t) (exploratory)", "",
            f"Functional distance mean |R_A − R_B| over {len(inputs['pre'])} inputs (v_i, w_ij, v_j, |g_ij|) sampled "
            f"with seed {DISTANCE_SEED} from a learner's training forward passes ({SAMPLE_CHECKPOINTS} checkpoints "
            f"over up to {SAMPLE_MAX_STEPS} backprop steps, layers weighted by their rule evaluations), "
            f"averaged over {len(dist)} phase-1 run(s):", "", stats.format_table(drows), "", cp_line, "",
            *report.figure_block([fig_d], ctx.out), ""]
    phase = ["## Phase 1: meta-learners over time", "",
             f"{len(snaps)} HAT run(s) with a trainable meta-learner (preset values, seeds {PHASE1_SEED_BASE}+)"
             + (f", reused from `{args.snapshots}`" if args.snapshots else "") +
             f". Snapshot times (epochs): {', '.join(f'{t:g}' for t in times)} ({how}; {spe} steps per epoch, "
             f"{total} steps in all). Arms `snap@t` and `replay` use run seed {source_seed}; the distances use "
             "every run.", ""]
    report.finish_report(ctx, "The meta-learned rule over time", __doc__, phase + sections + h1 + h3 + view,
                         files + [fig_b, fig_d])
    return 0


if __name__ == "__main__":
    sys.exit(main())
