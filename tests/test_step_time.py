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
