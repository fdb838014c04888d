"""Reports: per-seed CSVs, tables, verdicts and figures of a study, written to report.md and MLflow."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from hat.tracking import REPO_ROOT, ui_command
from studies.lib import verdicts as verdict_values
from studies.lib.analysis import (
    METRICS,
    Hypothesis,
    accuracy_matrix,
    arm_table,
    compare_hypotheses,
    comparison_table,
    metric_outcomes,
    verdicts,
)
from studies.lib.arms import Arm
from studies.lib.context import Context
from studies.lib.tuning import CONDITIONAL, PRUNE_MIN_EPOCH, PRUNE_MIN_FRACTION, TUNING_SEED_BASE


def write_results_csv(results: dict[tuple[str, int], dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "status", "reason", "val_acc", "test_acc", "seconds", "mlflow_run_id"])
        for (arm, seed), r in sorted(results.items()):
            w.writerow([arm, seed, r["status"], r["reason"], r["val_acc"], r["test_acc"], r["seconds"], r["run_id"]])
    return path


def write_curves_csv(results: dict[tuple[str, int], dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "epoch", "seconds", "train_loss", "val_acc", "test_acc"])
        for (arm, seed), r in sorted(results.items()):
            for e in r.get("curve", []):
                w.writerow([arm, seed, e["epoch"], e["seconds"], e["train_loss"], e["val_acc"], e["test_acc"]])
    return path


# ---------------------------------------------------------------- provenance and settings


def _field_comments(cls) -> dict[str, str]:
    """The trailing `# comment` of each dataclass field in `cls`'s source (a `# ^ ...` line continues the field
    above it)."""
    out, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"^\s+(\w+): [^#]*?=[^#]*?(?:#\s*(.*))?$", line)
        if m and not line.strip().startswith("#"):
            last = m[1]
            out[last] = (m[2] or "").strip()
            continue
        c = re.match(r"^\s+#\s*\^\s*(.*)$", line)
        if c and last:
            out[last] = (out[last] + " " + c[1]).strip()
    return out


SETTING_NOTES = {  # settings whose source comment does not say what they are
    "epochs": "length of training in epochs over the training split (may be fractional)",
}


def _value(v) -> str:
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return str(v)


def _probe(fn, fallback):
    """fn(), or fallback("unknown (why)") if it raises: a probe never costs a finished study its report."""
    try:
        return fn()
    except Exception as e:
        return fallback(f"unknown ({type(e).__name__}: {e})")


def run_span(ctx: Context) -> dict:
    """From the tracking store: {"wall": the study's parent-run start to the end of its last finished run (s), "runs":
    runs finished, "commits": {git commit: runs}} (the commits the runs were made at; a report rebuilt later from
    stored results names them here, next to the commit it was rendered at)."""
    parent = ctx.tracker.client.get_run(ctx.parent_id)
    runs = ctx.tracker.client.search_runs([ctx.tracker.experiment_id], f"tags.study_name = '{ctx.name}'",
                                          max_results=50000)
    ended = [r for r in runs if r.info.end_time and r.info.run_id != ctx.parent_id and r.data.tags.get("phase") != "arm"]
    commits: dict[str, int] = {}
    for r in ended:
        c = r.data.tags.get("git_commit", "unknown")
        commits[c] = commits.get(c, 0) + 1
    last = max((r.info.end_time for r in ended), default=parent.info.start_time)
    return {"wall": (last - parent.info.start_time) / 1000.0, "runs": len(ended), "commits": commits}


def wall_time(ctx: Context) -> str:
    """The study's wall time and the commits its runs were made at, from the tracking store."""
    def measure():
        span = run_span(ctx)
        m, s = divmod(int(round(span["wall"])), 60)
        made = ", ".join(f"`{c[:12]}` ({n})" for c, n in sorted(span["commits"].items(), key=lambda kv: -kv[1]))
        return (f"{m // 60} h {m % 60:02d} min {s:02d} s from the parent run's start to the end of its last run "
                f"(includes any pause between resumes); {span['runs']} runs, made at commit {made or 'none'}")
    if ctx.tracker is None or not ctx.parent_id:
        return "unknown (no tracking store)"
    return _probe(measure, lambda why: why)


