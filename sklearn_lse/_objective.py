"""The relaxed objective with eta eliminated: the losses of a model, its snapshot (the
objective and the optimal eta, in one pass over the data), the factors and curvatures of
the relaxation, and the full gradient.

A snapshot keeps no per-sample array (except the predictions, where they are small next to
X): the passes that need the losses' derivatives recompute them from the model.
"""

from dataclasses import dataclass

import numpy as np

from ._kernels import centred_eta, pointwise_losses, relaxation_terms, relaxed_value
from ._problem import chunk_of, matmul


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
    Xc = chunk_of(prob.X, rows)
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
    eta0, centred, eta1 = centred_eta(
        losses, prob.p, prob.lam, prob.rho, eta_guess, overwrite=True
    )
    value = eta0 + relaxed_value(centred, prob.p, eta1, prob.lam, prob.rho)
    objective = value + prob.penalty(w)
    return Snapshot(w, b, objective, eta0 + eta1, eta0, eta1, predictions)


def factors(prob, losses, eta0, eta1):
    """The factors ``c_i`` and curvatures ``k_i`` of the losses at the threshold
    ``eta0 + eta1`` (see :func:`~sklearn_lse._kernels.relaxation_weights`; for ``rho = 0``
    the exact worst-case density ratios ``exp((l_i - R) / lam)``)."""
    c, k = np.empty_like(losses), np.empty_like(losses)
    relaxation_terms(losses, eta0, eta1, prob.lam, prob.rho, c, k)
    return c, k


def derivative_chunks(prob, snap, chunks=None):
    """Per chunk of rows (all rows by default): ``(rows, X rows, p rows, c, k, dl, ddl)``
    at the snapshot, from its predictions when it kept them, else recomputed."""
    for rows in prob.chunks() if chunks is None else chunks:
        Xc, _, loss, dl, ddl = _chunk_losses(prob, rows, snap.w, snap.b, snap.predictions)
        c, k = factors(prob, loss, snap.eta0, snap.eta1)
        yield rows, Xc, prob.weights(rows), c, k, dl, ddl


def full_gradient(prob, snap, on_chunk=None):
    """The full gradient at a snapshot in one pass; ``on_chunk(rows, Xc, p, c, k, dl, ddl)``
    is called on every chunk, for the passes that gather more (the curvature)."""
    d, K = snap.w.shape
    grad_w = np.zeros((d, K))
    grad_b = np.zeros(K)
    mass = 0.0
    for rows, Xc, pc, c, k, dl, ddl in derivative_chunks(prob, snap):
        weighted = pc * c
        gd = weighted[:, None] * dl
        grad_w += np.asarray(Xc.T @ gd)
        grad_b += gd.sum(axis=0)
        mass += weighted.sum()
        if on_chunk is not None:
            on_chunk(rows, Xc, pc, c, k, dl, ddl)
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
