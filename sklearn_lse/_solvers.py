"""Solver drivers: full-batch L-BFGS and variance-reduced SGD on the KL-DRO objective.

Both minimise, over a linear model ``f(x) = x . w + b``,

    J(w, b) = R(losses(w, b)) + alpha/2 ||w||^2

where ``R`` is the relaxed KL-DRO risk of :mod:`sklearn_lse.risk` (the exact one when
``rho == 0``, L-BFGS only). The drivers are plain Python loops over epochs; the per-sample
work is in the Numba kernels of :mod:`sklearn_lse._kernels`.
"""

import time
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning

from . import risk
from ._kernels import (
    block_probabilities,
    curvature_weights,
    pack_snapshot,
    pointwise_losses,
    svrg_epoch,
    systematic_draws,
)


@dataclass
class Problem:
    """The data and hyperparameters of one fit.

    ``mean`` and ``inv_scale`` standardise the columns of X for the solvers (a diagonal
    preconditioner and a centred intercept); X itself is never copied.
    """

    X: np.ndarray
    y: np.ndarray
    p: np.ndarray
    loss: int
    eps: float
    lam: float
    rho: float
    alpha: float
    fit_intercept: bool
    mean: np.ndarray
    inv_scale: np.ndarray

    @classmethod
    def build(cls, X, y, p, *, loss, eps, lam, rho, alpha, fit_intercept):
        second_moment = np.einsum("ij,ij,i->j", X, X, p)  # no temporary copy of X
        if fit_intercept:
            mean = X.T @ p
            var = np.maximum(second_moment - mean * mean, 0.0)
        else:
            mean = np.zeros(X.shape[1])
            var = second_moment
        scale = np.sqrt(var)
        inv_scale = np.where(scale > 1e-12 * (1.0 + np.abs(mean)), 1.0 / scale, 1.0)
        return cls(X, y, p, loss, eps, lam, rho, alpha, fit_intercept, mean, inv_scale)


@dataclass
class Snapshot:
    """Everything a full pass over the data gives at one point (w, b)."""

    w: np.ndarray
    b: float
    objective: float
    eta: float
    dl: np.ndarray  # derivative of each loss in the prediction
    ddl: np.ndarray  # second derivative
    c: np.ndarray  # gradient factors: worst-case weights are p * c
    grad_w: np.ndarray
    grad_b: float


def losses_of(X, y, w, b, loss_code, eps):
    """Per-sample losses and their first and second derivatives in the prediction."""
    pred = X @ w + b
    loss = np.empty_like(pred)
    dl = np.empty_like(pred)
    ddl = np.empty_like(pred)
    pointwise_losses(loss_code, pred, y, eps, loss, dl, ddl)
    return loss, dl, ddl


def snapshot(prob, w, b, eta_guess=np.nan):
    """Objective, optimal eta, worst-case factors and full gradient at (w, b): one pass.

    ``eta_guess`` (the optimal eta at a nearby point) warm-starts the 1-D solve."""
    loss, dl, ddl = losses_of(prob.X, prob.y, w, b, prob.loss, prob.eps)
    c = np.empty_like(loss)
    if prob.rho > 0:
        value, eta = risk.relaxed_risk(loss, prob.p, prob.lam, prob.rho, c, eta_guess)
    else:
        value = risk.exact_risk(loss, prob.p, prob.lam)
        risk.exact_weights(loss, prob.p, prob.lam, c)
        np.divide(c, prob.p, out=c, where=prob.p > 0)
        eta = value
    gd = prob.p * c * dl
    grad_w = prob.X.T @ gd + prob.alpha * w
    objective = value + 0.5 * prob.alpha * float(w @ w)
    return Snapshot(w, b, objective, eta, dl, ddl, c, grad_w, float(gd.sum()))


def standardised_gradient(prob, snap):
    """Full gradient of the objective at the snapshot in the standardised coordinates
    ``(v, b_c, eta)`` of the solvers: ``v = w / inv_scale``, ``b_c = b + mean . w``.
    The eta component is zero when eta is optimal (it always is at a snapshot)."""
    d = prob.X.shape[1]
    g = np.empty(d + 2)
    g[:d] = prob.inv_scale * (snap.grad_w - prob.mean * snap.grad_b)
    g[d] = snap.grad_b if prob.fit_intercept else 0.0
    g[d + 1] = 1.0 - prob.p @ snap.c
    return g


def _split(prob, u):
    """From standardised coordinates (v, b_c) to the model (w, b)."""
    w = u[:-1] * prob.inv_scale
    b = u[-1] - prob.mean @ w if prob.fit_intercept else 0.0
    return w, b


def _join(prob, w, b):
    return np.append(w / prob.inv_scale, b + prob.mean @ w if prob.fit_intercept else 0.0)


