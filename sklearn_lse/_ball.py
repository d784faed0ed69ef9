"""The KL-ball form: the worst expected loss over the distributions within a divergence
``radius`` of the empirical one,

    min_theta max_{q : D(q || p) <= radius} sum_i q_i l_i(theta)
      = min_theta min_{lam > 0} lam radius + R_lam(theta),

with ``D`` the KL divergence (``rho = 0``) or the relaxed, density-capped one, and
``R_lam`` the (relaxed) KL-DRO risk. The temperature is solved for by a 1-D search over
``log lam``: the inner problem at each lam is the penalised fit (any solver), warm-started
from the previous solution; by the envelope theorem the derivative of the outer objective
``Phi(lam) = lam radius + min_theta R_lam(theta)`` is ``radius - D(q_lam)``, the divergence
of the worst case at the solution falling as lam grows, so the optimal lam is the root of
``D(q_lam) = radius``. The search first follows the lam path down from the spread of the
losses (as the Newton solver's continuation does) until the divergence exceeds the
radius, then narrows the bracket by the Illinois method on ``log D - log radius``.

Convergence: ``Phi`` is convex in lam, so ``Phi(lam) - Phi* <= |radius - D(lam)| *
|lam - lam*|``, bounded by the bracket's width; the search stops when that bound (plus
the inner fit's) is below ``tol`` relative.
"""

import math

import numpy as np

from ._kernels import centred_eta, relaxed_divergence, step_losses
from ._objective import Snapshot
from .risk import ball_temperature

# the lam at which the objective is least squares / logistic regression to rounding (the
# losses are normalised to about 1), and the smallest tried
LAM_MAX = _LAM_MAX = 1e300
_LAM_MIN_FACTOR = 1e-12
# the bracket's search aims this factor beyond the predicted root
_OVERSHOOT = 1.2


def divergence(prob, snap):
    """The divergence of the worst case of the solution ``snap`` from the empirical
    distribution, and the exact threshold (one pass for the losses)."""
    F = prob.predictions(snap.w, snap.b)
    losses = np.empty(prob.n_samples)
    step_losses(prob.loss, F, F, 0.0, prob.y, prob.eps, losses)
    eta0, centred, eta1 = centred_eta(losses, prob.p, prob.lam, prob.rho, snap.eta, True)
    return relaxed_divergence(centred, prob.p, eta1, prob.lam, prob.rho)


def fit_ball(prob, w, b, *, radius, inner, tol, log):
    """Minimise ``lam radius + R_lam(theta)`` over theta and lam > 0.

    ``inner(prob_at_lam, w, b, lam_start, eta)`` fits the penalised problem at
    ``prob_at_lam.lam`` from a warm start and returns a SolverResult. Returns
    ``(result, lam)``: the inner result at the optimal lam, its snapshot's objective
    replaced by the ball objective ``lam radius + R_lam`` (plus the penalty), and lam.
    (The caller keeps the inner fits' histories.)
    """
    if radius == 0.0:  # no budget: the empirical risk
        result = inner(prob.with_lam(_LAM_MAX), w, b, None, np.nan)
        return _with_ball_objective(result, _LAM_MAX, 0.0), _LAM_MAX

    def solve(lam, start):
        prob_lam = prob.with_lam(lam)
        w0, b0, lam0, eta0 = start
        result = inner(prob_lam, w0, b0, lam0, eta0)
        value = divergence(prob_lam, result.snapshot)
        log.note(f"lam={lam:.6g}: divergence {value:.6g} (radius {radius:.6g})")
        return result, value

    F = prob.predictions(w, b)
    losses = np.empty(prob.n_samples)
    step_losses(prob.loss, F, F, 0.0, prob.y, prob.eps, losses)
    supported = losses[prob.weights(slice(None)) > 0]
    # the losses' spread at the start (their mean when they are all equal, as for the
    # classifier's constant start) sets the first temperature, or better the one that the
    # radius gives the starting model's losses (the model moves little for small radii)
    size = max(float(np.max(np.abs(supported))), 1e8 * prob.objective_floor())
    spread = float(np.max(supported) - np.min(supported))
    lam = size
    if spread > 1e-3 * size:
        lam = ball_temperature(losses, prob.p, radius, prob.rho)
    lam, result = search_temperature(
        solve, lam, (w, b, None, np.nan), radius=radius, lam_min=_LAM_MIN_FACTOR * size,
        tol=tol, floor=prob.objective_floor(),
        objective_of=lambda result: result.snapshot.objective,
        start_of=lambda result, lam: (
            result.snapshot.w, result.snapshot.b, lam, result.snapshot.eta
        ),
    )  # fmt: skip
    return _with_ball_objective(result, lam, radius), lam


