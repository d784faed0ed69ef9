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
relaxed one, less the relaxation's constant, for EntropicTransport). The reference,
:func:`reference_scaled`, is an exact log-domain Sinkhorn (in Numba, from the cost matrix)
with epsilon-scaling, truncation to the pairs of non-negligible kernel (Schmitzer's sparse
stabilised Sinkhorn), over-relaxation near the optimum and, at small eps, damped Newton
steps on the truncated dual, run to a marginal error of 1e-9 that one pass over all pairs
checks (tests/test_bench_transport.py compares it with the plain dense Sinkhorn
:func:`reference`, which at eps = 1e-3 x median stops at its 10,000-iteration cap with a
marginal error of 2e-4, n = 1e3, d = 2). POT's solvers
need the n x m cost matrix; at n = 1e5 it is 80 GB and they are not run (nor the
reference).

    python benchmarks/bench_transport.py          # n = 1e3 and 1e4, eps = 0.1, 0.01, 0.001 med
    python benchmarks/bench_transport.py --quick  # n = 1e3, eps = 0.1 median cost
    python benchmarks/bench_transport.py --large  # also n = 1e5 (EntropicTransport only)
    python benchmarks/bench_transport.py --only 10000:0.01:10 --tols 1e-3,1e-5  # one problem

The default grid is long at n = 1e4 and the smaller eps (our fits at the default tol, then
POT's Sinkhorn for twice their time at 4-5 s per iteration) and has not been run in one
piece: the documented rows at n = 1e4 were run one by one with ``--only``, at the smaller
eps with a shorter ``--tols``.
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


@njit(cache=True, nogil=True)
def _lse_dense(C, logw, g, eps, out):
    """``out_i = -eps log sum_j exp(logw_j + (g_j - C_ij) / eps)`` over all pairs."""
    for i in range(C.shape[0]):
        top = -np.inf
        for j in range(C.shape[1]):
            top = max(top, logw[j] + (g[j] - C[i, j]) / eps)
        s = 0.0
        for j in range(C.shape[1]):
            s += math.exp(logw[j] + (g[j] - C[i, j]) / eps - top)
        out[i] = -eps * (top + math.log(s))


@njit(cache=True, nogil=True)
def _lse_sparse(indptr, idx, val, logw, g, eps, out):
    """As :func:`_lse_dense` over the kept pairs only (row i: ``idx[indptr[i]:indptr[i+1]]``,
    their costs in ``val``)."""
    for i in range(len(indptr) - 1):
        top = -np.inf
        for k in range(indptr[i], indptr[i + 1]):
            top = max(top, logw[idx[k]] + (g[idx[k]] - val[k]) / eps)
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            s += math.exp(logw[idx[k]] + (g[idx[k]] - val[k]) / eps - top)
        out[i] = -eps * (top + math.log(s))


@njit(cache=True, nogil=True)
def _support(C, f, g, eps, cut):
    """The pairs with ``(f_i + g_j - C_ij) / eps > -cut``, by rows (CSR) and by columns."""
    n, m = C.shape
    indptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        c = 0
        for j in range(m):
            if f[i] + g[j] - C[i, j] > -cut * eps:
                c += 1
        indptr[i + 1] = indptr[i] + c
    nnz = indptr[n]
    idx = np.empty(nnz, np.int32)
    val = np.empty(nnz)
    colptr = np.zeros(m + 1, np.int64)
    for i in range(n):
        k = indptr[i]
        for j in range(m):
            if f[i] + g[j] - C[i, j] > -cut * eps:
                idx[k] = j
                val[k] = C[i, j]
                colptr[j + 1] += 1
                k += 1
    for j in range(m):
        colptr[j + 1] += colptr[j]
    pos = colptr[:-1].copy()
    tidx = np.empty(nnz, np.int32)
    tval = np.empty(nnz)
    for i in range(n):
        for k in range(indptr[i], indptr[i + 1]):
            p = pos[idx[k]]
            tidx[p] = i
            tval[p] = val[k]
            pos[idx[k]] += 1
    return indptr, idx, val, colptr, tidx, tval


@njit(cache=True, nogil=True)
def _full_check(C, loga, logb, f, g, eps, f0, g0, cut, recut):
    """One pass over all pairs at (f, g): the row and column marginal errors (L1, relative
    to the weights), the total mass of the plan, and the number of pairs dropped by the
    support built at (f0, g0) (and ``cut``) whose exponent now exceeds ``-recut``."""
    n, m = C.shape
    cols = np.zeros(m)
    row_err, mass, violations = 0.0, 0.0, 0
    for i in range(n):
        r = 0.0
        for j in range(m):
            s = (f[i] + g[j] - C[i, j]) / eps
            p = math.exp(loga[i] + logb[j] + s)
            r += p
            cols[j] += p
            if s > -recut and f0[i] + g0[j] - C[i, j] <= -cut * eps:
                violations += 1
        row_err += abs(r - math.exp(loga[i]))
        mass += r
    col_err = 0.0
    for j in range(m):
        col_err += abs(cols[j] - math.exp(logb[j]))
    return row_err, col_err, mass, violations


def _newton(indptr, idx, val, loga, logb, f, g, eps, tol, max_steps=30, direct_below=200_000):
    """Damped Newton steps on the entropic dual restricted to a support (CSR), in place;
    stops when its L1 marginal error is below ``tol``. Returns the number of steps."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import LinearOperator, cg, spsolve

    n, m = len(f), len(g)
    a, b = np.exp(loga), np.exp(logb)
    rows = np.repeat(np.arange(n), np.diff(indptr))

    def state(f, g):
        with np.errstate(over="ignore"):  # a trial step too long: rejected (dual -inf)
            p = np.exp(loga[rows] + logb[idx] + (f[rows] + g[idx] - val) / eps)
        r, c = np.bincount(rows, p, n), np.bincount(idx, p, m)
        return p, r, c, a @ f + b @ g - eps * p.sum(), np.abs(r - a).sum() + np.abs(c - b).sum()

    p, r, c, dual, err = state(f, g)
    for step in range(max_steps):
        if err < tol:
            return step
        # minus the dual's Hessian, times eps, made definite by a ridge of 1e-12 of its
        # diagonal (the dual is invariant under f + t, g - t on each connected component
        # of the support); a direct solve on small supports (SuperLU's fill-in crashed on
        # 4e7 pairs), else conjugate gradients preconditioned by the diagonal
        P = sp.csr_matrix((p, idx, indptr), shape=(n, m))
        diag = np.concatenate([r, c]) * (1.0 + 1e-12)
        rhs = np.concatenate([a - r, b - c])
        if len(idx) <= direct_below:
            K = sp.bmat([[None, P], [P.T, None]]) + sp.diags(diag)
            d = eps * spsolve(K.tocsc(), rhs)
        else:
            PT = P.T.tocsr()
            K = LinearOperator(
                (n + m, n + m),
                matvec=lambda x, P=P, PT=PT, diag=diag: (
                    diag * x + np.concatenate([P @ x[n:], PT @ x[:n]])
                ),
                dtype=float,
            )
            M = LinearOperator((n + m, n + m), matvec=lambda x, w=diag: x / w, dtype=float)
            d = eps * cg(K, rhs, rtol=1e-10, atol=0.0, maxiter=10_000, M=M)[0]
        df, dg = d[:n], d[n:]
        t = 1.0
        while True:
            trial = state(f + t * df, g + t * dg)
            if trial[3] > dual or trial[4] < err or t < 1e-6:
                break
            t *= 0.5
        f += t * df
        g += t * dg
        p, r, c, dual, err = trial
    return max_steps


def reference_scaled(
    a,
    b,
    C,
    eps,
    tol=1e-9,
    factor=3.0,
    stage_tol=1e-3,
    cut=40.0,
    recut=30.0,
    dense_above=0.5,
    overrelax=True,
    omega_max=1.99,
    newton_from=1e-5,
    direct_below=200_000,
    max_iter=200_000,
):
    """Exact entropic OT by log-domain Sinkhorn with epsilon-scaling and truncation
    (Schmitzer's sparse stabilised Sinkhorn): returns (value, iterations, marginal error,
    stages).

    The temperature starts at the largest cost over ``factor`` and is divided by ``factor``
    per stage down to ``eps``, the potentials carried over; each stage iterates to a
    marginal error of ``stage_tol``, the last to ``tol``. A stage iterates on the pairs
    whose exponent ``(f_i + g_j - C_ij) / eps`` exceeds ``-cut`` at its start (CSR and CSC
    lists of their costs), or on all pairs, densely, when they are more than
    ``dense_above`` of them. Once the marginal error is below 1e-3 the iterations are
    over-relaxed (``f <- (1 - w) f + w T(g)``, the same fixed point), ``w`` from the
    measured contraction as for SOR, halved back from the best iterate if the error grows.
    On a sparse support the last stage ends with damped Newton steps on the truncated dual
    once the error is below ``newton_from`` (Sinkhorn's slow mode at small ``eps``, mass
    moving between clusters, takes it 1e5+ iterations): a direct sparse solve up to
    ``direct_below`` kept pairs, else conjugate gradients.

    Convergence is accepted only after one pass over all pairs: its row and column errors
    (``sum_i |P_i. - a_i|``, :func:`reference`'s measure) below ``tol`` and no dropped pair
    whose exponent now exceeds ``-recut`` (otherwise the support is rebuilt and the
    iterations go on, both cuts 10 further out if no pair was above ``-recut``). The value
    is the exact dual value at the potentials, ``<a, f> + <b, g> - eps (mass - 1)``, that
    pass's sum over all pairs. ``stages`` lists
    per stage: temperature, iterations, support fraction (or "dense"), last
    over-relaxation, its halvings, and for the last stage Newton steps, full row error and
    violations.
    """
    n, m = C.shape
    loga, logb = np.log(a), np.log(b)
    f, g = np.zeros(n), np.zeros(m)
    f_new, g_new = np.empty(n), np.empty(m)
    stages = []
    it_total = 0
    level = float(C.max())
    CT = None
    while True:
        level = max(level / factor, eps)
        last = level == eps
        target = tol if last else stage_tol
        while True:  # one support: built, iterated on, checked
            f0, g0 = f.copy(), g.copy()
            indptr, idx, val, colptr, tidx, tval = _support(C, f, g, level, cut)
            dense = (
                len(idx) > dense_above * n * m
                or np.any(np.diff(indptr) == 0)
                or np.any(np.diff(colptr) == 0)
            )
            if dense:
                del idx, val, tidx, tval
                if CT is None:
                    CT = np.ascontiguousarray(C.T)
            it, omega, errs, tried, best = 0, 1.0, [], 0, (np.inf, f.copy(), g.copy())
            while it_total < max_iter:
                if dense:
                    _lse_dense(C, logb, g, level, f_new)
                else:
                    _lse_sparse(indptr, idx, val, logb, g, level, f_new)
                # the row error of the previous iterate, for free
                err = float(a @ np.abs(np.exp((f - f_new) / level) - 1.0))
                if err < target or (last and not dense and err < newton_from):
                    break
                if not err < 10.0 * best[0]:  # over-relaxed too much: back to the best
                    f[:], g[:] = best[1], best[2]
                    omega, errs, tried = 1.0 + 0.5 * (omega - 1.0), [], tried + 1
                    continue
                if err < best[0]:
                    best = (err, f.copy(), g.copy())
                errs.append(err)
                if overrelax and tried < 3 and err < 1e-3 and len(errs) > 20:
                    # near the optimum, as for a linear iteration (SOR): the contraction
                    # per iteration at omega, lam, gives plain Sinkhorn's, mu^2, and the
                    # optimal over-relaxation 2 / (1 + sqrt(1 - mu^2)); omega only grows
                    lam = min((errs[-1] / errs[-21]) ** 0.05, 1.0)
                    mu2 = min(((lam + omega - 1.0) / omega) ** 2 / lam, 1.0)
                    optimal = min(omega_max, 2.0 / (1.0 + math.sqrt(1.0 - mu2)))
                    if optimal > omega + 0.01:
                        omega, errs = optimal, []
                f *= 1.0 - omega
                f += omega * f_new
                if dense:
                    _lse_dense(CT, loga, f, level, g_new)
                else:
                    _lse_sparse(colptr, tidx, tval, loga, f, level, g_new)
                g *= 1.0 - omega
                g += omega * g_new
                it += 1
                it_total += 1
            steps = 0
            if last and not dense and target <= err < newton_from:
                steps = _newton(
                    indptr, idx, val, loga, logb, f, g, level, 0.1 * tol, direct_below=direct_below
                )
            elif err < target:  # the last half-step, so that the columns are exact
                f[:] = f_new
                if dense:
                    _lse_dense(CT, loga, f, level, g)
                else:
                    _lse_sparse(colptr, tidx, tval, loga, f, level, g)
            if not last:
                stages.append((level, it, "dense" if dense else len(idx) / (n * m), omega, tried))
                break
            row_err, col_err, mass, violations = _full_check(
                C, loga, logb, f, g, level, f0, g0, cut, recut
            )
            stages.append(
                (
                    level,
                    it,
                    "dense" if dense else len(idx) / (n * m),
                    omega,
                    tried,
                    steps,
                    row_err,
                    violations,
                )
            )
            if (row_err < tol and col_err < tol and violations == 0) or it_total >= max_iter:
                value = float(a @ f + b @ g - eps * (mass - 1.0))
                return value, it_total, max(row_err, col_err), stages
            if violations == 0:  # converged on a support that misses too much mass
                cut, recut = cut + 10.0, recut + 10.0


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
    parser.add_argument(
        "--only",
        metavar="N:REL[:D],...",
        help="these problems only, e.g. 10000:0.01 or 1000:0.001:10 (d = 2 and 10 if no D)",
    )
    parser.add_argument(
        "--tols",
        default="1e-3,1e-5,1e-7",
        help="EntropicTransport's tol values, the last one compared (default 1e-3,1e-5,1e-7)",
    )
    args = parser.parse_args(argv)
    import ot  # the bench extra

    if args.only:
        grid = []
        for item in args.only.split(","):
            n, rel, *d = item.split(":")
            grid.append((int(float(n)), float(rel), tuple(int(x) for x in d) or (2, 10)))
    elif args.quick:
        grid = [(1000, 1e-1, (2, 10))]
    else:
        grid = [(n, rel, (2, 10)) for n in (1000, 10_000) for rel in (1e-1, 1e-2, 1e-3)]
    tols = [float(t) for t in args.tols.split(",")]
    warm = mixtures(200, 2)
    EntropicTransport(epsilon=1.0, random_state=0).fit(*warm)  # compile the kernels
    detail, summary = [], []
    for n, rel, ds in grid:
        for d in ds:
            Xs, Xt = mixtures(n, d)
            a, b = np.full(n, 1.0 / n), np.full(n, 1.0 / n)
            C = cdist(Xs, Xt, "sqeuclidean")
            median = float(np.median(C))
            eps = rel * median
            start = time.perf_counter()
            exact, ref_iter, ref_err, stages = reference_scaled(a, b, C, eps)
            print(
                f"reference n={n} d={d} rel={rel:g}: {exact!r}, {ref_iter} iterations, "
                f"marginal error {ref_err:.1e}, {time.perf_counter() - start:.1f} s; "
                f"stages {stages}",
                file=sys.stderr,
                flush=True,
            )
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
