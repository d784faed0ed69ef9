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

from .risk import sigmoid, softplus, weight

_NJIT = {"cache": True, "nogil": True}

SQUARED_ERROR = 0
HUBER = 1
ABSOLUTE_ERROR = 2
LOG_LOSS = 3
MULTINOMIAL = 4  # K outputs; every other loss has one

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
def multinomial_loss(f, y, grad):
    """Cross-entropy ``logsumexp(f) - f[y]`` of the scores ``f`` (K classes) for the class
    index ``y``; writes its gradient ``softmax(f) - e_y`` to ``grad``. (The Hessian,
    ``diag(s) - s s^T`` with ``s = softmax(f)``, follows from the gradient.)"""
    top = f[0]
    for k in range(1, f.shape[0]):
        top = max(top, f[k])
    total = 0.0
    for k in range(f.shape[0]):
        grad[k] = math.exp(f[k] - top)
        total += grad[k]
    for k in range(f.shape[0]):
        grad[k] /= total
    grad[y] -= 1.0
    return max(top + math.log(total) - f[y], 0.0)


@njit(**_NJIT)
def pointwise_losses(code, pred, y, eps, loss, grad, hess):
    """Fill the per-sample losses and their derivatives for the predictions ``pred`` of
    shape (n, K). ``grad`` (n, K) gets the gradient in the prediction; ``hess`` (n, K) the
    second derivative for the one-output losses, and the class probabilities ``s`` for
    ``MULTINOMIAL`` (whose Hessian is ``diag(s) - s s^T``)."""
    for i in range(pred.shape[0]):
        if code == MULTINOMIAL:
            label = int(y[i])
            loss[i] = multinomial_loss(pred[i], label, grad[i])
            hess[i, :] = grad[i, :]
            hess[i, label] += 1.0
        else:
            loss[i], grad[i, 0], hess[i, 0] = loss_and_derivatives(code, pred[i, 0], y[i], eps)


@njit(**_NJIT)
def curvature_matrix(code, p, c, dl, ddl, lam, rho, out):
    """Per-sample curvature coefficients ``A_i = p_i (c_i M_i + k_i g_i g_i^T)`` (K x K),
    written to ``out`` of shape (n, K, K), where ``g_i`` is the gradient of the loss in the
    prediction, ``M_i`` its Hessian and ``k_i = c_i (1 - rho c_i) / lam`` the curvature of
    the softplus: the Hessian of the objective in the coefficients is
    ``sum_i (x_i, 1)(x_i, 1)^T kron A_i``."""
    K = dl.shape[1]
    for i in range(p.shape[0]):
        k = c[i] * (1.0 - rho * c[i]) / lam
        for a in range(K):
            for b in range(K):
                if code == MULTINOMIAL:
                    m = (ddl[i, a] if a == b else 0.0) - ddl[i, a] * ddl[i, b]
                else:
                    m = ddl[i, a]  # one output
                out[i, a, b] = p[i] * (c[i] * m + k * dl[i, a] * dl[i, b])


