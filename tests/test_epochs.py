"""studies.epochs end to end at smoke scale (temporary stores)."""

from __future__ import annotations

import re

from helpers import help_text, needs_data, read_results, stores


def test_help(capsys):
    text = help_text("epochs", capsys)
    assert "python -m studies.epochs" in text and "Run:" in text and "Hypotheses" in text
    for flag in ("--preset", "--storage", "--no-progress", "--epochs", "--population"):
        assert flag in text, flag
    assert "--snapshots" not in text  # no phase 1


@needs_data
def test_epochs_smoke(tmp_path):
    from studies import epochs

    assert epochs.main(["--preset", "smoke", "--trials", "1", *stores(tmp_path)]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    for key in ("H-faster", "H-late"):
        assert re.search(rf"VERDICT {key}: (SUPPORTED|REFUTED|NEGLIGIBLE|INCONCLUSIVE)", report), key
    # one smoke epoch: the control's learners have not plateaued, so the claims about the asymptote and about
    # learners after convergence get no verdict
    assert "## Convergence" in report and "had NOT converged" in report
    for key in ("H-asymptote", "H-decline", "H-no-decline", "X-noise-asymptote"):
        assert re.search(rf"VERDICT {key}: UNTESTABLE — ", report), key
    rows = read_results(tmp_path / "out" / "results.csv")
    assert len(rows) == 3 * 3
    assert (tmp_path / "out" / "difference_curve.png").is_file()
