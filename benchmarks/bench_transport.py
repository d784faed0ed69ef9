"""EntropicTransport against POT on entropic OT between Gaussian mixtures, in one run: the
relative error of the OT value ``<P, C> + eps KL(P || ab)`` against wall time.

Methods, each on the same problem (uniform weights, squared Euclidean cost,
``eps = rel * median cost``):

* ``EntropicTransport`` (this package) at ``tol`` 1e-3, 1e-5 and 1e-7 (the default);
* POT's log-domain Sinkhorn ``ot.sinkhorn(..., method="sinkhorn_log")``, stopped after
  1, 2, 4, ... iterations (continued by ``warmstart``; its own evaluation excluded);
* POT's stochastic semi-dual ``ot.stochastic.solve_semi_dual_entropic`` (``"ASGD"`` and
  ``"SAG"``, their default ``numItermax`` and ``lr``);
* POT's stochastic dual ``ot.stochastic.solve_dual_entropic`` (default ``numItermax`` and
  ``lr=1``; ``batch_size``, which has no default, ``min(n, 100)``).

Every method's value is its dual value at its potentials (the exact dual for POT; the
relaxed one, less the relaxation's constant, for EntropicTransport), the reference an exact
log-domain Sinkhorn (in Numba, from the cost matrix) run to a marginal error of 1e-9 or
10,000 iterations. POT's solvers need the n x m cost matrix; at n = 1e5 it is 80 GB and
they are not run (nor the reference).

    python benchmarks/bench_transport.py          # n = 1e3 at 3 eps, n = 1e4 at eps = 0.1 med
    python benchmarks/bench_transport.py --quick  # n = 1e3, eps = 0.1 median cost
    python benchmarks/bench_transport.py --large  # also n = 1e5 (EntropicTransport only)

n = 1e4 at the smaller eps is not in the default run: the reference alone needs thousands
of O(n^2) iterations there (hours on 2 cores).
"""

import argparse
import math
import sys
import time
import warnings

import numpy as np
from numba import njit
from scipy.spatial.distance import cdist
from sklearn.exceptions import ConvergenceWarning

from sklearn_lse import EntropicTransport