def provenance_lines(ctx: Context) -> list[str]:
    """The report's provenance block: command, git commit and dirty flag, package versions, device, date, data."""
    from hat.data import data_root
    from studies.lib import provenance as pv

    args = ctx.args
    command = getattr(args, "command", None) or f"python -m studies.{ctx.study} (command line not recorded)"
    git = _probe(lambda: pv.git_state(REPO_ROOT), lambda why: {"commit": why, "dirty": None})
    dirty = {True: "yes: tracked files differ from the commit", False: "no", None: "unknown"}[git["dirty"]]
    dev = _probe(lambda: pv.device_info(ctx.base.device), lambda why: {"device": why})
    data = _probe(lambda: pv.data_checksum(data_root(getattr(args, "data", None))),
                  lambda why: {"root": "?", "files": {}, "sha256": why})
    files = ", ".join(f"`{n}` {h[:12]}" for n, h in data["files"].items())
    versions = _probe(pv.package_versions, lambda why: {"(versions)": why})
    return ["## Provenance", "",
            f"- command: `{command}`",
            f"- git commit: `{git['commit']}`, uncommitted changes: {dirty}",
            "- packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- device: {dev.pop('device')}; " + "; ".join(f"{k}: {v}" for k, v in dev.items()),
            f"- date: {pv.now_utc()}; wall time: {wall_time(ctx)}",
            f"- data: Fashion-MNIST from `{data['root']}`; sha256 of the files' sha256s: `{data['sha256']}` "
            f"({files})",
            f"- outputs: `{ctx.out}`; Optuna storage: `{getattr(ctx.storage, 'url', ctx.storage)}`; MLflow parent "
            f"run `{ctx.parent_id}`", ""]


def settings_table(ctx: Context) -> str:
    """Every study-size and training setting with its value, whether it differs from the preset, and its meaning."""
    from hat.config import TrainConfig, preset
    from studies.lib import stats
    from studies.lib.scale import SCALES, Scale

    rows = []
    scale_default = Scale(**SCALES.get(getattr(ctx.args, "preset", ""), {})) if ctx.args is not None else None
    notes = _field_comments(Scale)
    for f in dataclasses.fields(ctx.scale):
        v = getattr(ctx.scale, f.name)
        source = "" if scale_default is None else "preset" if getattr(scale_default, f.name) == v else "changed"
        rows.append({"setting": f"study.{f.name}", "value": _value(v), "source": source,
                     "meaning": notes.get(f.name, "")})
    ref = preset(ctx.scale.train_preset).to_dict()
    notes = _field_comments(TrainConfig)
    for k, v in ctx.base.to_dict().items():
        rows.append({"setting": f"train.{k}", "value": _value(v), "source": "preset" if ref.get(k) == v else "changed",
                     "meaning": SETTING_NOTES.get(k) or notes.get(k, "")})
    return stats.format_table(rows)


# ---------------------------------------------------------------- legend

