"""The main demo, ``python -m sklearn_lse``, runs and reports both tasks."""

import re

import pytest

from sklearn_lse.__main__ import main


def test_demo_quick_prints_both_tables_and_saves_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "demo.png"
    main(["--quick", "--seed", "1", "--plot", str(figure)])
    out = capsys.readouterr().out
    for name in ("LogisticRegression", "DROClassifier", "LinearRegression", "DRORegressor"):
        assert re.search(rf"\| {name} \| \d\.\d{{3}} \| \d+\.\d{{3}} \|", out), name
    assert figure.stat().st_size > 5_000


def test_demo_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out
