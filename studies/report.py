"""Reports: per-seed CSVs, tables, verdicts and figures of a study, written to report.md and MLflow."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

from hat.tracking import ui_command
from studies.analysis import Hypothesis, accuracy_matrix, arm_table, compare_hypotheses, comparison_table, verdict_lines
from studies.common import Arm, Context
from studies.tuning import TUNING_SEED_BASE


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


def finish_report(ctx: Context, title: str, doc: str, sections: list[str], files: list[Path]) -> Path:
    """Write report.md, log it and `files` to the parent run, and print where they are."""
    from studies import stats

    path = ctx.out / "report.md"
    head = [f"# {title}", "", f"Study `{ctx.name}` (module `studies.{ctx.study}`), preset scale: "
            f"{dataclasses.asdict(ctx.scale)}.", "", doc.strip(), "", "## Verdict rule", "", "```",
            stats.VERDICT_RULE.strip(), "```", ""]
    path.write_text("\n".join(head + sections) + "\n")
    if ctx.tracker is not None and ctx.parent_id:
        run = ctx.tracker.run(ctx.parent_id)
        for f in [path, *files]:
            run.log_artifact(f, "report")
        run.finish("FINISHED")
    print(f"\nreport: {path}")
    print(f"results: {ctx.out}")
    if ctx.tracker is not None:
        print(f"MLflow UI: {ui_command(ctx.tracker.uri)}   (parent run {ctx.parent_id})")
    return path


def figure_block(paths: list[Path], out: Path) -> list[str]:
    return [f"![{p.stem}]({p.relative_to(out) if p.is_relative_to(out) else p})" for p in paths]


def fmt(x: float, spec: str = ".2f") -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def comparison_sections(ctx: Context, arms: list[Arm], tuned: dict[str, dict], results: dict, seeds: list[int],
                        hypotheses: list[Hypothesis], tag: str = "") -> tuple[list[str], list[Path], list]:
    """The standard report body: arms, comparisons, verdicts, figures, per-seed CSVs."""
    from hat.plots import plot_curves_ci, plot_paired_differences
    from studies import stats

    names = [a.name for a in arms]
    acc = accuracy_matrix(results, names, seeds)
    comps = compare_hypotheses(results, seeds, hypotheses, ctx.scale.margin, ctx.scale.n_boot)
    suffix = f"_{tag}" if tag else ""
    files = [write_results_csv(results, ctx.out / f"results{suffix}.csv"),
             write_curves_csv(results, ctx.out / f"curves{suffix}.csv")]
    curves = {a: [results[(a, s)].get("curve", []) if results[(a, s)]["status"] == "ok" else [] for s in seeds]
              for a in names}
    fig_curves = plot_curves_ci(curves, ctx.out / f"curves{suffix}.png", f"{ctx.name}: validation accuracy, mean ± 95% CI")
    diffs = {h.arm: stats.paired_differences(acc[h.arm], acc[h.control])[0] for h in hypotheses if h.metric == "test_acc"}
    fig_diffs = plot_paired_differences(diffs, ctx.out / f"paired_differences{suffix}.png",
                                        f"{ctx.name}: per-seed paired differences (test)")
    files += [fig_curves, fig_diffs]
    tuning = ("Tuning skipped (`--trials 0`): every arm uses the preset's values." if ctx.scale.trials == 0 else
              f"Every arm was tuned with {ctx.scale.trials} Optuna trials (TPE, seed {ctx.scale.sampler_seed}, median "
              f"pruner) on the validation split, objective = mean validation accuracy over {ctx.scale.tuning_seeds} "
              f"tuning seed(s) (seeds {TUNING_SEED_BASE}+, disjoint from the final seeds). Trial 0 of every arm is the "
              "preset's values; trial 1 of every other arm is the preset with the control's tuned optimizer and "
              "learning rate.")
    sections = [
        "## Arms", "", f"Final seeds: {seeds[0]}..{seeds[-1]} (paired: seed s shares learner init and data order "
        "across arms). Test accuracy at the end of training, in percent. " + tuning, "",
        arm_table(acc, tuned), "",
        "## Comparisons with the control (one Holm family)", "", comparison_table(comps, hypotheses), "",
        "## Verdicts", "", *[f"- {line}" for line in verdict_lines(hypotheses, comps)], "",
        "## Figures", "", *figure_block([fig_curves, fig_diffs], ctx.out), "",
    ]
    return sections, files, comps
