"""How alike two problems are, measured through their meta-learned rules, and whether a rule transfers.

The paper proposes the meta-learned rule as a signature of a problem: the distance between the rules
R_A and R_B learned on problems A and B, the integral of (R_A - R_B) dF over the distribution F of the
rules' inputs, would measure how alike the problems are. Here the distance is the mean over an input
sample of |R_A - R_B| (`studies.lib.rule_analysis.functional_distance`, p = 1), F is the pooled sample of the
(v_i, w_ij, v_j) the rules saw (every run of every problem, equal shares), and the reference is the
distance between rules meta-learned on one problem from different seeds.

Problems (all available offline; derived from Fashion-MNIST with the same splits):
  fmnist   Fashion-MNIST
  perm     Fashion-MNIST with a fixed random pixel permutation (seed 12345), the same for every split
  merge5   Fashion-MNIST with 5 classes, label // 2 (pairs of neighbouring classes merged); the learner
           keeps its 10 output units (the trainer requires 10), 5 of which are never a target
MNIST, the paper's other problem, is not available offline here: skipped.

Phase 1: `hat_runs` HAT runs per problem (trainable `mlp` rule, preset values, seeds 40000 + 1000 p + k
for problem p) save their final meta-learner and a sample of their inputs (as in `studies.rule_form`).
Phase 2, on each target problem B: the control, and for each source A the first final meta-learner of A
applied frozen (rule `snapshot`), each arm tuned on the same budget and paired over seeds 0..N-1.

Hypotheses:
  H-<A>-to-<B>  (A != B) a rule meta-learned on A, applied frozen, helps a fresh learner on B
                (<A>@<B> > control@<B>); one Holm family with the references
  X-<B>-to-<B>  the same with the rule meta-learned on B itself (fmnist-to-fmnist = fixed_rule's H-frozen-final)
  D-<A>-vs-<B>  rules meta-learned on A and on B are farther apart than rules meta-learned on one problem from
                different seeds (exact permutation test over the rules' problem labels, Holm over the pairs;
                with n runs per problem the smallest attainable p is 2 / C(2n, n): use --hat-runs >= 5)

Run:   python -m studies.transfer                                   # quick preset, every problem as a target
                                                                    # (~1 h on a 2-core CPU; --targets perm: ~25 min)
       python -m studies.transfer --hat-runs 6 --targets perm       # more meta-learners, one target problem
       python -m studies.transfer --preset paper                    # the paper's scale, for a GPU
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Callable

import numpy as np
import torch

from studies import rule_form
from studies.lib import common, progress, report, stats, workqueue
from studies.lib import rule_analysis as ra
from studies.lib.analysis import Hypothesis
from studies.lib.common import Arm

STUDY = "transfer"
PERM_SEED = 12345  # the pixel permutation of `perm`
MERGED_CLASSES = 5  # `merge5`: label // (10 / 5)
SEED_BASE = 40_000  # phase-1 seeds: SEED_BASE + 1000 * (index of the problem in PROBLEMS) + k
DISTANCE_P = 1.0  # functional distance: mean |R_A - R_B|^p
DEFAULTS = {"snapshot_epochs": ()}  # only phase 1 saves meta-learners


# ---------------------------------------------------------------- problems


def permute_pixels(data, seed: int = PERM_SEED):
    """The same fixed random permutation of the input columns in every split; labels unchanged."""
    from hat.data import Data

    perm = torch.randperm(data.x_train.shape[1], generator=torch.Generator().manual_seed(seed)).to(data.device)
    return Data(data.x_train[:, perm], data.y_train, data.x_val[:, perm], data.y_val, data.x_test[:, perm], data.y_test)


def merge_labels(data, classes: int = MERGED_CLASSES):
    """Labels y // (10 / classes) in every split (neighbouring classes merged); inputs unchanged."""
    from hat.data import NUM_CLASSES, Data

    if NUM_CLASSES % classes:
        raise ValueError(f"{classes} merged classes do not divide {NUM_CLASSES}")
    k = NUM_CLASSES // classes
    return Data(data.x_train, data.y_train // k, data.x_val, data.y_val // k, data.x_test, data.y_test // k)


PROBLEMS: dict[str, Callable] = {
    "fmnist": lambda data: data,
    "perm": permute_pixels,
    "merge5": merge_labels,
}


# ---------------------------------------------------------------- phase 1


def phase1(ctx: common.Context, problems: list[str], datas: dict, samples: int, bar=progress.NO_BAR) -> dict[str, list[dict]]:
    """{problem: [result of each ok run, by seed]}; each result has "snapshots" and "inputs"."""
    cfg = ctx.base.replace(rule="mlp", trainable_rule=True, snapshot_epochs=(ctx.base.epochs,))
    units = {f"{p}|{SEED_BASE + 1000 * list(PROBLEMS).index(p) + k}":
             {"problem": p, "seed": SEED_BASE + 1000 * list(PROBLEMS).index(p) + k}
             for p in problems for k in range(ctx.scale.hat_runs)}

    def fn(key, spec):
        p, seed = spec["problem"], spec["seed"]
        pctx = dataclasses.replace(ctx, data=datas[p], out=ctx.out / "phase1" / p)
        res = rule_form.train_and_collect(pctx, cfg.replace(seed=seed), {"arm": f"hat@{p}", "rule": "mlp", "seed": seed,
                                                                         "phase": "phase1", "problem": p},
                                          f"phase1 hat@{p} s{seed}", samples)
        bar.update(1)
        return {**res, "problem": p, "seed": seed}

    done = workqueue.run_units(ctx.storage, f"{ctx.name}:phase1", units, fn)
    by_problem = {p: sorted((r for r in done.values() if r["problem"] == p and r["status"] == "ok" and r.get("inputs")),
                            key=lambda r: r["seed"]) for p in problems}
    empty = [p for p, rs in by_problem.items() if not rs]
    if empty:
        raise SystemExit(f"phase 1: every HAT run on {', '.join(empty)} diverged; no meta-learner (see MLflow)")
    return by_problem


# ---------------------------------------------------------------- distances


def distance_key(a: str, b: str) -> str:
    return f"D-{a}-vs-{b}"


def distance_analysis(D: np.ndarray, labels: list[str], problems: list[str], n_perm: int) -> list[dict]:
    """Between/within distances and the permutation test for every pair of problems (Holm over the pairs)."""
    rows = []
    for i, (a, b) in enumerate(itertools.combinations(problems, 2)):
        bw = ra.between_within(D, labels, a, b)
        test = ra.permutation_test(D, labels, a, b, random_state=i, n_perm=n_perm)
        within = np.concatenate([bw["within_a"], bw["within_b"]])
        rows.append({"a": a, "b": b, "between": bw["between"], "within": within, **test})
    if rows:
        adj = stats.holm([r["p_greater"] for r in rows])
        adj_opp = stats.holm([r["p_less"] for r in rows])
        for r, p, po in zip(rows, adj, adj_opp):
            r["p_holm"], r["p_holm_less"] = float(p), float(po)
            r["verdict"] = distance_verdict(r)
    return rows


def distance_verdict(r: dict) -> str:
    if np.isfinite(r["p_holm"]) and r["p_holm"] < stats.ALPHA and r["stat"] > 0:
        return "supported"
    if np.isfinite(r["p_holm_less"]) and r["p_holm_less"] < stats.ALPHA:
        return "refuted"
    return "inconclusive"


def _spread(v: np.ndarray) -> str:
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.3g} [{v.min():.3g}, {v.max():.3g}] (n={len(v)})"


