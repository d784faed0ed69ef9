"""Full-batch L-BFGS on the relaxed objective, eta eliminated exactly at every evaluation:
the simple reference solver (also for ``rho = 0``)."""

import numpy as np
from scipy.optimize import minimize

from ._newton import polish
from ._objective import full_gradient, snapshot, standardised_gradient
from ._result import Log


def fit_lbfgs(prob, w, b, *, max_iter, tol, verbose):
    """L-BFGS-B (scipy) in the standardised coordinates, on the objective divided by its
    value at the start (so that scipy's tolerances, which are absolute below 1, are
    relative). It stops when an iteration lowers the objective by less than
    ``tol / 100`` relative; convergence is then certified by
    :func:`sklearn_lse._newton.polish` (at most ten Newton iterations from L-BFGS's
    point, each certifying or not), so that a stop on a flat stretch of the objective is
    not mistaken for the optimum. ``n_iter`` counts both."""
    log = Log("lbfgs", verbose)
    start = snapshot(prob, w, b)
    if not np.isfinite(start.objective):
        raise ValueError("The objective is not finite at the starting point.")
    scale = max(abs(start.objective), prob.objective_floor())
    log.start(start.objective)
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
        log.record(intermediate_result.fun * scale)

    res = minimize(
        fun,
        prob.to_standard(start.w, start.b),
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={
            "maxiter": max_iter,
            "maxfun": 2 * max_iter + 20,
            "gtol": 0.0,
            "ftol": 1e-2 * tol,
            "maxcor": 20,
        },
    )
    w, b = prob.to_model(res.x)
    snap, converged, suboptimality, message = polish(prob, w, b, last["eta"], tol=tol, log=log)
    if not converged:
        reason = f"reached max_iter={max_iter}" if res.status == 1 else str(res.message)
        message = f"{reason}; {message}"
    return log.result(snap, converged, message, suboptimality)