def fit_lbfgs(prob, w, b, *, max_iter, tol):
    """Full-batch L-BFGS on J(w, b), eta eliminated exactly at every evaluation.

    Runs in standardised coordinates. Returns (snapshot, n_iter, converged).
    """

    def fun(u):
        w, b = _split(prob, u)
        s = snapshot(prob, w, b)
        return s.objective, standardised_gradient(prob, s)[:-1]

    scale = max(1.0, abs(snapshot(prob, w, b).objective))
    res = minimize(
        fun,
        _join(prob, w, b),
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
    w, b = _split(prob, res.x)
    # status 2 is a line search that cannot improve at machine precision: converged
    return snapshot(prob, w, b), int(res.nit), res.status != 1


def _gram(X, a, vectors=(), *, gram=True, chunk=8192):
    """``X^T diag(a) X`` (when ``gram``) and ``X^T v`` for each of ``vectors``, in one pass
    over chunks of rows, so that no copy of X is made and each chunk is read from cache
    for all products. Returns ``(gram or None, [X^T v, ...])``."""
    d = X.shape[1]
    out = np.zeros((d, d)) if gram else None
    moments = np.zeros((d, len(vectors)))
    for start in range(0, X.shape[0], chunk):
        rows = slice(start, start + chunk)
        Xc = X[rows]
        if gram:
            out += Xc.T @ (Xc * a[rows, None])
        if vectors:
            moments += Xc.T @ np.column_stack([v[rows] for v in vectors])
    return out, list(moments.T)


def _sketched_gram(X, a, pi, rng, vectors=()):
    """``X^T diag(a) X`` and ``X^T v`` for ``v`` in ``vectors`` (exact): the Gram matrix exact for up to 32 features (it costs less than the stochastic
    pass), otherwise estimated without bias from ``m = max(4 n / d, 100 (d + 2))`` rows
    drawn with probabilities ``pi`` (weights ``a_i / (m pi_i)``), which costs about four
    passes instead of d: the preconditioner needs the curvature's shape, not every digit."""
    n, d = X.shape
    m = max(4 * n // max(d, 1), 100 * (d + 2))
    if d <= 32 or m >= n:
        return _gram(X, a, vectors)
    rows = np.empty(m, dtype=np.int64)
    systematic_draws(pi, rng.random(), rows)
    weights = a[rows] / (m * pi[rows])
    Xs = X[rows]
    return Xs.T @ (Xs * weights[:, None]), _gram(X, a, vectors, gram=False)[1]


def least_squares_start(prob):
    """Weighted least squares with the model's L2 penalty: ``min mean (f - y)^2 + alpha/2
    |w|^2``, the ``lam -> inf`` limit of the objective and a cheap starting point (one pass
    for the Gram matrix, solved in standardised coordinates)."""
    X, p, m, s = prob.X, prob.p, prob.mean, prob.inv_scale
    y_mean = p @ prob.y if prob.fit_intercept else 0.0
    gram, (moment,) = _gram(X, p, [p * (prob.y - y_mean)])
    gram -= np.outer(m, m) if prob.fit_intercept else 0.0
    A = s[:, None] * gram * s[None, :] + np.diag(0.5 * prob.alpha * s * s)
    rhs = s * moment
    ev, V = np.linalg.eigh(A)
    keep = ev > 1e-12 * max(ev.max(), 1e-300)
    v = V[:, keep] @ ((V[:, keep].T @ rhs) / ev[keep])
    w = s * v
    return w, (y_mean - m @ w if prob.fit_intercept else 0.0)


def _hessian(prob, a, e, sums, pi, rng):
    """Hessian of the objective at a snapshot, in the standardised coordinates
    ``(v, b_c, eta)`` with ``v = w / inv_scale`` and features centred at ``mean``, from the
    per-sample curvature coefficients of :func:`curvature_weights`.

    Its (damped) inverse preconditions the stochastic steps: the method is then affine
    invariant in the features, and the step that suits one problem suits them all.
    """
    X, m, s = prob.X, prob.mean, prob.inv_scale
    d = X.shape[1]
    sum_a, sum_e, sum_k = sums
    gram, (Xa, Xe) = _sketched_gram(X, a, pi, rng, (a, e))
    H = np.empty((d + 2, d + 2))
    H_vv = gram - np.outer(m, Xa) - np.outer(Xa, m) + sum_a * np.outer(m, m)
    H[:d, :d] = s[:, None] * H_vv * s[None, :] + np.diag(prob.alpha * s * s)
    H[:d, d] = H[d, :d] = s * (Xa - m * sum_a)
    H[:d, d + 1] = H[d + 1, :d] = s * (Xe - m * sum_e)
    H[d, d] = sum_a
    H[d, d + 1] = H[d + 1, d] = sum_e
    H[d + 1, d + 1] = sum_k
    if not prob.fit_intercept:
        H[d, :] = H[:, d] = 0.0
        H[d, d] = 1.0
    return H


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
    (w, b, eta).

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
    X, p = prob.X, prob.p
    n, d = X.shape
    hyper = np.array([prob.lam, prob.rho, prob.alpha, prob.eps, 0.0])
    kappa_max = 1.0 if learning_rate == "auto" else float(learning_rate)
    kappa = 0.5 * kappa_max
    snap = snapshot(prob, w, b)
    if not np.isfinite(snap.objective):
        raise ValueError("The objective is not finite at the starting point.")
    damping = _MIN_DAMPING
    cur = _Newton(prob, snap, damping, rng)
    n_blocks = (n + batch_size - 1) // batch_size
    blocks = np.empty(n_blocks, dtype=np.int64)
    block_pi = np.empty(n_blocks)
    aux = np.empty((n, 4))
    aux[:, 0] = prob.y
    stall = accepted = 0
    start_time = time.perf_counter()
    for epoch in range(1, max_iter + 1):
        block_probabilities(cur.pi, batch_size, block_pi)
        systematic_draws(block_pi, rng.random(), blocks)
        rng.shuffle(blocks)
        pack_snapshot(p, block_pi, batch_size, snap.c, snap.dl, aux)
        hyper[4] = kappa
        w_new = snap.w.copy()
        state = np.array([snap.b + prob.mean @ snap.w, snap.eta])
        ok = svrg_epoch(
            X, aux, blocks, batch_size, prob.loss, hyper, w_new, state,
            prob.mean, prob.inv_scale, cur.P, cur.mu,
        )  # fmt: skip
        new = None
        if ok and np.all(np.isfinite(w_new)) and np.isfinite(state[0]):
            b_new = state[0] - prob.mean @ w_new if prob.fit_intercept else 0.0
            with np.errstate(over="ignore", invalid="ignore"):
                new = snapshot(prob, w_new, b_new, state[1])  # a diverged trial may overflow
        better = False
        if new is not None and np.isfinite(new.objective):
            # below this, objective values differ by rounding only; then the Newton
            # decrement decides
            floor = 1e-14 * (abs(snap.objective) + abs(snap.eta) + prob.lam)
            if new.objective <= snap.objective + floor:
                new_cur = _Newton(prob, new, damping, rng)
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
            new_cur = _Newton(prob, new, damping, rng)
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


def _newton_line_search(prob, snap, cur, max_halvings=10):
    """Damped Newton step from the snapshot (eta re-solved exactly at every trial), with
    Armijo backtracking; returns the new snapshot, or None when no step decreases the
    objective."""
    d = prob.X.shape[1]
    step = -cur.P @ cur.g
    slope = float(cur.g @ step)  # = -2 * decrement
    if not slope < 0:
        return None
    b_c = snap.b + prob.mean @ snap.w
    t = 1.0
    for _ in range(max_halvings):
        w = snap.w + t * prob.inv_scale * step[:d]
        b = b_c + t * step[d] - prob.mean @ w if prob.fit_intercept else 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            trial = snapshot(prob, w, b, snap.eta)
        if trial.objective <= snap.objective + 1e-4 * t * slope:
            return trial
        t *= 0.5
    return None


_MIN_DAMPING = 1e-8


class _Newton:
    """Second-order information at a snapshot, in the standardised coordinates
    ``(v, b_c, eta)``: the damped inverse Hessian ``P``, the full gradient ``g``, the same
    without the penalty ``mu`` (the kernel adds the penalty's exact gradient at every
    step), the sampling probabilities ``pi`` by curvature, and the decrement
    ``g^T P g / 2`` (about the suboptimality once the damping is small).

    Damping (Levenberg-Marquardt) adds ``damping * max eigenvalue`` to the Hessian: near a
    kink of the objective (small lam, losses far apart) the Hessian is nearly singular in
    directions where the objective is not quadratic at all, and undamped Newton-scaled
    steps overshoot there.
    """

    def __init__(self, prob, snap, damping, rng):
        d = prob.X.shape[1]
        a, e, pk, self.pi = (np.empty_like(snap.c) for _ in range(4))
        sums = curvature_weights(
            prob.p, snap.c, snap.dl, snap.ddl, prob.lam, prob.rho, a, e, pk, self.pi
        )
        self.ev, self.V = np.linalg.eigh(_hessian(prob, a, e, sums, self.pi, rng))
        self.fit_intercept = prob.fit_intercept
        self.g = standardised_gradient(prob, snap)
        self.mu = self.g.copy()
        self.mu[:d] -= prob.alpha * prob.inv_scale * snap.w
        # the decrement that judges convergence is taken at the smallest damping: a damped
        # one shrinks with the steps, not with the distance to the optimum
        self.damp(_MIN_DAMPING)
        self.decrement_undamped = self.decrement
        self.damp(damping)

    def damp(self, damping):
        """Set the damping of ``P`` (and the decrement that goes with it)."""
        top = max(self.ev.max(), 1e-300)
        ev = np.maximum(self.ev, 1e-12 * top) + damping * top
        self.P = (self.V / ev) @ self.V.T
        if not self.fit_intercept:
            d = self.P.shape[0] - 2
            self.P[d, :] = self.P[:, d] = 0.0
        self.decrement = 0.5 * float(self.g @ self.P @ self.g)
        return self


def warn_not_converged(solver, max_iter):
    warnings.warn(
        f"solver={solver!r} reached max_iter={max_iter} before the objective converged. "
        "Increase max_iter, or loosen tol.",
        ConvergenceWarning,
        stacklevel=3,
    )
