"""The main demo: what distributionally robust training buys, and what it costs, on data
that needs no download.

    python -m sklearn_lse [--quick] [--seed N] [--solver NAME] [--plot FILE.png]

1. Classification: scikit-learn's bundled digits with 30% of the training labels
   corrupted by a fixed class-dependent flip (60% of each even digit labelled as the next
   digit; test labels clean). DROClassifier against LogisticRegression, each tuned by
   3-fold cross-validated log-loss on the (noisy) training labels.
2. Regression: a linear trend with a 10% subpopulation whose noise is 5 times larger
   (and a curvature the linear model cannot follow). DRORegressor against
   LinearRegression.

Prints, for each task, the worst group's metric (what DRO should gain) next to the
average one (what it may cost), and the time the fits took. A progress bar over the fits
goes to stderr.
"""

import argparse
import concurrent.futures
import sys
import threading
import time
import warnings

import numpy as np
from joblib import parallel_backend
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import get_scorer
from sklearn.model_selection import GridSearchCV, ParameterGrid, train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from . import DROClassifier, DRORegressor, _numba_cache

C_GRID = {"C": [1e-3, 1e-2, 1e-1, 1.0, 10.0]}
# the KL budget (radius, in nats) and the penalty, the estimator's other parameters at
# their defaults (rho="auto": the exact KL-DRO risk)
DRO_GRID = {"radius": [0.1, 0.3, 1.0], "alpha": [1e-2, 1e-1]}
DRO_GRID_QUICK = {"radius": [0.3], "alpha": [1e-2]}
CV = 3
N_JOBS = 2
# seconds: loading the kernels from a warm cache takes well under this, compiling them
# 15-30 s
COLD_AFTER = 3.0


class Progress:
    """A progress bar over the fits, on stderr.

    Redrawn every second on a terminal (once every few seconds, one line each, when
    stderr is a file or a pipe), so that it moves during a long fit or a compilation too.
    ``advance`` may be called from the worker threads of a grid search.
    """

    def __init__(self, total, stream=None, interval=1.0, line_interval=5.0):
        self.total = total
        self.done = 0
        self.stage = ""
        self.stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()
        self._tty = getattr(self.stream, "isatty", lambda: False)()
        self._interval = interval
        self._line_interval = line_interval
        self._last_line = -np.inf
        self._width = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        with self._lock:
            if not self._tty:
                self._draw(force=True)  # a file ends with the final count
            self._clear()

    def advance(self, n=1):
        with self._lock:
            self.done += n
            self._draw()

    def set_stage(self, stage):
        with self._lock:
            self.stage = stage
            self._draw(force=True)

    def note(self, message):
        """A message on stderr on its own line, above the bar."""
        with self._lock:
            self._clear()
            print(message, file=self.stream, flush=True)
            self._redraw()

    def print(self, text):
        """Text on stdout, with the bar out of its way on a terminal."""
        with self._lock:
            self._clear()
            print(text, flush=True)
            self._redraw()

    def elapsed(self):
        return time.perf_counter() - self.start

    def _tick(self):
        while not self._stop.wait(self._interval):
            with self._lock:
                self._draw()

    def _line(self):
        width = 30
        filled = round(width * min(self.done, self.total) / self.total)
        bar = "#" * filled + "." * (width - filled)
        return f"[{bar}] {self.done}/{self.total} fits {self.elapsed():4.0f} s  {self.stage}"

    def _draw(self, force=False):
        line = self._line()
        if self._tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
        elif force or self.elapsed() - self._last_line >= self._line_interval:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_line = self.elapsed()

    def _redraw(self):
        """The bar again after a message, on a terminal (a file has its last line)."""
        if self._tty:
            self._draw()

    def _clear(self):
        if self._tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


class CountingScorer:
    """A scorer that advances the progress bar by one fit each time it scores one (the
    grid searches score each candidate's fit on its validation fold once)."""

    def __init__(self, name, progress):
        self.scorer = get_scorer(name)
        self.progress = progress

    def __call__(self, estimator, X, y):
        score = self.scorer(estimator, X, y)
        self.progress.advance()
        return score


def corrupt_labels(y, rng):
    """60% of each even digit labelled as the next digit (30% of all labels)."""
    noisy = y.copy()
    for k in range(0, 10, 2):
        members = np.flatnonzero(y == k)
        noisy[rng.choice(members, round(0.6 * len(members)), replace=False)] = k + 1
    return noisy


def count_fits(seeds, quick):
    """The fits the demo runs: each grid search's candidates on each fold, its refit, and
    the two regression fits."""
    grid = DRO_GRID_QUICK if quick else DRO_GRID
    per_seed = (len(ParameterGrid(C_GRID)) * CV + 1) + (len(ParameterGrid(grid)) * CV + 1)
    return len(seeds) * per_seed + 2


def digits_split(seed):
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