LEGEND = {
    # settings
    "setting": "a study-size field (`study.*`) or a field of the base training config (`train.*`), before an arm's "
               "overrides and tuned values",
    "value": "the value the study ran with",
    "source": "`preset`: the preset's value; `changed`: set by a flag or by the study's own defaults; blank: "
              "unknown (no command line recorded)",
    "meaning": "what the setting does",
    # summary / verdicts
    "hypothesis": "the claim's short id (H-*: a hypothesis of the paper; X-*: exploratory)",
    "family": "the Holm family the claim is tested in (primary: the paper's claims; exploratory: the X-* claims), "
              "with its number of claims",
    "claim": "what is tested, in the paper's words where it has them",
    "verdict": "the decision of the verdict rule above: supported, negligible, refuted or inconclusive",
    # arms
    "arm": "one configuration (rule and options) compared with the others; `control` is plain backprop",
    "runs": "final paired seeds run for the arm",
    "diverged": "runs that stopped on a non-finite loss or weight; kept and scored as the failure value",
    "mean test acc": "mean final test accuracy (%) over the seeds, diverged runs scored as the value in brackets",
    "95% CI": "95% t interval across seeds: of the arm's mean accuracy (arm table) or of Δ (comparison tables)",
    "tuned val acc": "the tuning objective of the chosen trial: mean validation accuracy (%) over the tuning seeds",
    "tuned params": "the chosen trial's values (the tuning section lists every trial)",
    # comparisons
    "metric": "the per-run quantity compared (see the metric conventions table)",
    "n": "seeds paired (pairs with an undefined metric left out)",
    "failed (arm/ctl)": "diverged runs of the arm / of the control, scored as the metric's failure value",
    "missing": "pairs left out because the metric is undefined for a run that did not diverge",
    "Δ": "mean paired difference, arm − control, over seeds, in the metric's unit",
    "margin": "the smallest difference that matters (equivalence margin), in the metric's unit",
    "p effect": "one-sided paired t-test p-value of H0 'no effect in the claimed direction' (unadjusted)",
    "Holm p effect": "`p effect` Holm-adjusted over all 2m tests of the family; enters the verdict",
    "p below margin": "one-sided paired t-test p-value of H0 'effect ≥ margin' (unadjusted)",
    "Holm p below margin": "`p below margin` Holm-adjusted over the family; enters the verdict",
    "p (Wilcoxon)": "two-sided Wilcoxon signed-rank p-value of Δ = 0 (reported only)",
    "d_z": "standardised paired effect: mean(d) / sd(d) (reported only)",
    "P(improve)": "share of seeds on which the arm beats the control in the claimed direction (reported only)",
    "p TOST": "two one-sided tests p-value of H0 |Δ| ≥ margin (equivalence; unadjusted, reported only)",
    "seeds for 80% power": "paired seeds the verdict's tests need for 80% power at the margin, given the observed "
                           "sd of d (−1: unknown, fewer than 2 seeds)",
    # metric conventions
    "unit": "the unit of the metric, its differences and its margin",
    "better": "whether higher or lower values of the metric are better",
    "default margin": "the metric's margin unless `--margin` overrides it (accuracy metrics only)",
    "diverged run scored as": "the failure value given to a diverged run: chance accuracy, or the largest sd",
    # tuning
    "trial": "Optuna trial number within the arm's study (the first: the preset's values; under design `each`, "
             "the second of a rule arm: the preset with its control's tuned learner settings)",
    "state": "COMPLETE, PRUNED (stopped early by the median pruner) or FAIL (interrupted; not counted)",
    "objective": "mean validation accuracy (%) over the tuning seeds; a diverged trial scores 0; pruned: blank",
    "counted": "part of the arm's budget of `trials` finished trials, among which the best is chosen (a trial "
               "interrupted with its worker is not counted; another takes its place)",
    "chosen": "★ marks the trial whose values the arm's final runs use",
    # studies.epochs: time to target
    "reached": "seeds whose validation accuracy reached the target / seeds",
    "median epochs": "median over the seeds that reached it of the first epoch at the target",
    "median seconds": "the same in seconds of training time",
    # studies.rule_over_time
    "t (epochs)": "snapshot time of the meta-learner, in epochs of its phase-1 run",
    "early": "whether t is an early snapshot time (counted for H1)",
    "mean Δ vs control": "mean paired test-accuracy difference, frozen snapshot − control, accuracy points",
    "95% t-CI": "95% t interval of that mean across seeds",
    "Holm p": "Holm-adjusted p-value of the effect test (as `Holm p effect`)",
    "mean |R(t)|": "mean absolute output of the rule at t over the input sample (its scale)",
    "distance to previous": "functional distance between the rule at t and at the previous snapshot time",
    "relative to |R|": "distance to previous / mean |R(t)|",
    "per epoch": "distance to previous / time since the previous snapshot",
    "distance to final": "functional distance between the rule at t and the final rule",
    # rule league
    "rank": "position by Δ vs control",
    "kind": "meta-learned (trained alongside the learner), fixed (a rule of the literature with a tuned rate) or "
            "the control",
    "Δ vs control": "mean paired test-accuracy difference, arm − control, accuracy points",
    "failed": "diverged runs of the arm / of the control, scored as chance accuracy",
    "mean rank": "expected rank of the arm over bootstrap resamples of the seeds (1 = best)",
    "P(rank 1)": "share of bootstrap resamples of the seeds in which the arm ranks first",
    # dose-response
    "rule": "the local rule",
    "rate": "the rule's rate: its update is rate × the rule's output (a tuned value in tuning tables; in the "
            "dose-response table a grid rate, or `matched`: the rate giving the meta-learned rule's magnitude)",
    "Δ test acc": "mean paired test-accuracy difference, rule at this rate − control, accuracy points",
    "ρ (rel. update norm)": "‖local update‖ / ‖optimizer step‖, mean over the run and its seeds",
    "note": "why the row is there (the control, or the matched-magnitude rate)",
    "matched rate": "the rate at which the rule's ρ equals the meta-learned rule's ρ_M",
    "ρ_R at r_ref =": "the rule's ρ at the reference rate r_ref (mean over seeds)",
    "ρ_R at the matched rate (target ρ_M)": "the rule's ρ measured at the matched rate; the target is ρ_M",
    "best grid rate (val)": "the grid rate with the best mean validation accuracy",
    "all seeds diverged from": "the smallest grid rate at which every seed diverged",
    "coefficient": "a learned coefficient of the rule (its term; for abcd with its layer)",
    "rate × mean": "the per-step update coefficient: the arm's tuned rate × the mean coefficient",
    "M fit (mean M) × rate": "the term's coefficient in a least-squares fit of the mean final M onto the family's "
                             "terms, × the mlp arm's rate",
    "M_i fits × rate, mean [95% CI]": "the same fit of each final M_i, × the mlp arm's rate: mean and 95% t interval",
    # rule form
    "held-out R² of a + b·v_j (mean rule)": "R² of the paper's linear fit to the mean rule on held-out inputs, per "
                                            "layer",
    "a": "intercept of the fit a + b·v_j",
    "b": "slope of the fit a + b·v_j",
    "fit": "the fitted function of (v_i, w_ij, v_j): a polynomial of the given degree, or the paper's a + b·v_j",
    "terms": "number of terms (monomials) of the fit",
    "held-out R² (mean rule)": "R² of the fit to the pointwise mean rule on held-out inputs",
    "held-out R² mean over M_i": "the same fit to each meta-learner M_i, R² averaged over the M_i",
    "min over M_i": "the lowest held-out R² of a single M_i",
    "in-sample R² (mean rule)": "R² of the fit to the mean rule on the inputs it was fitted on",
    "term": "a monomial of the linear fit",
    "mean rule": "its coefficient in the fit of the pointwise mean rule",
    "mean over M_i": "its coefficient averaged over the fits of each M_i",
    "95% CI (t, over M_i)": "95% t interval of that average across the M_i",
    "sd over M_i": "standard deviation of the coefficient across the M_i",
    "layer": "the learner layer whose synapses the inputs come from (all: pooled)",
    "input": "one input of the rule: v_i (pre), w_ij or v_j (post)",
    "mean": "the mean of the row's quantity (over seeds, meta-learners or the input sample, as the section says)",
    "sd": "the standard deviation of the row's quantity (over the input sample, as the section says)",
    "1%": "1st percentile of the input over the sample",
    "median": "median of the input over the sample",
    "99%": "99th percentile of the input over the sample",
    # transfer
    "pair": "two problems whose meta-learners are compared (or one problem's seeds among themselves)",
    "distance: mean [min, max]": "functional distance between meta-learners of the two problems: mean and range",
    "within-problem reference": "the same distance between meta-learners of one problem (different seeds)",
    "ratio": "mean between-problem distance / mean within-problem distance",
    "perm. p (between > within)": "permutation-test p-value of 'between-problem distances exceed within-problem ones'",
    "smallest attainable p": "the smallest p-value the permutation test can give with these many rules",
    "rules": "meta-learners entering the comparison",
    "source problem": "the problem the frozen meta-learner was trained on",
    "target problem": "the problem the fresh learner trains on",
    "Δ test acc vs control": "mean paired test-accuracy difference, frozen source rule − control on the target",
    "rule distance (source, target)": "functional distance between the source's and the target's meta-learners",
}


