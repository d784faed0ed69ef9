"""Full-batch Newton on the relaxed objective with eta eliminated, with a certificate.

Three ideas make it fast where the robust objective is hard (small ``lam``, small ``rho``,
heavy tails), where plain Newton or L-BFGS crawl because the objective is nearly
piecewise linear (close to the CVaR of the largest losses):

* **Continuation in lam** (path following, the role of the barrier parameter of interior
  point methods): from a temperature at which the starting point is nearly optimal (the
  spread of its losses), lam is divided by 10 per stage (further after easy stages:
  :func:`next_stage`), each stage solved loosely from the previous one's solution, the
  last one to ``tol``. The stages' solutions lie on a
  smooth path, and each stays within the region where Newton's steps are full. At a
  start that minimises the ERM objective (the least-squares start), the first stage's
  decrement follows from that objective's Hessian to leading order in ``1 / lam``
  (:func:`_erm_ratio`): that stage is decided without its passes.
* **Working sets of rows.** A sample whose loss is ``36 lam`` below the threshold has a
  weight below ``exp(-36) = 2e-16`` of its empirical one: it does not move the objective,
  its gradient or its curvature at any tolerance. Each stage iterates on the rows above
  that band and on those that a step of the working set's *reach* could bring into it
  (bounded row by row, :class:`_Screen`), copied once, all of them while they are many;
  a step that goes beyond what the screen of the other rows guarantees is checked
  against all the data (one pass), and the next working set reaches further (four
  times that step, and at least twice its previous reach; at a stage's start at most
  twice the trust radius, so that it shrinks as the steps do). A stage that starts on all
  the rows (its band held most of them) moves to a working set after the first step
  that leaves few enough of them in the band.
  At small lam the band holds a few percent of the rows, so most iterations cost a
  fraction of a pass.
* **A trust region with a line search.** Near a kink (a row crossing the threshold) the
  quadratic model holds only up to the crossing. Each step minimises the model within a
  radius (the Newton step where it is shorter) and is then shortened by a line search
  along it where the objective is not quadratic that far (the objective is convex along
  the line; each point costs the losses and the eta solve of the rows, not a product
  with X). The radius follows what the line search found: twice the accepted length
  after a shortened step, four times the radius after a confirmed step at it, so it
  never collapses by rejected trials nor grows back by doublings (a pure trust region
  crawled there, a pure line search along Newton steps zigzagged between two kinks).
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
the direction's predictions, the losses of each point of the line search). Everything
that runs per sample is in :mod:`sklearn_lse._kernels`.
"""

import math

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ._kernels import (
    HUBER,
    MULTINOMIAL,
    SQUARED_ERROR,
    centred_eta,
    curvature_matrix,
    curvature_terms,
    pointwise_losses,
    relaxation_terms,
    relaxed_value,
    standardised_norms,
    step_losses,
)
from ._objective import Snapshot
from ._problem import chunk_of
from ._result import Log

# rows whose loss is more than _KEEP lam below the threshold leave the working set (the
# band doubles when it is too narrow for a step); a step may not bring a row outside it
# within _ENTER lam of the threshold (its weight would reach exp(-_ENTER) = 1.7e-15)
_KEEP = 60.0
_ENTER = 34.0
# a working set is copied when it has at most this share of the rows
_SUBSET_SHARE = 0.2
# and rows that a step of the working set's reach could bring within the band are kept up
# to this share of the rows
_REACH_SHARE = 0.02
# the passes for the gradient and the Hessian go over chunks of about this many bytes of
# rows of X (fewer chunks: less work per chunk in Python), and the Hessian's products over
# parts of them of this size, which stay in cache between the products of a part
_PASS_CHUNK_BYTES = 2**23
_CHUNK_BYTES = 2**19
# the Hessian of many rows, while far from the optimum, from an importance sample of this
# share of them (at least this many rows per coefficient)
_SKETCH_SHARE = 1 / 16
_SKETCH_ROWS = 50
# the rows of a screen checked one by one: those with the largest losses and norms
_SCREEN_CANDIDATES = 256
# continuation: lam divided by this per stage (by its powers after easy stages)
_STAGE_FACTOR = 10.0
# the loose tolerance of an intermediate stage, in units of its lam
_STAGE_TOL = 0.25
# the line search along a Newton step gives up below this share of it
_SHORTEST_STEP = 1e-6
# curvature below this share of the largest is rounding (dropped from the steps)
_RELATIVE_CURVATURE = 1e-12
# a model of at most this many free coordinates takes its steps from one
# eigendecomposition (cheaper, there, than the few Cholesky factorisations of a step at
# the trust radius), a larger one from Cholesky factorisations
_EIGEN_SIZE = 32


