"""Timing helpers shared by the benchmark scripts."""

import time
import warnings

from sklearn.exceptions import ConvergenceWarning


def best_time(fn, repeat=3):
    """Shortest wall time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def quiet_fit(estimator, X, y):
    """Fit, ignoring ConvergenceWarning (the benchmarks cap the iterations on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


def epoch_time(make, X, y):
    """Cost of one epoch of a DRO estimator (stochastic pass, snapshot pass and Hessian):
    the difference between fits of 3 and 1 epochs, halved, so that set-up is excluded.
    ``make(max_iter)`` returns the estimator."""
    three = best_time(lambda: quiet_fit(make(3), X, y))
    one = best_time(lambda: quiet_fit(make(1), X, y))
    return (three - one) / 2


def time_to_tolerance(make, X, y, optimum, rel, max_fits=200):
    """Wall time and iterations of the shortest fit (by max_iter) whose objective
    ``risk_`` is within ``rel`` of ``optimum``; every fit starts from scratch, so set-up
    is included. ``make(max_iter)`` returns the estimator."""
    for k in range(1, max_fits):
        t = time.perf_counter()
        model = quiet_fit(make(k), X, y)
        seconds = time.perf_counter() - t
        if model.risk_ - optimum <= rel * abs(optimum):
            return seconds, k
    return float("nan"), max_fits
