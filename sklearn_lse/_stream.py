"""Streams: ``partial_fit`` as an incremental Newton method on the objective of the whole
stream.

The objective of a stream of blocks ``B_1, B_2, ...`` (weights ``w_t``, the blocks' total
sample weights) is the weighted average of the blocks' relaxed objectives with one shared
threshold eta,

    J(W, b, eta) = sum_t w_t G_t(W, b, eta) / sum_t w_t,

a finite sum (every pass over the same blocks leaves its minimiser unchanged). Each block
is replaced by its second-order Taylor model ``q_t`` at the iterate it arrives at (its
value, gradient and Hessian in the joint variables, one pass over the block), and the next
iterate minimises the weighted average ``Q`` of all the models so far. ``Q`` is kept as
three running averages, ``A`` (the Hessians), ``beta`` (``H_t u_t - g_t``) and ``gamma``
(the constants), so that the state has the size of the Hessian whatever the length of the
stream: for quadratic blocks the iterate is exactly the minimiser of the data seen (the
recursive least-squares estimate); for the others the models of the blocks seen far from
the optimum carry a bias that later blocks dilute (their share of the weight falls), and
every further pass over the data lowers it again.

The curvature is accumulated across blocks, so a block whose Hessian is singular on its
own (a one-hot column that is constant within it, fewer rows than variables) adds what it
knows and leaves the other directions to the blocks that vary there: a direction that no
block has curvature in yet is not moved. The models are taken in fixed coordinates, the
first block's standardisation ``(s * (x - mean), 1)`` of the rows (columns constant in it
keep their own scale), and the Hessian is equilibrated by its diagonal before every solve,
so that the solve does not depend on how well the first block's scaling suits later ones
(Newton steps are affine invariant).

Safeguards: a block whose objective is not finite at the current model is refused; a step
after which the block's objective is not finite is halved until it is; a step that would
raise the objective of the blocks seen so far (their model ``Q``) by more than a factor of
``_REFUSE_FACTOR`` is refused. A refused block raises ValueError, and the estimator's
transaction leaves the model exactly as it was.
"""

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._kernels import curvature_matrix, pointwise_losses, relaxation_terms, relaxed_value
from ._newton import _STAGE_FACTOR, _STAGE_TOL
from ._problem import matmul, rows64

# a block that multiplies the model of the stream's objective by more than this is
# refused (a block in other units, or from another distribution)
_REFUSE_FACTOR = 100.0
# halvings of a step in the backtracking line search
_MAX_HALVINGS = 30
# Newton iterations on the first block, and on each later one before continuation in lam
# (lam divided by _STAGE_FACTOR per stage, each solved to a decrement of _STAGE_TOL lam)
# takes over; the relative decrement at which the stream's model is solved
_FIRST_ITER = 100
_BLOCK_ITER = 5
_TOL = 1e-10
# kept rows: those of the largest losses, as many as the capacity, which is _ACTIVE_FACTOR
# times the rows that carry the worst case at the cap 1 / rho (rho n of the n rows seen),
# within [_MIN_ROWS, _MAX_ROWS]
_ACTIVE_FACTOR = 3.0
_MIN_ROWS = 4096
_MAX_ROWS = 65536
# rows per chunk of the block's Hessian (the standardised rows are copied chunk by chunk)
_CHUNK_ROWS = 4096


