"""Full-batch Newton on the relaxed objective with eta eliminated, with a certificate.

Three ideas make it fast where the robust objective is hard (small ``lam``, small ``rho``,
heavy tails), where plain Newton or L-BFGS crawl because the objective is nearly
piecewise linear (close to the CVaR of the largest losses):

* **Continuation in lam** (path following, the role of the barrier parameter of interior
  point methods): from a temperature at which the starting point is nearly optimal (the
  spread of its losses), lam is divided by 10 per stage, each stage solved loosely from
  the previous one's solution, the last one to ``tol``. The stages' solutions lie on a
  smooth path, and each stays within the region where Newton's steps are full.
* **Working sets of rows.** A sample whose loss is ``36 lam`` below the threshold has a
  weight below ``exp(-36) = 2e-16`` of its empirical one: it does not move the objective,
  its gradient or its curvature at any tolerance. Each stage iterates on the rows above
  that band (copied once; all of them while they are many), then one pass over all the
  data checks that no other row entered it (else the stage goes on with them). At small
  lam the band holds a few percent of the rows, so most iterations cost a fraction of a
  pass.
* **A certificate.** The Newton decrement estimates the suboptimality well only where the
  objective is nearly quadratic, which near a kink it is not. Convergence is instead
  decided by a duality gap: with the worst case ``q = p c`` of the current model fixed,
  the robust objective is at least the weighted-loss objective ``sum_i q_i l_i(theta) +
  penalty``, minus a term that does not depend on ``theta``, so the suboptimality is at
  most how far ``theta`` is from minimising that weighted objective. For the squared error
  that is exactly ``g^T H_q^-1 g / 2`` (``g`` the gradient, ``H_q`` the weighted loss's
  Hessian, one pass); for the other losses the same expression is the weighted problem's
  own Newton decrement, an estimate (accurate near its optimum, where it is used).

Each iteration costs about three passes over its rows (the gradient and Hessian in one,
the trial predictions, the losses); the line search along the Newton direction reuses the
direction's predictions. Everything that runs per sample is in :mod:`sklearn_lse._kernels`.
"""

import math

import numpy as np

from ._kernels import (
    HUBER,
    MULTINOMIAL,
    SQUARED_ERROR,
    centred_eta,
    curvature_matrix,
    pointwise_losses,
    relaxation_terms,
    relaxed_value,
    step_losses,
)
from ._objective import Snapshot
from ._result import Log, SolverResult

# rows whose loss is more than _KEEP lam below the threshold leave the working set (the
# band doubles when it is too narrow for a step); a step may not bring a row outside it
# within _ENTER lam of the threshold (its weight would reach exp(-_ENTER) = 1.7e-15)
_KEEP = 40.0
_ENTER = 34.0
# a working set is copied when it has at most this share of the rows
_SUBSET_SHARE = 0.5
# the Hessian's pass goes over chunks of this size, which stay in cache between the
# chunk's products
_CHUNK_BYTES = 2**19
# continuation: lam divided by this per stage
_STAGE_FACTOR = 10.0
# the loose tolerance of an intermediate stage, in units of its lam
_STAGE_TOL = 0.25


