"""Numba kernels of :mod:`sklearn_lse.transport`: the relaxed entropic OT dual over pairs.

Notation (``shared/MATH.md`` section 8): source points ``x_i`` with weights ``a_i``, target
points ``y_j`` with weights ``b_j``, cost ``C_ij``, temperature ``eps`` and density cap
``0 < rho < 1``. For potentials ``f`` (source) and ``g`` (target), in cost units, the
relaxed density ratio of a pair is::

    s_ij = sigmoid((f_i + g_j - C_ij) / eps + log rho) / rho        (0 < s_ij < 1 / rho)

and the plan is ``P_ij = a_i b_j s_ij``. The relaxed dual is
``sum_i a_i f_i + sum_j b_j g_j + eps - (eps / rho) sum_ij a_i b_j softplus(z_ij + log rho)``;
its gradient in ``f_i`` is ``a_i (1 - r_i)`` with the row mass ``r_i = sum_j b_j s_ij``, and
its curvature in ``f_i`` is ``a_i / eps`` times ``sum_j b_j s_ij (1 - rho s_ij) <= r_i``.

The costs are computed on the fly from the points for the metric codes below (no n x m
matrix), or read from a precomputed matrix (``PRECOMPUTED``). The overflow-free sigmoid
(and :func:`sigmoid_softplus`, both from one exponential, for :func:`evaluate` and
:func:`support_state`) are written here, not imported from :mod:`sklearn_lse._kernels`: a
cached kernel must only call jitted functions of its own file (Numba's cache does not
notice edits to other files).
"""

import math

import numpy as np
from numba import njit

_NJIT = {"cache": True, "nogil": True}

SQEUCLIDEAN = 0
EUCLIDEAN = 1
CITYBLOCK = 2
PRECOMPUTED = 3  # any other metric, or a callable: the cost matrix is passed in

BLOCK = 32  # consecutive rows that share their sampled columns

METRIC_CODES = {"sqeuclidean": SQEUCLIDEAN, "euclidean": EUCLIDEAN, "cityblock": CITYBLOCK}


@njit(**_NJIT)
def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow for any finite ``x``."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(inline="always", **_NJIT)
def sigmoid_softplus(z):
    """``(sigmoid(z), softplus(z))`` from one exponential, without overflow."""
    e = math.exp(-abs(z))
    return (1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)), max(z, 0.0) + math.log1p(e)


@njit(inline="always", **_NJIT)
def pair_cost(code, X, i, Y, j, C, transposed):
    """``C_ij`` between row ``i`` of X and row ``j`` of Y; with ``transposed`` the roles of
    the precomputed matrix are swapped (the rows are the targets)."""
    if code == PRECOMPUTED:
        return C[j, i] if transposed else C[i, j]
    s = 0.0
    if code == CITYBLOCK:
        for k in range(X.shape[1]):
            s += abs(X[i, k] - Y[j, k])
        return s
    for k in range(X.shape[1]):
        t = X[i, k] - Y[j, k]
        s += t * t
    if code == EUCLIDEAN:
        return math.sqrt(s)
    return s


