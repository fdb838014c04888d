"""Dose-response of fixed rules: the rate grid, the magnitude of a rule's update relative to the optimizer's step
(ρ), the rate of matched magnitude, the best grid rate, the sweep up the grid and its tables (studies.dose_response).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from studies.lib import analysis, progress, stats
from studies.lib.arms import Arm
from studies.lib.context import Context, result_dict
from studies.lib.phases import run_replicates
from studies.lib.tuning import SHARED_SPACE


def rate_grid(rate_min: float, rate_max: float, per_decade: int, extra=()) -> list[float]:
    """Sorted log grid rate_min..rate_max with `per_decade` points per decade (both ends included), plus `extra`."""
    if not 0 < rate_min <= rate_max or per_decade < 1:
        raise ValueError("need 0 < rate-min <= rate-max and per-decade >= 1")
    n = int(round(math.log10(rate_max / rate_min) * per_decade))
    grid = {float(f"{rate_min * 10 ** (k / per_decade):.6g}") for k in range(n + 1)}
    return sorted(grid | {float(f"{r:.6g}") for r in extra if r > 0})


def arm_name(rule: str, rate) -> str:
    return f"{rule}@{rate:g}" if not isinstance(rate, str) else f"{rule}@{rate}"


def relative_norm(curve: list[dict], hidden_layers: int) -> float:
    """rho of one run (module docstring): sum over hidden layers of the mean local-update norm over the mean
    optimizer-step norm, over the evaluations that carry the diagnostics; NaN if none does."""
    local = grad = 0.0
    for layer in range(hidden_layers):
        ln = [e[f"local_norm_{layer}"] for e in curve if f"local_norm_{layer}" in e]
        gn = [e[f"grad_update_norm_{layer}"] for e in curve if f"grad_update_norm_{layer}" in e]
        if not ln or not gn:
            return float("nan")
        local += float(np.mean(ln))
        grad += float(np.mean(gn))
    if grad > 0:
        return local / grad
    return float("inf") if local > 0 else float("nan")  # no optimizer step (e.g. a saturated learner)


def mean_defined(xs) -> float:
    """Mean of the defined values (NaN and None left out, inf kept); NaN if there is none."""
    v = np.array([x for x in xs if x is not None and not math.isnan(x)], dtype=float)
    return float(v.mean()) if v.size else float("nan")


def matched_rate(rho_m: float, rho_ref: float, ref_rate: float) -> float:
    """r_ref · rho_M / rho_R(r_ref); NaN unless both magnitudes are finite and positive."""
    if not (math.isfinite(rho_m) and math.isfinite(rho_ref)) or rho_ref <= 0 or rho_m <= 0:
        return float("nan")
    return ref_rate * rho_m / rho_ref


def best_rate(results: dict, rule: str, rates: list[float], seeds: list[int]) -> float | None:
    """The grid rate with the highest mean validation accuracy (diverged runs scored as chance); None if unrun."""
    failure = analysis.METRICS["test_acc"].failure
    best, best_v = None, -np.inf
    for r in rates:
        if (arm_name(rule, r), seeds[0]) not in results:
            continue
        v = np.mean([results[(arm_name(rule, r), s)]["val_acc"] if results[(arm_name(rule, r), s)]["status"] == "ok"
                     else failure for s in seeds])
        if v > best_v:
            best, best_v = r, v
    return best


def keep_norm(hidden: int):
    """A `run_replicates` keep hook: each run's rate (0 for the control) and relative update norm ρ."""
    return lambda cfg, r: {"rate": cfg.rate if cfg.rule != "none" else 0.0, "rel_norm": relative_norm(r.curve, hidden)}


def rate_arm(rule: str, rate, value: float, params: dict, hypothesis: str = "") -> Arm:
    """The arm of `rule` at rate `value` (named by `rate`: a grid rate or "matched"), tagged with its rate."""
    return Arm(arm_name(rule, rate), {"rule": rule, "rule_params": dict(params), "rate": value}, {}, hypothesis,
               tags={"rate": value})


def run_arms(ctx: Context, arms: list[Arm], shared: dict, seeds: list[int], hidden: int, phase: str,
             queue: str | None = None, bar=progress.NO_BAR) -> dict:
    """`arms` at the control's tuned learner settings `shared` on `seeds`, keeping every run's ρ."""
    return run_replicates(ctx, arms, {a.name: {"params": shared} for a in arms}, seeds, phase, bar,
                          population=1 if ctx.base.grad_clip else None, keep=keep_norm(hidden), queue=queue)