@njit(**_NJIT)
def curvature_terms(code, p, c, dl, ddl, lam, rho, a, e, pk):
    """Per-sample curvature of the relaxed objective at a snapshot, for a chunk of rows.

    One sample's Hessian is ``c_i (grad f)^T M_i grad f + k_i grad u grad u^T`` with
    ``M_i`` the Hessian of the loss in the prediction, ``u_i = l_i - eta`` and
    ``k_i = c_i (1 - rho c_i) / lam`` the curvature of the softplus. Writes the p-weighted
    size of the coefficient of ``(x_i, 1)(x_i, 1)^T`` (``a_i = p_i (c_i tr M_i +
    k_i |l'_i|^2)``), the cross terms with eta (``e_i = -p_i k_i l'_i``, shape (n, K)) and
    the eta-eta term (``pk_i = p_i k_i``). The one-output losses have ``M_i = l''_i``;
    ``MULTINOMIAL`` has ``M_i = diag(s) - s s^T``, with the class probabilities ``s`` in
    ``ddl``. ``a`` and ``pk`` drive the importance sampling of the stochastic epoch.
    """
    K = dl.shape[1]
    for i in range(p.shape[0]):
        k = c[i] * (1.0 - rho * c[i]) / lam
        trace = 0.0
        grad2 = 0.0
        for j in range(K):
            if code == MULTINOMIAL:
                trace += ddl[i, j] * (1.0 - ddl[i, j])
            else:
                trace += ddl[i, j]
            grad2 += dl[i, j] * dl[i, j]
            e[i, j] = -p[i] * k * dl[i, j]
        a[i] = p[i] * (c[i] * trace + k * grad2)
        pk[i] = p[i] * k


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
def apply_arrow(dinv, C, Sinv, g, out):
    """``out = P g`` for the inverse P of an arrow matrix: a diagonal block over the
    coefficients (inverse ``dinv``), bordered by a small dense block over the intercepts
    and eta, with cross terms ``C``; ``Sinv`` is the inverse of the border's Schur
    complement. Costs O(len(g) * (border + 1))."""
    m = dinv.shape[0]
    r = C.shape[1]
    border = np.empty(r)
    for a in range(r):
        border[a] = g[m + a]
    for i in range(m):
        t = dinv[i] * g[i]
        out[i] = t
        for a in range(r):
            border[a] -= C[i, a] * t
    u = np.zeros(r)
    for a in range(r):
        for b2 in range(r):
            u[a] += Sinv[a, b2] * border[b2]
        out[m + a] = u[a]
    for i in range(m):
        acc = 0.0
        for a in range(r):
            acc += C[i, a] * u[a]
        out[i] -= dinv[i] * acc


@njit(inline="always", **_NJIT)
def _row_dot(X, data, indices, indptr, i, w, k, acc):
    """``acc + x_i . w[k]`` for row i of dense X, or of the CSR matrix
    ``(data, indices, indptr)`` when X is empty."""
    if X.shape[0] == 0:
        for jj in range(indptr[i], indptr[i + 1]):
            acc += data[jj] * w[k, indices[jj]]
    else:
        for j in range(X.shape[1]):
            acc += X[i, j] * w[k, j]
    return acc


