"""The main demo, ``python -m sklearn_lse``: both tasks, the gain next to the price, a
progress bar on stderr, the figure, and a clear error before any work when ``--plot`` has
no matplotlib. (The default solver's run is ``tests/test_install.py``'s.)"""

import importlib.util
import re
import sys
import threading

import pytest

from sklearn_lse import __main__ as demo


def test_quick_demo_prints_both_tables_with_gain_and_price_and_saves_the_plot(tmp_path, capsys):
    figure = tmp_path / "demo.png"
    plotting = importlib.util.find_spec("matplotlib") is not None
    demo.main(
        ["--quick", "--seed", "1", "--solver", "lbfgs"]
        + (["--plot", str(figure)] if plotting else [])
    )
    captured = capsys.readouterr()
    for name in ("LogisticRegression", "DROClassifier", "LinearRegression", "DRORegressor"):
        row = rf"\| {name} \| \d+\.\d{{3}} \| \d+\.\d{{3}} \| \d+\.\d\d \|"
        assert re.search(row, captured.out), name
    assert "| worst-class accuracy (worst group) | accuracy (average) |" in captured.out
    assert "| subpopulation MSE (worst group) | MSE (average) |" in captured.out
    summary = r"Gain on the worst group: [-+]\d+\.\d{3} .*; price on average: [-+]\d+\.\d{3} "
    assert len(re.findall(summary, captured.out)) == 2
    assert re.search(r"done in .* s: DRO fits .* s, ERM fits .* s", captured.out)
    assert "default solver" not in captured.out  # the note is for the default solver only
    total = demo.count_fits([1], quick=True)
    assert f"[{'#' * 30}] {total}/{total} fits" in captured.err
    if plotting:
        assert figure.stat().st_size > 5_000


def test_plot_without_matplotlib_fails_before_any_work(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--quick", "--plot", "figure.png"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "pip install matplotlib" in captured.err
    assert captured.out == ""


def test_a_slow_warm_up_says_the_kernels_are_compiled_once(monkeypatch, capsys):
    """When loading the kernels takes longer than a warm cache would, the demo says it is
    compiling them, once."""
    noted = threading.Event()

    class WaitingClassifier(demo.DROClassifier):
        def fit(self, X, y):
            noted.wait(timeout=60)  # until the demo has said it (or the test fails)
            return super().fit(X, y)

    monkeypatch.setattr(demo, "DROClassifier", WaitingClassifier)
    monkeypatch.setattr(demo, "COLD_AFTER", 0.1)
    progress = demo.Progress(total=1)
    note = progress.note

    def note_and_release(message):
        note(message)
        noted.set()

    monkeypatch.setattr(progress, "note", note_and_release)
    with progress:
        demo.warm_up(progress, {"solver": "lbfgs"})
    err = capsys.readouterr().err
    assert "The Numba cache is cold: compiling the kernels once" in err


def test_progress_bar_redraws_in_place_on_a_terminal():
    class Terminal:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

        def isatty(self):
            return True

    terminal = Terminal()
    with demo.Progress(total=4, stream=terminal) as progress:
        progress.set_stage("fitting")
        progress.advance(2)
    assert "\r[###############...............] 2/4 fits" in terminal.text
    assert "\n" not in terminal.text


def test_demo_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--solver" in out