def mixtures(n, d, seed=0):
    """Source and target: mixtures of 3 Gaussians, the target's shifted and stretched."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, d))
    centres[1, 0] = 3.0
    centres[2, 1] = 3.0
    Xs = centres[rng.integers(0, 3, n)] + 0.7 * rng.normal(size=(n, d))
    Xt = 1.2 * (centres[rng.integers(0, 3, n)] + 0.7 * rng.normal(size=(n, d))) + 1.0
    return Xs, Xt


@njit(cache=True, nogil=True)
def _lse_rows(C, w, g, eps, out):
    """``out_i = -eps log sum_j w_j exp((g_j - C_ij) / eps)``, shifted by the largest term."""
    for i in range(C.shape[0]):
        top = -np.inf
        for j in range(C.shape[1]):
            top = max(top, math.log(w[j]) + (g[j] - C[i, j]) / eps)
        s = 0.0
        for j in range(C.shape[1]):
            s += math.exp(math.log(w[j]) + (g[j] - C[i, j]) / eps - top)
        out[i] = -eps * (top + math.log(s))


def reference(a, b, C, eps, tol=1e-9, max_iter=10_000):
    """Exact log-domain Sinkhorn; returns (value, iterations, marginal error)."""
    f, g = np.zeros(len(a)), np.zeros(len(b))
    CT = np.ascontiguousarray(C.T)
    for it in range(max_iter):
        _lse_rows(C, b, g, eps, f)
        _lse_rows(CT, a, f, eps, g)
        if it % 20 == 0 or it == max_iter - 1:
            rows = np.empty_like(f)
            _lse_rows(C, b, g, eps, rows)  # rows masses exp((f - rows) / eps)
            err = float(a @ np.abs(np.exp((f - rows) / eps) - 1.0))
            if err < tol:
                break
    return float(a @ f + b @ g), it + 1, err


def dual_value(a, b, C, eps, f, g):
    """Exact entropic dual at (f, g); None where it overflows or is not finite."""
    with np.errstate(all="ignore"):
        mass = (a[:, None] * b[None, :] * np.exp((f[:, None] + g[None, :] - C) / eps)).sum()
        value = a @ f + b @ g - eps * (mass - 1.0)
    return float(value) if np.isfinite(value) else None


def run_ours(Xs, Xt, eps, tols):
    points = []
    for tol in tols:
        model = EntropicTransport(epsilon=eps, tol=tol, max_iter=100_000, random_state=0)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(Xs, Xt)
        points.append((f"tol={tol:g}", time.perf_counter() - start, model.value_))
    return points


def run_sinkhorn(ot, a, b, C, eps, max_seconds):
    points, warm, spent, done = [], None, 0.0, 0
    chunk = 1
    while spent < max_seconds and done < 20_000:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, log = ot.sinkhorn(
                a,
                b,
                C,
                eps,
                method="sinkhorn_log",
                numItermax=chunk,
                stopThr=0.0,
                warmstart=warm,
                log=True,
            )
        spent += time.perf_counter() - start
        done += chunk
        warm = (log["log_u"], log["log_v"])
        f = eps * (log["log_u"] - np.log(a))
        g = eps * (log["log_v"] - np.log(b))
        points.append((f"{done} it.", spent, dual_value(a, b, C, eps, f, g)))
        chunk = done  # doubles the total
    return points


def run_stochastic(ot, a, b, C, eps):
    points = []
    for method in ("ASGD", "SAG"):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, log = ot.stochastic.solve_semi_dual_entropic(a, b, C, eps, method, log=True)
        seconds = time.perf_counter() - start
        points.append(
            (f"semi-dual {method}", seconds, dual_value(a, b, C, eps, log["alpha"], log["beta"]))
        )
    batch = min(len(a), 100)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, log = ot.stochastic.solve_dual_entropic(a, b, C, eps, batch, log=True)
    seconds = time.perf_counter() - start
    points.append(
        (f"dual SGD (batch {batch})", seconds, dual_value(a, b, C, eps, log["alpha"], log["beta"]))
    )
    return points


def relative(value, exact):
    if value is None:
        return "overflow"
    return f"{abs(value - exact) / abs(exact):.1e}"


def first_within(points, exact, target):
    """Seconds of the first point within ``target`` relative error, or None."""
    for _, seconds, value in points:
        if value is not None and abs(value - exact) <= target * abs(exact):
            return seconds
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1e3, eps = 0.1 median")
    parser.add_argument("--large", action="store_true", help="also n = 1e5 (ours only)")
    args = parser.parse_args(argv)
    import ot  # the bench extra

    if args.quick:
        grid = [(1000, 1e-1)]
    else:
        grid = [(1000, 1e-1), (1000, 1e-2), (1000, 1e-3), (10_000, 1e-1)]
    tols = [1e-3, 1e-5, 1e-7]
    warm = mixtures(200, 2)
    EntropicTransport(epsilon=1.0, random_state=0).fit(*warm)  # compile the kernels
    detail, summary = [], []
    for n, rel in grid:
        for d in (2, 10):
            Xs, Xt = mixtures(n, d)
            a, b = np.full(n, 1.0 / n), np.full(n, 1.0 / n)
            C = cdist(Xs, Xt, "sqeuclidean")
            median = float(np.median(C))
            eps = rel * median
            exact, ref_iter, ref_err = reference(a, b, C, eps)
            ours = run_ours(Xs, Xt, eps, tols)
            budget = 2.0 * max(s for _, s, _ in ours)
            sink = run_sinkhorn(ot, a, b, C, eps, budget)
            stoch = run_stochastic(ot, a, b, C, eps) if n <= 10_000 else []
            tag = f"| {n} | {d} | {rel:g} |"
            for name, points in (
                ("EntropicTransport", ours),
                ("POT sinkhorn_log", sink),
                ("POT stochastic", stoch),
            ):
                for setting, seconds, value in points:
                    detail.append(
                        f"{tag} {name} {setting} | {seconds:.3f} | {relative(value, exact)} |"
                    )
            default = ours[-1]
            target = max(abs(default[2] - exact) / abs(exact), 1e-6)
            t_sink = first_within(sink, exact, target)
            ratio = f"{t_sink / default[1]:.2f}" if t_sink else "not within 2x"
            best_stoch = min(
                (abs(v - exact) / abs(exact) for _, _, v in stoch if v is not None),
                default=None,
            )
            summary.append(
                f"{tag} {ref_iter} ({ref_err:.0e}) | {default[1]:.3f} | "
                f"{relative(default[2], exact)} | {ratio} | "
                + (f"{best_stoch:.1e}" if best_stoch is not None else "overflow")
                + " |"
            )
            print(f"done: {summary[-1]}", file=sys.stderr, flush=True)
    print(
        "Entropic OT between Gaussian mixtures (n = m, uniform weights, squared Euclidean "
        "cost, eps = rel x median cost); relative error of the OT value against an exact "
        "log-domain Sinkhorn.\n"
    )
    print(
        "| n | d | rel | reference iterations (marginal error) | EntropicTransport (s) "
        "| its relative error | POT sinkhorn_log time to that error / ours "
        "| best POT stochastic error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(summary))
    print("\nEvery run (time in seconds, relative error of the value):\n")
    print("| n | d | rel | method | seconds | relative error |")
    print("|---|---|---|---|---|---|")
    print("\n".join(detail))
    if args.large:
        print("\nn = 1e5 (no cost matrix: POT's solvers and the reference are not run):\n")
        print("| n | d | rel | EntropicTransport, tol=1e-3 (s) | iterations | marginal error |")
        print("|---|---|---|---|---|---|")
        for d in (2, 10):
            Xs, Xt = mixtures(100_000, d)
            sample = np.random.default_rng(0).integers(0, 100_000, size=(2, 4096))
            median = float(np.median(((Xs[sample[0]] - Xt[sample[1]]) ** 2).sum(1)))
            model = EntropicTransport(epsilon=0.1 * median, tol=1e-3, random_state=0)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(Xs, Xt)
            print(
                f"| 100000 | {d} | 0.1 | {time.perf_counter() - start:.1f} | "
                f"{model.n_iter_} | {model.marginal_error_:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
