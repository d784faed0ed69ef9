"""Solver drivers: full-batch L-BFGS and variance-reduced SGD on the KL-DRO objective.

Both minimise, over a linear model with K outputs ``f(x) = x W + b`` (W of shape (d, K);
K = 1 except for the multinomial loss),

    J(W, b) = R(losses(W, b)) + alpha/2 ||W||^2

where ``R`` is the relaxed KL-DRO risk of :mod:`sklearn_lse.risk` (the exact one when
``rho == 0``, L-BFGS only). The drivers are plain Python loops over epochs; the per-sample
work is in the Numba kernels of :mod:`sklearn_lse._kernels`.
"""

import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning

from . import risk
from ._kernels import (
    apply_arrow,
    csr_moments,
    curvature_matrix,
    curvature_terms,
    pointwise_losses,
    svrg_epoch,
    systematic_draws,
)

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


def rmatmul(X, G):
    """``X.T @ G`` accumulated in float64, without a float64 copy of a float32 X."""
    if X.dtype == np.float64 or sp.issparse(X):
        return np.asarray(X.T @ G)
    out = np.zeros((X.shape[1],) + np.shape(G)[1:])
    for start in range(0, X.shape[0], _CHUNK):
        rows = slice(start, start + _CHUNK)
        out += rows64(X, rows).T @ G[rows]
    return out


def row_weights(p, rows, n):
    """``p[rows]`` as an array, where a ``p`` of length 1 stands for uniform weights over
    ``n`` samples."""
    if p.shape[0] == 1:
        return np.full(len(range(n)[rows]) if isinstance(rows, slice) else len(rows), p[0])
    return p[rows]


def weighted_column_sums(X, p):
    """``X.T @ p`` in float64 (``p`` of length 1: uniform), without a copy of X."""
    if sp.issparse(X):
        return _sparse_moments(X, p)[0]
    return rmatmul(X, p) if p.shape[0] != 1 else p[0] * X.sum(axis=0, dtype=np.float64)


def _sparse_moments(X, p):
    """``X.T @ p`` and ``(X * X).T @ p`` of a CSR matrix in one pass over its non-zeros."""
    weights = row_weights(p, slice(None), X.shape[0])[:, None]
    moments = np.zeros((X.shape[1], 2))
    csr_moments(X.data, X.indices, X.indptr, weights, weights, moments)
    return moments[:, 0], moments[:, 1]