@njit(**_NJIT)
def svrg_epoch(
    X,
    data,
    indices,
    indptr,
    y,
    p,
    block_pi,
    blocks,
    batch_size,
    code,
    hyper,
    w,
    state,
    w_snap,
    b_snap,
    f_store,
    mean,
    inv_scale,
    precond,
    dinv,
    C,
    Sinv,
    mu,
):
    """One epoch of preconditioned, variance-reduced SGD on the relaxed objective, in place.

    The model has K outputs ``f(x) = x W + b`` (K = 1 except for the multinomial loss).
    The objective is ``G(W, b, eta) + alpha/2 ||W||^2`` with
    ``G = eta - lam + (lam/rho) sum_i p_i softplus((l_i - eta)/lam + log rho)``.
    One sample's gradient is ``c_i (x_i, 1) l'_i^T`` in ``(W, b)`` and ``1 - c_i`` in ``eta``,
    with ``c_i = sigmoid(z_i)/rho``. The control variate is the same sample's gradient at the
    snapshot, from the snapshot's prediction (kept by the caller, or recomputed here from
    the snapshot's model while the row is in cache, so that no per-sample array need be
    kept between epochs), plus the snapshot's full gradient
    ``mu``, so the estimate stays unbiased and its variance vanishes at the optimum.

    The epoch ends at the average of its iterates over the second half of the steps.
    The step is taken in standardised coordinates ``V = W / inv_scale`` (features centred at
    ``mean``), ``b_c = b + mean W`` and ``eta``, flattened as ``(V[0, :], ..., V[d-1, :],
    b_c, eta)``, preconditioned by the damped inverse Hessian of the objective at the
    snapshot: the dense matrix ``precond``, or when it is empty (sparse data with many
    features) the arrow matrix ``(dinv, C, Sinv)`` of :func:`apply_arrow`.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), C order
        Dense data, or an empty array when the data are the CSR matrix
        ``(data, indices, indptr)`` (empty arrays for dense data). With CSR data the
        per-sample work follows the non-zeros; the per-step work (assembling the centred
        gradient, preconditioning, averaging) is O(d K) with the arrow, which batches of
        about d / (non-zeros per row) rows amortise.
    data, indices, indptr : ndarray
    y : ndarray of shape (n_samples,)
        Targets (the class index for the multinomial loss).
    p : ndarray of shape (n_samples,) or (1,)
        The empirical distribution; one value means uniform weights.
    block_pi : ndarray of shape (n_blocks,)
        Probabilities with which the blocks of ``batch_size`` contiguous rows are drawn;
        a drawn row's gradient is weighted by ``|block| p_i / block_pi`` so that the
        block's mean is an unbiased estimate of the full gradient.
    blocks : ndarray of int64 of shape (n_steps,)
        Mini-batches in the order they are used, as indices of blocks (drawn with the
        probabilities ``block_pi``): contiguous rows keep the memory access sequential.
    batch_size : int
        Rows per block.
    code : int
        Loss code.
    hyper : ndarray of shape (6,)
        ``(lam, rho, alpha, eps, step, eta)``, the last the snapshot's ``eta``.
    w : ndarray of shape (K, n_features)
        Coefficients (the transpose of W, so that the loops over features are contiguous),
        replaced in place by the epoch's averaged iterate.
    state : ndarray of shape (K + 1,)
        ``(b_c, eta)``, replaced in place likewise.
    w_snap : ndarray of shape (K, n_features)
        The snapshot's coefficients, in the layout of ``w``.
    b_snap : ndarray of shape (K,)
        The snapshot's intercepts (not centred).
    f_store : ndarray of shape (n_samples, K) or (0, K)
        The snapshot's predictions when the caller keeps them (where they are small next
        to X); else empty, and they are recomputed from ``w_snap`` and ``b_snap``.
    mean, inv_scale : ndarray of shape (n_features,)
    precond : ndarray of shape (D, D) with D = (n_features + 1) K + 1, or (0, 0)
    dinv, C, Sinv : ndarray
        The arrow preconditioner when ``precond`` is empty.
    mu : ndarray of shape (D,)
        Full gradient at the snapshot in the standardised coordinates, without the penalty
        (which is added exactly at every step).

    Returns
    -------
    ok : bool
        False when a loss stopped being finite (the caller restores the snapshot).
    """
    lam, rho, alpha, eps, step = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    eta_snap = hyper[5]
    log_rho = math.log(rho)
    sparse = X.shape[0] == 0
    n = indptr.shape[0] - 1 if sparse else X.shape[0]
    stored = f_store.shape[0] > 0
    K, d = w.shape
    dim = (d + 1) * K + 1
    gw = np.zeros((K, d))
    g = np.zeros(dim)
    move = np.zeros(dim)
    f = np.empty(K)
    f_snap = np.empty(K)
    dl = np.empty(K)
    dl_snap = np.empty(K)
    sum_delta = np.empty(K)
    mw = np.zeros(K)
    for k in range(K):
        for j in range(d):
            mw[k] += mean[j] * w[k, j]
    b_c = state[:K].copy()
    eta = state[K]
    # the epoch returns the average of the iterates over its second half, which cancels
    # most of the noise of the last iterate
    w_avg = np.zeros((K, d))
    b_avg = np.zeros(K)
    eta_avg = 0.0
    n_avg = 0
    n_steps = blocks.shape[0]
    average_from = n_steps // 2
    for step_index in range(n_steps):
        block = blocks[step_index]
        start = block * batch_size
        stop = min(start + batch_size, n)
        inv_b = 1.0 / (stop - start)
        # importance weight of a row: |block| p_i / block_pi
        ratio = (stop - start) / block_pi[block]
        gw[:] = 0.0
        sum_delta[:] = 0.0
        sum_eta = 0.0
        for i in range(start, stop):
            for k in range(K):
                f[k] = _row_dot(X, data, indices, indptr, i, w, k, b_c[k] - mw[k])
                if stored:
                    f_snap[k] = f_store[i, k]
                else:
                    f_snap[k] = _row_dot(X, data, indices, indptr, i, w_snap, k, b_snap[k])
            if code == MULTINOMIAL:
                label = int(y[i])
                loss = multinomial_loss(f, label, dl)
                loss_snap = multinomial_loss(f_snap, label, dl_snap)
            else:
                loss, dl[0], _ = loss_and_derivatives(code, f[0], y[i], eps)
                loss_snap, dl_snap[0], _ = loss_and_derivatives(code, f_snap[0], y[i], eps)
            if not math.isfinite(loss):
                return False
            c = sigmoid((loss - eta) / lam + log_rho) / rho
            c_snap = sigmoid((loss_snap - eta_snap) / lam + log_rho) / rho
            r = ratio * weight(p, i)
            for k in range(K):
                dk = r * (c * dl[k] - c_snap * dl_snap[k])
                sum_delta[k] += dk
                if sparse:
                    for jj in range(indptr[i], indptr[i + 1]):
                        gw[k, indices[jj]] += dk * data[jj]
                else:
                    for j in range(d):
                        gw[k, j] += dk * X[i, j]
            sum_eta += r * (c_snap - c)
        for j in range(d):
            for k in range(K):
                g[j * K + k] = (
                    inv_scale[j] * ((gw[k, j] - mean[j] * sum_delta[k]) * inv_b + alpha * w[k, j])
                    + mu[j * K + k]
                )
        for k in range(K):
            g[d * K + k] = sum_delta[k] * inv_b + mu[d * K + k]
        g[dim - 1] = sum_eta * inv_b + mu[dim - 1]
        if precond.shape[0] > 0:
            for row in range(dim):
                acc = 0.0
                for m in range(dim):
                    acc += precond[row, m] * g[m]
                move[row] = acc
        else:
            apply_arrow(dinv, C, Sinv, g, move)
        mw[:] = 0.0
        for j in range(d):
            for k in range(K):
                w[k, j] -= step * inv_scale[j] * move[j * K + k]
                mw[k] += mean[j] * w[k, j]
        for k in range(K):
            b_c[k] -= step * move[d * K + k]
        eta -= step * move[dim - 1]
        if step_index >= average_from:
            for k in range(K):
                for j in range(d):
                    w_avg[k, j] += w[k, j]
                b_avg[k] += b_c[k]
            eta_avg += eta
            n_avg += 1
    for k in range(K):
        for j in range(d):
            w[k, j] = w_avg[k, j] / n_avg
        state[k] = b_avg[k] / n_avg
    state[K] = eta_avg / n_avg
    return True


@njit(**_NJIT)
def csr_moments(data, indices, indptr, V, W, out):
    """In one pass over a CSR matrix X: ``out[:, :m] += X^T V`` and
    ``out[:, m:] += (X * X)^T W`` for V with m columns (no copy of X, nor of its squares;
    one output row per non-zero, so that each scattered update touches one cache line)."""
    m = V.shape[1]
    m2 = W.shape[1]
    for i in range(indptr.shape[0] - 1):
        for jj in range(indptr[i], indptr[i + 1]):
            j = indices[jj]
            x = data[jj]
            for c in range(m):
                out[j, c] += x * V[i, c]
            x2 = x * x
            for c in range(m2):
                out[j, m + c] += x2 * W[i, c]