def search_temperature(solve, lam, start, *, radius, lam_min, tol, floor, objective_of, start_of):
    """The temperature of the ball: the root of ``D(lam) = radius``, from a first guess.

    ``solve(lam, start)`` fits the penalised problem at ``lam`` from ``start`` and returns
    (its result, the divergence of its worst case); ``objective_of(result)`` is the
    penalised objective and ``start_of(result, lam)`` the warm start it gives. lam moves
    until the divergence crosses the radius, by the slope of ``log D`` in ``log lam``
    (about -2 for small radii: ``D ~ var(loss) / (2 lam^2)``), then by the secant of the
    last two points, at most a factor of 100 at a time; then the Illinois method narrows
    the bracket until ``|radius - D| * width <= tol * |objective|`` (``Phi`` being convex,
    that bounds ``Phi(lam) - Phi*``). Returns (lam, result)."""
    result, value = solve(lam, start)
    start = start_of(result, lam)
    points = [(lam, value, result)]
    slope = -2.0
    while (value >= radius) == (points[0][1] >= radius):
        if value < radius:
            objective = objective_of(result) + lam * radius
            if lam <= lam_min or lam * radius <= tol * max(abs(objective), floor):
                # By convexity Phi(lam') >= Phi(lam) - (radius - D) (lam - lam') >=
                # Phi(lam) - lam radius for every smaller lam': within tol of the optimum
                # (the budget does not bind before lam -> 0, whose worst case is the
                # maximum loss, or the CVaR at level rho)
                return lam, result
        elif lam >= _LAM_MAX / 100:
            break
        if len(points) > 1:
            (l0, v0, _), (l1, v1, _) = points[-2], points[-1]
            if v0 > 0 and v1 > 0 and v0 != v1:
                slope = min((math.log(v1) - math.log(v0)) / (math.log(l1) - math.log(l0)), -0.1)
        target = math.log(radius) - math.log(max(value, 1e-300))
        factor = math.exp(min(max(target / slope, -math.log(100.0)), math.log(100.0)))
        # a little beyond the root, so that the next point brackets it
        factor = factor * _OVERSHOOT if factor > 1 else factor / _OVERSHOOT
        lam = min(max(lam * factor, lam_min), _LAM_MAX)
        result, value = solve(lam, start)
        start = start_of(result, lam)
        points.append((lam, value, result))
    above = [point for point in points if point[1] >= radius]
    below = [point for point in points if point[1] < radius]
    if not below:  # D >= radius up to lam -> inf: the budget holds the empirical risk
        return lam, result
    lo = max(above, key=lambda point: point[0])
    hi = min(below, key=lambda point: point[0])
    f_lo = math.log(lo[1]) - math.log(radius)
    f_hi = math.log(max(hi[1], 1e-300)) - math.log(radius)
    side = 0
    for _ in range(60):
        lam_lo, lam_hi = lo[0], hi[0]
        best = lo if abs(f_lo) < abs(f_hi) else hi
        bound = abs(radius - best[1]) * (lam_hi - lam_lo)
        objective = objective_of(best[2]) + best[0] * radius
        if bound <= tol * max(abs(objective), floor) or lam_hi / lam_lo < 1 + 1e-12:
            break
        t_lo, t_hi = math.log(lam_lo), math.log(lam_hi)
        t = t_lo + (t_hi - t_lo) * f_lo / (f_lo - f_hi) if f_lo != f_hi else 0.5 * (t_lo + t_hi)
        if not t_lo < t < t_hi:
            t = 0.5 * (t_lo + t_hi)
        lam = math.exp(t)
        near = lo if abs(t - t_lo) < abs(t - t_hi) else hi
        result, value = solve(lam, start_of(near[2], near[0]))
        f = math.log(max(value, 1e-300)) - math.log(radius)
        if f > 0:  # still above the radius: the new low end
            lo, f_lo = (lam, value, result), f
            if side == 1:
                f_hi *= 0.5
            side = 1
        else:
            hi, f_hi = (lam, value, result), f
            if side == -1:
                f_lo *= 0.5
            side = -1
    lam, _, result = lo if abs(f_lo) < abs(f_hi) else hi
    return lam, result


def _with_ball_objective(result, lam, radius):
    snap = result.snapshot
    objective = snap.objective + lam * radius
    result.snapshot = Snapshot(snap.w, snap.b, objective, snap.eta, snap.eta0, snap.eta1)
    return result