@dataclass
class Problem:
    """The data and hyperparameters of one fit.

    ``mean`` and ``inv_scale`` standardise the columns of X for the solvers (a diagonal
    preconditioner and a centred intercept); X itself is never copied.
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
    # sampling probabilities (see _CurvatureSums)
    curvature_totals: tuple = None

    @classmethod
    def build(cls, X, y, p, *, n_outputs, loss, eps, lam, rho, alpha, fit_intercept):
        """``p`` of length 1 stands for uniform weights (no per-sample array)."""
        if sp.issparse(X):  # E x^2 - (E x)^2, and columns within rounding of constant
            mean, second = _sparse_moments(X, p)
            if not fit_intercept:
                mean = np.zeros(X.shape[1])
            var = np.maximum(second - mean * mean, 0.0)
            var[var <= 1e-14 * second] = 0.0
            scale = np.sqrt(var)
            inv_scale = 1.0 / np.where(scale > 0.0, scale, 1.0)
            return cls(
                X, y, p, n_outputs, loss, eps, lam, rho, alpha, fit_intercept, mean, inv_scale
            )
        mean = weighted_column_sums(X, p) if fit_intercept else np.zeros(X.shape[1])
        # the variance about the mean in two passes (E x^2 - (E x)^2 would leave rounding
        # of order 1e-16 E x^2 for constant columns, mistaken for a tiny scale), by chunks
        # of rows so that no copy of X is made
        var = np.zeros(X.shape[1])
        for start in range(0, X.shape[0], _CHUNK):
            rows = slice(start, start + _CHUNK)
            centred = rows64(X, rows) - mean
            var += np.einsum("ij,ij,i->j", centred, centred, row_weights(p, rows, X.shape[0]))
        scale = np.sqrt(var)
        inv_scale = 1.0 / np.where(scale > 1e-12 * (1.0 + np.abs(mean)), scale, 1.0)
        return cls(X, y, p, n_outputs, loss, eps, lam, rho, alpha, fit_intercept, mean, inv_scale)

    def chunks(self):
        """Slices of contiguous rows that cover the data, for the passes that must not
        hold per-sample arrays: about 8 MB of float64 per chunk of dense rows (smaller
        chunks make BLAS slower), 8 MB of per-row arrays for sparse rows."""
        n, d = self.X.shape
        if sp.issparse(self.X):
            K = self.n_outputs
            size = int(max(4096, _SPARSE_CHUNK // (K * (K + 3))))
        else:
            size = int(min(32768, max(4096, 2**20 // max(d * self.n_outputs, 1))))
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def keeps_predictions(self):
        """Whether snapshots keep their predictions (n, K), for the gradient pass and the
        epoch kernel, which otherwise recompute them (one more product per row): where
        all the per-sample arrays (the losses of a snapshot, and the predictions of the
        current and of a candidate snapshot) stay within 20% of the memory of X."""
        n, K = self.X.shape[0], self.n_outputs
        return (2 * K + 1) * 8 * n <= 0.2 * _data_bytes(self.X)

    def weights(self, rows):
        """The empirical weights of the given rows (a slice or indices), as an array."""
        return row_weights(self.p, rows, self.X.shape[0])

    def weighted_sum(self, values):
        """``sum_i p_i values_i`` over all the samples."""
        if self.p.shape[0] == 1:
            return self.p[0] * np.sum(values, axis=0)
        return self.p @ values

    @property
    def dim(self):
        """Number of variables of the joint objective: (d + 1) K + 1 (W, b and eta)."""
        return (self.X.shape[1] + 1) * self.n_outputs + 1


@dataclass
class Snapshot:
    """A point (W, b), its objective and its optimal eta: one pass over the data.

    No per-sample array is kept: the passes that need the losses' derivatives (the
    gradient, the curvature, the stochastic epoch) recompute them from the model.
    """

    w: np.ndarray  # (d, K)
    b: np.ndarray  # (K,)
    objective: float
    eta: float
    # eta = eta0 + eta1, with eta0 subtracted from the losses first: the factors c_i are
    # then resolved to full precision for losses far larger than lam (see
    # risk.centred_eta); for rho = 0, eta0 is the exact risk and eta1 = 0
    eta0: float = 0.0
    eta1: float = 0.0
    # the predictions X W + b, where the problem keeps them (Problem.keeps_predictions)
    predictions: np.ndarray = None


@dataclass
class Gradient:
    """The full gradient at a snapshot: in W (with the penalty), in b, and ``sum_i p_i
    c_i`` (the mass of the worst-case weights; the eta component is ``1 - mass``)."""

    w: np.ndarray  # (d, K)
    b: np.ndarray  # (K,)
    mass: float


def _chunk(X, rows):
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


def predictions_and_losses(X, y, w, b, loss_code, eps):
    """Predictions ``X w + b`` (``w`` of shape (d, K), ``b`` (K,)), per-sample losses and
    their derivatives in the prediction (see
    :func:`~sklearn_lse._kernels.pointwise_losses`)."""
    pred = matmul(X, w) + b
    loss = np.empty(pred.shape[0])
    dl = np.empty_like(pred)
    ddl = np.empty_like(pred)
    pointwise_losses(loss_code, pred, y, eps, loss, dl, ddl)
    return pred, loss, dl, ddl


def losses_of(X, y, w, b, loss_code, eps):
    """Per-sample losses and their derivatives in the prediction."""
    return predictions_and_losses(X, y, w, b, loss_code, eps)[1:]


def _chunk_losses(prob, rows, w, b, predictions=None):
    """``(X rows, predictions, loss, dl, ddl)`` of one chunk of rows (a slice or sorted
    indices); the predictions are taken from ``predictions`` (n, K) when given."""
    Xc = _chunk(prob.X, rows)
    if predictions is None:
        return (Xc, *predictions_and_losses(Xc, prob.y[rows], w, b, prob.loss, prob.eps))
    pred = predictions[rows]
    loss = np.empty(pred.shape[0])
    dl, ddl = np.empty_like(pred), np.empty_like(pred)
    pointwise_losses(prob.loss, pred, prob.y[rows], prob.eps, loss, dl, ddl)
    return Xc, pred, loss, dl, ddl


def snapshot(prob, w, b, eta_guess=np.nan):
    """Objective and optimal eta at (w, b): one pass over the data for the losses (the
    only per-sample array, freed on return), then the 1-D solve for eta.

    ``eta_guess`` (the optimal eta at a nearby point) warm-starts the 1-D solve."""
    n = prob.X.shape[0]
    losses = np.empty(n)
    predictions = np.empty((n, prob.n_outputs)) if prob.keeps_predictions() else None
    for rows in prob.chunks():
        _, pred, losses[rows], _, _ = _chunk_losses(prob, rows, w, b)
        if predictions is not None:
            predictions[rows] = pred
    if prob.rho > 0:
        eta0, centred, eta1 = risk.centred_eta(
            losses, prob.p, prob.lam, prob.rho, eta_guess, overwrite=True
        )
        value = eta0 + risk.relaxed_value(centred, prob.p, eta1, prob.lam, prob.rho)
        value += prob.lam * risk.offset(prob.rho)
        eta = eta0 + eta1
    else:
        value = eta = eta0 = risk.exact_risk(losses, prob.p, prob.lam)
        eta1 = 0.0
    objective = value + 0.5 * prob.alpha * float(np.sum(w * w))
    return Snapshot(w, b, objective, eta, eta0, eta1, predictions)


def _factors(prob, snap, loss):
    """The gradient factors ``c_i`` of the losses at the snapshot's eta: the relaxed
    ``sigmoid(z_i) / rho``, or for ``rho = 0`` the exact worst-case density ratio
    ``exp((l_i - R) / lam)``."""
    c = np.empty_like(loss)
    if prob.rho > 0:
        risk.relaxed_factors(loss - snap.eta0, snap.eta1, prob.lam, prob.rho, c)
    else:  # l_i <= R + lam log(1 / p_i) where p_i > 0; the cap only guards p_i = 0
        np.exp(np.minimum((loss - snap.eta0) / prob.lam, 700.0), out=c)
    return c


def derivative_chunks(prob, snap, chunks=None):
    """Per chunk of rows (all rows by default): ``(rows, X rows, p rows, c, dl, ddl)`` at
    the snapshot, from its predictions when it kept them, else recomputed."""
    for rows in prob.chunks() if chunks is None else chunks:
        Xc, _, loss, dl, ddl = _chunk_losses(prob, rows, snap.w, snap.b, snap.predictions)
        yield rows, Xc, prob.weights(rows), _factors(prob, snap, loss), dl, ddl


def full_gradient(prob, snap, on_chunk=None):
    """The full gradient at a snapshot in one pass; ``on_chunk(rows, Xc, p, c, dl, ddl)``
    is called on every chunk, for the passes that gather more (the curvature)."""
    d, K = snap.w.shape
    grad_w = np.zeros((d, K))
    grad_b = np.zeros(K)
    mass = 0.0
    for rows, Xc, pc, c, dl, ddl in derivative_chunks(prob, snap):
        weighted = pc * c
        gd = weighted[:, None] * dl
        grad_w += np.asarray(Xc.T @ gd)
        grad_b += gd.sum(axis=0)
        mass += weighted.sum()
        if on_chunk is not None:
            on_chunk(rows, Xc, pc, c, dl, ddl)
    return Gradient(grad_w + prob.alpha * snap.w, grad_b, mass)


def standardised_gradient(prob, grad):
    """Full gradient of the objective in the standardised coordinates ``(V, b_c, eta)`` of
    the solvers, flattened row by row: ``V = W / inv_scale``, ``b_c = b + mean W``. The
    eta component is zero when eta is optimal (it always is at a snapshot)."""
    m, s = prob.mean[:, None], prob.inv_scale[:, None]
    g = np.empty(prob.dim)
    g[:-1] = np.vstack((s * (grad.w - m * grad.b), grad.b)).ravel()
    if not prob.fit_intercept:
        g[-1 - prob.n_outputs : -1] = 0.0
    g[-1] = 1.0 - grad.mass
    return g


def _to_model(prob, u):
    """From flattened standardised coordinates ``(V, b_c)`` to the model (W, b)."""
    u = u.reshape(-1, prob.n_outputs)
    w = u[:-1] * prob.inv_scale[:, None]
    b = u[-1] - prob.mean @ w if prob.fit_intercept else np.zeros(prob.n_outputs)
    return w, b


def _to_standard(prob, w, b):
    b_c = b + prob.mean @ w if prob.fit_intercept else np.zeros(prob.n_outputs)
    return np.vstack((w / prob.inv_scale[:, None], b_c)).ravel()


def fit_lbfgs(prob, w, b, *, max_iter, tol):
    """Full-batch L-BFGS on J(w, b), eta eliminated exactly at every evaluation.

    Runs in standardised coordinates. Returns (snapshot, n_iter, converged).
    """

    def fun(u):
        w, b = _to_model(prob, u)
        s = snapshot(prob, w, b)
        return s.objective, standardised_gradient(prob, full_gradient(prob, s))[:-1]

    scale = max(1.0, abs(snapshot(prob, w, b).objective))
    res = minimize(
        fun,
        _to_standard(prob, w, b),
        jac=True,
        method="L-BFGS-B",
        options={
            "maxiter": max_iter,
            "maxfun": 2 * max_iter + 20,
            "gtol": tol * scale,
            "ftol": 1e-15,
            "maxcor": 20,
        },
    )
    w, b = _to_model(prob, res.x)
    # status 2 is a line search that cannot improve at machine precision: converged
    return snapshot(prob, w, b), int(res.nit), res.status != 1


def _gram(prob, y_mean):
    """``X^T diag(p) X`` and ``X^T (p (y - y_mean))`` in one pass over chunks of rows (each
    chunk is read from cache for both products, and no copy of X is made)."""
    d = prob.X.shape[1]
    gram = np.zeros((d, d))
    moment = np.zeros(d)
    for start in range(0, prob.X.shape[0], _CHUNK):
        rows = slice(start, start + _CHUNK)
        Xc = rows64(prob.X, rows)
        p = prob.weights(rows)
        gram += Xc.T @ (Xc * p[:, None])
        moment += Xc.T @ (p * (prob.y[rows] - y_mean))
    return gram, moment


def least_squares_start(prob):
    """Weighted least squares with the model's L2 penalty: ``min mean (f - y)^2 + alpha/2
    |w|^2``, the ``lam -> inf`` limit of the objective and a cheap starting point (one pass
    for the Gram matrix, solved in standardised coordinates)."""
    X, m, s = prob.X, prob.mean, prob.inv_scale
    y_mean = prob.weighted_sum(prob.y) if prob.fit_intercept else 0.0
    if sp.issparse(X):  # no Gram matrix of many sparse features: the best constant
        return np.zeros((X.shape[1], 1)), np.array([y_mean])
    gram, moment = _gram(prob, y_mean)
    gram -= np.outer(m, m) if prob.fit_intercept else 0.0
    A = s[:, None] * gram * s[None, :] + np.diag(0.5 * prob.alpha * s * s)
    rhs = s * moment
    ev, V = np.linalg.eigh(A)
    keep = ev > 1e-12 * max(ev.max(), 1e-300)
    v = V[:, keep] @ ((V[:, keep].T @ rhs) / ev[keep])
    w = s * v
    return w[:, None], np.array([y_mean - m @ w if prob.fit_intercept else 0.0])


# Exact Hessians cost n ((d + 1) K)^2 flops and an eigendecomposition of size D; above this
# many flops, models with several outputs use the class-block-diagonal Hessian instead.
_EXACT_HESSIAN_FLOPS = 2e9


def exact_hessian_is_costly(prob):
    """Whether the exact Hessian (its sums over the rows, or over a sketch of them, and
    its eigendecomposition) would cost more than ``_EXACT_HESSIAN_FLOPS``."""
    n, dim = prob.X.shape[0], prob.dim
    rows = min(n, max(4 * n // (dim - 1), 100 * dim))
    return rows * (dim - 1) ** 2 + dim**3 > _EXACT_HESSIAN_FLOPS


def uses_arrow_hessian(prob):
    """Sparse data with many coefficients use the arrow (diagonal plus border) Hessian,
    which needs no dense rows; the others the exact one, or its class blocks."""
    many = prob.X.shape[1] * prob.n_outputs > 1024
    return sp.issparse(prob.X) and (many or exact_hessian_is_costly(prob))


class _CurvatureSums:
    """The Hessian of the objective at a snapshot, gathered chunk by chunk during the
    gradient pass (:meth:`add`), as sums over the raw rows ``(x_i, 1)`` mapped at the end
    to the standardised coordinates ``z_i = (s * (x_i - mean), 1)`` (no copy of X, no
    per-sample array).

    ``mode``: ``"exact"`` gathers the (W, b) block ``sum_i z_i z_i^T kron A_i`` of shape
    (d + 1, K, d + 1, K) (``A_i`` from :func:`~sklearn_lse._kernels.curvature_matrix`);
    ``"blocks"`` only its diagonal blocks per output, shape (K, d + 1, d + 1); ``"arrow"``
    (sparse data with many coefficients) the diagonal over the coefficients and the dense
    border over the intercepts and eta, from the squares of the non-zeros. The cross terms
    with eta ``h = sum_i z_i kron e_i`` and the eta-eta term are always exact. The (W, b)
    block of the first two modes is exact when it costs about as much as the stochastic
    pass (up to 32 coefficients); beyond, it is estimated without bias from about
    ``m = max(4 n / D, 100 (d + 2))`` rows (D the number of variables; ``100 (D + 1)``
    for the full block), each row kept with probability ``q_i = min(1, m pi_i)`` and
    weighted by ``1 / q_i``, where ``pi`` is the importance distribution of
    :meth:`sampling_probabilities` at the row level (its normalisers taken from the
    previous Hessian of the same problem, or from a pilot subsample): the preconditioner
    needs the curvature's shape, not every digit, and the heavily weighted rows that
    shape it are kept.
    """

    def __init__(self, prob, mode, block_size, rng):
        n, d = prob.X.shape
        K = prob.n_outputs
        self.prob, self.mode, self.block_size, self.rng = prob, mode, block_size, rng
        size = d + 2 if mode == "blocks" else prob.dim
        self.m = max(4 * n // (prob.dim - 1), 100 * size)
        self.sketch = mode != "arrow" and d * K > 32 and self.m < n
        n_blocks = (n + block_size - 1) // block_size
        self.block_sums = np.zeros((3, n_blocks))  # p, a and p k per block of rows
        self.cross = np.zeros((d + 1, K))
        if mode == "arrow":
            self.diag = np.zeros((d, K))
            self.arrow_cross = np.zeros((d, K, K + 1))
            self.border = np.zeros((K + 1, K + 1))
        else:
            self.raw = np.zeros((K, d + 1, d + 1) if mode == "blocks" else (d + 1, K, d + 1, K))

    def _terms(self, pc, c, dl, ddl):
        a, pk = np.empty(pc.shape[0]), np.empty(pc.shape[0])
        e = np.empty_like(dl)
        prob = self.prob
        curvature_terms(prob.loss, pc, c, dl, ddl, prob.lam, prob.rho, a, e, pk)
        return a, e, pk

    def start(self, snap):
        """Set the sketch's normalisers: the last Hessian's totals, or a pilot estimate
        from a strided subsample of rows."""
        if not self.sketch:
            return
        if self.prob.curvature_totals is None:
            n = self.prob.X.shape[0]
            rows = np.unique(np.linspace(0, n - 1, min(n, 4096)).astype(np.int64))
            _, _, pc, c, dl, ddl = next(derivative_chunks(self.prob, snap, [rows]))
            a, _, pk = self._terms(pc, c, dl, ddl)
            self.totals = (a.sum() * n / len(rows), pk.sum() * n / len(rows))
        else:
            self.totals = self.prob.curvature_totals

    def add(self, rows, Xc, pc, c, dl, ddl):
        """Add one chunk of rows (a slice) with its weights, factors and derivatives."""
        a, e, pk = self._terms(pc, c, dl, ddl)
        first, last = rows.start // self.block_size, (rows.stop - 1) // self.block_size
        edges = np.maximum(np.arange(first, last + 1) * self.block_size - rows.start, 0)
        self.block_sums[:, first : last + 1] += np.add.reduceat(
            np.vstack((pc, a, pk)), edges, axis=1
        )
        d = self.cross.shape[0] - 1
        self.cross[d] += e.sum(axis=0)
        if self.mode != "arrow":  # the arrow gathers its cross terms with the diagonal
            self.cross[:d] += np.asarray(Xc.T @ e)
        if self.mode == "arrow":
            self._add_arrow(Xc, self._matrices(pc, c, dl, ddl), e)
        elif not self.sketch:
            self._add_raw(Xc, self._matrices(pc, c, dl, ddl))
        else:
            pi = 0.5 * pc
            for values, total in zip((a, pk), self.totals, strict=True):
                if total > 0:
                    pi += 0.25 * values / total
            q = np.minimum(1.0, self.m * pi)
            keep = self.rng.random(q.shape[0]) < q
            A = self._matrices(pc[keep], c[keep], dl[keep], ddl[keep])
            A /= q[keep, None, None]
            self._add_raw(Xc[keep], A)

    def _matrices(self, pc, c, dl, ddl):
        prob = self.prob
        A = np.empty((pc.shape[0], prob.n_outputs, prob.n_outputs))
        curvature_matrix(prob.loss, pc, c, dl, ddl, prob.lam, prob.rho, A)
        return A

    def _add_raw(self, Xc, A):
        raw, K = self.raw, A.shape[1]
        Xc = Xc.toarray() if sp.issparse(Xc) else Xc
        d = Xc.shape[1]
        # sub-chunks keep the (rows, d, K, K) products within a few MB
        step = int(max(64, 2**21 // ((d + 1) * (1 if self.mode == "blocks" else K * K))))
        for start in range(0, Xc.shape[0], step):
            X_, A_ = Xc[start : start + step], A[start : start + step]
            if self.mode == "blocks":
                diag = np.einsum("ikk->ik", A_)  # (rows, K)
                for k in range(K):
                    raw[k, :d, :d] += X_.T @ (X_ * diag[:, k, None])
                xa = X_.T @ diag  # (d, K)
                raw[:, :d, d] += xa.T
                raw[:, d, :d] += xa.T
                raw[:, d, d] += diag.sum(axis=0)
            else:
                XA = (X_[:, :, None, None] * A_[:, None, :, :]).reshape(X_.shape[0], -1)
                raw[:d, :, :d, :] += (X_.T @ XA).reshape(d, d, K, K).transpose(0, 2, 1, 3)
                xa = (X_.T @ A_.reshape(-1, K * K)).reshape(d, K, K)
                raw[:d, :, d, :] += xa
                raw[d, :, :d, :] += xa.transpose(1, 0, 2)
                raw[d, :, d, :] += A_.sum(axis=0)

    def _add_arrow(self, Xc, A, e):
        """One pass over the chunk's non-zeros for the diagonal and the border's cross
        terms (in the standardised coordinates)."""
        m, s = self.prob.mean, self.prob.inv_scale
        d, K = self.diag.shape
        Adiag = np.einsum("ikk->ik", A)
        moments = np.zeros((d, K * K + 2 * K))
        V = np.column_stack((A.reshape(-1, K * K), e))
        csr_moments(Xc.data, Xc.indices, Xc.indptr, V, Adiag, moments)
        x_A = moments[:, : K * K].reshape(d, K, K)
        x_e, x2_a = moments[:, K * K : K * K + K], moments[:, K * K + K :]
        x_a = np.einsum("jkk->jk", x_A)
        sum_A = A.sum(axis=0)
        self.diag += s[:, None] ** 2 * (
            x2_a - 2 * m[:, None] * x_a + m[:, None] ** 2 * Adiag.sum(axis=0)
        )
        self.arrow_cross[:, :, :K] += s[:, None, None] * (x_A - m[:, None, None] * sum_A)
        self.arrow_cross[:, :, K] += s[:, None] * x_e
        self.border[:K, :K] += sum_A

    @property
    def sum_pk(self):
        return self.block_sums[2].sum()

    def sampling_probabilities(self):
        """Probabilities of the blocks of rows for the stochastic epoch: half the
        empirical distribution, half by curvature (``a`` and ``p k`` in equal parts), so
        that a drawn block's weighted curvature is bounded."""
        p, a, pk = self.block_sums
        pi = 0.5 * p
        for values in (a, pk):
            if values.sum() > 0:
                pi += 0.25 * values / values.sum()
        return pi / pi.sum()

    def finish(self):
        """The Hessian in the standardised coordinates: ``(H_w, h)`` for the exact and
        block modes, ``(diag, cross, border)`` flattened for the arrow. Records the
        totals that normalise the next sketch."""
        prob = self.prob
        prob.curvature_totals = (self.block_sums[1].sum(), self.block_sums[2].sum())
        d1, K = self.cross.shape
        d = d1 - 1
        s, m = prob.inv_scale, prob.mean
        if self.mode == "arrow":
            sum_e = self.cross[d]
            cross = self.arrow_cross
            cross[:, :, K] -= s[:, None] * m[:, None] * sum_e
            border = self.border
            border[:K, K] = border[K, :K] = sum_e
            border[K, K] = self.sum_pk
            diag = self.diag + prob.alpha * s[:, None] ** 2
            if not prob.fit_intercept:
                cross[:, :, :K] = 0.0
                border[:K, :] = border[:, :K] = 0.0
                border[np.arange(K), np.arange(K)] = 1.0
            return diag.ravel(), cross.reshape(d * K, K + 1), border
        # to the standardised rows z = M (x, 1), M = [[diag(s), -s * mean], [0, 1]]
        M = np.eye(d + 1)
        M[:d, :d] = np.diag(s)
        M[:d, d] = -s * m
        if self.mode == "blocks":
            H_w = np.einsum("ia,kab,jb->kij", M, self.raw, M, optimize=True)
            H_w[:, np.arange(d), np.arange(d)] += prob.alpha * s**2
        else:
            H_w = np.einsum("ia,akbl,jb->ikjl", M, self.raw, M, optimize=True)
            H_w[np.arange(d), :, np.arange(d), :] += prob.alpha * (
                s[:, None, None] ** 2 * np.eye(K)
            )
        return H_w, M @ self.cross