def sweep(ctx: Context, rules_: list[str], params: dict, rates: list[float], shared: dict, seeds: list[int],
          hidden: int, full_grid: bool, always: dict | None = None, bar=progress.NO_BAR) -> tuple[dict, dict]:
    """The grid, one round per rate (ascending); a rule leaves the grid after a rate where every seed diverged,
    except at its rates in `always` ({rule: {rate}}, e.g. the preset rate of H-converged). `params`: each rule's
    rule_params. Returns (results, {rule: first rate at which every seed diverged, or None})."""
    results, stopped = {}, {r: None for r in rules_}
    always = always or {}
    for k, rate in enumerate(rates):
        active = [r for r in rules_ if stopped[r] is None or full_grid or rate in always.get(r, ())]
        if not active:
            continue  # a later rate may still be in `always` (the preset rate of H-converged)
        arms = [rate_arm(r, rate, rate, params.get(r, {})) for r in active]
        results.update(run_arms(ctx, arms, shared, seeds, hidden, "grid", f"grid{k}", bar))
        for r in active:
            if stopped[r] is None and all(results[(arm_name(r, rate), s)]["status"] != "ok" for s in seeds):
                stopped[r] = rate
    return results, stopped


def dose_rows(results: dict, rules_: list[str], rates: list[float], seeds: list[int]) -> list[dict]:
    """Per rule and rate (rate 0 = the control): mean paired test-accuracy difference with its 95% t-CI, diverged
    runs (scored as the failure value) and the mean relative update norm."""
    failure = analysis.METRICS["test_acc"].failure
    ctl = analysis.metric_values(results, "control", seeds)
    rows = []
    for r in rules_:
        rows.append({"rule": r, "rate": 0.0, "n": len(seeds), "diverged": 0, "Δ test acc": 0.0, "ci_lo": 0.0,
                     "ci_hi": 0.0, "rel norm": 0.0, "note": "the control (rate 0)"})
        for rate in [*rates, "matched"]:
            a = arm_name(r, rate)
            if (a, seeds[0]) not in results:
                continue
            d, n_div, _ = stats.paired_differences(analysis.metric_values(results, a, seeds), ctl, failure)
            m, lo, hi = stats.mean_ci_t(d)
            rows.append({"rule": r, "rate": results[(a, seeds[0])]["rate"], "n": len(d), "diverged": n_div,
                         "Δ test acc": m, "ci_lo": lo, "ci_hi": hi,
                         "rel norm": mean_defined(results[(a, s)]["rel_norm"] for s in seeds
                                                 if results[(a, s)]["status"] == "ok"),
                         "note": "matched magnitude" if rate == "matched" else ""})
    return rows


def write_dose_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_norms_csv(results: dict, phase1: list[dict], path: Path) -> Path:
    """Every run's relative update norm rho: the phase-1 mlp runs (arm `hat`), the control and the rule runs."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "rate", "status", "rel_norm", "mlflow_run_id"])
        for r in sorted(phase1, key=lambda r: r["seed"]):
            w.writerow(["hat", r["seed"], "", r["status"], r["rel_norm"], r["run_id"]])
        for (arm, seed), r in sorted(results.items()):
            w.writerow([arm, seed, r.get("rate", 0.0), r["status"], r["rel_norm"], r["run_id"]])
    return path




def dose_hypotheses(rules_: list[str], preset_rate: float, best: dict, matched: dict) -> list:
    """H-converged at the preset rate, X-matched-<rule> at the matched rate, X-best-<rule> at the best grid rate."""
    from studies.lib.analysis import Hypothesis

    out = []
    if "converged" in rules_:
        out.append(Hypothesis("H-converged", f"a priori application of 2*v_j (rate {preset_rate:g}) decreases "
                              "performance", arm_name("converged", float(f"{preset_rate:.6g}")), "less"))
    for r in rules_:
        if math.isfinite(matched.get(r, float("nan"))):
            out.append(Hypothesis(f"X-matched-{r}", f"{r} at the meta-learned rule's magnitude (rate "
                                  f"{matched[r]:.3g}) helps", arm_name(r, "matched"), "greater"))
    for r in rules_:
        if best.get(r) is not None:
            out.append(Hypothesis(f"X-best-{r}", f"{r} at its best grid rate ({best[r]:g}) helps",
                                  arm_name(r, best[r]), "greater"))
    return out


def dose_table(rows: list[dict]) -> str:
    """The dose-response table: per rule and rate, Δ test accuracy with its CI, divergences and ρ."""
    from studies.lib import report

    return stats.format_table([{"rule": r["rule"], "rate": f"{r['rate']:.4g}", "runs": r["n"],
                                 "diverged": r["diverged"], "Δ test acc": report.fmt(r["Δ test acc"], "+.2f"),
                                 "95% CI": f"[{report.fmt(r['ci_lo'], '+.2f')}, {report.fmt(r['ci_hi'], '+.2f')}]",
                                 "ρ (rel. update norm)": report.fmt(r["rel norm"], ".3g"), "note": r["note"]}
                                for r in rows])


def magnitude_table(results: dict, rules_: list[str], seeds: list[int], rho_ref: dict, matched: dict, best: dict,
                    stopped: dict, ref: float) -> str:
    """Per rule: ρ at the reference rate, the matched rate and the ρ reached there, the best and the diverging rate."""
    from studies.lib import report

    return stats.format_table([{"rule": r, f"ρ_R at r_ref = {ref:g}": report.fmt(rho_ref[r], ".4g"),
                                     "matched rate": report.fmt(matched[r], ".4g"),
                                     "ρ_R at the matched rate (target ρ_M)": report.fmt(rho_at(results, r, "matched",
                                                                                               seeds), ".4g"),
                                     "best grid rate (val)": "—" if best[r] is None else f"{best[r]:g}",
                                     "all seeds diverged from": "—" if stopped[r] is None else f"{stopped[r]:g}"}
                                    for r in rules_])


def rho_at(results: dict, rule: str, rate, seeds: list[int]) -> float:
    """Mean ρ of `rule`'s finished runs at `rate` (a grid rate or "matched"); NaN if none."""
    a = arm_name(rule, rate)
    return mean_defined(results[(a, s)]["rel_norm"] for s in seeds if (a, s) in results and results[(a, s)]["status"] == "ok")


