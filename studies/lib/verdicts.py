"""Verdicts as values: what the decision layer returns, and its renderings.

A `Verdict` is one hypothesis's decision: its key, word (`studies.lib.stats.VERDICTS`), claim and the details
that justify it; one paired comparison also carries its metric, difference and 95% CI. The decision layer
(`studies.lib.analysis.verdicts`, and each study's composite rules) builds them; report.md (`Verdict.line`), the
console table (`console_table`), the MLflow tags (`mlflow_tags`) and the markdown table of the study run's MLflow note
(`markdown_table`) are each rendered from those values.
A study's report sections are a list of lines in which a `Verdict` stands for its own line (`section_lines`).
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    key: str  # the hypothesis's short id, e.g. "H-converged" (H-*: the paper's; X-*: exploratory)
    word: str  # supported | negligible | refuted | inconclusive
    claim: str  # what is tested, in the paper's words where it has them
    details: str  # the numbers and the rule behind the word (the parenthesis of the report line)
    metric: str = ""  # the compared per-run metric; "" for a verdict that is not one paired comparison
    diff: float = math.nan  # mean paired difference arm − control, in the metric's unit
    ci: tuple[float, float] = (math.nan, math.nan)  # its 95% interval

    def line(self) -> str:
        """The report line: `VERDICT key: WORD — claim (details)`."""
        return f"VERDICT {self.key}: {self.word.upper()} — {self.claim} ({self.details})"

    def row(self) -> dict:
        """The summary row: hypothesis, verdict, claim, metric, Δ, 95% CI (blank for a composite verdict)."""
        paired = bool(self.metric)
        return {"hypothesis": self.key, "verdict": self.word, "claim": self.claim, "metric": self.metric,
                "Δ": f"{self.diff:+.2f}" if paired else "",
                "95% CI": f"[{self.ci[0]:+.2f}, {self.ci[1]:+.2f}]" if paired else ""}


def section_lines(items: list) -> list[str]:
    """Report lines from a section list: each `Verdict` becomes its bullet `- VERDICT ...`, strings stay."""
    return [f"- {x.line()}" if isinstance(x, Verdict) else x for x in items]


def collect(items: list) -> list[Verdict]:
    """The verdicts of a section list, in order."""
    return [x for x in items if isinstance(x, Verdict)]


def console_table(verdicts: list[Verdict], claim_width: int = 64) -> str:
    """The verdicts as a plain-text table for the console: hypothesis, claim, difference, CI, verdict."""
    cols = ["hypothesis", "claim", "metric", "Δ", "95% CI", "verdict"]
    rows = [v.row() for v in verdicts]
    cells = [[r[c] if c != "claim" else textwrap.shorten(r[c], claim_width, placeholder="…") for c in cols]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def markdown_table(verdicts: list[Verdict], claim_width: int = 90) -> str:
    """The verdicts as a GitHub-markdown table (the MLflow run note): hypothesis, verdict (bold), Δ, 95% CI, metric
    (blank for a composite verdict), claim (shortened to `claim_width`); '|' in a cell is escaped."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| hypothesis | verdict | Δ | 95% CI | metric | claim |", "| --- | --- | --- | --- | --- | --- |"]
    for v in verdicts:
        r = v.row()
        lines.append(f"| {cell(v.key)} | **{cell(v.word)}** | {r['Δ']} | {r['95% CI']} | {cell(v.metric)} | "
                     f"{cell(textwrap.shorten(v.claim, claim_width, placeholder='…'))} |")
    return "\n".join(lines)


def word_counts(verdicts: list[Verdict]) -> str:
    """E.g. "2 refuted, 7 inconclusive": how many verdicts have each word, in order of first appearance."""
    words = list(dict.fromkeys(v.word for v in verdicts))
    return ", ".join(f"{sum(v.word == w for v in verdicts)} {w}" for w in words)


def mlflow_key(name: str) -> str:
    """`name` as an MLflow metric or tag key (letters, digits, `_-. /:` kept; anything else becomes `_`)."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)


def mlflow_tags(verdicts: list[Verdict]) -> dict[str, str]:
    """`verdict.<key>` -> word, the study parent run's tags."""
    return {f"verdict.{mlflow_key(v.key)}": v.word for v in verdicts}
