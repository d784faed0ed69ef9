"""Numba kernels: per-sample losses of linear models, the stochastic epoch of the relaxation
and the per-sample work around it (curvature weights, block sampling).

The losses live here, next to the kernel that inlines them (Numba's cache does not notice
edits to other files). Losses are integer codes with a scalar parameter, never objects.

Every loss is a function of the prediction ``f`` and the target ``y``; the kernels need its
value, first and second derivatives in ``f``.
"""

import math

import numpy as np
from numba import njit

from .risk import sigmoid, softplus

_NJIT = {"cache": True, "nogil": True}

SQUARED_ERROR = 0
HUBER = 1
ABSOLUTE_ERROR = 2
LOG_LOSS = 3

LOSS_CODES = {
    "squared_error": SQUARED_ERROR,
    "huber": HUBER,
    "absolute_error": ABSOLUTE_ERROR,
    "log_loss": LOG_LOSS,
}


@njit(**_NJIT)
def loss_and_derivatives(code, f, y, eps):
    """Loss, first and second derivatives in the prediction ``f``.

    * ``SQUARED_ERROR``: ``(f - y)^2``.
    * ``HUBER``: ``(f - y)^2`` for ``|f - y| <= eps``, ``2 eps |f - y| - eps^2`` beyond
      (the squared error with its tails made linear; it equals the squared error as
      ``eps -> inf``).
    * ``ABSOLUTE_ERROR``: ``sqrt((f - y)^2 + eps^2) - eps``, the absolute error smoothed over
      a width ``eps`` (within ``eps`` of ``|f - y|``).
    * ``LOG_LOSS``: ``log(1 + exp(-y f))`` for ``y`` in {-1, +1}.
    """
    if code == SQUARED_ERROR:
        r = f - y
        return r * r, 2.0 * r, 2.0
    if code == HUBER:
        r = f - y
        if abs(r) <= eps:
            return r * r, 2.0 * r, 2.0
        return 2.0 * eps * abs(r) - eps * eps, 2.0 * eps * math.copysign(1.0, r), 0.0
    if code == ABSOLUTE_ERROR:
        r = f - y
        root = math.sqrt(r * r + eps * eps)
        return root - eps, r / root, eps * eps / (root * root * root)
    # LOG_LOSS
    m = -y * f
    s = sigmoid(m)
    return softplus(m), -y * s, s * (1.0 - s)


@njit(**_NJIT)
def pointwise_losses(code, pred, y, eps, loss, grad, hess):
    """Fill the per-sample losses and their derivatives for the predictions ``pred``."""
    for i in range(pred.shape[0]):
        loss[i], grad[i], hess[i] = loss_and_derivatives(code, pred[i], y[i], eps)


@njit(**_NJIT)
def curvature_weights(p, c, dl, ddl, lam, rho, a, e, pk, pi):
    """Per-sample curvature of the relaxed objective at a snapshot, and the importance
    sampling that goes with it, in one pass.

    One sample's Hessian is ``c_i l''_i grad f grad f^T + k_i grad u grad u^T`` with
    ``u_i = l_i - eta`` and ``k_i = c_i (1 - rho c_i) / lam`` the curvature of the
    softplus. Writes the p-weighted coefficients of ``(x_i, 1)(x_i, 1)^T``
    (``a_i = p_i (c_i l''_i + k_i l'_i^2)``), of the cross term with eta
    (``e_i = -p_i k_i l'_i``) and of the eta-eta term (``pk_i = p_i k_i``), and to ``pi``
    the sampling probabilities ``pi_i = p_i / 2 + a_i / (4 sum a) +
    pk_i / (4 sum pk)`` (half the empirical distribution, half by curvature), so that
    ``p_i / pi_i <= 4 (sum a) / a_i`` bounds each drawn sample's weighted curvature, and
    returns ``(sum a, sum e, sum pk)``; :func:`pack_snapshot` turns pi into ratios.
    """
    sa = 0.0
    se = 0.0
    sk = 0.0
    for i in range(p.shape[0]):
        k = c[i] * (1.0 - rho * c[i]) / lam
        a[i] = p[i] * (c[i] * ddl[i] + k * dl[i] * dl[i])
        e[i] = -p[i] * k * dl[i]
        pk[i] = p[i] * k
        sa += a[i]
        se += e[i]
        sk += pk[i]
    wa = 0.25 / sa if sa > 0.0 else 0.0
    wk = 0.25 / sk if sk > 0.0 else 0.0
    total = 0.0
    for i in range(p.shape[0]):
        pi[i] = 0.5 * p[i] + wa * a[i] + wk * pk[i]
        total += pi[i]
    for i in range(p.shape[0]):
        pi[i] /= total
    return sa, se, sk