def warm_up(progress, solver_params):
    """Fits each DRO model once on a few rows, so that the Numba kernels are compiled, or
    loaded from the cache, before the timed fits. Says so when that takes long: the
    cache is cold (the first run after an installation or an upgrade)."""
    # three classes and a few features: the same compiled code as the digits (dense
    # float64, multinomial), at a fraction of the cost of their 650 coefficients
    Xtr, _, ytr, _ = digits_split(0)
    Xc, yc = Xtr[ytr < 3][:, 20:28], ytr[ytr < 3]
    Xr, yr, _ = regression_data(200, np.random.default_rng(0))

    def fit_both():
        clf = DROClassifier(random_state=0, **solver_params).fit(Xc, yc)
        clf.predict_proba(Xc[:10])
        DRORegressor(random_state=0, **solver_params).fit(Xr, yr).predict(Xr)

    progress.set_stage("loading the compiled Numba kernels")
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(fit_both)
        try:
            future.result(timeout=COLD_AFTER)
        except concurrent.futures.TimeoutError:
            if _numba_cache.TEMPORARY_CACHE is None:
                progress.note(
                    "The Numba cache is cold: compiling the kernels once (15-30 s); "
                    "later runs load them from the cache and start at once."
                )
            else:
                progress.note(
                    "Compiling the Numba kernels for this process only (no writable cache "
                    "folder: set NUMBA_CACHE_DIR to a writable folder to compile them once)."
                )
            progress.set_stage("compiling the Numba kernels")
            future.result()
    return time.perf_counter() - start


def grid_search(estimator, grid, X, y, progress):
    """GridSearchCV by 3-fold cross-validated log-loss, in two threads (the Numba kernels
    and LAPACK release the GIL; the progress bar counts the fits as they end)."""
    search = GridSearchCV(estimator, grid, cv=CV, scoring=CountingScorer("neg_log_loss", progress))
    start = time.perf_counter()
    with parallel_backend("threading", n_jobs=N_JOBS), threadpool_limits(limits=1):
        search.fit(X, y)
    progress.advance()  # the refit on the whole training set
    return search, time.perf_counter() - start


def classification(seeds, quick, solver_params, progress):
    """Both models on each seed's split and corruption; the metrics averaged over seeds."""
    results = [_classification(seed, quick, solver_params, progress) for seed in seeds]
    rows = []
    for index, name in enumerate(("LogisticRegression", "DROClassifier")):
        runs = [r[index] for r in results]
        worst = [r[0] for r in runs]
        note = "worst class per seed: " + ", ".join(f"{w:.2f}" for w in worst)
        if name == "DROClassifier":
            chosen = ", ".join(f"{k}={v:g}" for k, v in sorted(runs[0][4].items()))
            note += f"; seed {seeds[0]}: {chosen}"
        rows.append(
            (name, np.mean(worst), np.mean([r[1] for r in runs]), sum(r[2] for r in runs), note)
        )
    return rows


def _classification(seed, quick, solver_params, progress):
    Xtr, Xte, ytr, yte = digits_split(seed)
    noisy = corrupt_labels(ytr, np.random.default_rng(seed))
    progress.set_stage(f"digits, seed {seed}: LogisticRegression, C by cross-validation")
    logreg, t_lr = grid_search(LogisticRegression(max_iter=5000), C_GRID, Xtr, noisy, progress)
    progress.set_stage(f"digits, seed {seed}: DROClassifier, radius and alpha likewise")
    dro, t_dro = grid_search(
        DROClassifier(random_state=seed, **solver_params),
        DRO_GRID_QUICK if quick else DRO_GRID,
        Xtr,
        noisy,
        progress,
    )
    rows = []
    for model, seconds in ((logreg, t_lr), (dro, t_dro)):
        pred = model.predict(Xte)
        per_class = [np.mean(pred[yte == k] == k) for k in range(10)]
        rows.append((min(per_class), np.mean(pred == yte), seconds, model, model.best_params_))
    return rows


def regression_data(n, rng):
    X = rng.normal(size=(n, 3))
    group = X[:, 0] > 1.2816  # about 10% of the samples
    noise = rng.normal(size=n) * np.where(group, 5.0, 1.0)
    y = X @ [1.0, 2.0, -1.0] + 0.8 * np.maximum(X[:, 0], 0) ** 2 + noise
    return X, y, group


def regression(seed, quick, solver_params, progress):
    rng = np.random.default_rng(seed)
    n = 4000 if quick else 20000
    X, y, _ = regression_data(n, rng)
    Xte, yte, gte = regression_data(20000, rng)
    progress.set_stage("regression: LinearRegression and DRORegressor")
    rows = []
    for name, model in (
        ("LinearRegression", LinearRegression()),
        ("DRORegressor", DRORegressor(random_state=seed, **solver_params)),
    ):
        start = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - start
        progress.advance()
        err = (model.predict(Xte) - yte) ** 2
        note = (
            f"the defaults: a KL ball of radius {model.radius_:g}"
            if name != "LinearRegression"
            else ""
        )
        rows.append((name, err[gte].mean(), err.mean(), seconds, note))
    return rows