class _Rows:
    """The rows a Newton stage iterates on (all of the problem's, or a working set) and
    the per-sample arrays of the current point: the predictions (n, K) and the losses
    centred at ``eta0`` (``eta = eta0 + eta1``). ``outside`` is the (constant) value of
    the terms of the rows left out of a working set."""

    def __init__(self, prob, w, b, eta_guess, *, F=None, losses=None, outside=0.0):
        self.prob = prob
        self.outside = outside
        self.draws = 0  # the seed of the next Hessian sketch
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

    def with_lam(self, prob, outside=0.0):
        """The same point for the problem at another lam (eta solved again)."""
        return _Rows(prob, self.w, self.b, self.eta, F=self.F, losses=self.losses, outside=outside)

    @property
    def losses(self):
        return self.centred + self.eta0

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

    def derivatives(self, standardised=True):
        """Per chunk of rows (of about ``_PASS_CHUNK_BYTES`` of rows of X): ``(Z, pc, c, k,
        dl, ddl, rows)`` at the current point, with ``Z`` the standardised rows (None
        without ``standardised``) and ``pc`` the empirical weights."""
        for rows in self.prob.chunks(_PASS_CHUNK_BYTES):
            yield self.derivatives_of(rows, standardised)

    def derivatives_of(self, rows, standardised=True):
        """``(Z, pc, c, k, dl, ddl, rows)`` (see :meth:`derivatives`) of the given rows (a
        slice or indices)."""
        prob = self.prob
        Z = prob.standardised(rows) if standardised else None
        F = self.F[rows]
        loss = np.empty(F.shape[0])
        dl, ddl = np.empty_like(F), np.empty_like(F)
        pointwise_losses(prob.loss, F, prob.y[rows], prob.eps, loss, dl, ddl)
        c, k = np.empty(F.shape[0]), np.empty(F.shape[0])
        relaxation_terms(self.centred[rows], 0.0, self.eta1, prob.lam, prob.rho, c, k)
        return Z, prob.weights(rows), c, k, dl, ddl, rows

    def _trial(self, pred, step, t, w, guess):
        """The value and the solved threshold ``(value, eta0, centred, eta1)`` at the
        predictions ``pred + t * step`` and coefficients ``w`` (one loss evaluation and
        eta solve over the rows, started at ``guess``)."""
        prob = self.prob
        losses = np.empty(prob.n_samples)
        step_losses(prob.loss, pred, step, t, prob.y, prob.eps, losses)
        with np.errstate(over="ignore", invalid="ignore"):  # a long trial may overflow
            eta0, centred, eta1 = centred_eta(losses, prob.p, prob.lam, prob.rho, guess, True)
            value = self._value(centred, eta0, eta1, w)
        return value, eta0, centred, eta1

    def try_step(self, dw, db, deta=0.0):
        """The value at ``(w + dw, b + db)`` with eta solved again (from its value moved
        by ``deta``, the quadratic model's), and the trial's state for :meth:`adopt`: one
        pass over the rows for the new predictions."""
        w, b = self.w + dw, self.b + db
        F = self.prob.predictions(w, b)
        value, eta0, centred, eta1 = self._trial(F, F, 0.0, w, self.eta + deta)
        return value, (w, b, eta0, centred, eta1, F, value)

    def line_search(self, dw, db, slope, deta=0.0):
        """The best point found along the step ``(dw, db)`` (``slope``, negative, the
        objective's derivative along it at 0; ``deta`` the quadratic model's move of eta
        along it, where each point's eta solve starts): the full step if it lowers the objective
        enough (Armijo), else the first step shortened by safeguarded quadratic
        interpolation (Nocedal and Wright, section 3.5) that does, and one more
        interpolation towards the minimum along the line (the objective is convex along
        it, with eta solved again at each point). One pass over the rows for the
        direction's predictions; each point costs the losses and the eta solve only.
        Returns (value, state, t), or None if no step down to ``_SHORTEST_STEP`` of it
        lowers the objective."""
        prob = self.prob
        dF = prob.predictions(dw, db)
        values, best = {}, [np.inf]

        def at(t):
            if t not in values:
                guess = self.eta + t * deta
                value, eta0, centred, eta1 = self._trial(self.F, dF, t, self.w + t * dw, guess)
                values[t] = value if np.isfinite(value) else np.inf
                if values[t] < best[0]:  # the arrays of the best point only
                    best[:] = [values[t], t, eta0, centred, eta1]
            return values[t]

        def enough(t):  # the Armijo condition
            return at(t) <= self.value + 1e-4 * t * slope

        def interpolated(t):
            # the minimum of the parabola with the value and slope at 0 and the value at t
            curvature = (at(t) - self.value - slope * t) / (t * t)
            return -0.5 * slope / curvature if curvature > 0 else np.inf

        t, failed = 1.0, None
        while not enough(t):  # backtracking by interpolation, safeguarded
            if t < _SHORTEST_STEP:
                return None
            failed, t = t, min(max(interpolated(t), 0.1 * t), 0.5 * t)
        if failed is not None:  # one step towards the minimum, between t and failed
            guess = interpolated(t)
            if t < guess < failed:
                at(guess)
        value, t, eta0, centred, eta1 = best
        if t != 1.0:
            dF *= t
        dF += self.F  # the predictions at the point, in the direction's array
        return value, (self.w + t * dw, self.b + t * db, eta0, centred, eta1, dF, value), t

    def adopt(self, state):
        """Move to a trial's point (``state`` from :meth:`try_step` or
        :meth:`line_search`, with the value computed there)."""
        self.w, self.b, self.eta0, self.centred, self.eta1, self.F, self.value = state


def _row_norms(prob):
    """``|z_i|`` of the standardised rows ``z_i = (s * (x_i - mean), 1)``, by chunks."""
    norms = np.empty(prob.n_samples)
    X = prob.X
    for rows in prob.chunks():
        Xc = chunk_of(X, rows)
        if sp.issparse(Xc):
            Xc = Xc.toarray()
        standardised_norms(Xc, prob.mean, prob.inv_scale, norms[rows])
    return norms


def _bound_terms(prob, losses, norms):
    """Per row, the terms of the bound on its loss after a step of length ``D`` in the
    standardised coefficients (see :class:`_Screen`): ``(base + slope D)^2`` where
    ``quadratic``, else ``base + slope D``. Returns (base, slope, quadratic)."""
    if prob.loss == SQUARED_ERROR:
        return np.sqrt(np.maximum(losses, 0.0)), norms, True
    if prob.loss == HUBER:
        eps = prob.eps
        linear = losses > eps * eps
        base = np.where(linear, (losses + eps * eps) / (2 * eps), np.sqrt(np.maximum(losses, 0)))
        return base, norms, True
    lipschitz = math.sqrt(2.0) if prob.loss == MULTINOMIAL else 1.0
    return losses, norms * lipschitz, False


def _entry_distances(prob, losses, norms, limit):
    """Per row, the length of a step (in the standardised coefficients) from which its
    bound reaches ``limit``: 0 for the rows already there, inf for those no step
    brings there."""
    base, slope, quadratic = _bound_terms(prob, losses, norms)
    gap = (math.sqrt(max(limit, 0.0)) if quadratic else limit) - base
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, gap / slope, 0.0)