def fit_sgd(
    prob,
    w,
    b,
    *,
    rng,
    max_iter,
    tol,
    n_iter_no_change,
    batch_size,
    learning_rate,
    verbose,
):
    """Preconditioned variance-reduced SGD (SVRG) on the joint relaxed objective in
    (W, b, eta).

    Each epoch: a full pass gives the snapshot (objective, exact eta, factors, full gradient)
    and the Hessian there; then one kernel call runs ``n / batch_size`` mini-batch steps with
    unbiased control-variate gradients, preconditioned by the snapshot's inverse Hessian.
    Samples are drawn (by shuffled systematic resampling) half from the empirical
    distribution and half in proportion to their curvature (importance sampling), so that
    the heavily up-weighted samples are seen often and the variance stays bounded. An epoch
    that does not lower the objective (or overflows) is undone, the step reduced, and a
    damped full-batch Newton step taken from the snapshot instead (its gradient and Hessian
    are at hand), so that the pass is not wasted.

    Returns (snapshot, n_iter, converged).
    """
    X, K = prob.X, prob.n_outputs
    n = X.shape[0]
    hyper = np.array([prob.lam, prob.rho, prob.alpha, prob.eps, 0.0, 0.0])
    kappa_max = 1.0 if learning_rate == "auto" else float(learning_rate)
    kappa = 0.5 * kappa_max
    snap = snapshot(prob, w, b)
    if not np.isfinite(snap.objective):
        raise ValueError("The objective is not finite at the starting point.")
    damping = _MIN_DAMPING
    cur = _Newton(prob, snap, damping, rng, batch_size)
    blocks = np.empty((n + batch_size - 1) // batch_size, dtype=np.int64)
    stall = accepted = 0
    start_time = time.perf_counter()
    for epoch in range(1, max_iter + 1):
        systematic_draws(cur.block_pi, rng.random(), blocks)
        rng.shuffle(blocks)
        hyper[4:] = kappa, snap.eta
        w_snap = np.array(snap.w.T, order="C")  # the kernel's layout (K, d)
        w_t = w_snap.copy()
        state = np.append(snap.b + prob.mean @ snap.w, snap.eta)
        ok = svrg_epoch(
            *_kernel_data(X), prob.y, prob.p, cur.block_pi, blocks, batch_size, prob.loss,
            hyper, w_t, state, w_snap, snap.b, _kernel_predictions(snap), prob.mean,
            prob.inv_scale,
            *cur.kernel_preconditioner(), cur.mu,
        )  # fmt: skip
        w_new = w_t.T.copy()
        new = None
        if ok and np.all(np.isfinite(w_new)) and np.all(np.isfinite(state)):
            b_new = state[:K] - prob.mean @ w_new if prob.fit_intercept else snap.b
            with np.errstate(over="ignore", invalid="ignore"):
                new = snapshot(prob, w_new, b_new, state[K])  # a diverged trial may overflow
        better = False
        if new is not None and np.isfinite(new.objective):
            # below this, objective values differ by rounding only; then the Newton
            # decrement decides
            floor = 1e-14 * (abs(snap.objective) + abs(snap.eta) + prob.lam)
            if new.objective <= snap.objective + floor:
                new_cur = _Newton(prob, new, damping, rng, batch_size)
                better = new.objective <= snap.objective or new_cur.decrement < cur.decrement
        if not better:
            kappa *= 0.25
            damping = min(damping * 10.0, 1.0)
            cur.damp(damping)
            # the pass is not lost: take a damped Newton step from the snapshot instead,
            # with the gradient and Hessian that the snapshot already has
            new = _newton_line_search(prob, snap, cur)
            if new is None:
                if verbose:
                    print(f"epoch {epoch}: no decrease, step -> {kappa:.3g}")
                if kappa < 1e-12:
                    # No step improves on the snapshot: optimal to rounding if the
                    # decrement agrees, otherwise the data defeat the method (warn).
                    return snap, epoch, cur.decrement_undamped <= 100 * tol * abs(snap.objective)
                continue
            new_cur = _Newton(prob, new, damping, rng, batch_size)
        accepted += 1
        decrease = (snap.objective - new.objective) / max(abs(new.objective), 1e-300)
        snap, cur = new, new_cur
        kappa = min(kappa * 1.5, kappa_max)
        damping = max(damping / 3.0, _MIN_DAMPING)
        cur.damp(damping)
        stall = stall + 1 if decrease < tol else 0
        if verbose:
            print(
                f"epoch {epoch}: objective={snap.objective:.10g}, "
                f"newton decrement={cur.decrement_undamped:.3g}, step={kappa:.3g}"
                f"{'' if better else ' (full Newton step)'}, "
                f"elapsed={time.perf_counter() - start_time:.2f}s"
            )
        # converged: the decrement (about the suboptimality) is below tol and the epoch's
        # decrease agrees (near a kink the quadratic model can be too optimistic), or
        # progress has stalled while the decrement is below 100 tol
        scale = abs(snap.objective)
        if (cur.decrement_undamped <= tol * scale and decrease <= 100 * tol) or (
            stall >= n_iter_no_change and cur.decrement_undamped <= 100 * tol * scale
        ):
            return snap, epoch, True
    return snap, max_iter, False


def _kernel_predictions(snap):
    """The snapshot's predictions for the epoch kernel; an empty array (it recomputes
    them) where the snapshot did not keep them."""
    if snap.predictions is None:
        return np.zeros((0, snap.b.shape[0]))
    return snap.predictions


def _data_bytes(X):
    if sp.issparse(X):
        return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    return X.nbytes


def _kernel_data(X):
    """The data arguments of :func:`~sklearn_lse._kernels.svrg_epoch`: dense X and empty
    CSR arrays, or an empty X and the CSR arrays (the same types either way, so that one
    compiled kernel serves both)."""
    if sp.issparse(X):
        return np.zeros((0, 0), dtype=X.dtype), X.data, X.indices, X.indptr
    index = np.zeros(0, dtype=np.int32)
    return X, np.zeros(0, dtype=X.dtype), index, index


def _newton_line_search(prob, snap, cur, max_halvings=10):
    """Damped Newton step from the snapshot (eta re-solved exactly at every trial), with
    Armijo backtracking; returns the new snapshot, or None when no step decreases the
    objective."""
    step = -cur.apply(cur.g)
    slope = float(cur.g @ step)  # = -2 * decrement
    if not slope < 0:
        return None
    start = _to_standard(prob, snap.w, snap.b)
    t = 1.0
    for _ in range(max_halvings):
        w, b = _to_model(prob, start + t * step[:-1])
        with np.errstate(over="ignore", invalid="ignore"):
            trial = snapshot(prob, w, b, snap.eta)
        if trial.objective <= snap.objective + 1e-4 * t * slope:
            return trial
        t *= 0.5
    return None


def stochastic_newton_step(prob, w, b, eta, *, step, rng):
    """A stochastic Newton step on the joint relaxed objective in (W, b, eta), with the
    gradient of the block of data in ``prob`` (an unbiased estimate of the gradient of the
    objective of the whole stream: the relaxation is an average over samples, and eta is
    kept as given, not re-solved on the block), preconditioned by the block's Hessian and
    scaled by ``step``. With ``step`` the block's share of the weight seen so far, the
    iterates average the blocks' Newton steps and converge to the optimum of the stream,
    where each block's own optimum would not. Returns (W, b, eta)."""
    loss = losses_of(prob.X, prob.y, w, b, prob.loss, prob.eps)[0]
    # the block's gradient and Hessian at the given eta (eta1 = eta: no centring)
    newton = _Newton(prob, Snapshot(w, b, np.nan, eta, 0.0, eta), _MIN_DAMPING, rng)
    start = _to_standard(prob, w, b)
    before = _joint_value(prob, loss, eta, w)
    for _ in range(10):  # a step that raises even the block's objective overshoots
        move = step * newton.apply(newton.g)
        w_new, b_new = _to_model(prob, start - move[:-1])
        new_loss = losses_of(prob.X, prob.y, w_new, b_new, prob.loss, prob.eps)[0]
        if _joint_value(prob, new_loss, eta - move[-1], w_new) <= before:
            break
        step *= 0.5
    return w_new, b_new, eta - move[-1]


def _joint_value(prob, loss, eta, w):
    """The relaxed objective G(W, b, eta) + alpha/2 |W|^2 at a given eta."""
    value = risk.relaxed_value(loss, prob.p, eta, prob.lam, prob.rho)
    return value + 0.5 * prob.alpha * float(np.sum(w * w))


_MIN_DAMPING = 1e-8


class _Newton:
    """Second-order information at a snapshot, in the standardised coordinates
    ``(V, b_c, eta)``: the damped inverse Hessian ``P``, the full gradient ``g``, the same
    without the penalty ``mu`` (the kernel adds the penalty's exact gradient at every
    step), the sampling probabilities ``block_pi`` of blocks of ``block_size`` rows by
    curvature, and the decrement
    ``g^T P g / 2`` (about the suboptimality once the damping is small).

    Damping (Levenberg-Marquardt) adds ``damping * max eigenvalue`` to the Hessian: near a
    kink of the objective (small lam, losses far apart) the Hessian is nearly singular in
    directions where the objective is not quadratic at all, and undamped Newton-scaled
    steps overshoot there.

    The Hessian is exact (one eigendecomposition of size D) unless that costs more than
    ``_EXACT_HESSIAN_FLOPS``; then, for several outputs, its (W, b) block is replaced by
    its diagonal blocks, one per output (the coupling between the classes of the softmax
    is dropped), with the eta row and column kept exact and eliminated by a Schur
    complement: K eigendecompositions of size d + 1 instead of one of size (d + 1) K + 1.
    """

    def __init__(self, prob, snap, damping, rng, block_size=64):
        d, K = snap.w.shape
        dim = prob.dim
        self.arrow = uses_arrow_hessian(prob)
        self.blocks = not self.arrow and K > 1 and exact_hessian_is_costly(prob)
        mode = "arrow" if self.arrow else "blocks" if self.blocks else "exact"
        sums = _CurvatureSums(prob, mode, block_size, rng)
        sums.start(snap)
        grad = full_gradient(prob, snap, sums.add)
        self.block_pi = sums.sampling_probabilities()
        if self.arrow:
            self.diag, self.cross, self.border = sums.finish()
        elif self.blocks:
            H_w, h = sums.finish()
            self.h, self.h_eta = h.ravel(), sums.sum_pk
            self.ev, self.V = np.linalg.eigh(H_w)  # (K, d + 1) and (K, d + 1, d + 1)
            self.index = np.arange(d + 1)[None, :] * K + np.arange(K)[:, None]
        else:
            H_w, h = sums.finish()
            H = np.empty((dim, dim))
            H[:-1, :-1] = H_w.reshape(dim - 1, dim - 1)
            H[:-1, -1] = H[-1, :-1] = h.ravel()
            H[-1, -1] = sums.sum_pk
            self.ev, self.V = np.linalg.eigh(H)
        self.intercepts = None if prob.fit_intercept else slice(d * K, (d + 1) * K)
        self.g = standardised_gradient(prob, grad)
        self.mu = self.g.copy()
        self.mu[: d * K] -= prob.alpha * (prob.inv_scale[:, None] * snap.w).ravel()
        # the decrement that judges convergence is taken at the smallest damping: a damped
        # one shrinks with the steps, not with the distance to the optimum
        self.damp(_MIN_DAMPING)
        self.decrement_undamped = self.decrement
        self.damp(damping)

    def kernel_preconditioner(self):
        """``(P, dinv, C, Sinv)`` for the epoch kernel: the dense P and empty arrow
        arrays, or an empty P and the arrow."""
        empty = np.zeros((0, 0))
        if self.arrow:
            return empty, self.dinv, self.cross, self.Sinv
        return self.P, np.zeros(0), empty, empty

    def apply(self, g):
        """``P g``."""
        if self.arrow:
            out = np.empty_like(g)
            apply_arrow(self.dinv, self.cross, self.Sinv, g, out)
            return out
        return self.P @ g

    def damp(self, damping):
        """Set the damping of ``P`` (and the decrement that goes with it)."""
        if self.arrow:
            K = self.border.shape[0] - 1
            top = max(self.diag.max(), np.linalg.eigvalsh(self.border).max(), 1e-300)
            diag = np.maximum(self.diag, 1e-12 * top) + damping * top
            self.dinv = 1.0 / diag
            schur = self.border + damping * top * np.eye(K + 1)
            schur -= self.cross.T @ (self.cross * self.dinv[:, None])
            ev, V = np.linalg.eigh(schur)
            self.Sinv = (V / np.maximum(ev, 1e-12 * top)) @ V.T
            if self.intercepts is not None:
                self.Sinv[:K, :] = self.Sinv[:, :K] = 0.0
            self.decrement = 0.5 * float(self.g @ self.apply(self.g))
            return self
        top = max(self.ev.max(), self.h_eta if self.blocks else 0.0, 1e-300)
        ev = np.maximum(self.ev, 1e-12 * top) + damping * top
        if self.blocks:
            dim = self.h.shape[0] + 1
            self.P = np.zeros((dim, dim))
            for k, index in enumerate(self.index):
                self.P[np.ix_(index, index)] = (self.V[k] / ev[k]) @ self.V[k].T
            # eta by its Schur complement (kept positive: the blocks only approximate)
            u = self.P[:-1, :-1] @ self.h
            diag = self.h_eta + damping * top
            schur = max(diag - self.h @ u, 1e-3 * diag)
            self.P[:-1, :-1] += np.outer(u, u) / schur
            self.P[:-1, -1] = self.P[-1, :-1] = -u / schur
            self.P[-1, -1] = 1.0 / schur
        else:
            self.P = (self.V / ev) @ self.V.T
        if self.intercepts is not None:
            self.P[self.intercepts, :] = self.P[:, self.intercepts] = 0.0
        self.decrement = 0.5 * float(self.g @ self.P @ self.g)
        return self


def warn_not_converged(solver, max_iter):
    warnings.warn(
        f"solver={solver!r} reached max_iter={max_iter} before the objective converged. "
        "Increase max_iter, or loosen tol.",
        ConvergenceWarning,
        stacklevel=3,
    )