def param_legend(name: str) -> str:
    """What a tuned parameter's column means (search-space keys of studies.lib.tuning)."""
    from hat.config import TrainConfig

    if name in CONDITIONAL:
        return f"the learner's learning rate, tried when optimizer = {CONDITIONAL[name][1]}"
    if name.startswith("rule_params."):
        return f"the rule's parameter `{name.split('.', 1)[1]}`"
    return _field_comments(TrainConfig).get(name, "a tuned value")


def table_headers(text: str) -> list[str]:
    """The column headers of every markdown table in `text`, each once, in order of appearance."""
    lines = text.splitlines()
    out: list[str] = []
    for a, b in zip(lines, lines[1:]):
        if a.startswith("| ") and re.match(r"^\|( --- \|)+$", b.strip()):
            for h in a.strip().strip("|").split(" | "):
                h = h.strip().replace("\\|", "|")
                if h and h not in out:
                    out.append(h)
    return out


def is_param(header: str) -> bool:
    """Whether a column header is a tuned parameter (a search-space key or a TrainConfig field)."""
    from hat.config import TrainConfig

    return (header in CONDITIONAL or header.startswith("rule_params.")
            or header in {f.name for f in dataclasses.fields(TrainConfig)})


def legend_entry(header: str, extra: dict[str, str] | None = None) -> str | None:
    known = {**LEGEND, **(extra or {})}
    if header in known:
        return known[header]
    if is_param(header):
        return "tuned value: " + param_legend(header)
    for k, v in LEGEND.items():  # a header with a qualifier, e.g. "mean test acc (diverged = 10)"
        if header.startswith(k + " "):
            return v
    return None


def unexplained_columns(text: str, extra: dict[str, str] | None = None) -> list[str]:
    """The table columns of `text` that the legend cannot explain (a report should have none)."""
    return [h for h in table_headers(text) if not legend_entry(h, extra)]


def legend_lines(text: str, extra: dict[str, str] | None = None) -> list[str]:
    """One line per table column of `text` whose meaning is known (`LEGEND`, then `extra`), each column once."""
    rows = [(h, legend_entry(h, extra)) for h in table_headers(text)]
    return [f"- **{h}**: {e}" for h, e in rows if e]


# ---------------------------------------------------------------- tuning


def _tuning_study(ctx: Context, arm: str):
    """The arm's Optuna tuning study (`<name>:tune:<arm>`, or `<name>:<part>:tune:<arm>` for studies that tune in
    parts), loaded read-only; None if absent."""
    import optuna

    names = optuna.get_all_study_names(ctx.storage)
    exact = f"{ctx.name}:tune:{arm}"
    match = exact if exact in names else next((n for n in names if n.startswith(ctx.name + ":")
                                               and n.endswith(f":tune:{arm}")), None)
    return optuna.load_study(study_name=match, storage=ctx.storage) if match else None


def counted_trials(trials, n: int) -> set[int]:
    """Numbers of the trials that make up an arm's budget of n, as studies.lib.tuning counts them: per slot 0..n-1 the
    first complete or pruned trial holding it (trials without slots: the first n complete or pruned)."""
    done = [t for t in sorted(trials, key=lambda t: t.number) if t.state.name in ("COMPLETE", "PRUNED")]
    if not any("slot" in t.user_attrs for t in trials):
        return {t.number for t in done[:n]}
    held: dict[int, int] = {}
    for t in done:
        s = t.user_attrs.get("slot")
        if isinstance(s, int) and 0 <= s < n and s not in held:
            held[s] = t.number
    return set(held.values())