class _Rows:
    """The rows a Newton stage iterates on (all of the problem's, or a working set) and
    the per-sample arrays of the current point: the predictions (n, K) and the losses
    centred at ``eta0`` (``eta = eta0 + eta1``). ``outside`` is the (constant) value of
    the terms of the rows left out of a working set."""

    def __init__(self, prob, w, b, eta_guess, *, F=None, losses=None, outside=0.0):
        self.prob = prob
        self.outside = outside
        self.F = prob.predictions(w, b) if F is None else F
        self.w, self.b = w, b
        if losses is None:
            losses = np.empty(prob.n_samples)
            step_losses(prob.loss, self.F, self.F, 0.0, prob.y, prob.eps, losses)
        self.eta0, self.centred, self.eta1 = centred_eta(
            losses, prob.p, prob.lam, prob.rho, eta_guess, overwrite=True
        )
        self.value = self._value(self.centred, self.eta0, self.eta1, w)

    @property
    def eta(self):
        return self.eta0 + self.eta1

    def with_lam(self, prob):
        """The same point for the problem at another lam (eta solved again)."""
        return _Rows(prob, self.w, self.b, self.eta, F=self.F, losses=self.centred + self.eta0)

    def subset(self, prob, rows, outside):
        """The working set ``rows`` (of ``prob``, the problem restricted to them)."""
        return _Rows(
            prob, self.w, self.b, self.eta, F=self.F[rows], outside=outside,
            losses=self.centred[rows] + self.eta0,
        )  # fmt: skip

    def weights_above(self, band):
        """The boolean mask of the rows whose loss is less than ``band * lam`` below the
        threshold."""
        return (self.centred - self.eta1) > -band * self.prob.lam

    def _value(self, centred, eta0, eta1, w):
        prob = self.prob
        risk = eta0 + relaxed_value(centred, prob.p, eta1, prob.lam, prob.rho)
        return risk + self.outside + prob.penalty(w)

    def derivatives(self):
        """Per chunk of rows: ``(Z, pc, c, k, dl, ddl)`` at the current point, with ``Z``
        the standardised rows and ``pc`` the empirical weights."""
        prob = self.prob
        for rows in prob.chunks(_CHUNK_BYTES):
            Z = prob.standardised(rows)
            F = self.F[rows]
            loss = np.empty(F.shape[0])
            dl, ddl = np.empty_like(F), np.empty_like(F)
            pointwise_losses(prob.loss, F, prob.y[rows], prob.eps, loss, dl, ddl)
            c, k = np.empty(F.shape[0]), np.empty(F.shape[0])
            relaxation_terms(self.centred[rows], 0.0, self.eta1, prob.lam, prob.rho, c, k)
            yield Z, prob.weights(rows), c, k, dl, ddl

    def try_step(self, dw, db):
        """The value at ``(w + dw, b + db)`` with eta solved again, and the trial's state
        for :meth:`adopt`: one pass over the rows for the new predictions."""
        prob = self.prob
        w, b = self.w + dw, self.b + db
        F = prob.predictions(w, b)
        trial = np.empty(prob.n_samples)
        step_losses(prob.loss, F, F, 0.0, prob.y, prob.eps, trial)
        with np.errstate(over="ignore", invalid="ignore"):  # a long trial may overflow
            eta0, centred, eta1 = centred_eta(trial, prob.p, prob.lam, prob.rho, self.eta, True)
            value = self._value(centred, eta0, eta1, w)
        return value, (w, b, eta0, centred, eta1, F)

    def adopt(self, state):
        self.w, self.b, self.eta0, self.centred, self.eta1, self.F = state
        self.value = self._value(self.centred, self.eta0, self.eta1, self.w)


def _row_norms(prob):
    """``|z_i|`` of the standardised rows ``z_i = (s * (x_i - mean), 1)``, by chunks."""
    norms = np.empty(prob.n_samples)
    for rows in prob.chunks():
        Z = prob.standardised(rows)
        norms[rows] = np.sqrt(np.einsum("ij,ij->i", Z, Z))
    return norms