def table(title, worst, average, rows, higher_is_better):
    """The worst group's metric next to the average one, and DRO minus ERM below: the
    gain on the worst group and the price on average."""
    lines = [
        title,
        f"| model | {worst} (worst group) | {average} (average) | fit (s) | notes |",
        "|---|---|---|---|---|",
    ]
    for name, worst_value, average_value, seconds, note in rows:
        lines.append(
            f"| {name} | {worst_value:.3f} | {average_value:.3f} | {seconds:.2f} | {note} |"
        )
    (_, erm_worst, erm_avg, _, _), (_, dro_worst, dro_avg, _, _) = rows
    sign = 1 if higher_is_better else -1
    gain = sign * (dro_worst - erm_worst)
    price = -sign * (dro_avg - erm_avg)
    lines.append(
        f"Gain on the worst group: {gain:+.3f} {worst}"
        + (" (better)" if gain > 0 else " (none: worse)" if gain < 0 else "")
        + f"; price on average: {price:+.3f} {average}"
        + (" (worse)" if price > 0 else " (none: better on average too)" if price < 0 else "")
        + "."
    )
    return "\n".join(lines)


def plot(path, clf_rows, reg_rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (
        (
            axes[0],
            clf_rows,
            "digits, 30% flipped labels",
            "accuracy (higher is better)",
            ("worst class", "all test samples"),
            "{:.3f}",
        ),
        (
            axes[1],
            reg_rows,
            "noisy subpopulation",
            "test MSE (lower is better)",
            ("subpopulation", "all test samples"),
            "{:.2f}",
        ),
    )
    for ax, rows, title, label, groups, fmt in panels:
        positions = np.arange(len(groups))
        for index, (name, worst, average, _, _) in enumerate(rows):
            bars = ax.bar(
                positions + (index - 0.5) * 0.38,
                [worst, average],
                width=0.38,
                label=name,
                color=["0.65", "C0"][index],
            )
            ax.bar_label(bars, fmt=fmt.format, padding=2, fontsize=9)
        ax.set_xticks(positions, [f"{groups[0]}\n(the gain)", f"{groups[1]}\n(the price)"])
        ax.set_title(title)
        ax.set_ylabel(label)
        top = max(max(r[1], r[2]) for r in rows)
        ax.set_ylim(0, 1.3 * top)
        ax.legend(loc="upper center", ncols=2, fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m sklearn_lse",
        description="What distributionally robust training buys (on the worst group) and "
        "what it costs (on average): DRO models against their ERM counterparts on data with "
        "corrupted labels and a noisy subpopulation. A progress bar goes to stderr.",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="one seed, smaller grid and data")
    parser.add_argument(
        "--solver",
        choices=["newton", "lbfgs", "sgd"],
        help="solver of the DRO models (default: the estimators' default, 'auto': newton)",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", help="save a figure of the results (needs matplotlib)"
    )
    args = parser.parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib")
    solver_params = {} if args.solver is None else {"solver": args.solver}
    seeds = [args.seed] if args.quick else [args.seed, args.seed + 1, args.seed + 2]
    print("sklearn_lse demo: KL-DRO models against their ERM counterparts\n", flush=True)
    with warnings.catch_warnings(), Progress(count_fits(seeds, args.quick)) as progress:
        # with solver="sgd", the grid searches visit settings where it stops at max_iter
        warnings.simplefilter("ignore", ConvergenceWarning)
        compile_seconds = warm_up(progress, solver_params)
        clf_rows = classification(seeds, args.quick, solver_params, progress)
        progress.print(
            table(
                f"Digits, 30% of the training labels flipped, clean test labels "
                f"(mean over {len(seeds)} seed{'s' * (len(seeds) > 1)}):",
                "worst-class accuracy",
                "accuracy",
                clf_rows,
                higher_is_better=True,
            )
        )
        progress.print("")
        reg_rows = regression(args.seed, args.quick, solver_params, progress)
        progress.print(
            table(
                "Regression with a 10% subpopulation of 5x noise (test MSE):",
                "subpopulation MSE",
                "MSE",
                reg_rows,
                higher_is_better=False,
            )
            + "\n"
        )
        if args.plot:
            progress.set_stage("saving the figure")
            plot(args.plot, clf_rows, reg_rows)
            progress.print(f"figure saved to {args.plot}")
    dro = clf_rows[1][3] + reg_rows[1][3]
    erm = clf_rows[0][3] + reg_rows[0][3]
    print(
        f"done in {progress.elapsed():.1f} s: DRO fits {dro:.1f} s, ERM fits {erm:.1f} s, "
        f"loading or compiling the Numba kernels {compile_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