def tuning_traces(ctx: Context, arms: list[str], tuned: dict[str, dict]) -> dict[str, list[dict]]:
    """Per arm, every trial of its tuning study: number, state, params, objective value (complete trials), last
    reported value (pruned trials), whether it counts toward the budget, and whether it was chosen."""
    out = {}
    for arm in arms:
        study = _tuning_study(ctx, arm)
        if study is None:
            continue
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        finished = counted_trials(trials, ctx.scale.trials)
        chosen = tuned.get(arm, {}).get("trial")
        out[arm] = [{"number": t.number, "state": t.state.name, "params": dict(t.params),
                     "value": t.value if t.state.name == "COMPLETE" else None,
                     "last": (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None),
                     "counted": t.number in finished, "chosen": t.number == chosen,
                     "note": t.user_attrs.get("diverged", "")} for t in trials]
    return out


def tuning_section(ctx: Context, arms: list[Arm], tuned: dict[str, dict], colors: dict[str, str],
                   suffix: str = "") -> tuple[list[str], list[Path]]:
    """Per arm: its trials (values tried, objective, state), the chosen values (flagged at a range's edge), and one
    best-so-far figure."""
    from studies.lib import stats
    from studies.lib.figures import plot_tuning
    from studies.lib.tuning import SHARED_SPACE, edge_flags

    if ctx.scale.trials == 0:
        return ["## Tuning", "", "Tuning skipped (`--trials 0`): every arm uses the preset's values.", ""], []
    names = [a.name for a in arms]
    traces = tuning_traces(ctx, names, tuned)
    lines = ["## Tuning", "",
             f"Each arm had {ctx.scale.trials} trials; values tried, objective and state per trial. The chosen trial "
             "(★) is the best complete trial among the counted ones.", ""]
    for a in arms:
        ts = traces.get(a.name)
        t = tuned.get(a.name, {})
        if not ts:
            lines += [f"### {a.name}", "", f"No tuning record for `{a.name}` in the Optuna storage.", ""]
            continue
        keys = list(dict.fromkeys(k for tr in ts for k in tr["params"]))
        rows = [{"trial": tr["number"], "state": tr["state"] + (" (diverged)" if tr["note"] else ""),
                 "objective": tr["value"], **{k: tr["params"].get(k) for k in keys},
                 "counted": "yes" if tr["counted"] else "no", "chosen": "★" if tr["chosen"] else ""} for tr in ts]
        chosen = ", ".join(f"{k} = {_value(v) if not isinstance(v, float) else format(v, '.4g')}"
                           for k, v in t.get("params", {}).items()) or "the preset's values"
        note = f" ({t['note']})" if t.get("note") else ""
        lines += [f"### {a.name}", "", stats.format_table(rows, floatfmt=".4g"), "",
                  f"Chosen: {chosen}{note}; objective {fmt(t.get('value'))}."
                  + "".join(f" Flagged: {f}." for f in edge_flags({**SHARED_SPACE, **a.space}, t.get("params") or {})),
                  ""]
    files = []
    if traces:
        fig = plot_tuning(traces, ctx.out / f"tuning{suffix}.png",
                          f"{ctx.name}: tuning per arm — objective (mean validation accuracy, %) by trial, best so far",
                          colors)
        files.append(fig)
        lines += figure_block([fig], ctx.out) + [""]
    return lines, files


# ---------------------------------------------------------------- the report

UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
ML_VIEW = {"workflowType": "machine_learning"}  # MLflow 3's "Model training" pages; without it the UI of MLflow
# 3.18 opens an experiment on its GenAI pages, whatever the experiment's kind tag (hat.tracking) says
NOTE_LIMIT = 7900  # characters of the run note (an MLflow tag: at most 8000)


def ui_pages(experiment_id: str, parent_id: str, name: str) -> dict[str, str]:
    """A study's pages in the MLflow UI, as URL fragments to append to the UI's address: `runs` (the experiment's
    runs, one row per study), `study` (the study's parent run: its note holds the verdict table and figure),
    `figure` (the verdict figure, in the run's Artifacts tab) and `arms` (the study's arm parent runs as rows, best
    mean test accuracy first, in the chart view: sorted by a metric, the table lists them flat instead of folded
    under the study's run, and their summary metrics chart one bar per arm)."""
    import urllib.parse

    ml = urllib.parse.urlencode(ML_VIEW)
    arms = urllib.parse.urlencode({**ML_VIEW, "searchFilter": f"tags.study_name = '{name}' and tags.phase = 'arm'",
                                   "orderByKey": "metrics.`mean_test_acc`", "orderByAsc": "false",
                                   "compareRunsMode": "CHART"}, quote_via=urllib.parse.quote)
    exp = f"#/experiments/{experiment_id}"
    return {"runs": f"{exp}/runs?{ml}", "study": f"{exp}/runs/{parent_id}?{ml}",
            "figure": f"{exp}/runs/{parent_id}/artifacts/verdicts.png?{ml}", "arms": f"{exp}/runs?{arms}"}