class _Screen:
    """Guarantees that the rows left out of a working set stay negligible.

    A step that moves the standardised coefficients by ``D`` (Euclidean norm) moves the
    prediction of row i by at most ``|z_i| D``; its loss then stays below a bound that
    grows with ``D`` (``(|r_i| + |z_i| D)^2`` for the squared error and Huber, which it
    bounds; ``l_i + L |z_i| D`` for the losses with Lipschitz constant ``L``). A step is
    safe when every left-out row's bound stays ``_ENTER lam`` below the new threshold.
    The rows with the largest losses or norms are checked one by one; the others together,
    by their largest loss and norm."""

    def __init__(self, prob, losses, norms, u0):
        self.u0 = u0
        base, norms, self.quadratic = _bound_terms(prob, losses, norms)
        k = _SCREEN_CANDIDATES
        if base.shape[0] > 2 * k:
            candidate = np.zeros(base.shape[0], dtype=bool)
            candidate[np.argpartition(base, -k)[-k:]] = True
            candidate[np.argpartition(norms, -k)[-k:]] = True
            rest = ~candidate
            self.rest = (float(base[rest].max()), float(norms[rest].max()))
            base, norms = base[candidate], norms[candidate]
        else:
            self.rest = (-np.inf, 0.0)
        self.base, self.norms = base, norms

    def _bound(self, base, norm, D):
        value = base + norm * D
        return value * value if self.quadratic else value

    def safe(self, u, eta, lam):
        D = float(np.linalg.norm(u - self.u0))
        limit = eta - _ENTER * lam
        if self.rest[0] > -np.inf and not self._bound(*self.rest, D) < limit:
            return False
        return (
            not self.base.shape[0] or float(np.max(self._bound(self.base, self.norms, D))) < limit
        )


def _outside_value(prob, working):
    """The terms of the rows left out of the working set (indices into the rows of
    ``prob``): each is its limit ``(lam / rho) log1p(-rho)`` (``-lam`` for ``rho = 0``)
    to within ``exp(-_ENTER)``."""
    if prob.p.shape[0] == 1:
        share = prob.p[0] * (prob.n_samples - working.shape[0])
    else:
        share = max(float(np.sum(prob.p)) - float(np.sum(prob.p[working])), 0.0)
    limit = -prob.lam if prob.rho == 0 else prob.lam / prob.rho * math.log1p(-prob.rho)
    return share * limit


class _Screens(list):
    """The screens of the rows left out of a working set, in the groups they left it
    (each with the point where its losses were taken)."""

    def safe(self, u, eta, lam):
        return all(screen.safe(u, eta, lam) for screen in self)


