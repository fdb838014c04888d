"""studies.authors: the share of the gap and the H-logit-relu rule, its configuration and arms, tuning skipped by
default, and the study end to end at smoke scale."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from helpers import help_text, needs_data, read_results, setup, stores, verdicts

from hat.config import PRESETS, TrainConfig
from studies.lib.report import unexplained_columns


def test_help(capsys):
    text = help_text("authors", capsys)
    assert "python -m studies.authors" in text and "Run:" in text
    for flag in ("--preset", "--storage", "--no-progress", "--trials", "--seeds", "--logit-relu", "--per-sample",
                 "--mlp"):
        assert flag in text, flag


def test_share_of_gap_and_logit_relu_rule():
    from studies.authors import logit_relu_verdict, share_of_gap

    cost = np.array([-2.0, -3.0, -2.5, -1.5])
    gap = np.array([-4.0, -5.0, -4.5, -3.5])
    r, lo, hi = share_of_gap(cost, gap, n_boot=2000, random_state=0)
    assert r == pytest.approx(cost.mean() / gap.mean()) and lo <= r <= hi
    assert share_of_gap(cost, gap, n_boot=2000, random_state=0) == (r, lo, hi)  # seeded
    assert logit_relu_verdict("supported", -4.0, 0.6, 0.8) == "supported"
    assert logit_relu_verdict("supported", -4.0, 0.4, 0.6) == "inconclusive"
    assert logit_relu_verdict("supported", -4.0, 0.2, 0.4) == "refuted"  # the bug explains too little
    assert logit_relu_verdict("refuted", -4.0, 0.9, 1.0) == "refuted"
    assert logit_relu_verdict("supported", 1.0, -3.0, 5.0) == "inconclusive"  # no gap to explain


def parsed(argv: list[str], monkeypatch) -> argparse.Namespace:
    """The command line as `protocol.run` completes it for the authors study (its own study-size values applied),
    stopped before anything is opened."""
    from studies import authors
    from studies.lib import protocol

    class Parsed(Exception):
        pass

    def stop(study, args, defaults):
        raise Parsed(args)

    monkeypatch.setattr(protocol, "make_context", stop)
    with pytest.raises(Parsed) as e:
        protocol.run(authors.STUDY, argv)
    return e.value.args[0]


def test_authors_settings_and_trials_flag(monkeypatch):
    from studies.authors import ablations, arms, authors_defaults

    paper = authors_defaults(argparse.Namespace(preset="paper"))
    assert {k: v for k, v in paper.items() if k != "snapshot_epochs"} == PRESETS["authors"]
    smoke = authors_defaults(argparse.Namespace(preset="smoke"))
    assert "widths" not in smoke and smoke["mlp"]["hidden"] == PRESETS["smoke"]["mlp"]["hidden"]
    assert smoke["mlp"]["inputs"] == ["pre", "w", "post", "grad"] and smoke["logit_relu"] and smoke["per_sample"]
    # tuning is skipped unless --trials asks for it; the report says which (args.own_scale)
    assert parsed(["--preset", "smoke"], monkeypatch).trials == 0 and "trials" in parsed([], monkeypatch).own_scale
    args = parsed(["--trials", "2"], monkeypatch)
    assert args.trials == 2 and "trials" not in args.own_scale
    base = TrainConfig(**{**PRESETS["smoke"], **smoke})
    by_name = {a.name: a for a in arms(setup(ctx=argparse.Namespace(base=base)))}
    assert by_name["control"].config(base).logit_relu is False and by_name["control"].config(base).rule == "none"
    assert by_name["control+logit_relu"].config(base).logit_relu is True
    full = by_name["authors"].config(base)
    assert (full.rule, full.logit_relu, full.per_sample, full.batch_size) == ("mlp", True, True, 10)
    assert (full.rule_post, full.backprop_through_updated_w, full.zero_grad_input_after_unlabeled,
            full.mlp["bias_init"]) == ("preactivation", True, True, "fan_in")  # the published code's behaviours
    for k, (ov, _) in ablations(base).items():  # exactly one option reverted
        cfg = by_name[f"authors-{k}"].config(base)
        changed = {f for f in ov if getattr(cfg, f) != getattr(full, f)}
        assert changed == set(ov), k
        assert cfg.replace(**{f: getattr(full, f) for f in ov}) == full
    assert {"post_activation", "backprop_through_w", "bias_init_hidden"} <= set(ablations(base))
    assert "keep_grad_input" not in ablations(base)  # every batch labeled: reverting it would change nothing
    assert "keep_grad_input" in ablations(base.replace(label_fraction=0.5))
    # tuning, when asked for, searches the authors' own experiment-1 ranges
    space = by_name["authors"].space
    assert (space["rate"].low, space["rate"].high) == (1e-10, 1e-5)
    assert (space["rule_lr"].low, space["rule_lr"].high) == (1e-5, 1e-2)


def test_differences_table_lists_algorithm_1_the_code_and_the_suite():
    from studies.lib import authors_diff, stats

    arm = TrainConfig(**{**PRESETS["authors"], "rule": "mlp"})
    rows = {r["aspect"]: r for r in authors_diff.differences(arm)}
    for aspect in ("M's v_j", "backward", "|grad| input", "M's initialization", "layer output", "logits in training",
                   "M's optimizer", "local rate"):
        assert aspect in rows
    assert rows["M's v_j"]["this study's `authors` arm"] == "z = W v + b"
    assert rows["M's v_j"]["suite `paper` preset"].startswith("act(z)")
    assert rows["backward"]["this study's `authors` arm"] == "into v through W'"
    assert rows["|grad| input"]["this study's `authors` arm"] == "zeros after an unlabeled step"
    assert rows["|grad| input"]["suite `paper` preset"] == "none"
    assert "1e-10..1e-5" in rows["local rate"]["authors' code"]
    text = "\n".join(authors_diff.section(arm, stats.format_table))
    assert unexplained_columns(text, authors_diff.LEGEND) == []


@needs_data
def test_authors_smoke(tmp_path, one_thread):
    from studies import authors

    assert authors.main(["--preset", "smoke", "--seeds", "2", "--train-limit", "400", *stores(tmp_path)]) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert unexplained_columns(report, authors.STUDY.legend) == []  # every table column is in the legend
    assert "- **option**: " in report  # the study's own columns are in it too
    v = verdicts(report)
    opts = ("no_logit_relu", "no_per_sample", "no_grad_input", "post_activation", "backprop_through_w",
            "bias_init_hidden", "adam", "batch50", "sigmoid", "rate1e-3")
    assert set(v) == {"H-logit-relu", "A-gap", "A-bug"} | {f"X-{o}" for o in opts} | {f"R-{o}" for o in opts}
    assert "Tuning skipped by default in this study" in report and "share of the gap" in report
    assert "## Algorithm 1, the authors' code and this suite" in report and "z = W v + b" in report
    rows = read_results(out / "results.csv")
    assert {a for a, _ in rows} == {"control", "control+logit_relu", "authors"} | {f"authors-{o}" for o in opts}
    assert len(rows) == 13 * 2
    for fig in ("curves.png", "paired_differences.png"):
        assert (out / fig).stat().st_size > 0
