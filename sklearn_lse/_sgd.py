"""The stochastic solver: the paper's unbiased per-sample gradients of the relaxed
objective, variance-reduced (SVRG) and preconditioned by the Hessian at each epoch's
snapshot, in the Numba epoch kernel of :mod:`sklearn_lse._kernels` (``partial_fit`` is
in :mod:`sklearn_lse._stream`)."""

import time

import numpy as np
import scipy.sparse as sp

from ._curvature import MIN_DAMPING, Preconditioner, uses_arrow_hessian
from ._kernels import svrg_epoch, systematic_draws
from ._newton import polish
from ._objective import snapshot
from ._result import Log


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

    Convergence is decided as for the other solvers: when the Newton decrement and the
    epochs' progress say so, :func:`sklearn_lse._newton.polish` must certify the point
    (at most ten Newton steps from it), else the epochs go on. (With the arrow
    preconditioner of sparse data with many features there is no Hessian to certify
    with, and the Newton decrement's estimate decides.)

    Returns a :class:`~sklearn_lse._result.SolverResult`.
    """
    log = Log("sgd", verbose)
    X, K = prob.X, prob.n_outputs
    n = X.shape[0]
    hyper = np.array([prob.lam, prob.rho, prob.alpha, prob.eps, 0.0, 0.0])
    kappa_max = 1.0 if learning_rate == "auto" else float(learning_rate)
    kappa = 0.5 * kappa_max
    snap = snapshot(prob, w, b)
    if not np.isfinite(snap.objective):
        raise ValueError("The objective is not finite at the starting point.")
    log.start(snap.objective)
    floor = prob.objective_floor()
    arrow = uses_arrow_hessian(prob)
    damping = MIN_DAMPING
    cur = Preconditioner(prob, snap, damping, rng, batch_size)
    blocks = np.empty((n + batch_size - 1) // batch_size, dtype=np.int64)
    stall = accepted = 0
    start_time = time.perf_counter()
    for _ in range(max_iter):
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
            rounding = 1e-14 * (abs(snap.objective) + abs(snap.eta) + prob.lam)
            if new.objective <= snap.objective + rounding:
                new_cur = Preconditioner(prob, new, damping, rng, batch_size)
                better = new.objective <= snap.objective or new_cur.decrement < cur.decrement
        if not better:
            kappa *= 0.25
            damping = min(damping * 10.0, 1.0)
            cur.damp(damping)
            # the pass is not lost: take a damped Newton step from the snapshot instead,
            # with the gradient and Hessian that the snapshot already has
            new = _newton_line_search(prob, snap, cur)
            if new is None:
                log.record(snap.objective, "no decrease", step=kappa)
                if kappa < 1e-12:
                    # No step improves on the snapshot: optimal to rounding if the
                    # certificate agrees, otherwise the data defeat the method (warn).
                    polished, converged, suboptimality, message = polish(
                        prob, snap.w, snap.b, snap.eta, tol=tol, log=log
                    )
                    if not converged:
                        message = f"no step lowers the objective; {message}"
                    return log.result(polished, converged, message, suboptimality)
                continue
            new_cur = Preconditioner(prob, new, damping, rng, batch_size)
        accepted += 1
        decrease = (snap.objective - new.objective) / max(abs(new.objective), floor)
        snap, cur = new, new_cur
        kappa = min(kappa * 1.5, kappa_max)
        damping = max(damping / 3.0, MIN_DAMPING)
        cur.damp(damping)
        stall = stall + 1 if decrease < tol else 0
        log.record(
            snap.objective,
            decrement=cur.decrement_undamped / max(abs(snap.objective), floor),
            step=kappa,
            newton_step=float(not better),
            elapsed=time.perf_counter() - start_time,
        )
        # converged: the decrement (about the suboptimality) is below tol and the epoch's
        # decrease agrees (near a kink the quadratic model can be too optimistic), or
        # progress has stalled while the decrement is below 100 tol
        scale = max(abs(snap.objective), floor)
        if (cur.decrement_undamped <= tol * scale and decrease <= 100 * tol) or (
            stall >= n_iter_no_change and cur.decrement_undamped <= 100 * tol * scale
        ):
            if arrow:  # no Hessian to certify with: the decrement's estimate
                decrement = cur.decrement_undamped / scale
                message = f"converged: Newton decrement {decrement:.2g}"
                return log.result(snap, True, message, decrement)
            polished, converged, suboptimality, message = polish(
                prob, snap.w, snap.b, snap.eta, tol=tol, log=log
            )
            if converged:
                return log.result(polished, True, message, suboptimality)
            stall = 0
    return log.result(snap, False, f"reached max_iter={max_iter}")


def _kernel_predictions(snap):
    """The snapshot's predictions for the epoch kernel; an empty array (it recomputes
    them) where the snapshot did not keep them."""
    if snap.predictions is None:
        return np.zeros((0, snap.b.shape[0]))
    return snap.predictions


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
    start = prob.to_standard(snap.w, snap.b)
    t = 1.0
    for _ in range(max_halvings):
        w, b = prob.to_model(start + t * step[:-1])
        with np.errstate(over="ignore", invalid="ignore"):
            trial = snapshot(prob, w, b, snap.eta)
        if trial.objective <= snap.objective + 1e-4 * t * slope:
            return trial
        t *= 0.5
    return None