def _system(prob, rows, irls=False, exact=True):
    """The gradient ``g`` in the standardised coordinates ``(V, b_c)`` (flattened) and the
    Hessian of the joint objective in ``(V, b_c, eta)`` at the current point of ``rows``,
    in one pass over chunks small enough to stay in cache between their products; with
    ``irls``, the Hessian of the weighted loss with the worst case fixed (no eta row),
    for the certificate.

    Without ``exact``, on many rows, the (W, b) block of the Hessian is estimated without
    bias from an importance sample of about ``_SKETCH_SHARE`` of the rows (each kept with
    probability ``min(1, m a_i / sum a)``, ``a_i`` its curvature, and weighted by the
    inverse): a Newton step needs the curvature's shape, not every digit, and the rows
    with the most curvature are always kept. The gradient and the eta terms stay exact:
    the pass computes them and the sizes ``a_i``; the sample's rows are visited again
    after it.

    With one output and data for which it is safe (``Problem.raw_sums``), the sums run
    over the raw rows (no standardised copy of them) and are mapped to the standardised
    coordinates at the end.
    """
    d, K = prob.X.shape[1], prob.n_outputs
    D = (d + 1) * K
    n = prob.n_samples
    m = max(_SKETCH_ROWS * (D + 1), int(_SKETCH_SHARE * n))
    sketch = not exact and not irls and m < n / 2
    raw = K == 1 and prob.raw_sums
    G = np.zeros((d + 1, 2 * K))  # gradient and eta cross terms, in (x, 1) coordinates
    H = np.zeros((d + 1, K, d + 1, K))
    h_eta = 0.0
    Z = None
    if sketch:  # the per-row curvature sizes (the sample's probabilities) in the pass
        sizes = np.empty(n)
    part = max(512, _CHUNK_BYTES // (8 * d * K + 8))  # rows per part of a chunk
    # chunk by chunk: no per-row array (nor standardised rows) outlives its chunk
    for Z, pc, c, k, dl, ddl, chunk in rows.derivatives(not (raw or sketch)):
        if sketch:  # the trace of each row's curvature, for the sample drawn below
            pk = np.empty(pc.shape[0])
            curvature_terms(prob.loss, pc, c, k, dl, ddl, sizes[chunk], np.empty_like(dl), pk)
        else:
            A = np.empty((pc.shape[0], K, K))
            curvature_matrix(prob.loss, pc, c, k, dl, ddl, irls, A)
            pk = pc * k
        # the gradient's and the eta cross terms' factors, one row of them per column of
        # G (a product with the rows of X of this shape reads them once, twice as fast)
        factors = np.concatenate(((pc * c)[None, :] * dl.T, pk[None, :] * dl.T))
        if Z is None:  # raw rows, mapped at the end
            Xc = chunk_of(prob.X, chunk)
            G[:d] += np.asarray(Xc.T @ factors.T) if sp.issparse(Xc) else (factors @ Xc).T
            G[d] += factors.sum(axis=1)
            if not sketch:
                a = A[:, 0, 0]
                if sp.issparse(Xc):
                    H[:d, 0, :d, 0] += _gram(Xc, a)
                else:
                    for r in range(0, a.shape[0], part):
                        H[:d, 0, :d, 0] += _gram(Xc[r : r + part], a[r : r + part])
                border = np.asarray(Xc.T @ a)
                H[:d, 0, d, 0] += border
                H[d, 0, :d, 0] += border
                H[d, 0, d, 0] += float(np.sum(a))
        else:
            G += (factors @ Z).T
            if not sketch:
                for r in range(0, A.shape[0], part):
                    _add_gram(H, Z[r : r + part], A[r : r + part], prob.loss == MULTINOMIAL)
        h_eta += float(np.sum(pk))
    if sketch:  # each row kept with probability min(1, m a_i / sum a), weighted by its inverse
        rng = np.random.default_rng(rows.draws)
        rows.draws += 1
        q = np.minimum(1.0, m * sizes / max(float(np.sum(sizes)), 1e-300))
        kept = np.flatnonzero(rng.random(n) < q)
        for start in range(0, kept.shape[0], _SKETCH_ROWS * (D + 1)):
            sample = kept[start : start + _SKETCH_ROWS * (D + 1)]
            Zk, pc, c, k, dl, ddl, _ = rows.derivatives_of(sample)
            A = np.empty((sample.shape[0], K, K))
            curvature_matrix(prob.loss, pc, c, k, dl, ddl, False, A)
            _add_gram(H, Zk, A / q[sample, None, None], prob.loss == MULTINOMIAL)
        Z = None  # the gradient's sums ran over the raw rows
    if Z is None and n > 0:  # from (x, 1) to (s (x - mean), 1)
        prob.standard_sums(G)
        if not sketch:  # (a view of H)
            prob.standard_sums(prob.standard_sums(H[:, 0, :, 0]).T)
    g, h = G[:, :K], -G[:, K:]
    H = H.reshape(D, D)
    if prob.alpha > 0:  # the penalty's gradient, and its curvature on H's diagonal
        g[:d] += prob.alpha * (rows.w * prob.inv_scale[:, None])
        H.flat[: d * K * (D + 1) : D + 1] += np.repeat(prob.penalty_curvature, K)
    g = g.ravel()
    free = np.ones(D, dtype=bool)
    if not prob.fit_intercept:
        free[d * K :] = False
    flat = _flat_shifts(prob)
    if irls:
        return g, H, free, flat
    M = np.empty((D + 1, D + 1))
    M[:D, :D] = H
    M[:D, D] = M[D, :D] = h.ravel()
    M[D, D] = h_eta
    return g, M, np.append(free, True), flat


def _flat_shifts(prob):
    """The coordinates (flattened, one row of K per direction) along whose equal shift
    the objective is flat: the softmax does not change when all classes' coefficients of
    a feature (or their intercepts) move together, so each unpenalised row of the
    multinomial model (the intercepts; every row for ``alpha=0``) is such a direction.
    The solves keep the gradient and the steps orthogonal to them: a factorisation would
    otherwise turn rounding along them into a drift of the coefficients."""
    d, K = prob.X.shape[1], prob.n_outputs
    if K == 1:
        return np.empty((0, 1), dtype=np.intp)
    rows = np.flatnonzero(prob.penalty_curvature == 0)
    if prob.fit_intercept:
        rows = np.append(rows, d)
    return rows[:, None] * K + np.arange(K)[None, :]


def _project(v, flat):
    """``v`` without its components along the flat shifts (positions in ``v``)."""
    if flat.size:
        v = v.copy()
        v[flat] -= v[flat].mean(axis=1, keepdims=True)
    return v


def _positions(index, flat):
    """The flat shifts as positions among the free coordinates ``index`` (the fixed
    ones, the intercepts without fit_intercept, are whole rows)."""
    if not flat.size:  # one output: none
        return flat
    inside = np.all(np.isin(flat, index), axis=1)
    return np.searchsorted(index, flat[inside])


def _gram(Xc, a):
    """``Xc^T diag(a) Xc`` for a dense or CSR chunk and ``a >= 0`` (a one-output loss's
    curvature): ``B^T B`` with ``B = diag(sqrt(a)) Xc`` for dense rows, a symmetric
    product of half the work."""
    if sp.issparse(Xc):
        return (Xc.T @ Xc.multiply(a[:, None])).toarray()
    B = Xc * np.sqrt(np.maximum(a, 0.0))[:, None]  # (rounding may leave -1e-17)
    return B.T @ B


def _add_gram(H, Z, A, zero_sums=False):
    """``H += sum_i (z_i z_i^T) kron A_i`` (H of shape (d + 1, K, d + 1, K), ``A_i``
    symmetric): one weighted Gram matrix per pair of outputs. With ``zero_sums``, where
    every ``A_i`` has rows summing to zero (the multinomial loss: its Hessian ``diag(s) -
    s s^T`` and its gradient ``s - e_y`` sum to zero over the classes), the diagonal
    blocks are minus the sums of the others: K (K - 1) / 2 products instead of
    K (K + 1) / 2 (a third fewer for 5 classes, half for 3)."""
    K = A.shape[1]
    if K == 1:  # one output: the symmetric product of _gram
        H[:, 0, :, 0] += _gram(Z, A[:, 0, 0])
        return
    for a in range(K):
        for b in range(a + 1 if zero_sums else a, K):
            block = Z.T @ (Z * A[:, a, b][:, None])
            H[:, a, :, b] += block
            if b != a:
                H[:, b, :, a] += block.T
                if zero_sums:
                    H[:, a, :, a] -= block
                    H[:, b, :, b] -= block


def _rounding_shift(H):
    """The rounding-size curvature ``_RELATIVE_CURVATURE`` times H's largest diagonal
    entry (that of its largest eigenvalue's scale), by which the factorisations shift
    ``H``."""
    return _RELATIVE_CURVATURE * float(np.max(np.diag(H))) if H.size else 0.0


def _eigen(H, shifted=False):
    """The eigendecomposition of ``H`` without the directions of rounding-size curvature
    (collinear columns, the softmax's shift of all classes' intercepts): a step along them
    would only amplify rounding. With ``shifted``, for a matrix whose shifted Cholesky
    factorisation succeeds, the decomposition of ``H`` shifted as :func:`_cholesky`
    shifts it instead, not truncated: a gradient along a direction of rounding-size
    curvature then gives the long step, and the large decrement, that the factorisation
    gives, where the objective is nearly linear (without the directions that stay
    non-positive)."""
    ev, V = np.linalg.eigh(H)
    if shifted:
        ev = ev + max(_rounding_shift(H), 0.0)
        keep = ev > 0
    else:
        keep = ev > _RELATIVE_CURVATURE * max(float(ev.max()), 1e-300)
    return ev[keep], V[:, keep]


def _eigen_solve(eigen, g, flat):
    """``H^+ g`` from the decomposition ``eigen = (ev, V)`` of :func:`_eigen`, orthogonal
    to the flat shifts."""
    ev, V = eigen
    return _project(V @ ((V.T @ g) / ev), flat)


def _cholesky(H, mu=0.0):
    """The Cholesky factor of ``H + mu I``, ``H`` shifted by its rounding-size curvature
    (which moves solutions only along the directions :func:`_eigen` drops, where the
    objective is flat to rounding), or None where even so it is not positive definite."""
    shift = _rounding_shift(H)
    if not (shift > 0 and np.isfinite(shift)):
        return None
    shifted = H + (mu + shift) * np.eye(H.shape[0])
    try:
        return scipy.linalg.cho_factor(shifted, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None


def _inverse_times(H, g, flat):
    """``H^+ g`` by a Cholesky factorisation (some 20 times cheaper than the
    eigendecomposition, the fallback), orthogonal to the flat shifts (``g`` is), and the
    eigendecomposition if it took one."""
    factor = _cholesky(H)
    if factor is not None:
        return _project(scipy.linalg.cho_solve(factor, g, check_finite=False), flat), None
    eigen = _eigen(H)
    return _eigen_solve(eigen, g, flat), eigen


def _solve(M, rhs, free, flat):
    """``M^+ rhs`` on the free coordinates, and ``rhs^T M^+ rhs``."""
    index = np.flatnonzero(free)
    flat = _positions(index, flat)
    rhs_free = _project(rhs[index], flat)
    x, _ = _inverse_times(M[np.ix_(index, index)], rhs_free, flat)
    out = np.zeros_like(rhs)
    out[index] = x
    return out, float(rhs_free @ x)


class _Model:
    """The quadratic model of the objective in the standardised coefficients, with eta
    eliminated (the Schur complement of the joint Hessian): the Newton step and the
    decrement, and the trust-region steps ``-(H + mu I)^-1 g`` of a given length: for at
    most ``_EIGEN_SIZE`` coordinates from one eigendecomposition (a step at the radius
    then costs no factorisation; at n = 1e4 the hard regression fits are 18% faster), for
    more by Cholesky factorisations (the eigendecomposition where they fail)."""

    def __init__(self, g, M, free, flat):
        D = g.shape[0]
        index = np.flatnonzero(free[:D])
        self.flat = _positions(index, flat)
        H = M[:D, :D][np.ix_(index, index)]
        h = M[:D, D][index]
        h_eta = M[D, D]
        if h_eta > 0:
            H = H - np.outer(h, h) / h_eta
        self.h_ratio = h / h_eta if h_eta > 0 else np.zeros_like(h)
        self.H, self.g = H, _project(g[index], self.flat)
        self.index, self.D = index, D
        if index.shape[0] <= _EIGEN_SIZE:  # one decomposition serves every step's solve
            self.eigen = _eigen(H, shifted=True)
            self.newton = _eigen_solve(self.eigen, self.g, self.flat)
        else:
            self.newton, self.eigen = _inverse_times(H, self.g, self.flat)
        self.decrement = 0.5 * float(self.g @ self.newton)
        self.newton_length = float(np.sqrt(np.sum(self.newton**2)))

    def step(self, radius):
        """The minimiser of the model within ``radius`` (Euclidean, to 0.1%), its length,
        the model's predicted decrease, and whether it is the Newton step."""
        s = np.zeros(self.D)
        if self.newton_length <= radius:
            s[self.index] = -self.newton
            return s, self.newton_length, self.decrement, True
        x = self._constrained(radius) if self.eigen is None else None
        if x is None:
            x = self._constrained_eigen(radius)
        s[self.index] = x
        predicted = -float(self.g @ x + 0.5 * x @ (self.H @ x))
        return s, float(np.sqrt(np.sum(x**2))), predicted, False

    def slope(self, s):
        """The model's (and the objective's) derivative along the step ``s`` at 0."""
        return float(self.g @ s[self.index])

    def eta_move(self, s):
        """How far the joint quadratic model moves eta along the step ``s`` (eta's row of
        the Newton system with the coefficients' step fixed): where the line search's and
        the trial's eta solves start, a few passes fewer than from the current eta."""
        return -float(self.h_ratio @ s[self.index])

    def _constrained(self, radius):
        """The trust-region step by the Newton iteration on ``1 / ||s(mu)|| = 1 /
        radius`` (More and Sorensen; Nocedal and Wright, Algorithm 4.3): from ``mu = 0``,
        where the step is too long, it rises monotonically to the root. None where a
        factorisation fails."""
        mu = 0.0
        for _ in range(50):
            factor = _cholesky(self.H, mu)
            if factor is None:
                return None
            x = -_project(scipy.linalg.cho_solve(factor, self.g, check_finite=False), self.flat)
            length = float(np.sqrt(x @ x))
            if abs(length - radius) <= 1e-3 * radius:
                break
            q = scipy.linalg.solve_triangular(factor[0], x, lower=True, check_finite=False)
            mu = max(mu + (length / radius) * (length - radius) * length / float(q @ q), 0.0)
        return x

    def _constrained_eigen(self, radius):
        """The trust-region step from the eigendecomposition: the iteration of
        :meth:`_constrained` in the eigenbasis (no factorisation per iteration), rising
        monotonically from ``mu = 0`` to the root; bisection in ``log mu`` if it has not
        converged in 50 iterations."""
        if self.eigen is None:
            self.eigen = _eigen(self.H)
        ev, V = self.eigen
        gv = V.T @ self.g
        g2 = gv * gv
        mu = 0.0
        for _ in range(50):
            inverse = 1.0 / (ev + mu)
            squares = g2 * inverse * inverse
            length = math.sqrt(float(np.sum(squares)))
            if abs(length - radius) <= 1e-3 * radius:
                return _project(V @ (-gv * inverse), self.flat)
            mu = max(mu + (length / radius - 1.0) * length**2 / float(squares @ inverse), 0.0)
        hi = float(np.sqrt(np.sum(g2))) / radius
        lo = hi * 1e-30
        for _ in range(80):
            mu = math.sqrt(lo * hi)
            length = float(np.sqrt(np.sum((gv / (ev + mu)) ** 2)))
            if abs(length - radius) <= 1e-3 * radius:
                break
            lo, hi = (mu, hi) if length > radius else (lo, mu)
        return _project(V @ (-gv / (ev + mu)), self.flat)


def certificate(prob, w, b, eta_guess=np.nan):
    """The duality gap of the model (W, b) relative to its objective (see the module
    docstring), from one pass over the data."""
    rows = _Rows(prob, w, b, eta_guess)
    return _certificate(prob, rows, max(abs(rows.value), prob.objective_floor()))


def polish(prob, w, b, eta_guess, *, tol, log, max_steps=10):
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
    g, H, free, flat = _system(prob, rows, irls=True)
    _, gap = _solve(H, g, free, flat)
    return 0.5 * gap / scale


def superlinear(before, previous, decrement):
    """Whether the decrements ``before`` (None if unknown), ``previous``, ``decrement``
    of successive iterations fall superlinearly: a hundredfold in the last step, or
    tenfold and by at least twice the factor of the step before. (A fall by 0.6, 0.7,
    then 0.24 is not: near a kink, where the decrement was 1000 times below the
    suboptimality, it once passed for quadratic convergence.)"""
    if decrement <= 1e-2 * previous:
        return True
    if before is None or not before > 0 or decrement > 0.1 * previous:
        return False
    return decrement / previous <= 0.5 * (previous / before)


def next_stage(lam, lam_target, factor, steps, ratio):
    """The next stage's lam and divisor on the lam path, after a stage at ``lam`` that
    took ``steps`` steps and ended with a decrement of ``ratio`` times its tolerance.

    A stage that took a step or two was an easy one: the next can be further away (the
    divisor triples, up to ``_STAGE_FACTOR ** 2``). A stage whose first point already met
    its tolerance by far says how far: the decrement there grows at most about as
    ``1 / lam ** 2`` as lam falls (measured: as ``lam ** -3.5`` far above the losses'
    scale, as ``1 / lam`` near it), so lam divided by ``ratio ** -0.5`` is where it would
    still be about the stage's tolerance. On data with heavy tails, where the path starts
    at the spread of the losses, far above where the stages matter, this skips the
    stages that would cost a pass each and take no step."""
    factor = min(factor * 3, _STAGE_FACTOR**2) if steps <= 2 else _STAGE_FACTOR
    if steps == 0 and ratio < factor**-2:
        return max(lam * math.sqrt(ratio), lam_target), factor
    return max(lam / factor, lam_target), factor


def _newton_iterations(
    rows, *, tol, stage_tol, floor, final, max_iter, counter, log, radius, screen=None,
    narrow=None,
):  # fmt: skip
    """Newton iterations on ``rows`` until the decrement (an intermediate stage) or the
    suboptimality (the final stage) is below the tolerance.

    Each step minimises the quadratic model within a radius (``radius[0]``, in the
    standardised coefficients, carried from one iteration and stage to the next; the
    Newton step where it is shorter), shortened by a line search along it where the
    objective stops being quadratic before its end (:meth:`_Rows.line_search`); the
    radius is then set from the accepted length (see the module docstring). Where no
    point of that line lowers the objective enough, trust-region trials at shrinking
    radii follow.

    In the final stage a small decrement is trusted as the suboptimality only where the
    quadratic model has just been verified: the last step was a full Newton step whose
    decrease matched the model's within a factor 2, and the decrement then fell
    superlinearly (quadratic convergence): at least a hundredfold, or at least tenfold
    and by at least twice the factor of the step before. A steady fall by a constant
    factor is linear convergence, which near a kink (small lam, a cap that binds on a few
    samples) goes with a decrement far below the suboptimality. Otherwise the duality gap
    decides (see :func:`certificate`). Returns (done, suboptimality, message); ``done`` is
    False when the iterations ran out or no step lowers the objective short of the
    tolerance, and None when a step would leave the working set (``screen``; the step is
    not taken) or, with ``narrow`` (a band, on all the rows), when a step has left few
    enough rows within ``narrow`` lam of the threshold for a working set (``rows.unsafe``
    is then None)."""
    prob = rows.prob
    d, K = prob.X.shape[1], prob.n_outputs
    previous = None  # (decrement, Newton step with the exact Hessian, predicted, actual)
    before = None  # the decrement before ``previous``'s

    def to_model(step):
        du = step.reshape(d + 1, K)
        dw = du[:d] * prob.inv_scale[:, None]
        return dw, du[d] - prob.mean @ dw if prob.fit_intercept else np.zeros(K)

    def finish(model, suboptimality, message):
        # the Newton step from a point this close to the optimum costs one evaluation and
        # leaves a suboptimality of about the square of the current one: take it
        step, _, predicted, newton = model.step(np.inf)
        if newton and predicted > 0 and counter[0] < max_iter:
            value, state = rows.try_step(*to_model(step), model.eta_move(step))
            w_new, b_new, eta0, _, eta1, *_ = state
            safe = screen is None or screen.safe(
                prob.to_standard(w_new, b_new), eta0 + eta1, prob.lam
            )
            if value <= rows.value and safe:
                rows.adopt(state)
                counter[0] += 1
                log.record(rows.value, "final Newton step", lam=prob.lam)
        return True, suboptimality, message

    while True:
        # relative to the current objective (it falls by orders of magnitude on the way)
        scale = max(abs(rows.value), floor)
        # the exact Hessian once the final stage is near its end (quadratic convergence and
        # the certificate need it), a sketch of it before. With several outputs it costs
        # as much as the certificate (K (K - 1) / 2 products with the rows, against one):
        # the sketch's steps, whose convergence is fast but not verified quadratic, go on
        # to the certificate. A working set's rows are few and near the threshold, where
        # a sketch saves little and its error costs iterations (2.5 times as many on the
        # hard grid's rho = 1e-4 cells with a working set of 5% of the rows): exact there
        exact = final and K == 1 and previous is not None and previous[0] <= 1e2 * tol * scale
        model = _Model(*_system(prob, rows, exact=exact or screen is not None))
        decrement = model.decrement
        if decrement <= max(tol * scale, stage_tol):
            if not final:
                return True, decrement / scale, "stage converged"
            if previous is not None and (
                previous[0] <= 1e-14 * scale
                or (
                    previous[1]
                    and 0.5 * previous[2] <= previous[3] <= 2.0 * previous[2]
                    and superlinear(before, previous[0], decrement)
                )
            ):
                return finish(model, decrement / scale, (
                    f"converged: Newton decrement {decrement / scale:.2g} <= tol, with "
                    "quadratic convergence"
                ))  # fmt: skip
            gap = _certificate(prob, rows, scale)
            if gap <= tol:
                return finish(model, gap, f"converged: duality gap {gap:.2g} <= tol")
        # the Newton step, shortened along its line where the objective is not
        # quadratic that far (a row crossing the threshold); the trust region below only
        # where no point of that line lowers the objective enough
        found = None
        if counter[0] < max_iter and model.decrement > 0:
            step, length, predicted, newton = model.step(radius[0])
            slope = model.slope(step)
            found = rows.line_search(*to_model(step), slope, model.eta_move(step))
            if found is None:  # the trust region starts inside the failed line's reach
                radius[0] = min(radius[0], _SHORTEST_STEP * length)
        if found is not None:
            value, state, t = found
            counter[0] += 1
            # the model's decrease at t along the step (its curvature from ``predicted``)
            predicted = -t * slope + t * t * (predicted + slope)
            actual = rows.value - value
            if t < 1.0:  # the model held up to here: the next step stays near it
                radius[0] = 2.0 * t * length
            elif newton:
                radius[0] = max(radius[0], 2.0 * length)
            elif actual > 0.75 * predicted:  # a step at the radius, confirmed
                radius[0] = 4.0 * length
            length, newton = t * length, newton and t == 1.0
        while found is None:
            if counter[0] >= max_iter:
                return False, decrement / scale, f"reached max_iter={max_iter}"
            step, length, predicted, newton = model.step(radius[0])
            value, state = rows.try_step(*to_model(step), model.eta_move(step))
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
            w_new, b_new, eta0, _, eta1, *_ = state
            if not screen.safe(prob.to_standard(w_new, b_new), eta0 + eta1, prob.lam):
                rows.unsafe = state  # for the caller to check against all the data
                return None, decrement / scale, "the step may leave the working set"
        rows.adopt(state)
        before = previous[0] if previous is not None else None
        previous = (decrement, newton and exact, predicted, actual)
        log.record(rows.value, lam=prob.lam, step=length, decrement=decrement / scale)
        if narrow is not None and (
            np.count_nonzero(rows.weights_above(narrow)) <= _SUBSET_SHARE * prob.n_samples
        ):
            rows.unsafe = None  # for the caller to form a working set
            return None, decrement / scale, "a working set can be formed"


def _erm_ratio(prob, F, losses, mean_loss, curvature):
    """The first stage's decrement over its tolerance ``_STAGE_TOL lam`` at a point that
    minimises the ERM objective (``curvature`` its Hessian in the free standardised
    coordinates), to leading order in ``1 / lam``, from one pass without exponentials:
    there ``c_i - 1 = (1 - rho) (l_i - mean_loss) / lam`` and eta is the mean loss, so the
    gradient is ``(1 - rho) v / lam`` with ``v = sum_i p_i (l_i - mean_loss) grad l_i`` and
    the Hessian the ERM one (the eta terms vanish as ``1 / lam``)."""
    d = prob.X.shape[1]
    v = np.zeros(d + 1)
    for rows in prob.chunks(_PASS_CHUNK_BYTES):
        m = rows.stop - rows.start
        dl, ddl, loss = np.empty((m, 1)), np.empty((m, 1)), np.empty(m)
        pointwise_losses(prob.loss, F[rows], prob.y[rows], prob.eps, loss, dl, ddl)
        a = prob.weights(rows) * (losses[rows] - mean_loss) * dl[:, 0]
        if prob.raw_sums:  # mapped to the standardised coordinates below
            v[:d] += np.asarray(chunk_of(prob.X, rows).T @ a).ravel()
            v[d] += float(np.sum(a))
        else:
            v += prob.standardised(rows).T @ a
    if prob.raw_sums:
        prob.standard_sums(v)
    if not prob.fit_intercept:
        v = v[:d]
    x, _ = _inverse_times(curvature, v, np.empty((0, 1), dtype=np.intp))
    decrement = 0.5 * (1.0 - prob.rho) ** 2 * float(v @ x) / prob.lam**2
    return decrement / (_STAGE_TOL * prob.lam)


def fit_newton(
    prob, w, b, *, max_iter, tol, verbose, lam_start=None, eta_guess=np.nan, erm_curvature=None
):
    """Newton's method with continuation in lam and working sets (see the module
    docstring). ``max_iter`` caps the Newton iterations over all stages; ``tol`` is the
    relative suboptimality that the certificate must reach; ``lam_start`` (with the
    threshold ``eta_guess`` there) starts the lam path at the temperature of a warm
    start instead of the spread of the losses; ``erm_curvature``, where (w, b) minimises
    the ERM objective (the least-squares start), is that objective's Hessian there (see
    :func:`~sklearn_lse._problem.least_squares_start`): the path's first stage is then
    decided from it (:func:`_erm_ratio`) instead of by a stage of its own. Returns a
    :class:`~sklearn_lse._result.SolverResult`, whose history holds the objective of
    each stage's problem (its lam decreasing to ``prob.lam``).

    A working set, once formed, is kept from stage to stage (shrunk as lam falls, the
    rows it drops screened like the others): the full data are read again only when a
    step would bring a left-out row near the threshold, to form a wider one."""
    log = Log("newton", verbose)
    n = prob.n_samples
    lam_target = prob.lam
    F = prob.predictions(w, b)
    losses = np.empty(n)
    step_losses(prob.loss, F, F, 0.0, prob.y, prob.eps, losses)
    supported = losses[prob.weights(slice(None)) > 0]
    # the first stage: at a lam of the losses' spread the worst case is nearly the
    # empirical distribution, whose threshold is about the mean loss
    lam = max(lam_target, float(np.max(supported) - np.min(supported)))
    guess = prob.weighted_sum(losses)
    factor = _STAGE_FACTOR
    if lam_start is not None:  # a warm start, from the solution at lam_start
        lam, guess = max(lam_target, min(lam, lam_start)), eta_guess
    elif erm_curvature is not None and prob.n_outputs == 1 and lam > lam_target:
        # the start minimises the ERM objective: whether the first stage would take a
        # step, and where the next one would be, follows from the losses' spread about
        # their mean (a pass without exponentials, instead of that stage's passes)
        ratio = _erm_ratio(prob.with_lam(lam), F, losses, guess, erm_curvature)
        if ratio <= 1.0:
            lam, factor = next_stage(lam, lam_target, factor, 0, ratio)
    rows = _Rows(prob.with_lam(lam), w, b, guess, F=F, losses=losses)
    if not math.isfinite(rows.value):
        raise ValueError("The objective is not finite at the starting point.")
    log.start(rows.value)
    floor = prob.objective_floor()
    counter = [0]
    radius = [np.inf]  # in the standardised coefficients, set by the first rejected step
    norms = None
    # the length of the steps a working set is formed to allow (in the standardised
    # coefficients): it grows each time a step leaves the screens' guarantee
    reach = 0.0
    working = None  # indices of the working set's rows, None for all of them
    screens = _Screens()

    def form(stage, F, losses, w, b, eta, band, extra=None):
        """A working set of the rows within ``band`` lam of the threshold or that a step
        of length ``reach`` could bring there (and ``extra``), from the per-sample
        arrays of all the data, the others screened; None where it would hold most of
        the rows (``reach`` shrinks first)."""
        nonlocal norms, reach
        inside = (losses - eta) > -band * stage.lam
        if extra is not None:
            inside |= extra
        if np.count_nonzero(inside) > _SUBSET_SHARE * n:
            return None
        norms = _row_norms(prob) if norms is None else norms
        if reach > 0:
            t = _entry_distances(stage, losses, norms, eta - band * stage.lam)
            t[inside] = 0.0
            room = int(_REACH_SHARE * n) - 1
            if np.count_nonzero(t <= reach) > room:  # the reach that fills the share
                reach = float(np.partition(t, room)[room])
            inside = t < reach if reach > 0 else inside
        working = np.flatnonzero(inside)
        left = ~inside
        sub = _Rows(
            stage.subset(working), w, b, eta, F=F[working], losses=losses[working],
            outside=_outside_value(stage, working),
        )  # fmt: skip
        screen = _Screen(stage, losses[left], norms[left], prob.to_standard(w, b))
        return working, sub, _Screens([screen])

    while True:
        final = lam <= lam_target
        stage = prob.with_lam(lam)
        stage_start = counter[0]
        if rows.prob.lam != lam:
            if working is None:
                rows = rows.with_lam(stage)
            else:
                rows = rows.with_lam(rows.prob.with_lam(lam), _outside_value(stage, working))
        band = _KEEP
        start = True
        while True:
            if start and working is None:  # at the start of a stage
                formed = form(stage, rows.F, rows.losses, rows.w, rows.b, rows.eta, band)
                if formed is not None:
                    working, rows, screens = formed
            elif start:  # shrink the working set as lam falls; the rows it drops are screened
                if math.isfinite(radius[0]):
                    # no step of this stage is longer than the trust radius at first: a
                    # reach of twice that keeps the working set from staying as wide as
                    # the longest step of an earlier stage made it (at n = 1e7, 2e5 rows
                    # where 6e4 sufficed); a longer step is checked and widens it again
                    reach = min(reach, 2.0 * radius[0])
                inside = rows.weights_above(band)
                if reach > 0:
                    limit = rows.eta - band * lam
                    inside |= _entry_distances(stage, rows.losses, norms[working], limit) < reach
                if np.count_nonzero(inside) < 0.5 * inside.shape[0]:
                    kept = np.flatnonzero(inside)
                    u = prob.to_standard(rows.w, rows.b)
                    screens.append(
                        _Screen(stage, rows.losses[~inside], norms[working[~inside]], u)
                    )
                    working = working[kept]
                    rows = rows.subset(
                        rows.prob.subset(kept), kept, _outside_value(stage, working)
                    )
            start = False
            done, suboptimality, message = _newton_iterations(
                rows, tol=tol, stage_tol=0.0 if final else _STAGE_TOL * lam, floor=floor,
                final=final, max_iter=max_iter, counter=counter, log=log, radius=radius,
                screen=screens if working is not None else None,
                narrow=band if working is None else None,
            )  # fmt: skip
            if done is not None or counter[0] >= max_iter:
                break
            if rows.unsafe is None:  # the rows within the band are few enough now
                formed = form(stage, rows.F, rows.losses, rows.w, rows.b, rows.eta, band)
                if formed is not None:
                    working, rows, screens = formed
                continue
            # The screen could not vouch for the step: check it against all the data (one
            # pass for the trial's predictions). If no left-out row came near the
            # threshold, take it and screen from there; else form a working set at the
            # current point that also holds the rows that would have (a second pass).
            w_t, b_t, eta0_t, _, eta1_t, *_ = rows.unsafe
            eta_t = eta0_t + eta1_t
            length = float(
                np.linalg.norm(prob.to_standard(w_t, b_t) - prob.to_standard(rows.w, rows.b))
            )
            # the next working set allows several such steps
            reach = max(2.0 * reach, 4.0 * length)
            F_t = prob.predictions(w_t, b_t)
            losses_t = np.empty(n)
            step_losses(prob.loss, F_t, F_t, 0.0, prob.y, prob.eps, losses_t)
            near = (losses_t - eta_t) > -_ENTER * lam
            near[working] = False
            if not np.any(near):
                rows.adopt(rows.unsafe)
                log.record(rows.value, "step checked against all the data", lam=lam)
                F, losses, extra = F_t, losses_t, None
            else:
                # the working set takes in every row within the band at the trial too,
                # and the trust region shrinks below the rejected step
                log.record(rows.value, "step rejected: rows outside the working set", lam=lam)
                F = prob.predictions(rows.w, rows.b)
                losses = np.empty(n)
                step_losses(prob.loss, F, F, 0.0, prob.y, prob.eps, losses)
                extra = (losses_t - eta_t) > -band * lam
                radius[0] = min(radius[0], 0.5 * length)
            w, b, eta = rows.w, rows.b, rows.eta
            formed = form(stage, F, losses, w, b, eta, band, extra)
            if formed is None:
                working, screens = None, _Screens()
                rows = _Rows(stage, w, b, eta, F=F, losses=losses)
            else:
                working, rows, screens = formed
        if final or counter[0] >= max_iter:
            break
        ratio = suboptimality * max(abs(rows.value), floor) / (_STAGE_TOL * lam)
        lam, factor = next_stage(lam, lam_target, factor, counter[0] - stage_start, ratio)
    if not final:
        done = False
        message = f"reached max_iter={max_iter} before the last stage of the lam path"
    snap = Snapshot(rows.w, rows.b, rows.value, rows.eta, rows.eta0, rows.eta1)
    return log.result(snap, done, message, suboptimality)