def distance_table(rows: list[dict], D: np.ndarray, labels: list[str], problems: list[str]) -> str:
    out = []
    lab = np.asarray(labels)
    for p in problems:
        w = ra.between_within(D, labels, p, p)["within_a"]
        out.append({"pair": f"{p} (seeds)", "distance: mean [min, max]": _spread(w), "within-problem reference": "",
                    "ratio": None, "perm. p (between > within)": None, "Holm p": None, "smallest attainable p": None,
                    "rules": f"{int(np.sum(lab == p))}"})
    for r in rows:
        ratio = r["between"].mean() / r["within"].mean() if len(r["within"]) and r["within"].mean() > 0 else float("nan")
        out.append({"pair": f"{r['a']} vs {r['b']}", "distance: mean [min, max]": _spread(r["between"]),
                    "within-problem reference": _spread(r["within"]), "ratio": ratio,
                    "perm. p (between > within)": r["p_greater"], "Holm p": r.get("p_holm"),
                    "smallest attainable p": r["p_min"],
                    "rules": f"{int(np.sum(lab == r['a']))} + {int(np.sum(lab == r['b']))}"})
    return stats.format_table(out)


def plot_distances(D: np.ndarray, labels: list[str], path, title: str):
    from hat.plots import _plt, save_figure

    plt = _plt()
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