@njit(**_NJIT)
def block_probabilities(pi, block_size, out):
    """``out[b]``: probability of the block of rows ``[b B, (b + 1) B)``, the sum of its
    rows' sampling probabilities."""
    out[:] = 0.0
    for i in range(pi.shape[0]):
        out[i // block_size] += pi[i]


@njit(**_NJIT)
def pack_snapshot(p, block_pi, block_size, c, dl, aux):
    """Write the per-sample snapshot data the stochastic epoch reads next to the target
    (``aux[:, 0]``), so that one sample costs one cache line: ``aux[:, 1]`` the gradient
    factor ``c_i l'_i``, ``aux[:, 2]`` the weight factor ``c_i``, ``aux[:, 3]`` the
    importance weight ``|block| p_i / pi_block`` of the row within its block of rows
    (0 where the block is never drawn), so that the block's mean of weighted gradients is
    an unbiased estimate of the full gradient."""
    n = p.shape[0]
    for i in range(n):
        b = i // block_size
        size = min(block_size, n - b * block_size)
        aux[i, 1] = c[i] * dl[i]
        aux[i, 2] = c[i]
        aux[i, 3] = size * p[i] / block_pi[b] if block_pi[b] > 0.0 else 0.0


@njit(**_NJIT)
def systematic_draws(pi, u, out):
    """Fill ``out`` with sample indices by systematic resampling from probabilities ``pi``.

    Sample ``i`` appears ``floor`` or ``ceil`` of ``len(out) * pi_i`` times, in increasing
    order; ``u`` is one uniform number in [0, 1). After a random shuffle every position is
    a draw with marginal distribution ``pi``, at the cost of one sequential pass (instead
    of a binary search per draw).
    """
    n_draws = out.shape[0]
    cum = 0.0
    k = 0
    last = 0
    for i in range(pi.shape[0]):
        if pi[i] > 0.0:
            last = i
        cum += pi[i] * n_draws
        while k < n_draws and k + u < cum:
            out[k] = i
            k += 1
    while k < n_draws:  # rounding in the cumulative sum
        out[k] = last
        k += 1


@njit(**_NJIT)
def svrg_epoch(
    X,
    aux,
    blocks,
    batch_size,
    code,
    hyper,
    w,
    state,
    mean,
    inv_scale,
    precond,
    mu,
):
    """One epoch of preconditioned, variance-reduced SGD on the relaxed objective, in place.

    The objective is ``G(w, b, eta) + alpha/2 ||w||^2`` with
    ``G = eta - lam + (lam/rho) sum_i p_i softplus((l_i - eta)/lam + log rho)``.
    One sample's gradient is ``c_i dl_i (x_i, 1)`` in ``(w, b)`` and ``1 - c_i`` in ``eta``,
    with ``c_i = sigmoid(z_i)/rho``. The control variate is the same sample's gradient at the
    snapshot (``aux[i, 1] = c_i dl_i``, ``aux[i, 2] = c_i``) plus the snapshot's full
    gradient ``mu``, so the estimate stays unbiased and its variance vanishes at the optimum.

    The epoch ends at the average of its iterates over the second half of the steps.
    The step is taken in standardised coordinates ``v = w / inv_scale`` (features centred at
    ``mean``), ``b_c = b + mean . w`` and ``eta``, preconditioned by the symmetric matrix
    ``precond`` (the damped inverse Hessian of the objective at the snapshot, of size
    d + 2).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), C order
    aux : ndarray of shape (n_samples, 4), C order
        Per sample: target, ``c_i dl_i`` and ``c_i`` at the snapshot, and the importance
        weight of the row within its block (see :func:`pack_snapshot`).
    blocks : ndarray of int64 of shape (n_steps,)
        Mini-batches in the order they are used, as indices of blocks of contiguous rows
        (drawn with the probabilities of :func:`block_probabilities`): contiguous rows keep
        the memory access sequential.
    batch_size : int
        Rows per block.
    code : int
        Loss code.
    hyper : ndarray of shape (5,)
        ``(lam, rho, alpha, eps, step)``.
    w : ndarray of shape (n_features,)
        Coefficients, replaced in place by the epoch's averaged iterate.
    state : ndarray of shape (2,)
        ``(b_c, eta)``, replaced in place likewise.
    mean, inv_scale : ndarray of shape (n_features,)
    precond : ndarray of shape (n_features + 2, n_features + 2)
    mu : ndarray of shape (n_features + 2,)
        Full gradient at the snapshot in the standardised coordinates ``(v, b_c, eta)``,
        without the penalty (which is added exactly at every step).

    Returns
    -------
    ok : bool
        False when a prediction stopped being finite (the caller restores the snapshot).
    """
    lam, rho, alpha, eps, step = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    log_rho = math.log(rho)
    n, d = X.shape
    gw = np.zeros(d)
    g = np.zeros(d + 2)
    mw = 0.0
    for j in range(d):
        mw += mean[j] * w[j]
    b_c = state[0]
    eta = state[1]
    # the epoch returns the average of the iterates over its second half, which cancels
    # most of the noise of the last iterate
    w_avg = np.zeros(d)
    b_avg = 0.0
    eta_avg = 0.0
    n_avg = 0
    n_steps = blocks.shape[0]
    average_from = n_steps // 2
    for step_index in range(n_steps):
        start = blocks[step_index] * batch_size
        stop = min(start + batch_size, n)
        inv_b = 1.0 / (stop - start)
        gw[:] = 0.0
        sum_delta = 0.0
        sum_eta = 0.0
        for i in range(start, stop):
            f = b_c - mw
            for j in range(d):
                f += X[i, j] * w[j]
            if not math.isfinite(f):
                return False
            loss, dl, _ = loss_and_derivatives(code, f, aux[i, 0], eps)
            c = sigmoid((loss - eta) / lam + log_rho) / rho
            r = aux[i, 3]
            delta = r * (c * dl - aux[i, 1])
            for j in range(d):
                gw[j] += delta * X[i, j]
            sum_delta += delta
            sum_eta += r * (aux[i, 2] - c)
        for j in range(d):
            g[j] = inv_scale[j] * ((gw[j] - mean[j] * sum_delta) * inv_b + alpha * w[j]) + mu[j]
        g[d] = sum_delta * inv_b + mu[d]
        g[d + 1] = sum_eta * inv_b + mu[d + 1]
        mw = 0.0
        for j in range(d):
            acc = 0.0
            for l in range(d + 2):
                acc += precond[j, l] * g[l]
            w[j] -= step * inv_scale[j] * acc
            mw += mean[j] * w[j]
        acc_b = 0.0
        acc_eta = 0.0
        for l in range(d + 2):
            acc_b += precond[d, l] * g[l]
            acc_eta += precond[d + 1, l] * g[l]
        b_c -= step * acc_b
        eta -= step * acc_eta
        if step_index >= average_from:
            for j in range(d):
                w_avg[j] += w[j]
            b_avg += b_c
            eta_avg += eta
            n_avg += 1
    for j in range(d):
        w[j] = w_avg[j] / n_avg
    state[0] = b_avg / n_avg
    state[1] = eta_avg / n_avg
    return True