@njit(**_NJIT)
def sampled_step(code, X, Y, C, transposed, w, f, g, J, eps, rho, h, stats):
    """One stochastic half-step on the potentials ``f`` of the rows (X, weights ``w``).

    Row ``i`` gets the targets ``J[i // BLOCK, :]``, drawn from the target weights (the
    rows of a block of ``BLOCK`` consecutive rows share their draws, which keeps those
    targets in cache; each row's draws are still a sample of the target weights), so that the
    mean ``r_hat_i`` of their ``s_ij`` is an unbiased estimate of the row mass ``r_i``
    and ``1 - r_hat_i`` one of the gradient (over ``a_i``). The step is preconditioned by
    the curvature, ``f_i += eps * (1 - r_hat_i) / H_i`` with ``H_i = max(h_i, 1)`` and
    ``h_i`` the estimate of the previous step (independent of this step's draws, so the
    step stays unbiased); ``H_i >= 1`` bounds every step by ``eps`` upwards and by about
    ``eps`` downwards once ``h_i`` tracks the mass. Adds the weighted squared step
    ``sum_i w_i (1 - r_hat_i)^2 / H_i`` (the Newton decrement over eps / 2) to
    ``stats[0]`` and its sampling variance ``sum_i w_i var(r_hat_i) / H_i`` to
    ``stats[1]``.
    """
    n = X.shape[0]
    K = J.shape[1]
    inv = 1.0 / eps
    log_rho = math.log(rho)
    dec = 0.0
    noise = 0.0
    for i in range(n):
        r = 0.0
        r2 = 0.0
        fi = f[i] * inv + log_rho
        for k in range(K):
            j = J[i // BLOCK, k]
            s = sigmoid(fi + (g[j] - pair_cost(code, X, i, Y, j, C, transposed)) * inv) / rho
            r += s
            r2 += s * s
        r /= K
        var = max(r2 / K - r * r, 0.0) / max(K - 1, 1)
        H = max(h[i], 1.0)
        dec += w[i] * (1.0 - r) * (1.0 - r) / H
        noise += w[i] * var / H
        f[i] += eps * (1.0 - r) / H
        h[i] = r
    stats[0] += dec
    stats[1] += noise


@njit(**_NJIT)
def exact_step(code, X, Y, C, transposed, w, wt, f, g, eps, rho, h, stats):
    """The half-step with the exact row masses ``r_i = sum_j wt_j s_ij`` over all targets
    (no sampling noise): the log-domain Sinkhorn step ``f_i -= eps * log(r_i)``, whose
    fixed point is the relaxed optimum ``r_i = 1`` (the relaxed row mass grows like
    ``exp(f_i / eps)`` below the cap, a little slower near it). Adds
    ``sum_i w_i log(r_i)^2`` to ``stats[0]``."""
    n = X.shape[0]
    m = Y.shape[0]
    inv = 1.0 / eps
    log_rho = math.log(rho)
    dec = 0.0
    for i in range(n):
        r = 0.0
        fi = f[i] * inv + log_rho
        for j in range(m):
            r += wt[j] * sigmoid(fi + (g[j] - pair_cost(code, X, i, Y, j, C, transposed)) * inv)
        if r > 1e-250:
            log_r = math.log(r / rho)
        else:  # every pair far below the threshold: sigmoid(x) = exp(x), in log domain
            top = -np.inf
            for j in range(m):
                if wt[j] > 0.0:
                    z = (g[j] - pair_cost(code, X, i, Y, j, C, transposed)) * inv
                    top = max(top, math.log(wt[j]) + z)
            acc = 0.0
            for j in range(m):
                if wt[j] > 0.0:
                    z = (g[j] - pair_cost(code, X, i, Y, j, C, transposed)) * inv
                    acc += math.exp(math.log(wt[j]) + z - top)
            log_r = fi - log_rho + top + math.log(acc)
            r = rho * math.exp(max(log_r, -700.0))
        dec += w[i] * log_r * log_r
        f[i] -= eps * log_r
        h[i] = r / rho
    stats[0] += dec


@njit(**_NJIT)
def sampled_c_transform(code, X, Y, C, transposed, g, J, eps, f):
    """Start of the annealing: ``f_i = -eps log mean_k exp((g_j - C_ij) / eps)`` over
    the sampled targets ``J[i // BLOCK, :]`` (a biased estimate of the c-transform, only used as
    the starting point of the unbiased steps), shifted by the largest term."""
    n = X.shape[0]
    K = J.shape[1]
    for i in range(n):
        top = -np.inf
        for k in range(K):
            j = J[i // BLOCK, k]
            top = max(top, (g[j] - pair_cost(code, X, i, Y, j, C, transposed)) / eps)
        s = 0.0
        for k in range(K):
            j = J[i // BLOCK, k]
            s += math.exp((g[j] - pair_cost(code, X, i, Y, j, C, transposed)) / eps - top)
        f[i] = -eps * (top + math.log(s / K))


@njit(**_NJIT)
def _row_mass(code, X, i, Y, C, b, g, u, inv, log_rho):
    """``log sum_j b_j sigmoid(u + (g_j - C_ij) / eps + log rho)`` and its derivative in u."""
    s = 0.0
    t = 0.0
    top = -np.inf  # log-domain fallback when every sigmoid underflows
    for j in range(Y.shape[0]):
        if b[j] > 0.0:
            z = u + (g[j] - pair_cost(code, X, i, Y, j, C, False)) * inv + log_rho
            sig = sigmoid(z)
            s += b[j] * sig
            t += b[j] * sig * (1.0 - sig)
            top = max(top, math.log(b[j]) + z)
    if s > 1e-250:
        return math.log(s), t / s
    # all pairs far below the threshold: sigmoid(z) = exp(z) to full precision
    acc = 0.0
    for j in range(Y.shape[0]):
        if b[j] > 0.0:
            z = u + (g[j] - pair_cost(code, X, i, Y, j, C, False)) * inv + log_rho
            acc += math.exp(math.log(b[j]) + z - top)
    return top + math.log(acc), 1.0


@njit(**_NJIT)
def relaxed_c_transform(code, X, Y, C, b, g, eps, rho, f):
    """``f_i``: the root of ``sum_j b_j sigmoid((f_i + g_j - C_ij) / eps + log rho) = rho``
    (row mass 1), the relaxed c-transform of the target potential at the points X.

    Newton's method on the log row mass, started at the exact c-transform
    ``-eps log sum_j b_j exp((g_j - C_ij) / eps)``, which is a lower bound of the root
    (``sigmoid(z + log rho) / rho <= exp(z)``), and safeguarded by bisection on a bracket.
    """
    inv = 1.0 / eps
    log_rho = math.log(rho)
    for i in range(X.shape[0]):
        top = -np.inf
        for j in range(Y.shape[0]):
            if b[j] > 0.0:
                top = max(
                    top, math.log(b[j]) + (g[j] - pair_cost(code, X, i, Y, j, C, False)) * inv
                )
        acc = 0.0
        for j in range(Y.shape[0]):
            if b[j] > 0.0:
                acc += math.exp(
                    math.log(b[j]) + (g[j] - pair_cost(code, X, i, Y, j, C, False)) * inv - top
                )
        lo = -(top + math.log(acc))  # root >= lo, in units of eps
        hi = np.inf
        u = lo
        for _ in range(100):
            phi, dphi = _row_mass(code, X, i, Y, C, b, g, u, inv, log_rho)
            phi -= log_rho
            if abs(phi) <= 1e-12:
                break
            if phi < 0.0:
                lo = u
            else:
                hi = u
            new = u - phi / dphi if dphi > 0.0 else np.nan
            if not (lo < new < hi):
                new = 0.5 * (lo + hi) if math.isfinite(hi) else lo + 2.0 * max(1.0, u - lo)
            if abs(new - u) <= 1e-14 * (abs(u) + 1.0):
                u = new
                break
            u = new
        f[i] = u * eps


@njit(**_NJIT)
def evaluate(code, X, Y, C, a, b, f, g, eps, rho, row, col):
    """One exact pass over all pairs at the potentials (f, g).

    Writes the row masses ``row_i = sum_j b_j s_ij`` and column masses
    ``col_j = sum_i a_i s_ij``; returns ``(<P, C>, sum P log(P / (a b)), sum_ij a_i b_j
    softplus(z_ij + log rho) / rho)`` for the plan ``P_ij = a_i b_j s_ij`` (the last term
    is the one of the relaxed dual).
    """
    inv = 1.0 / eps
    log_rho = math.log(rho)
    cost = 0.0
    soft = 0.0
    col[:] = 0.0
    for i in range(X.shape[0]):
        r = 0.0
        rc = 0.0
        rs = 0.0
        fi = f[i] * inv + log_rho
        for j in range(Y.shape[0]):
            c = pair_cost(code, X, i, Y, j, C, False)
            sig, sp = sigmoid_softplus(fi + (g[j] - c) * inv)
            bs = b[j] * sig / rho
            r += bs
            rc += bs * c
            rs += b[j] * sp / rho
            s = sig / rho
            col[j] += a[i] * s
        row[i] = r
        cost += a[i] * rc
        soft += a[i] * rs
    return cost, soft


@njit(**_NJIT)
def plan_rows(code, X, Y, C, a_rows, b, f_rows, g, eps, rho, out):
    """Rows of the plan, ``out[k, j] = a_k b_j s_kj``, for the points X (potentials
    ``f_rows``, weights ``a_rows``)."""
    inv = 1.0 / eps
    log_rho = math.log(rho)
    for k in range(X.shape[0]):
        fk = f_rows[k] * inv + log_rho
        for j in range(Y.shape[0]):
            z = fk + (g[j] - pair_cost(code, X, k, Y, j, C, False)) * inv
            out[k, j] = a_rows[k] * b[j] * sigmoid(z) / rho


@njit(**_NJIT)
def barycentric_map(code, X, Y, C, b, f, g, eps, rho, out):
    """``out_i = sum_j P_ij y_j / sum_j P_ij``: the barycentric projection of the rows of
    the plan at the points X (potentials ``f``) onto the target points Y."""
    inv = 1.0 / eps
    log_rho = math.log(rho)
    d = Y.shape[1]
    for i in range(X.shape[0]):
        fi = f[i] * inv + log_rho
        total = 0.0
        for k in range(d):
            out[i, k] = 0.0
        for j in range(Y.shape[0]):
            w = b[j] * sigmoid(fi + (g[j] - pair_cost(code, X, i, Y, j, C, False)) * inv)
            total += w
            for k in range(d):
                out[i, k] += w * Y[j, k]
        for k in range(d):
            out[i, k] /= total


@njit(**_NJIT)
def support_tops(code, X, Y, C, f, g, eps, row_top, col_top):
    """The largest exponent ``z_ij = (f_i + g_j - C_ij) / eps`` of each row and column."""
    inv = 1.0 / eps
    col_top[:] = -np.inf
    for i in range(X.shape[0]):
        top = -np.inf
        for j in range(Y.shape[0]):
            z = (f[i] + g[j] - pair_cost(code, X, i, Y, j, C, False)) * inv
            top = max(top, z)
            col_top[j] = max(col_top[j], z)
        row_top[i] = top


@njit(inline="always", **_NJIT)
def _kept(c, i, j, f, g, row_top, col_top, inv, cut):
    """Whether the pair (i, j) of cost ``c`` is in the support at the potentials (f, g):
    its exponent above ``-cut``, or within ``cut`` of the largest exponent of its row or
    of its column (so that a row's or a column's largest pair is always kept)."""
    return (f[i] + g[j] - c) * inv > min(0.0, row_top[i], col_top[j]) - cut


@njit(**_NJIT)
def support_counts(code, X, Y, C, f, g, tops, f2, g2, tops2, eps, cut, counts):
    """``counts[i]``: the pairs of row ``i`` kept by :func:`_kept` at (f, g) or at
    (f2, g2), ``tops`` and ``tops2`` their rows' and columns' largest exponents."""
    inv = 1.0 / eps
    for i in range(X.shape[0]):
        k = 0
        for j in range(Y.shape[0]):
            c = pair_cost(code, X, i, Y, j, C, False)
            if _kept(c, i, j, f, g, tops[0], tops[1], inv, cut) or _kept(
                c, i, j, f2, g2, tops2[0], tops2[1], inv, cut
            ):
                k += 1
        counts[i] = k


@njit(**_NJIT)
def support_fill(code, X, Y, C, f, g, tops, f2, g2, tops2, eps, cut, indptr, idx, cost):
    """The pairs counted by :func:`support_counts`, by rows (CSR: targets ``idx``, costs
    ``cost``)."""
    inv = 1.0 / eps
    for i in range(X.shape[0]):
        k = indptr[i]
        for j in range(Y.shape[0]):
            c = pair_cost(code, X, i, Y, j, C, False)
            if _kept(c, i, j, f, g, tops[0], tops[1], inv, cut) or _kept(
                c, i, j, f2, g2, tops2[0], tops2[1], inv, cut
            ):
                idx[k] = j
                cost[k] = c
                k += 1


@njit(**_NJIT)
def support_state(indptr, idx, cost, a, b, f, g, eps, rho, curv, row, col, hrow, hcol):
    """The relaxed dual on a support of pairs (CSR), at the potentials (f, g).

    Writes the row masses ``row_i = sum_j b_j s_ij``, the column masses
    ``col_j = sum_i a_i s_ij``, the curvatures ``curv_k = a_i b_j s_ij (1 - rho s_ij)`` of
    the pairs (minus ``eps`` times the dual's Hessian between ``f_i`` and ``g_j``) and their
    sums ``hrow_i = sum_j b_j s_ij (1 - rho s_ij)``, ``hcol_j = sum_i a_i s_ij (1 - rho
    s_ij)``; returns ``sum_ij a_i b_j softplus(z_ij + log rho) / rho`` over the support.
    """
    inv = 1.0 / eps
    log_rho = math.log(rho)
    col[:] = 0.0
    hcol[:] = 0.0
    soft = 0.0
    for i in range(indptr.shape[0] - 1):
        fi = f[i] * inv + log_rho
        r = 0.0
        h = 0.0
        rs = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            j = idx[k]
            sig, sp = sigmoid_softplus(fi + (g[j] - cost[k]) * inv)
            s = sig / rho
            c = s * (1.0 - sig)
            r += b[j] * s
            h += b[j] * c
            rs += b[j] * sp
            col[j] += a[i] * s
            hcol[j] += a[i] * c
            curv[k] = a[i] * b[j] * c
        row[i] = r
        hrow[i] = h
        soft += a[i] * rs / rho
    return soft


@njit(**_NJIT)
def support_product(indptr, idx, curv, xf, xg, out_f, out_g):
    """``out = P x`` for the symmetric off-diagonal block matrix ``[[0, P], [P^T, 0]]``
    of the pairs' curvatures ``P_ij = curv_k``: ``out_f = P xg``, ``out_g = P^T xf``, in
    one pass over the rows."""
    out_g[:] = 0.0
    for i in range(indptr.shape[0] - 1):
        s = 0.0
        xi = xf[i]
        for k in range(indptr[i], indptr[i + 1]):
            j = idx[k]
            s += curv[k] * xg[j]
            out_g[j] += curv[k] * xi
        out_f[i] = s