def no_help_lines(hyps: list, comps: list) -> list[str]:
    """Per exploratory claim: whether "the rule at that rate does not help" holds (its effect claim refuted or
    negligible)."""
    return [f"- {h.key}: the claim \"{h.arm.split('@')[0]} at "
            f"{'the matched magnitude' if h.key.startswith('X-matched') else 'its best rate'} does not help\" "
            f"{'HOLDS' if stats.shown_below_margin(c.verdict) else 'is NOT SHOWN'} (effect claim: {c.verdict})"
            for h, c in zip(hyps, comps) if h.key.startswith("X-")]


def check_grid_args(args) -> str | None:
    """What is wrong with the grid flags, or a learner without a hidden layer (None: nothing)."""
    problems = []
    if not (math.isfinite(args.rate_min) and args.rate_min > 0):
        problems.append(f"--rate-min {args.rate_min:g}: expected a finite rate > 0 (rate 0 is the control)")
    if not (math.isfinite(args.rate_max) and args.rate_max >= args.rate_min):
        problems.append(f"--rate-max {args.rate_max:g}: expected a finite rate >= --rate-min {args.rate_min:g}")
    if args.per_decade < 1:
        problems.append(f"--per-decade {args.per_decade}: expected a positive integer")
    if not (math.isfinite(args.ref_rate) and args.ref_rate > 0):
        problems.append(f"--ref-rate {args.ref_rate:g}: expected a finite rate > 0")
    if args.widths is not None and len(args.widths) < 3:
        problems.append(f"--widths {' '.join(map(str, args.widths))}: the learner needs a hidden layer (the "
                        "magnitude of an update is matched on the hidden layers)")
    return problems[0] if problems else None


def matched_magnitude(ctx: Context, rule: str, params: dict, phase1: dict, settings: dict, ref_rate: float,
                      seed: int) -> dict:
    """The rate at which `rule` has the update magnitude phase 1's meta-learners had: ρ_M, the mean relative update
    norm of the finished phase-1 runs (`phase1`: {seed: result of `train_with_norm`}), and ρ_R at `ref_rate` from one run of the rule
    (seed `seed`, the tuned `settings`), computed once for the study (a unit of its own). {"rho_m", "rho_ref",
    "ref_rate", "rate"}; rate NaN when either magnitude is undefined."""
    from studies.lib.phases import once

    hidden = len(ctx.base.widths) - 2
    rho_m = mean_defined(r.get("rel_norm") for r in phase1.values() if r["status"] == "ok")

    learner = {k: v for k, v in (settings or {}).items() if k in SHARED_SPACE}  # not HAT's own rate and rule_lr

    def reference():
        cfg = rate_arm(rule, ref_rate, ref_rate, params).config(ctx.base, learner, seed=seed)
        res = ctx.train(cfg, {"arm": arm_name(rule, ref_rate), "rule": rule, "seed": seed, "phase": "magnitude"},
                        f"magnitude {rule} s{seed}")
        return {**result_dict(res, keep_curve=False), "rel_norm": relative_norm(res.curve, hidden)}

    ref = once(ctx, f"magnitude-{rule}", reference)
    rho_ref = ref["rel_norm"] if ref["status"] == "ok" else float("nan")
    return {"rho_m": rho_m, "rho_ref": rho_ref, "ref_rate": ref_rate, "rate": matched_rate(rho_m, rho_ref, ref_rate)}


def train_with_norm(ctx: Context, cfg, tags: dict, run_name: str, keep_curve: bool = True) -> dict:
    """One run (a phase-1 `train` hook), kept with its relative update norm ρ ("rel_norm")."""
    res = ctx.train(cfg, tags, run_name)
    return {**result_dict(res, keep_curve), "rel_norm": relative_norm(res.curve, len(cfg.widths) - 2)}