@dataclass
class Stream:
    """The state of a stream of ``partial_fit`` calls (pickles with the estimator).

    ``u`` is the iterate in the stream's coordinates ``(V, b_c, eta)`` (flattened row by
    row, eta last): ``V = W / inv_scale``, ``b_c = b + mean W``. The rows of the hard
    part are kept, ``X``, ``y`` and their sample weights ``sw``; ``A``, ``beta`` and
    ``gamma`` define the quadratic model ``T(u) = gamma - beta^T u + u^T A u / 2`` of the
    sum of ``sw_i term_i`` over the other rows seen; ``weight`` is the total weight and
    ``rows`` the number of rows seen.
    """

    mean: np.ndarray
    inv_scale: np.ndarray
    n_outputs: int
    fit_intercept: bool
    u: np.ndarray
    A: np.ndarray
    beta: np.ndarray
    gamma: float
    X: object
    y: np.ndarray
    sw: np.ndarray
    weight: float = 0.0
    rows: int = 0
    n_iter: int = 0
    rng: object = None

    @classmethod
    def start(cls, prob, w, b, eta, rng):
        """A stream at the model (W, b, eta), in the coordinates of the block ``prob``
        (its standardisation), with no block seen yet."""
        D = prob.dim
        X = prob.X[:0].copy()
        stream = cls(
            prob.mean.copy(), prob.inv_scale.copy(), prob.n_outputs, prob.fit_intercept,
            np.zeros(D), np.zeros((D, D)), np.zeros(D), 0.0, X, prob.y[:0].copy(),
            np.zeros(0), rng=rng,
        )  # fmt: skip
        stream.u = stream.to_standard(w, b, eta)
        return stream

    def add_prior(self, prob, weight):
        """Take the current model (fitted on other data, which the stream continues
        from) as the point where the data it was fitted on, taken to be like the block
        ``prob`` with the total weight ``weight``, have their quadratic model."""
        w, b, eta = self.model()
        kept = dataclasses.replace(prob, p=prob.weights(slice(None)) * weight)
        value, g, H = block_terms(kept, self, w, b, eta, terms_only=True)
        self.A, self.beta = H, H @ self.u - g
        self.gamma = value - g @ self.u + 0.5 * self.u @ H @ self.u
        self.weight = float(weight)

    def to_standard(self, w, b, eta):
        b_c = b + self.mean @ w if self.fit_intercept else np.zeros(self.n_outputs)
        return np.append(np.vstack((w / self.inv_scale[:, None], b_c)).ravel(), eta)

    def model(self, u=None):
        """``(W, b, eta)`` at ``u`` (the current iterate by default)."""
        u = self.u if u is None else u
        K = self.n_outputs
        coef = u[:-1].reshape(-1, K)
        w = coef[:-1] * self.inv_scale[:, None]
        b = coef[-1] - self.mean @ w if self.fit_intercept else np.zeros(K)
        return w, b, float(u[-1])

    def free(self):
        """The coordinates that move (the intercepts are fixed without an intercept)."""
        free = np.ones(self.u.shape[0], dtype=bool)
        if not self.fit_intercept:
            free[-1 - self.n_outputs : -1] = False
        return free

    def _quadratic(self, u):
        return float(self.gamma - self.beta @ u + 0.5 * u @ self.A @ u)

    def objective(self, prob, u=None):
        """The model of the objective of the stream at ``u``: the kept rows exactly, the
        others by their quadratic model (for the problem ``prob`` of the kept rows)."""
        u = self.u if u is None else u
        w, b, eta = self.model(u)
        with np.errstate(over="ignore", invalid="ignore"):
            return block_value(prob, w, b, eta) + self._quadratic(u) / self.weight

    def _kept(self, prob):
        """The problem of the kept rows, weighted by their share of the stream."""
        return dataclasses.replace(prob, X=self.X, y=self.y, p=self.sw / self.weight)

    def update(self, prob, weight, step=1.0):
        """Take the block ``prob`` (total sample weight ``weight``) into the stream and
        minimise the stream's model from the current iterate (``step`` multiplies the
        first Newton step). Returns the stream's model of its objective at the new
        iterate. Raises ValueError, with the state unchanged, for a block that the
        safeguards refuse."""
        w, b, eta = self.model()
        with np.errstate(over="ignore", invalid="ignore"):
            value = block_value(prob, w, b, eta)
        if not np.isfinite(value):
            raise ValueError(
                "partial_fit refused this block: its objective is not finite at the current "
                "model (values far larger than those of the earlier blocks?). Scale the "
                "features and the target alike in every block."
            )
        past = self._kept(prob) if self.weight > 0 else None
        before = self.objective(past) if past is not None else np.nan
        past_weight = self.weight
        self.weight += weight
        self.rows += prob.X.shape[0]
        self.X = _stack(self.X, prob.X)
        self.y = np.concatenate((self.y, prob.y))
        self.sw = np.concatenate((self.sw, prob.weights(slice(None)) * weight))
        kept = self._kept(prob)
        first = self.n_iter == 0 and not np.any(self.A)
        self._minimise(kept, step, max_iter=_FIRST_ITER if first else _BLOCK_ITER)
        after = self.objective(kept)
        if past is not None:
            # the objective of the blocks seen before, at the new iterate
            w, b, eta = self.model()
            with np.errstate(over="ignore", invalid="ignore"):
                moved = block_value(past, w, b, eta) + self._quadratic(self.u) / past_weight
            scale = max(before, 1e6 * prob.objective_floor())
            if not moved <= _REFUSE_FACTOR * scale:
                raise ValueError(
                    "partial_fit refused this block: its update would raise the objective of "
                    f"the blocks seen so far from {before:.4g} to {moved:.4g} (more than "
                    f"{_REFUSE_FACTOR:g} times). Is it in the units of the earlier blocks, "
                    "from the same distribution, and shuffled?"
                )
        self._compact(kept)
        self.n_iter += 1
        return after

    def _minimise(self, kept, step, max_iter):
        """Minimise the stream's model from the current iterate: Newton's method (see
        :meth:`_newton`), and where it is slow (small lam makes the objective nearly
        piecewise linear), continuation in lam, as in :mod:`sklearn_lse._newton`: from the
        spread of the kept rows' losses, lam divided by 10 per stage, each stage solved
        loosely from the previous one's solution, the last one fully."""
        if self._newton(kept, step, max_iter, tol=_TOL):
            return
        w, b, _ = self.model()
        lam = kept.lam * _STAGE_FACTOR
        top = max(kept.lam, _loss_spread(kept, w, b))
        while lam * _STAGE_FACTOR < top:
            lam *= _STAGE_FACTOR
        while lam > kept.lam:
            self._newton(dataclasses.replace(kept, lam=lam), 1.0, max_iter, stage=_STAGE_TOL * lam)
            lam /= _STAGE_FACTOR
        self._newton(kept, 1.0, _FIRST_ITER, tol=_TOL)

    def _newton(self, kept, step, max_iter, tol=0.0, stage=0.0):
        """Newton's method with backtracking on the stream's model from the current
        iterate, with eta eliminated: solved exactly at every point (a 1-D monotone
        equation), the Newton step taken on the Schur complement of the Hessian (near a
        kink of the objective, which small lam makes nearly piecewise linear, joint steps
        in eta would be far too long)."""
        free = self.free()[:-1]
        self.u = self._with_best_eta(kept, self.u)
        for iteration in range(max_iter):
            w, b, eta = self.model()
            with np.errstate(over="ignore", invalid="ignore"):
                value, g, H = block_terms(kept, self, w, b, eta)
            value += self._quadratic(self.u) / self.weight
            g = g + (self.A @ self.u - self.beta) / self.weight
            H = H + self.A / self.weight
            h, h_eta = H[:-1, -1], H[-1, -1]
            S = H[:-1, :-1] - np.outer(h, h) / h_eta if h_eta > 0 else H[:-1, :-1]
            direction = -solve(S, g[:-1], free)
            slope = float(g[:-1] @ direction)
            scale = max(abs(value), 1e6 * kept.objective_floor())
            if -0.5 * slope <= max(tol * scale, stage) or not slope < -1e-14 * scale:
                return True
            t = float(step) if iteration == 0 else 1.0
            for _ in range(_MAX_HALVINGS):
                trial = self._with_best_eta(kept, np.append(self.u[:-1] + t * direction, eta))
                new = self.objective(kept, trial)
                if np.isfinite(new) and new <= value + 1e-4 * t * slope:
                    break
                t *= 0.5
            else:
                return True  # no step lowers the model: its optimum to rounding
            self.u = trial
        return False

    def _with_best_eta(self, kept, u):
        """``u`` with its eta replaced by the minimiser of the stream's model in eta: the
        root of ``1 - sum_i p_i c_i(eta) + (A u - beta)_eta / weight``, increasing in
        eta, by Newton's method safeguarded on a bracket."""
        w, b, eta = self.model(u)
        pred = matmul(kept.X, w) + b
        loss = np.empty(pred.shape[0])
        dl, ddl = np.empty_like(pred), np.empty_like(pred)
        pointwise_losses(kept.loss, pred, kept.y, kept.eps, loss, dl, ddl)
        p = kept.weights(slice(None))
        a = self.A[-1, -1] / self.weight
        r = (self.A[-1, :-1] @ u[:-1] - self.beta[-1]) / self.weight
        c, k = np.empty_like(loss), np.empty_like(loss)

        def slope(eta):
            relaxation_terms(loss, eta, 0.0, kept.lam, kept.rho, c, k)
            return 1.0 - float(p @ c) + a * eta + r, float(p @ k) + a

        lo, hi = -np.inf, np.inf
        width = kept.lam + float(np.ptp(loss)) if loss.shape[0] else kept.lam
        for _ in range(200):
            f, df = slope(eta)
            if abs(f) <= 1e-13:
                break
            if f > 0:
                hi = eta
            else:
                lo = eta
            new = eta - f / df if df > 0 else np.nan
            if not lo < new < hi:
                if np.isinf(lo):
                    new = hi - width
                    width *= 2.0
                elif np.isinf(hi):
                    new = lo + width
                    width *= 2.0
                else:
                    new = 0.5 * (lo + hi)
            if abs(new - eta) <= 1e-15 * (abs(eta) + kept.lam):
                eta = new
                break
            eta = new
        return np.append(u[:-1], eta)

    def _compact(self, kept):
        """Move the kept rows that are far below the threshold, and the lowest ones
        beyond the buffer's capacity, into the quadratic model at the current iterate."""
        w, b, eta = self.model()
        pred = matmul(self.X, w) + b
        loss = np.empty(pred.shape[0])
        dl, ddl = np.empty_like(pred), np.empty_like(pred)
        pointwise_losses(kept.loss, pred, self.y, kept.eps, loss, dl, ddl)
        excess = loss - eta
        capacity = int(min(_MAX_ROWS, max(_MIN_ROWS, _ACTIVE_FACTOR * kept.rho * self.rows)))
        if excess.shape[0] <= capacity:
            return
        out = excess < np.partition(excess, -capacity)[-capacity]
        leaving = dataclasses.replace(
            kept, X=self.X[np.flatnonzero(out)], y=self.y[out], p=self.sw[out]
        )
        value, g, H = block_terms(leaving, self, w, b, eta, terms_only=True)
        self.A = self.A + H
        self.beta = self.beta + H @ self.u - g
        self.gamma += value - g @ self.u + 0.5 * self.u @ H @ self.u
        stay = np.flatnonzero(~out)
        self.X, self.y, self.sw = self.X[stay], self.y[stay], self.sw[stay]