class _Screen:
    """Guarantees that the rows left out of a working set stay negligible.

    A step that moves the standardised coefficients by ``D`` (Euclidean norm) moves the
    prediction of row i by at most ``|z_i| D``; its loss then stays below a bound that
    grows with ``D`` (``(|r_i| + |z_i| D)^2`` for the squared error and Huber, which it
    bounds; ``l_i + L |z_i| D`` for the losses with Lipschitz constant ``L``). A step is
    safe when every left-out row's bound stays ``_ENTER lam`` below the new threshold.
    The largest loss and norm give a bound for all the rows at once; only when it fails
    are the rows checked one by one."""

    def __init__(self, prob, losses, norms, u0):
        self.u0 = u0
        self.norms = norms
        if prob.loss == SQUARED_ERROR:
            self.base, self.quadratic = np.sqrt(np.maximum(losses, 0.0)), True
        elif prob.loss == HUBER:
            eps = prob.eps
            linear = losses > eps * eps
            r = np.where(linear, (losses + eps * eps) / (2 * eps), np.sqrt(np.maximum(losses, 0)))
            self.base, self.quadratic = r, True
        else:
            lipschitz = math.sqrt(2.0) if prob.loss == MULTINOMIAL else 1.0
            self.base, self.quadratic = losses, False
            self.norms = norms * lipschitz
        self.top_base = float(self.base.max()) if self.base.shape[0] else -np.inf
        self.top_norm = float(self.norms.max()) if self.norms.shape[0] else 0.0

    def _bound(self, base, norm, D):
        value = base + norm * D
        return value * value if self.quadratic else value

    def safe(self, u, eta, lam):
        if not self.base.shape[0]:
            return True
        D = float(np.linalg.norm(u - self.u0))
        limit = eta - _ENTER * lam
        if self._bound(self.top_base, self.top_norm, D) < limit:
            return True
        return float(np.max(self._bound(self.base, self.norms, D))) < limit


def _outside_value(prob, outside):
    """The terms of the rows left out of a working set: each is its limit
    ``(lam / rho) log1p(-rho)`` (``-lam`` for ``rho = 0``) to within ``exp(-_ENTER)``."""
    share = (
        float(np.sum(prob.weights(outside)))
        if prob.p.shape[0] > 1
        else (prob.p[0] * np.count_nonzero(outside))
    )
    limit = -prob.lam if prob.rho == 0 else prob.lam / prob.rho * math.log1p(-prob.rho)
    return share * limit


def _system(prob, rows, irls=False):
    """The gradient ``g`` in the standardised coordinates ``(V, b_c)`` (flattened) and the
    Hessian of the joint objective in ``(V, b_c, eta)`` at the current point of ``rows``,
    in one pass over chunks small enough to stay in cache between their products; with
    ``irls``, the Hessian of the weighted loss with the worst case fixed (no eta row),
    for the certificate."""
    d, K = prob.X.shape[1], prob.n_outputs
    D = (d + 1) * K
    g = np.zeros((d + 1, K))
    H = np.zeros((d + 1, K, d + 1, K))
    h = np.zeros((d + 1, K))
    h_eta = 0.0
    for Z, pc, c, k, dl, ddl in rows.derivatives():
        A = np.empty((Z.shape[0], K, K))
        curvature_matrix(prob.loss, pc, c, k, dl, ddl, irls, A)
        _add_gram(H, Z, A)
        pk = pc * k
        columns = np.concatenate(((pc * c)[:, None] * dl, pk[:, None] * dl), axis=1)
        both = Z.T @ columns
        g += both[:, :K]
        h -= both[:, K:]
        h_eta += float(np.sum(pk))
    s2 = prob.penalty_curvature
    if prob.alpha > 0:
        g[:d] += prob.alpha * (rows.w * prob.inv_scale[:, None])
    H[np.arange(d), :, np.arange(d), :] += s2[:, None, None] * np.eye(K)
    H = H.reshape(D, D)
    g = g.ravel()
    free = np.ones(D, dtype=bool)
    if not prob.fit_intercept:
        free[d * K :] = False
    if irls:
        return g, H, free
    M = np.empty((D + 1, D + 1))
    M[:D, :D] = H
    M[:D, D] = M[D, :D] = h.ravel()
    M[D, D] = h_eta
    return g, M, np.append(free, True)


