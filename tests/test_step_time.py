"""bench/step_time: the A/B timing script runs on the tiny sizes and prints one positive time per step."""

from __future__ import annotations

import re

import pytest

from bench import step_time


def test_step_time_prints_a_positive_step_time(capsys):
    assert step_time.main(["--preset", "paper", "--tiny", "--synthetic", "--threads", "1", "--steps", "2",
                           "--repeats", "1", "--rule", "hebb"]) == 0
    line = capsys.readouterr().out.strip()
    m = re.fullmatch(r"tiny hebb P=1 threads=1: ([0-9.]+) ms per step \(([0-9.]+) per seed\) \[wall time; hat from .+\]",
                     line)
    assert m and float(m.group(1)) > 0 and m.group(1) == m.group(2)


def test_step_time_rejects_bad_counts():
    with pytest.raises(SystemExit) as e:
        step_time.main(["--repeats", "0"])
    assert e.value.code == 2


def test_step_time_against_a_checkout_prints_paired_ratios(capsys):
    """--against: both checkouts (here: this one twice) timed in fresh processes; the printed ratio is the
    quotient of the two printed times."""
    from pathlib import Path

    root = Path(step_time.__file__).resolve().parents[1]
    assert step_time.main(["--preset", "paper", "--tiny", "--synthetic", "--threads", "1", "--steps", "2",
                           "--repeats", "1", "--rule", "none", "--against", str(root), "--pairs", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    pairs = [re.fullmatch(r"pair (\d): (.+) ([0-9.]+) ms, this checkout ([0-9.]+) ms, ratio ([0-9.]+)", ln)
             for ln in lines[:2]]
    assert all(pairs) and [m.group(1) for m in pairs] == ["1", "2"]
    ratios = []
    for m in pairs:
        other, here = float(m.group(3)), float(m.group(4))
        assert other > 0 and here > 0
        assert float(m.group(5)) == pytest.approx(here / other, rel=2e-2)  # times are printed to 0.01 ms
        ratios.append(here / other)
    m = re.match(r".*: median ratio ([0-9.]+) over 2 pairs", lines[2])
    assert m and float(m.group(1)) == pytest.approx(sum(ratios) / 2, rel=2e-2)


def test_step_time_against_needs_a_checkout(tmp_path):
    with pytest.raises(SystemExit) as e:
        step_time.main(["--against", str(tmp_path)])
    assert e.value.code == 2