def _loss_spread(prob, w, b):
    pred = matmul(prob.X, w) + b
    loss, dl, ddl = np.empty(pred.shape[0]), np.empty_like(pred), np.empty_like(pred)
    pointwise_losses(prob.loss, pred, prob.y, prob.eps, loss, dl, ddl)
    return float(np.ptp(loss)) if loss.shape[0] else 0.0


def _stack(X, block):
    if sp.issparse(block):
        return sp.vstack((X, block), format="csr")
    return np.concatenate((X, np.asarray(block, dtype=np.float64)))


def solve(A, r, free):
    """``A^+ r`` on the free coordinates, after equilibrating ``A`` by its diagonal:
    directions of rounding-size curvature (no block has varied there yet, collinear
    columns, the softmax's common shift of the classes) are not moved."""
    index = np.flatnonzero(free)
    M = A[np.ix_(index, index)]
    diag = np.diag(M).copy()
    unit = np.sqrt(np.where(diag > 0, diag, 1.0))
    ev, V = np.linalg.eigh(M / np.outer(unit, unit))
    keep = ev > 1e-12 * max(float(ev.max()), 1e-300)
    coef = (V[:, keep].T @ (r[index] / unit)) / ev[keep]
    out = np.zeros_like(r)
    out[index] = (V[:, keep] @ coef) / unit
    return out