def _add_gram(H, Z, A):
    """``H += sum_i (z_i z_i^T) kron A_i`` (H of shape (d + 1, K, d + 1, K))."""
    K = A.shape[1]
    if K == 1:
        H[:, 0, :, 0] += Z.T @ (Z * A[:, 0, 0][:, None])
        return
    step = int(max(64, 2**21 // (Z.shape[1] * K * K)))
    for start in range(0, Z.shape[0], step):
        Z_, A_ = Z[start : start + step], A[start : start + step]
        ZA = (Z_[:, :, None, None] * A_[:, None, :, :]).reshape(Z_.shape[0], -1)
        H += (Z_.T @ ZA).reshape(Z.shape[1], Z.shape[1], K, K).transpose(0, 2, 1, 3)


def _solve(M, rhs, free):
    """``M^+ rhs`` on the free coordinates, and ``rhs^T M^+ rhs``, by an
    eigendecomposition that drops the directions of rounding-size curvature (collinear
    columns, the softmax's shift of all classes' intercepts): a step along them would
    only amplify rounding."""
    index = np.flatnonzero(free)
    ev, V = np.linalg.eigh(M[np.ix_(index, index)])
    keep = ev > 1e-12 * max(float(ev.max()), 1e-300)
    ev, V = ev[keep], V[:, keep]
    coef = (V.T @ rhs[index]) / ev
    out = np.zeros_like(rhs)
    out[index] = V @ coef
    return out, float(np.sum(coef * (V.T @ rhs[index])))


class _Model:
    """The quadratic model of the objective in the standardised coefficients, with eta
    eliminated (the Schur complement of the joint Hessian), in its eigenbasis: the Newton
    step, the decrement, and the trust-region steps ``-(H + mu I)^-1 g`` of any length."""

    def __init__(self, g, M, free):
        D = g.shape[0]
        index = np.flatnonzero(free[:D])
        H = M[:D, :D][np.ix_(index, index)]
        h = M[:D, D][index]
        h_eta = M[D, D]
        if h_eta > 0:
            H = H - np.outer(h, h) / h_eta
        ev, V = np.linalg.eigh(H)
        keep = ev > 1e-12 * max(float(ev.max()), 1e-300)  # as in _solve
        self.ev, self.V = ev[keep], V[:, keep]
        self.index, self.D = index, D
        self.gv = self.V.T @ g[index]
        self.decrement = 0.5 * float(np.sum(self.gv**2 / self.ev))
        self.newton_length = float(np.sqrt(np.sum((self.gv / self.ev) ** 2)))

    def step(self, radius):
        """The minimiser of the model within ``radius`` (Euclidean), its length, the
        model's predicted decrease, and whether it is the Newton step."""
        newton = self.newton_length <= radius
        mu = 0.0
        if not newton:
            # ||s(mu)|| decreases from above radius at mu = 0 to below it at |g| / radius:
            # bisection in log mu
            hi = float(np.sqrt(np.sum(self.gv**2))) / radius
            lo = hi * 1e-30
            for _ in range(80):
                mu = math.sqrt(lo * hi)
                length = float(np.sqrt(np.sum((self.gv / (self.ev + mu)) ** 2)))
                if abs(length - radius) <= 1e-3 * radius:
                    break
                lo, hi = (mu, hi) if length > radius else (lo, mu)
        coef = -self.gv / (self.ev + mu)
        s = np.zeros(self.D)
        s[self.index] = self.V @ coef
        predicted = -float(np.sum(self.gv * coef) + 0.5 * np.sum(self.ev * coef**2))
        return s, float(np.sqrt(np.sum(coef**2))), predicted, newton


def certificate(prob, w, b, eta_guess=np.nan):
    """The duality gap of the model (W, b) relative to its objective (see the module
    docstring), from one pass over the data."""
    rows = _Rows(prob, w, b, eta_guess)
    return _certificate(prob, rows, max(abs(rows.value), prob.objective_floor()))


def polish(prob, w, b, eta_guess, *, tol, log, max_steps=3):
    """Certify a point found by another solver: up to ``max_steps`` Newton iterations at
    ``tol`` from it (each a pass for the Hessian and one for the trial), stopping as soon
    as the duality gap or a verified quadratic convergence certifies it (see
    :func:`_newton_iterations`). Where the duality gap is loose (a worst case on a few
    samples) this is the only certificate; near the optimum it also removes what is left
    of the other solver's error. Returns (snapshot, converged, suboptimality, message)."""
    rows = _Rows(prob, w, b, eta_guess)
    counter = [0]
    if not log.history:
        log.start(rows.value)
    done, suboptimality, message = _newton_iterations(
        rows, tol=tol, stage_tol=0.0, floor=prob.objective_floor(), final=True,
        max_iter=max_steps, counter=counter, log=log, radius=[np.inf],
    )  # fmt: skip
    snap = Snapshot(rows.w, rows.b, rows.value, rows.eta, rows.eta0, rows.eta1)
    if not done:
        message = (
            f"{max_steps} Newton steps from its point did not certify it (Newton decrement "
            f"{suboptimality:.2g})"
        )
    return snap, bool(done), suboptimality, message


def _certificate(prob, rows, scale):
    """The duality gap at the current point, relative to ``scale`` (see the module
    docstring): exact for the squared error, the weighted problem's Newton decrement
    otherwise."""
    g, H, free = _system(prob, rows, irls=True)
    _, gap = _solve(H, g, free)
    return 0.5 * gap / scale


def _newton_iterations(
    rows, *, tol, stage_tol, floor, final, max_iter, counter, log, radius, screen=None
):
    """Trust-region Newton iterations on ``rows`` until the decrement (an intermediate
    stage) or the suboptimality (the final stage) is below the tolerance.

    The steps minimise the quadratic model within a radius (``radius[0]``, in the
    standardised coefficients, carried from one iteration and stage to the next), which
    grows after steps that the objective confirms and shrinks after those it does not:
    where the objective is nearly piecewise linear, the model's flat directions would
    otherwise send a Newton step far beyond the region where it holds.

    In the final stage a small decrement is trusted as the suboptimality only where the
    quadratic model has just been verified: the last step was a full Newton step whose
    decrease matched the model's within a factor 2, and the decrement then fell at least
    fourfold (quadratic convergence). Otherwise the duality gap decides (see
    :func:`certificate`). Returns (done, suboptimality, message); ``done`` is False when
    the iterations ran out or no step lowers the objective short of the tolerance, and
    None when a step would leave the working set (``screen``; the step is not taken)."""
    prob = rows.prob
    d, K = prob.X.shape[1], prob.n_outputs
    previous = None  # (decrement, was a Newton step, predicted, actual decrease)

    def to_model(step):
        du = step.reshape(d + 1, K)
        dw = du[:d] * prob.inv_scale[:, None]
        return dw, du[d] - prob.mean @ dw if prob.fit_intercept else np.zeros(K)

    def finish(model, suboptimality, message):
        # the Newton step from a point this close to the optimum costs one evaluation and
        # leaves a suboptimality of about the square of the current one: take it
        step, _, predicted, newton = model.step(np.inf)
        if newton and predicted > 0 and counter[0] < max_iter:
            value, state = rows.try_step(*to_model(step))
            w_new, b_new, eta0, _, eta1, _ = state
            safe = screen is None or screen.safe(
                prob.to_standard(w_new, b_new), eta0 + eta1, prob.lam
            )
            if value <= rows.value and safe:
                rows.adopt(state)
                counter[0] += 1
                log.record(rows.value, "final Newton step", lam=prob.lam)
        return True, suboptimality, message

    while True:
        model = _Model(*_system(prob, rows))
        decrement = model.decrement
        # relative to the current objective (it falls by orders of magnitude on the way)
        scale = max(abs(rows.value), floor)
        if decrement <= max(tol * scale, stage_tol):
            if not final:
                return True, decrement / scale, "stage converged"
            if previous is not None and (
                previous[0] <= 1e-14 * scale
                or (
                    previous[1]
                    and 0.5 * previous[2] <= previous[3] <= 2.0 * previous[2]
                    and decrement <= 0.25 * previous[0]
                )
            ):
                return finish(model, decrement / scale, (
                    f"converged: Newton decrement {decrement / scale:.2g} <= tol, with "
                    "quadratic convergence"
                ))  # fmt: skip
            gap = _certificate(prob, rows, scale)
            if gap <= tol:
                return finish(model, gap, f"converged: duality gap {gap:.2g} <= tol")
        while True:
            if counter[0] >= max_iter:
                return False, decrement / scale, f"reached max_iter={max_iter}"
            step, length, predicted, newton = model.step(radius[0])
            value, state = rows.try_step(*to_model(step))
            actual = rows.value - value if np.isfinite(value) else -np.inf
            counter[0] += 1
            ratio = actual / predicted if predicted > 0 else -np.inf
            if ratio <= 1e-4:
                log.record(rows.value, "step rejected", lam=prob.lam, radius=length)
            if ratio < 0.25:
                radius[0] = 0.25 * length
            elif ratio > 0.75:
                radius[0] = max(radius[0], 2.0 * length)
            if ratio > 1e-4:
                break
            if predicted <= 1e-15 * scale or length <= 1e-14 * (1.0 + radius[0]):
                # no step lowers the objective: at the optimum to rounding, or the model
                # is wrong there (the duality gap tells which)
                if not final:
                    return True, decrement / scale, "stage: no decrease"
                gap = _certificate(prob, rows, scale)
                return gap <= tol, gap, f"no step lowers the objective (duality gap {gap:.2g})"
        if screen is not None:
            w_new, b_new, eta0, _, eta1, _ = state
            if not screen.safe(prob.to_standard(w_new, b_new), eta0 + eta1, prob.lam):
                log.record(rows.value, "step rejected: it leaves the working set")
                return None, decrement / scale, "the step leaves the working set"
        rows.adopt(state)
        previous = (decrement, newton, predicted, actual)
        log.record(rows.value, lam=prob.lam, step=length, decrement=decrement / scale)


def fit_newton(prob, w, b, *, max_iter, tol, verbose):
    """Newton's method with continuation in lam and working sets (see the module
    docstring). ``max_iter`` caps the Newton iterations over all stages; ``tol`` is the
    relative suboptimality that the certificate must reach. Returns a
    :class:`~sklearn_lse._result.SolverResult`."""
    log = Log("newton", verbose)
    n = prob.n_samples
    lam_target = prob.lam
    current = _Rows(prob, w, b, np.nan)
    if not math.isfinite(current.value):
        raise ValueError("The objective is not finite at the starting point.")
    log.start(current.value)
    floor = prob.objective_floor()
    losses = current.centred[prob.weights(slice(None)) > 0] + current.eta0
    lam = max(lam_target, float(np.max(losses) - np.min(losses)))
    counter = [0]
    radius = [np.inf]  # in the standardised coefficients, set by the first rejected step
    norms = None
    while True:
        final = lam <= lam_target
        stage = prob.with_lam(lam)
        if current.prob.lam != lam:
            current = current.with_lam(stage)
        band = _KEEP
        while True:
            inside = current.weights_above(band)
            active = np.flatnonzero(inside)
            subset = active.shape[0] <= _SUBSET_SHARE * n
            screen = None
            if subset:
                norms = _row_norms(prob) if norms is None else norms
                outside = ~inside
                screen = _Screen(
                    stage,
                    current.centred[outside] + current.eta0,
                    norms[outside],
                    prob.to_standard(current.w, current.b),
                )
                rows = current.subset(stage.subset(active), active, _outside_value(stage, outside))
            else:
                rows = current
            done, suboptimality, message = _newton_iterations(
                rows, tol=tol, stage_tol=0.0 if final else _STAGE_TOL * lam, floor=floor,
                final=final,
                max_iter=max_iter, counter=counter, log=log, radius=radius, screen=screen,
            )  # fmt: skip
            if not subset:
                current = rows
                break
            # the rows left out stayed negligible: the working set's solution is the
            # full data's (one pass for its objective and eta)
            current = _Rows(stage, rows.w, rows.b, rows.eta)
            if done is not None or counter[0] >= max_iter:
                break
            band *= 2.0  # the step would have left the working set: widen it
        if final or counter[0] >= max_iter:
            break
        lam = max(lam / _STAGE_FACTOR, lam_target)
    if not final:
        done = False
        message = f"reached max_iter={max_iter} before the last stage of the lam path"
    snap = Snapshot(current.w, current.b, current.value, current.eta, current.eta0, current.eta1)
    log.stop(message)
    return SolverResult(snap, log.n_iter, bool(done), message, log.history, suboptimality)