# ---------------------------------------------------------------- phase 2


def arm_name(source: str, target: str) -> str:
    return f"{source}@{target}"


def hyp_key(source: str, target: str) -> str:
    return f"{'X' if source == target else 'H'}-{source}-to-{target}"


def build_arms(target: str, sources: dict[str, str]) -> list[Arm]:
    """control@B and, per source problem A, A's meta-learner frozen on B (sources: {A: snapshot path})."""
    return [Arm(f"control@{target}", {"rule": "none"}, {})] + [
        common.rule_arm(arm_name(a, target), "snapshot", {"path": path}, hypothesis=hyp_key(a, target),
                        control=f"control@{target}")
        for a, path in sources.items()]


def hypotheses(problems: list[str], targets: list[str]) -> list[Hypothesis]:
    out = []
    for b in targets:
        for a in problems:
            text = (f"a rule meta-learned on {a}, applied frozen, helps a fresh learner on {b}" if a != b else
                    f"a rule meta-learned on {b} itself, applied frozen, helps a fresh learner on {b} (reference)")
            out.append(Hypothesis(hyp_key(a, b), text, arm_name(a, b), "greater", control=f"control@{b}"))
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from rules.snapshot import rule_from_snapshot

    parser = common.build_parser(__doc__, "python -m studies.transfer")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS),
                        help=f"problems whose rules are meta-learned (default: {' '.join(PROBLEMS)})")
    parser.add_argument("--targets", nargs="+", choices=list(PROBLEMS), default=None,
                        help="problems the frozen rules are applied to (default: every problem in --problems)")
    rule_form.add_sample_args(parser)
    args = parser.parse_args(argv)
    problems = list(dict.fromkeys(args.problems))
    targets = list(dict.fromkeys(args.targets or problems))
    if not set(targets) <= set(problems):
        parser.error("every target must also be in --problems (its own rule is the reference)")
    ctx = common.make_context(STUDY, args, DEFAULTS)
    sc = ctx.scale
    seeds = list(range(sc.seeds))
    datas = {p: PROBLEMS[p](ctx.data) for p in problems}
    n_units = len(problems) * sc.hat_runs + len(targets) * (1 + len(problems)) * (sc.trials * sc.tuning_seeds + sc.seeds)
    bar = progress.progress_bar(n_units, STUDY, ctx.progress)
    runs = phase1(ctx, problems, datas, args.samples, bar)
    sources = {p: ctx.snapshot(runs[p][0]) for p in problems}  # the first ok run's final meta-learner
    arms, tuned, results = [], {}, {}
    for b in targets:
        bctx = dataclasses.replace(ctx, data=datas[b], name=f"{ctx.name}:{b}")
        arms_b = build_arms(b, sources)
        t, r = common.tune_and_replicate(bctx, arms_b, seeds, bar)
        arms += arms_b
        tuned.update(t)
        results.update(r)
    bar.close()
    if args.no_report:
        return 0

    # distances between every pair of meta-learners on the pooled input sample
    members = [(p, r) for p in problems for r in runs[p]]
    labels = [p for p, _ in members]
    X, _, _ = rule_form.load_sample([ctx.inputs_sample(r) for _, r in members], args.pool)
    fns = [ra.rule_fn(rule_from_snapshot(ctx.snapshot(r))) for _, r in members]
    Y = np.array([ra.evaluate_rule(f, X) for f in fns])  # (R, n)
    D = ra.distance_matrix(Y, DISTANCE_P)  # (R, R)
    drows = distance_analysis(D, labels, problems, sc.n_boot)
    fig_d = plot_distances(D, [f"{p}:{r['seed']}" for p, r in members], ctx.out / "distance_matrix.png",
                           f"{ctx.name}: distances between meta-learned rules")
    scale_r = float(np.mean(np.abs(Y)))

    hyps = hypotheses(problems, targets)
    sections, files, comps = report.comparison_sections(ctx, arms, tuned, results, seeds, hyps)
    between = {(r["a"], r["b"]): r["between"].mean() for r in drows}
    within = {p: ra.between_within(D, labels, p, p)["within_a"] for p in problems}
    xfer_rows = []
    for h, c in zip(hyps, comps):
        a, b = h.arm.split("@")
        dist = within[a].mean() if a == b and len(within[a]) else between.get((a, b), between.get((b, a), float("nan")))
        xfer_rows.append({"source problem": a, "target problem": b, "Δ test acc vs control": c.mean_diff,
                          "95% CI": f"[{c.ci_lo:+.2f}, {c.ci_hi:+.2f}]", "rule distance (source, target)": dist,
                          "verdict": c.verdict})
    head = [
        "## Problems", "",
        f"Problems: {', '.join(problems)}; targets: {', '.join(targets)}. `perm`: pixel permutation seed {PERM_SEED}. "
        f"`merge5`: label // {10 // MERGED_CLASSES}, the learner keeps 10 output units (5 never a target). "
        "MNIST (the paper's other problem) is not available offline here: skipped.", "",
        f"Phase 1: {sc.hat_runs} HAT run(s) per problem (seeds {SEED_BASE} + 1000·p + k); "
        + ", ".join(f"{p}: {len(runs[p])} ok" for p in problems)
        + ". The rule applied frozen from a source problem is the final meta-learner of its first ok run: "
        + ", ".join(f"{p} → `{sources[p]}`" for p in problems) + ".", "",
        "## Distances between meta-learned rules", "",
        f"Distance = mean over the pooled input sample ({len(X)} triples (v_i, w_ij, v_j), equal shares of every run "
        f"and layer of every problem) of |R_a − R_b|^{DISTANCE_P:g}; for scale, the mean |R| over all rules and inputs is "
        f"{scale_r:.3g}. The within-problem reference is the distance between rules of one problem meta-learned from "
        "different seeds. Test: exact permutation test of the problem labels (statistic: mean between − mean within; "
        f"random relabellings if there are more than {sc.n_boot}), Holm over the pairs.", "",
        distance_table(drows, D, labels, problems), "",
        *[f"- VERDICT {distance_key(r['a'], r['b'])}: {r['verdict'].upper()} — rules meta-learned on {r['a']} and on "
          f"{r['b']} are farther apart than rules meta-learned on one problem from different seeds (between "
          f"{r['between'].mean():.3g} vs within {report.fmt(float(r['within'].mean()) if len(r['within']) else float('nan'), '.3g')}; "
          f"permutation p = {report.fmt(r['p_greater'], '.3g')}, Holm p = {report.fmt(r['p_holm'], '.3g')}, smallest "
          f"attainable p = {report.fmt(r['p_min'], '.3g')}; rule: supported if Holm p < {stats.ALPHA} for between > "
          f"within, refuted if Holm p < {stats.ALPHA} for between < within, otherwise inconclusive)" for r in drows],
        "", *report.figure_block([fig_d], ctx.out), "",
        "## Transfer against rule distance", "",
        "Does a frozen rule help more when it was learned on a closer problem? (descriptive; few problems). Distance: "
        "mean distance between the rules of the two problems; for source = target, between rules of that problem "
        "from different seeds.", "",
        stats.format_table(xfer_rows), "",
    ]
    report.finish_report(ctx, "Problem similarity through meta-learned rules, and transfer", __doc__,
                         head + sections, files + [fig_d])
    return 0


if __name__ == "__main__":
    sys.exit(main())
