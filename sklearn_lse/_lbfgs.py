"""Full-batch L-BFGS on the relaxed objective, eta eliminated exactly at every evaluation:
the simple reference solver (also for ``rho = 0``)."""

import numpy as np
from scipy.optimize import minimize

from ._newton import certificate
from ._objective import full_gradient, snapshot, standardised_gradient
from ._result import Log, SolverResult


def fit_lbfgs(prob, w, b, *, max_iter, tol, verbose):
    """L-BFGS-B (scipy) in the standardised coordinates, on the objective divided by its
    value at the start (so that scipy's tolerances, which are absolute below 1, are
    relative). It stops when an iteration lowers the objective by less than
    ``tol / 100`` relative; convergence is then decided by the duality gap of
    :func:`sklearn_lse._newton.certificate` (one more pass), so that a stop on a flat
    stretch of the objective is not mistaken for the optimum."""
    log = Log("lbfgs", verbose)
    start = snapshot(prob, w, b)
    if not np.isfinite(start.objective):
        raise ValueError("The objective is not finite at the starting point.")
    scale = max(abs(start.objective), prob.objective_floor())
    log.history.append(start.objective)
    last = {"eta": start.eta}

    def fun(u):
        w, b = prob.to_model(u)
        with np.errstate(over="ignore", invalid="ignore"):
            s = snapshot(prob, w, b, last["eta"])
            if not np.isfinite(s.objective):
                return np.inf, np.zeros_like(u)
            last["eta"] = s.eta
            grad = standardised_gradient(prob, full_gradient(prob, s))[:-1]
        return s.objective / scale, grad / scale

    def callback(intermediate_result):
        log.record(len(log.history), intermediate_result.fun * scale)

    u = prob.to_standard(start.w, start.b)
    n_iter = 0
    gap = np.inf
    # a stop short of the tolerance is often L-BFGS's curvature memory gone stale:
    # restarted (a few times, while the gap falls) it goes on
    for _ in range(4):
        res = minimize(
            fun,
            u,
            jac=True,
            method="L-BFGS-B",
            callback=callback,
            options={
                "maxiter": max_iter - n_iter,
                "maxfun": 2 * (max_iter - n_iter) + 20,
                "gtol": 0.0,
                "ftol": 1e-2 * tol,
                "maxcor": 20,
            },
        )
        n_iter += int(res.nit)
        w, b = prob.to_model(res.x)
        snap = snapshot(prob, w, b, last["eta"])
        new_gap = certificate(prob, w, b, snap.eta)
        u = res.x
        if new_gap <= tol or res.status == 1 or n_iter >= max_iter or not new_gap < 0.5 * gap:
            gap = min(gap, new_gap)
            break
        gap = new_gap
    converged = bool(gap <= tol)
    if res.status == 1 or n_iter >= max_iter:
        message = f"reached max_iter={max_iter} (duality gap {gap:.2g})"
    else:
        message = f"stopped ({res.message}); duality gap {gap:.2g}"
    log.stop(message)
    return SolverResult(snap, n_iter, converged, message, log.history, float(gap))