def _chunks(prob):
    n = prob.X.shape[0]
    return [slice(start, min(start + _CHUNK_ROWS, n)) for start in range(0, n, _CHUNK_ROWS)]


def _standardised(X, rows, stream):
    """Rows ``(s * (x - mean), 1)`` in the stream's coordinates."""
    Xc = X[rows].toarray() if sp.issparse(X) else rows64(X, rows)
    Z = np.empty((Xc.shape[0], Xc.shape[1] + 1))
    np.subtract(Xc, stream.mean, out=Z[:, :-1])
    Z[:, :-1] *= stream.inv_scale
    Z[:, -1] = 1.0
    return Z


def block_value(prob, w, b, eta):
    """The block's relaxed objective at ``(W, b)`` and the threshold ``eta`` (not solved
    on the block: the stream's), with the penalty."""
    pred = matmul(prob.X, w) + b
    loss, dl, ddl = np.empty(pred.shape[0]), np.empty_like(pred), np.empty_like(pred)
    pointwise_losses(prob.loss, pred, prob.y, prob.eps, loss, dl, ddl)
    return relaxed_value(loss, prob.p, eta, prob.lam, prob.rho) + prob.penalty(w)


def block_terms(prob, stream, w, b, eta, terms_only=False):
    """The block's relaxed objective at ``(W, b, eta)``, its gradient and its Hessian in
    the stream's coordinates ``(V, b_c, eta)``, in one pass over the block. With
    ``terms_only``, those of ``sum_i p_i term_i`` alone (without eta and the penalty)."""
    d, K = w.shape
    D = (d + 1) * K
    pred = matmul(prob.X, w) + b
    n = pred.shape[0]
    loss, dl, ddl = np.empty(n), np.empty_like(pred), np.empty_like(pred)
    pointwise_losses(prob.loss, pred, prob.y, prob.eps, loss, dl, ddl)
    value = relaxed_value(loss, prob.p, eta, prob.lam, prob.rho) + prob.penalty(w)
    c, k = np.empty(n), np.empty(n)
    relaxation_terms(loss, eta, 0.0, prob.lam, prob.rho, c, k)
    p = prob.weights(slice(None))
    grad = np.zeros((d + 1, K))
    cross = np.zeros((d + 1, K))
    H = np.zeros((d + 1, K, d + 1, K))
    A = np.empty((n, K, K))
    curvature_matrix(prob.loss, p, c, k, dl, ddl, False, A)
    for rows in _chunks(prob):
        Z = _standardised(prob.X, rows, stream)
        grad += Z.T @ ((p[rows] * c[rows])[:, None] * dl[rows])
        cross -= Z.T @ ((p[rows] * k[rows])[:, None] * dl[rows])
        A_ = A[rows]
        if K == 1:
            H[:, 0, :, 0] += Z.T @ (Z * A_[:, 0, 0][:, None])
        else:
            ZA = (Z[:, :, None, None] * A_[:, None, :, :]).reshape(Z.shape[0], -1)
            H += (Z.T @ ZA).reshape(d + 1, d + 1, K, K).transpose(0, 2, 1, 3)
    s = stream.inv_scale
    if prob.alpha > 0 and not terms_only:
        grad[:d] += prob.alpha * (s[:, None] * w)
        H[np.arange(d), :, np.arange(d), :] += prob.alpha * s[:, None, None] ** 2 * np.eye(K)
    full = np.empty((D + 1, D + 1))
    full[:D, :D] = H.reshape(D, D)
    full[:D, D] = full[D, :D] = cross.ravel()
    full[D, D] = float(p @ k)
    g = np.append(grad.ravel(), 1.0 - float(p @ c))
    if terms_only:
        value -= eta + prob.penalty(w)
        g[-1] -= 1.0
    return value, g, full


class SmallBlockWarning(UserWarning):
    """A block of a stream is too small for what the update needs from it."""


def warn_small_block(prob, *, first):
    """Warn about a block too small for what the update needs from it."""
    n, dim = prob.X.shape[0], prob.dim
    if first and n < 2 * dim:
        warnings.warn(
            f"The first block of the stream has {n} rows for {dim} variables: its solution, "
            "which the later blocks start from, is poorly determined. Blocks of at least "
            f"{max(100, 2 * dim)} rows work.",
            SmallBlockWarning,
            stacklevel=5,
        )
