"""Regenerate the benchmark tables and figures: ``python -m benchmarks --quick`` (a few
minutes, run in CI) or ``python -m benchmarks --full`` (what the README quotes).

Writes ``results.md`` and the PNG figures to ``--out`` (default ``benchmarks/results``)
and prints the tables. Sections:

1. the paper's experiment: relaxed SGD against the mini-batch softmax estimator
   (``paper.py``);
2. speed against scikit-learn's SGD and one ``X @ w`` pass, and against the full-batch
   solver as n grows (``bench_regressor.py``, ``bench_classifier.py``,
   ``bench_sparse.py``, ``scaling.py``);
3. against the ``dro`` package, on the same KL-ball objective (``compare_dro.py``);
4. peak memory of a fit relative to X (``memory.py``);
5. Numba compilation (``bench_compile.py``);
6. entropic optimal transport against POT (``bench_transport.py``, skipped without POT);
7. the robustness setting on real data: held-out average and worst-group error against
   the radius, as ratios to least squares / logistic regression
   (``robustness_settings.py``);
8. the hard grid of issue 12: time to tolerance of every solver against an ordinary fit
   (``hard_grid.py``; ``--huge`` adds n = 1e7 on four cells).
"""

import argparse
import contextlib
import io
import time
from pathlib import Path

from . import (
    bench_classifier,
    bench_compile,
    bench_regressor,
    bench_sparse,
    bench_transport,
    compare_dro,
    hard_grid,
    memory,
    paper,
    robustness_settings,
    scaling,
)


def captured(fn, *args):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        fn(*args)
    return buffer.getvalue().strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (default)")
    size.add_argument("--full", action="store_true", help="the sizes the README quotes")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument(
        "--huge", action="store_true", help="the hard grid also at n = 1e7 (X is 1.6 GB)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quick = not args.full
    sections = []

    def section(title, text):
        block = f"## {title}\n\n{text}\n"
        print(block, flush=True)
        sections.append(block)

    start = time.perf_counter()
    if quick:
        settings, batches, steps, seeds, epochs = [(1.0, 1e-3)], [10, 100], [1e-6, 1e-5], 2, 3
    else:
        settings = [(1.0, 1e-3), (0.1, 1e-2)]
        batches, steps, seeds, epochs = [10, 100, 1000], [1e-7, 1e-6, 1e-5, 1e-4, 1e-3], 10, 50
    results, optima, n_rows = paper.experiment(settings, batches, steps, seeds, epochs)
    section(
        f"Relaxed SGD against the mini-batch softmax estimator ({seeds} seeds, {epochs} epochs)",
        paper.report(results, optima, n_rows, out),
    )
    flag = ["--quick"] if quick else []
    section("DRORegressor speed", captured(bench_regressor.main, flag))
    section("DROClassifier speed", captured(bench_classifier.main, flag))
    section("Sparse data", captured(bench_sparse.main, flag))
    section("Growth with n", scaling.report(quick))
    section("Against the dro package (cvxpy)", compare_dro.report(quick))
    section("Memory", memory.report(quick))
    section("Numba compilation", captured(bench_compile.main))
    try:
        import ot  # noqa: F401 (POT, in the bench extra)
    except ImportError:
        section("Entropic optimal transport against POT", "POT is not installed: skipped.")
    else:
        section("Entropic optimal transport against POT", captured(bench_transport.main, flag))
    section("The robustness setting on real data", robustness_settings.report(quick))
    section(
        "Hard grid: time to tolerance",
        hard_grid.report(quick, args.huge, progress=hard_grid.progress),
    )
    mode = "quick" if quick else "full"
    header = (
        f"# sklearn_lse benchmarks ({mode}, {time.perf_counter() - start:.0f} s)\n\n"
        f"Regenerate with `python -m benchmarks --{mode}`.\n"
    )
    (out / "results.md").write_text(header + "\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
