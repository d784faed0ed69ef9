"""The problem of one fit and its data access: the data and hyperparameters, the
standardised coordinates the solvers work in, float64 access to float32 data without a
copy, the chunking of the passes over the data, and the starting points.

The solvers minimise, over a linear model with K outputs ``f(x) = x W + b`` (W of shape
(d, K); K = 1 except for the multinomial loss),

    J(W, b) = R(losses(W, b)) + alpha/2 ||W||^2

with ``R`` the relaxed KL-DRO risk of :mod:`sklearn_lse.risk` (the exact one for
``rho = 0``). They work in standardised coordinates ``(V, b_c)``: ``V = W / inv_scale``
(the columns of X centred at ``mean`` and scaled to unit variance) and
``b_c = b + mean W``, flattened row by row; X itself is never copied or modified.
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._kernels import LOG_LOSS, MULTINOMIAL, column_top, csr_moments, shifted_moments

_CHUNK = 8192  # rows per chunk in the passes that must not copy X
# sparse rows per chunk, divided by K (K + 3) for K outputs: the per-row arrays (about
# K (K + 3) numbers a row) are small next to the non-zeros, and every chunk costs products
# with results of the size of W
_SPARSE_CHUNK = 2**20


def rows64(X, rows):
    """Rows of X in float64: a view for float64 data, a chunk-sized copy for float32
    (dense rows of a sparse X)."""
    if sp.issparse(X):
        return X[rows].toarray().astype(np.float64, copy=False)
    return np.asarray(X[rows], dtype=np.float64)


def matmul(X, W):
    """``X @ W`` accumulated in float64, without a float64 copy of a float32 X."""
    if X.dtype == np.float64 or sp.issparse(X):
        return np.asarray(X @ W)
    out = np.empty((X.shape[0],) + np.shape(W)[1:])
    for start in range(0, X.shape[0], _CHUNK):
        out[start : start + _CHUNK] = rows64(X, slice(start, start + _CHUNK)) @ W
    return out


def row_weights(p, rows, n):
    """``p[rows]`` as an array, where a ``p`` of length 1 stands for uniform weights over
    ``n`` samples."""
    if p.shape[0] == 1:
        return np.full(len(range(n)[rows]) if isinstance(rows, slice) else len(rows), p[0])
    return p[rows]


def data_bytes(X):
    """The memory of the data of X (the non-zeros and their indices for CSR)."""
    if sp.issparse(X):
        return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    return X.nbytes


def chunk_of(X, rows):
    """Rows of X for the chunked passes: a view of float64 data, a float64 copy of a
    float32 chunk; for sparse data, a CSR matrix on views of the non-zeros of a slice of
    rows (scipy's row slicing would copy them), or a copy of the given rows."""
    if not sp.issparse(X):
        return np.asarray(X[rows], dtype=np.float64)
    if not isinstance(rows, slice):
        return X[rows]
    start, stop, _ = rows.indices(X.shape[0])
    a, b = X.indptr[start], X.indptr[stop]
    indptr = X.indptr[start : stop + 1] - a
    return sp.csr_matrix((X.data[a:b], X.indices[a:b], indptr), shape=(stop - start, X.shape[1]))


def _power_of_two_scales(top):
    """Powers of two of the size of ``top`` (1 where it is 0): dividing by them is exact
    and keeps squares of the data finite."""
    exponent = np.frexp(np.where(top > 0, top, 1.0))[1]
    return np.ldexp(1.0, exponent - 1)


# the non-zeros per block of the sparse column moments
_SPARSE_BLOCK = 2**20


def _column_moments(X, p, fit_intercept):
    """The weighted mean (zeros without an intercept) and standard deviation of the
    columns, overflow-free: each column is divided by a power of two of its largest
    absolute value first (so that data of 1e200 have finite squares), and the variance is
    taken about a value of the column, not zero (``E x^2 - (E x)^2`` would leave rounding
    of order 1e-16 E x^2 for constant columns, mistaken for a tiny scale): for dense data
    about one row, in the Numba kernels (two passes over X, no copy of it)."""
    n, d = X.shape
    if sp.issparse(X):
        # by blocks of rows of about _SPARSE_BLOCK non-zeros: no temporary of X's size
        bounds = np.searchsorted(X.indptr, np.arange(0, X.nnz, _SPARSE_BLOCK), "right") - 1
        bounds = np.unique(np.append(bounds, n))
        blocks = list(zip(bounds[:-1], bounds[1:], strict=True))
        top = np.zeros(d)
        for r0, r1 in blocks:
            a, b = X.indptr[r0], X.indptr[r1]
            np.maximum.at(top, X.indices[a:b], np.abs(X.data[a:b].astype(np.float64)))
        unit = _power_of_two_scales(top)
        weights = row_weights(p, slice(None), n)[:, None]
        moments = np.zeros((d, 2))
        for r0, r1 in blocks:
            a, b = X.indptr[r0], X.indptr[r1]
            data = X.data[a:b] / unit[X.indices[a:b]]
            indptr = X.indptr[r0 : r1 + 1] - a
            w = weights[r0:r1]
            csr_moments(data, X.indices[a:b], indptr, w, w, moments)
        mean, second = moments[:, 0], moments[:, 1]
        if not fit_intercept:
            mean = np.zeros(d)
        var = np.maximum(second - mean * mean, 0.0)
        var[var <= 1e-14 * second] = 0.0
        return mean * unit, np.sqrt(var) * unit, top
    # dense: about the row of largest weight (a constant column gives an exact zero; the
    # shift costs at most n times the relative precision in the variance, since that
    # row's own share of the variance bounds its distance from the mean)
    top = np.zeros(d)
    column_top(X, top)
    unit = _power_of_two_scales(top)
    inv_unit = 1.0 / unit  # exact: powers of two
    weights = np.asarray(p, dtype=np.float64)
    if fit_intercept:
        shift = np.asarray(X[int(np.argmax(weights)) if weights.shape[0] > 1 else 0], np.float64)
        shift = shift * inv_unit
    else:
        shift = np.zeros(d)
    sums = np.zeros((d, 2))
    shifted_moments(X, weights, inv_unit, shift, sums)
    total = float(weights[0]) * n if weights.shape[0] == 1 else float(np.sum(weights))
    first, second = sums[:, 0] / total, sums[:, 1] / total
    if fit_intercept:
        mean = shift + first
        var = np.maximum(second - first * first, 0.0)
    else:
        mean, var = np.zeros(d), second
    scale = np.sqrt(var)
    scale[scale <= 1e-12 * (1.0 + np.abs(mean))] = 0.0
    return mean * unit, scale * unit, top


@dataclass
class Problem:
    """The data and hyperparameters of one fit.

    ``mean`` and ``inv_scale`` standardise the columns of X for the solvers (a diagonal
    preconditioner and a centred intercept); X itself is never copied. ``p`` of length 1
    stands for uniform weights (no per-sample array).
    """

    X: np.ndarray
    y: np.ndarray  # targets; class indices (as floats) for the multinomial loss
    p: np.ndarray
    n_outputs: int
    loss: int
    eps: float
    lam: float
    rho: float
    alpha: float
    fit_intercept: bool
    mean: np.ndarray
    inv_scale: np.ndarray
    # (sum_i a_i, sum_i p_i k_i) at the last Hessian: the normalisers of the sketch's
    # sampling probabilities (see sklearn_lse._curvature)
    curvature_totals: tuple = None
    # whether sums over the raw rows may be mapped to the standardised coordinates
    raw_sums: bool = True

    @classmethod
    def build(cls, X, y, p, *, n_outputs, loss, eps, lam, rho, alpha, fit_intercept):
        mean, scale, top = _column_moments(X, p, fit_intercept)
        inv_scale = 1.0 / np.where(scale > 0.0, scale, 1.0)
        # sums over the raw rows, mapped to the standardised coordinates afterwards, are
        # safe where the squares of the data neither overflow nor underflow and the means
        # are within 1e4 standard deviations of zero (the map's rounding is then below 1e-8)
        sizes = top[top > 0]
        raw = (
            bool(np.all((sizes >= 1e-100) & (sizes <= 1e100)))
            and float(np.max(np.abs(mean) * inv_scale, initial=0.0)) <= 1e4
        )
        return cls(
            X, y, p, n_outputs, loss, eps, lam, rho, alpha, fit_intercept, mean, inv_scale,
            raw_sums=raw,
        )  # fmt: skip

    def with_lam(self, lam):
        """The same problem at another temperature."""
        return dataclasses.replace(self, lam=float(lam))

    def subset(self, rows):
        """The problem restricted to the given rows (sorted indices), in the same
        coordinates (the full data's ``mean`` and ``inv_scale``) and with the same
        weights (not renormalised): the terms of the other rows are left out."""
        X = self.X[rows]
        p = self.p if self.p.shape[0] == 1 else self.p[rows]
        return dataclasses.replace(self, X=X, y=self.y[rows], p=p, curvature_totals=None)

    def chunks(self, dense_bytes=2**23):
        """Slices of contiguous rows that cover the data, for the passes that must not
        hold per-sample arrays: about ``dense_bytes`` (8 MB: smaller chunks make BLAS
        slower) of float64 per chunk of dense rows, 8 MB of per-row arrays for sparse
        rows."""
        n, d = self.X.shape
        if sp.issparse(self.X):
            K = self.n_outputs
            size = int(max(4096, _SPARSE_CHUNK // (K * (K + 3))))
        else:
            rows = dense_bytes // (8 * max(d * self.n_outputs, 1))
            size = int(min(32768, max(512, rows)))
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def standardised(self, rows):
        """Dense rows ``(s * (x_i - mean), 1)`` of the standardised design (the intercept
        column last), in float64: the rows that the Hessian's and the Gram matrix's sums
        run over, finite for any finite data."""
        Xc = rows64(self.X, rows)
        Z = np.empty((Xc.shape[0], Xc.shape[1] + 1))
        np.subtract(Xc, self.mean, out=Z[:, :-1])
        Z[:, :-1] *= self.inv_scale
        Z[:, -1] = 1.0
        return Z

    def keeps_predictions(self):
        """Whether snapshots keep their predictions (n, K), for the gradient pass and the
        epoch kernel, which otherwise recompute them (one more product per row): where
        all the per-sample arrays (the losses of a snapshot, and the predictions of the
        current and of a candidate snapshot) stay within 20% of the memory of X."""
        n, K = self.X.shape[0], self.n_outputs
        return (2 * K + 1) * 8 * n <= 0.2 * data_bytes(self.X)

    def weights(self, rows):
        """The empirical weights of the given rows (a slice or indices), as an array."""
        return row_weights(self.p, rows, self.X.shape[0])

    def weighted_sum(self, values):
        """``sum_i p_i values_i`` over all the samples."""
        if self.p.shape[0] == 1:
            return self.p[0] * np.sum(values, axis=0)
        return self.p @ values

    def penalty(self, w):
        """``alpha / 2 * |W|^2`` (0 without a penalty, whatever the size of W; inf, without
        a warning, where it overflows)."""
        if self.alpha == 0:
            return 0.0
        with np.errstate(over="ignore"):
            return 0.5 * self.alpha * float(np.sum(np.square(w)))

    @property
    def penalty_curvature(self):
        """``alpha * inv_scale**2``: the penalty's curvature in the standardised
        coefficients (0 without a penalty; capped at 1e300, where it pins a coefficient
        of a column of tiny values to zero anyway)."""
        if self.alpha == 0:
            return np.zeros_like(self.inv_scale)
        with np.errstate(over="ignore"):
            return np.minimum(self.alpha * self.inv_scale**2, 1e300)

    def objective_floor(self):
        """The size below which objective values are rounding: ``1e-12`` times the mean
        loss of the best constant model (the weighted variance of the targets, or their
        mean square without an intercept, for regression; ``log K`` nats for K classes).
        Relative tolerances are taken relative to ``max(|objective|, this)``, so that a
        fit whose objective is near zero (an interpolating or separating model) still
        stops."""
        if self.loss in (LOG_LOSS, MULTINOMIAL):
            spread = math.log(max(self.n_outputs, 2))
        else:
            centre = self.weighted_sum(self.y) if self.fit_intercept else 0.0
            spread = float(self.weighted_sum((self.y - centre) ** 2))
            if not spread > 0:  # constant targets: the regressor normalises them to 1
                spread = 1.0
        return 1e-12 * spread

    @property
    def n_samples(self):
        return self.X.shape[0]

    @property
    def dim(self):
        """Number of variables of the joint objective: (d + 1) K + 1 (W, b and eta)."""
        return (self.X.shape[1] + 1) * self.n_outputs + 1

    def to_model(self, u):
        return to_model(self, u)

    def to_standard(self, w, b):
        return to_standard(self, w, b)

    def standard_sums(self, G):
        """Sums over the raw rows ``(x_i, 1)`` (along the first axis of ``G``, of length
        ``d + 1``) mapped in place to the standardised rows ``(s * (x_i - mean), 1)``;
        applied to a Gram matrix and to its transpose, the Gram matrix of the standardised
        rows. Returns ``G``."""
        d = self.mean.shape[0]
        G[:d] -= np.multiply.outer(self.mean, G[d])
        G[:d] *= self.inv_scale.reshape((d,) + (1,) * (G.ndim - 1))
        return G

    def predictions(self, w, b):
        """``X W + b`` of shape (n, K), accumulated in float64 (one new array)."""
        F = matmul(self.X, w)
        F += b
        return F

    def predictions_of(self, rows, w, b):
        """``X W + b`` of the given rows (a slice), in float64."""
        F = matmul(chunk_of(self.X, rows), w)
        F += b
        return F


def to_model(prob, u):
    """From flattened standardised coordinates ``(V, b_c)`` to the model (W, b), for any
    problem with ``mean``, ``inv_scale``, ``fit_intercept`` and ``n_outputs`` (in memory
    or distributed)."""
    u = np.asarray(u).reshape(-1, prob.n_outputs)
    w = u[:-1] * prob.inv_scale[:, None]
    b = u[-1] - prob.mean @ w if prob.fit_intercept else np.zeros(prob.n_outputs)
    return w, b


def to_standard(prob, w, b):
    """From the model (W, b) to flattened standardised coordinates ``(V, b_c)``."""
    b_c = b + prob.mean @ w if prob.fit_intercept else np.zeros(prob.n_outputs)
    return np.vstack((w / prob.inv_scale[:, None], b_c)).ravel()


def least_squares_start(prob, curvature=False):
    """Weighted least squares with the model's L2 penalty: ``min mean (f - y)^2 + alpha/2
    |w|^2``, the ``lam -> inf`` limit of the objective with the squared error and a cheap
    starting point: one pass for the Gram matrix of the standardised rows (finite for any
    finite data), solved by an eigendecomposition that drops directions of rounding size
    (collinear or constant columns). Sparse data with many columns start from the best
    constant.

    With ``curvature``, returns ``(w, b, H)``: ``H`` is the Hessian of that objective in
    the free standardised coordinates ``(V, b_c)`` (``b_c`` only with an intercept), or
    None for the best constant (which does not minimise it)."""
    X = prob.X
    d = X.shape[1]
    y_mean = prob.weighted_sum(prob.y) if prob.fit_intercept else 0.0
    if sp.issparse(X) and d > 1024:
        start = np.zeros((d, 1)), np.array([y_mean])
        return (*start, None) if curvature else start
    gram = np.zeros((d + 1, d + 1))
    moment = np.zeros(d + 1)
    raw = prob.raw_sums  # else over standardised copies of the chunks
    uniform = prob.p.shape[0] == 1
    for rows in prob.chunks():
        Z = rows64(X, rows) if raw else prob.standardised(rows)[:, :d]
        p = prob.weights(rows)
        B = Z if uniform else Z * np.sqrt(p)[:, None]  # B^T B: a symmetric product
        gram[:d, :d] += B.T @ B
        gram[:d, d] += p @ Z
        gram[d, d] += p.sum()
        moment[:d] += (p * prob.y[rows]) @ Z
        moment[d] += p @ prob.y[rows]
    if uniform:
        gram[:d, :d] *= prob.p[0]
    gram[d, :d] = gram[:d, d]
    if raw:
        prob.standard_sums(prob.standard_sums(gram).T)
        prob.standard_sums(moment)
    gram[:d, :d] += np.diag(0.5 * prob.penalty_curvature)
    if not prob.fit_intercept:
        gram, moment = gram[:d, :d], moment[:d]
    ev, V = np.linalg.eigh(gram)
    keep = ev > 1e-12 * max(ev.max(), 1e-300)
    u = V[:, keep] @ ((V[:, keep].T @ moment) / ev[keep])
    if not prob.fit_intercept:
        u = np.append(u, 0.0)
    return (*prob.to_model(u), 2.0 * gram) if curvature else prob.to_model(u)