def ui_address(uri: str) -> str:
    """The UI's address for tracking URI `uri`: a tracking server serves it; a local store, `mlflow ui` (default port)."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS


def study_note(ctx: Context, title: str, found: list, pages: dict[str, str], figure: bool) -> str:
    """The study run's MLflow note (markdown, shown as its description): the verdicts as a table, the verdict figure
    (served by the UI's `get-artifact`), links to the arms side by side and to the report."""
    head = f"**{title}**: study `{ctx.name}`" + (f", {len(found)} hypotheses: {verdict_values.word_counts(found)}."
                                                 if found else ", no verdicts.")
    tail = ["", *([f"![verdicts](get-artifact?path=verdicts.png&run_uuid={ctx.parent_id})", ""] if figure else []),
            f"[The arms side by side]({pages['arms']})" + (f" · [the verdict figure]({pages['figure']})" if figure
                                                           else "")
            + " · report.md, results.csv and every figure: Artifacts → `report/`"]
    for width, rows in ((90, len(found)), (40, len(found)), *((40, k) for k in range(len(found) - 1, -1, -1))):
        table = [verdict_values.markdown_table(found[:rows], width)] if found else []
        more = [f"… and {len(found) - rows} more verdicts: see report.md"] if rows < len(found) else []
        note = "\n".join([head, "", *table, *more, *tail])
        if len(note) <= NOTE_LIMIT:
            return note
    return "\n".join([head, *tail])[:NOTE_LIMIT]


def finish_report(ctx: Context, title: str, doc: str, sections: list, files: list[Path],
                  legend: dict[str, str] | None = None) -> Path:
    """Write report.md, log it and `files` to the parent run, print where they are, then the verdict table.

    `sections`: the study's report lines, in which each `Verdict` value stands for its own line; the summary,
    the console table and the MLflow tags are rendered from those values. report.md: title, provenance, verdicts
    at a glance, settings, the study's docstring, the verdict rule, the study's sections, and a legend of every
    table column (`LEGEND`, plus the study's own `legend` entries)."""
    from studies.lib import stats

    path = ctx.out / "report.md"
    found = verdict_values.collect(sections)
    figure = None
    if found:
        from studies.lib.figures import plot_verdicts

        try:
            figure = plot_verdicts(found, ctx.out / "verdicts.png", f"{ctx.name}: the verdicts — mean paired "
                                   "difference arm − control (diamond) and its 95% CI, coloured by verdict; grey band: "
                                   "±margin", ctx.scale.margin)
        except Exception as e:  # the report does not depend on its figure
            print(f"warning: verdict figure not drawn ({type(e).__name__}: {e})", file=sys.stderr)
    summary = (["## Verdicts at a glance", "", stats.format_table([v.row() for v in found]), "",
                *([*figure_block([figure], ctx.out), ""] if figure else []),
                "Details, and every statistic behind them, in the sections below.", ""] if found else [])
    head = [f"# {title}", "", *provenance_lines(ctx), *summary,
            "## Settings", "", f"Study `{ctx.name}` (module `studies.{ctx.study}`), study preset "
            f"`{getattr(ctx.args, 'preset', None) or '?'}`, training preset `{ctx.scale.train_preset}`, "
            f"tuning design `{ctx.scale.design}`.",
            "", settings_table(ctx), "",
            "## About this study", "", doc.strip(), "", "## Verdict rule", "", "```", stats.VERDICT_RULE.strip(), "```",
            ""]
    text = "\n".join(head + verdict_values.section_lines(sections))
    legend = ["## Column legend", "", *legend_lines(text, legend), ""]
    path.write_text(text + "\n" + "\n".join(legend) + "\n")
    pages = None
    if ctx.tracker is not None and ctx.parent_id:
        pages = ui_pages(ctx.tracker.experiment_id, ctx.parent_id, ctx.name)
        run = ctx.tracker.run(ctx.parent_id)
        for f in [path, *files]:
            run.log_artifact(f, "report")
        if figure:
            run.log_artifact(figure)  # beside report/: the first thing the run's Artifacts tab lists
        run.set_tags({**verdict_values.mlflow_tags(found),
                      "mlflow.note.content": study_note(ctx, title, found, pages, figure is not None)})
        ctx.close_arm_parents()
        run.finish("FINISHED")
    print(f"\nreport: {path}")
    print(f"results: {ctx.out}")
    if ctx.tracker is not None:
        print(f"MLflow UI: {ui_command(ctx.tracker.uri)}   (parent run {ctx.parent_id})")
        if pages:
            print(f"  the study's verdicts: {ui_address(ctx.tracker.uri)}/{pages['study']}")
    if found:
        print(f"\nVerdicts ({title}):\n" + verdict_values.console_table(found))
    return path


def log_arm_summaries(ctx: Context, hypotheses: list[Hypothesis], comps, acc: dict[str, np.ndarray]) -> None:
    """Each arm's MLflow parent run gets its summary: mean final test accuracy and, per hypothesis on the arm, the
    paired difference, its 95% CI, the Holm p-values and a verdict tag (keys `<hypothesis>.<statistic>`).

    The difference and its CI are also logged under keys every arm compared on the same metric against the same
    control shares, `<metric> vs <control>/diff`, `/diff_ci_low`, `/diff_ci_high`: the UI's chart view of the arm
    runs draws each as one bar chart with a bar per arm, in a section of its own (named before the `/`) above the
    per-hypothesis metrics."""
    if ctx.tracker is None or not ctx.parent_id:
        return
    for arm, values in acc.items():
        finite = values[np.isfinite(values)]
        metrics = {"mean_test_acc": float(np.mean(finite))} if finite.size else {}
        tags = {}
        for h, c in zip(hypotheses, comps):
            if h.arm != arm:
                continue
            k = verdict_values.mlflow_key(h.key)
            metrics.update({f"{k}.diff": c.mean_diff, f"{k}.ci_low": c.ci_lo, f"{k}.ci_high": c.ci_hi,
                            f"{k}.p_holm": c.p_holm, f"{k}.p_below_margin_holm": c.p_below_holm})
            shared = verdict_values.mlflow_key(f"{h.metric} vs {h.control}")
            metrics.update({f"{shared}/diff": c.mean_diff, f"{shared}/diff_ci_low": c.ci_lo,
                            f"{shared}/diff_ci_high": c.ci_hi})
            tags[f"verdict.{k}"] = c.verdict
        metrics = {m: float(v) for m, v in metrics.items() if np.isfinite(v)}
        try:
            run = ctx.tracker.run(ctx.arm_parent(arm))
            run.log_metrics(metrics, 0)
            run.set_tags(tags)
        except Exception as e:  # the report does not depend on the UI's summaries
            print(f"warning: arm {arm}: summary not logged to MLflow ({type(e).__name__}: {e})", file=sys.stderr)


def figure_block(paths: list[Path], out: Path) -> list[str]:
    return [f"![{p.stem}]({p.relative_to(out) if p.is_relative_to(out) else p})" for p in paths]


def fmt(x: float, spec: str = ".2f") -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def difference_rows(results: dict, seeds: list[int], hypotheses: list[Hypothesis], comps) -> list[dict]:
    """Per hypothesis, what the paired-difference figure draws: per-seed d (diverged runs scored as the metric's
    failure value, pairs with a missing value left out, as the comparison does), mean, 95% CI, margin, verdict."""
    import numpy as np

    from studies.lib import stats

    rows = []
    for h, c in zip(hypotheses, comps):
        m = METRICS[h.metric]
        a, _, miss_a = metric_outcomes(results, h.arm, seeds, h.metric)
        b, _, miss_b = metric_outcomes(results, h.control, seeds, h.metric)
        keep = ~(miss_a | miss_b)
        d = (stats.fill_failures(a[keep], m.failure)[0] - stats.fill_failures(b[keep], m.failure)[0]
             if keep.any() else np.array([]))
        rows.append({"key": h.key, "arm": h.arm, "d": d, "mean": c.mean_diff, "lo": c.ci_lo, "hi": c.ci_hi,
                     "margin": c.margin, "verdict": c.verdict, "metric": h.metric, "unit": m.unit})
    return rows


def curve_references(names: list[str], hypotheses: list[Hypothesis]) -> tuple[dict[str, str], set[str]]:
    """({arm: the control drawn with it in the curves figure}, the pure controls: arms only ever compared against).

    An arm's reference is `control` where the study has one, else the control of its first hypothesis (e.g.
    control@θ); pure controls are drawn grey in every figure, every other arm in a colour of its own."""
    reference = {a: "control" for a in names if a != "control" and "control" in names}
    for h in hypotheses:
        if h.arm != h.control:
            reference.setdefault(h.arm, h.control)
    return reference, set(reference.values()) - set(reference)


def tuning_text(scale) -> str:
    """One paragraph: how the arms were tuned, naming the design (studies.lib.tuning)."""
    if scale.trials == 0:
        return "Tuning skipped (`--trials 0`): every arm uses the preset's values."
    text = (f"Tuning design `{scale.design}`. Every arm was tuned with {scale.trials} Optuna trials (TPE, seed "
            f"{scale.sampler_seed}, median pruner, never before the later of {PRUNE_MIN_EPOCH:g} epoch and "
            f"{PRUNE_MIN_FRACTION:.0%} of the run) on the validation split, objective = mean validation accuracy "
            f"over {scale.tuning_seeds} tuning seed(s) (seeds {TUNING_SEED_BASE}+, disjoint from the final seeds). ")
    if scale.design == "marginal":
        return text + ("Controls (arms without a rule) tune the learner's optimizer and learning rate; every other "
                       "arm uses its control's tuned learner settings unchanged and tunes only its rule's own "
                       "settings (trial 0: the preset's values), so it differs from its control in the rule alone.")
    return text + ("Every arm tunes the learner's optimizer and learning rate and its own settings. Trial 0 of every "
                   "arm is the preset's values; trial 1 of every rule arm is the preset with its control's tuned "
                   "optimizer and learning rate.")


def edge_notes(arms: list[Arm], tuned: dict[str, dict]) -> dict[str, str]:
    """{arm: its tuned values at the edge of their search ranges (`tuning.edge_flags`)}, for its verdict lines."""
    from studies.lib.tuning import SHARED_SPACE, edge_flags

    out = {}
    for a in arms:
        flags = edge_flags({**SHARED_SPACE, **a.space}, tuned.get(a.name, {}).get("params") or {})
        if flags:
            out[a.name] = "; ".join(flags)
    return out


def control_arms(arms: list[Arm]) -> list[str]:
    """The arms without a local rule (the backprop controls), whose learners the convergence check reads."""
    return [a.name for a in arms if a.overrides.get("rule") == "none"]


def convergence_section(conv: dict) -> list[str]:
    """The report's convergence check: the rule, how many control runs converged, what it means for the claims."""
    held = ("the learners converged: claims about the asymptote and after convergence get verdicts" if conv["converged"]
            else "the learners had NOT converged: claims about the asymptote and after convergence are untestable "
                 "here (no verdict; left out of their Holm families)")
    return ["## Convergence", "", f"Rule: {conv['rule']}. Control runs converged: {conv['k']} of {conv['n']} finished; "
            f"{held}.", ""]


def comparison_sections(ctx: Context, arms: list[Arm], tuned: dict[str, dict], results: dict, seeds: list[int],
                        hypotheses: list[Hypothesis], tag: str = "", convergence: dict | None = None
                        ) -> tuple[list[str], list[Path], list]:
    """The standard report body: convergence, arms, comparisons, verdicts, tuning, figures, per-seed CSVs.
    `convergence`: `analysis.convergence` of the control arms (computed here when None)."""
    from studies.lib.analysis import convergence as convergence_of
    from studies.lib.figures import arm_colors, plot_differences, plot_learning_curves

    names = [a.name for a in arms]
    reference, controls = curve_references(names, hypotheses)
    colors = arm_colors(names, controls or "control")
    acc = accuracy_matrix(results, names, seeds)
    conv = convergence or convergence_of(results, seeds, control_arms(arms))
    comps = compare_hypotheses(results, seeds, hypotheses, ctx.scale.margin, ctx.scale.n_boot, conv["converged"])
    if ctx.tracker is not None and ctx.parent_id:
        ctx.tracker.run(ctx.parent_id).set_tags({"converged": str(conv["converged"]).lower()})
    log_arm_summaries(ctx, hypotheses, comps, acc)
    suffix = f"_{tag}" if tag else ""
    files = [write_results_csv(results, ctx.out / f"results{suffix}.csv"),
             write_curves_csv(results, ctx.out / f"curves{suffix}.csv")]
    curves = {a: [results[(a, s)].get("curve", []) if results[(a, s)]["status"] == "ok" else [] for s in seeds]
              for a in names}  # a diverged run: an empty curve
    curves = {a: c for a, c in curves.items()  # arms without curves (derived, e.g. mean_rule's "individual"): none
              if any(c) or any(results[(a, s)]["status"] != "ok" for s in seeds)}
    fig_curves = plot_learning_curves(
        curves, ctx.out / f"curves{suffix}.png",
        f"{ctx.name}: validation accuracy during training, median and interquartile range over {len(seeds)} seeds "
        "(grey: the arm's control)", colors, control=reference or "control")
    fig_diffs = plot_differences(
        difference_rows(results, seeds, hypotheses, comps), ctx.out / f"paired_differences{suffix}.png",
        f"{ctx.name}: paired differences arm − control per hypothesis (dots: seeds; diamond: mean, 95% CI; "
        "grey: ±margin)", colors)
    files += [fig_curves, fig_diffs]
    tuning = tuning_text(ctx.scale)
    tune_lines, tune_files = tuning_section(ctx, arms, tuned, colors, suffix)
    files += tune_files
    sections = [
        *convergence_section(conv),
        "## Arms", "", f"Final seeds: {seeds[0]}..{seeds[-1]} (paired: seed s shares learner init and data order "
        "across arms). Test accuracy at the end of training, in percent. " + tuning, "",
        arm_table(acc, tuned), "",
        "## Comparisons with the control (Holm within each family)", "",
        "The paper's claims form the primary family; exploratory claims (X-*) a family of their own.", "",
        comparison_table(comps, hypotheses), "",
        "## Verdicts", "", *verdicts(hypotheses, comps, edge_notes(arms, tuned)), "",
        "## Figures", "", *figure_block([fig_curves, fig_diffs], ctx.out), "",
        *tune_lines,
    ]
    return sections, files, comps
