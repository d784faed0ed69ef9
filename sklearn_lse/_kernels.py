"""Every Numba kernel of the package, in one file: the overflow-free primitives, the KL-DRO
risk and its softplus relaxation (the factors, the 1-D solve for eta), the per-sample losses
of linear models, and the solvers' per-sample work (curvature, line searches, the
stochastic epoch, block sampling).

They live together because the kernels are cached on disk (``cache=True``) and Numba's
cache does not notice edits to other files: a cached kernel only calls jitted functions of
this file (``tests/test_style.py`` checks it). Losses are integer codes with a scalar
parameter, never objects; their names are in :mod:`sklearn_lse._registry`.

Notation of ``shared/MATH.md``: losses ``l_i``, empirical weights ``p_i`` (one value for
uniform weights), temperature ``lam``, density cap ``rho``, threshold ``eta`` (the paper's
shifted by ``lam log(1 - rho)``, see the relaxation section), ``w_i = (l_i - eta) / lam``;
factors ``c_i = exp(w_i) / (1 - rho + rho exp(w_i))`` (the paper's ``sigmoid(z_i) / rho``:
the gradient of the relaxed objective is ``c_i`` times that of the loss) and curvatures
``k_i = c_i (1 - rho c_i) / lam`` (the second derivative in the loss). For ``rho = 0``
(the exact LogSumExp risk, whose threshold is the risk itself) they are the limits
``c_i = exp(w_i)`` and ``k_i = c_i / lam``.
"""

import math

import numpy as np
from numba import njit

_NJIT = {"cache": True, "nogil": True}


# --------------------------------------------------------------------------------------
# Overflow-free scalar primitives
# --------------------------------------------------------------------------------------
@njit(inline="always", **_NJIT)
def log1p(x):
    """``log(1 + x)`` for ``x > -1``, to a few units in the last place (Goldberg, *What
    every computer scientist should know about floating-point arithmetic*, theorem 4):
    ``log(u) x / (u - 1)`` with ``u = 1 + x`` rounded. Twice as fast as ``math.log1p``
    here (a call into libm that Numba does not inline), which was a quarter of the time
    of the line searches' losses and of the relaxed risk's value."""
    u = 1.0 + x
    if u == 1.0:
        return x
    return math.log(u) * (x / (u - 1.0))


@njit(**_NJIT)
def offset(rho):
    """``1 + (1 - rho)/rho * log(1 - rho) = sum_k rho^k / (k (k+1))``, accurate for tiny rho."""
    if rho < 0.1:
        total = 0.0
        term = 1.0
        for k in range(1, 40):
            term *= rho
            total += term / (k * (k + 1.0))
        return total
    return 1.0 + (1.0 - rho) / rho * math.log1p(-rho)


@njit(**_NJIT)
def weight(p, i):
    """``p[i]``, where a ``p`` of length 1 stands for uniform weights (the solvers keep
    one number instead of n for unweighted data)."""
    return p[0] if p.shape[0] == 1 else p[i]


# --------------------------------------------------------------------------------------
# Exact LogSumExp risk
# --------------------------------------------------------------------------------------
@njit(**_NJIT)
def _max_supported(losses, p):
    m = -np.inf
    for i in range(losses.shape[0]):
        if weight(p, i) > 0.0 and losses[i] > m:
            m = losses[i]
    return m


@njit(**_NJIT)
def exact_risk(losses, p, lam):
    """``lam * log sum_i p_i exp(losses_i / lam)``.

    Shifted by the largest supported loss ``m``, as ``m + lam * log1p(sum_i p_i
    expm1((l_i - m) / lam))`` while the sum is not close to -1 and the weights sum to 1 to
    rounding: their rounding (of order 1e-16) is then never multiplied by ``lam``, so that
    the risk tends to the weighted mean loss, not to ``lam * 1e-16``, as ``lam -> inf``.
    (The weights of a subset of the samples sum to less than 1.)
    """
    m = _max_supported(losses, p)
    s = 0.0
    total = 0.0
    for i in range(losses.shape[0]):
        if weight(p, i) > 0.0:
            s += weight(p, i) * math.expm1((losses[i] - m) / lam)
            total += weight(p, i)
    if abs(total - 1.0) > 1e-12:
        s += total - 1.0
    if s > -0.5:
        return m + lam * math.log1p(s)
    s = 0.0
    for i in range(losses.shape[0]):
        if weight(p, i) > 0.0:
            s += weight(p, i) * math.exp((losses[i] - m) / lam)
    return m + lam * math.log(s)


@njit(**_NJIT)
def exact_weights(losses, p, lam, out):
    """Write the worst-case distribution ``p*`` (softmax of ``losses / lam`` under p) to out."""
    m = _max_supported(losses, p)
    s = 0.0
    for i in range(losses.shape[0]):
        if weight(p, i) > 0.0:
            out[i] = weight(p, i) * math.exp((losses[i] - m) / lam)
            s += out[i]
        else:
            out[i] = 0.0
    for i in range(losses.shape[0]):
        out[i] /= s


# --------------------------------------------------------------------------------------
# Softplus relaxation
#
# In the threshold eta of this package (the paper's, shifted by lam log(1 - rho), so that
# eta is the loss itself when all the losses are equal) the relaxed risk is
#
#     R_rho = min_eta  eta + (lam / rho) sum_i p_i log1p(rho expm1(w_i)),
#     w_i = (l_i - eta) / lam,
#
# which equals min of the softplus form eta - lam + (lam / rho) sum p softplus(z) plus
# lam * offset(rho) exactly, without its large constants (no cancellation as lam -> inf),
# and tends to the exact form eta + lam sum_i p_i expm1(w_i) as rho -> 0. Its derivative
# in l_i is p_i c_i with c_i = exp(w_i) / (1 - rho + rho exp(w_i)) = sigmoid(z_i) / rho.
# --------------------------------------------------------------------------------------
@njit(inline="always", **_NJIT)
def relaxation_weights(d, lam, rho):
    """The factor ``c`` and the curvature ``k = c (1 - rho c) / lam`` of a sample whose
    loss is ``d`` above the threshold (``rho = 0``: ``exp(d / lam)`` and ``c / lam``), in
    overflow-free forms (``1 - rho c`` is never formed by subtraction)."""
    w = d / lam
    if rho == 0.0:
        # a sample with weight p has c <= 1 / p (the worst case's mass is at most 1), so
        # the cap only guards the samples of weight 0, whose c must stay finite
        c = math.exp(min(w, 300.0))
        return c, c / lam
    if w >= 0.0:
        e = math.exp(-w)
        c = 1.0 / (rho + (1.0 - rho) * e)
        return c, c * c * (1.0 - rho) * e / lam
    e = math.exp(w)
    q = 1.0 / (1.0 - rho + rho * e)
    return e * q, e * q * q * (1.0 - rho) / lam


@njit(inline="always", **_NJIT)
def relaxation_log_factor(d, lam, rho):
    """``log c`` of :func:`relaxation_weights`, for masses that underflow."""
    w = d / lam
    if rho == 0.0:
        return w
    if w >= 0.0:
        return -math.log(rho + (1.0 - rho) * math.exp(-w))
    return w - math.log(1.0 - rho + rho * math.exp(w))


@njit(inline="always", **_NJIT)
def relaxation_term(d, lam, rho):
    """``(lam / rho) log1p(rho expm1(d / lam))``: one sample's term of the relaxed risk,
    in loss units, for a loss ``d`` above the threshold (``rho = 0``:
    ``lam expm1(d / lam)``). Finite for any finite ``d`` and ``lam > 0``."""
    w = d / lam
    if rho == 0.0:
        return lam * math.expm1(min(w, 700.0))
    if w < 700.0:
        # exp(w) - 1 is exact to 2 ulps for |w| >= 1 (and cheaper than expm1)
        e = math.expm1(w) if abs(w) < 1.0 else math.exp(w) - 1.0
        x = rho * e
        if abs(x) < 1e-8:  # log1p(x) / x by its series: exact also for tiny rho
            return lam * e * (1.0 - x * (0.5 - x / 3.0))
        return lam / rho * log1p(x)
    # 1 + rho (e^w - 1) = rho e^w (1 + (1 - rho) e^-w / rho), and e^-w = 0 here
    return (d + lam * math.log(rho)) / rho


@njit(**_NJIT)
def relaxation_terms(losses, eta0, eta1, lam, rho, c, k):
    """Write the factors ``c_i`` and curvatures ``k_i`` of ``losses`` at the threshold
    ``eta0 + eta1`` (``eta0`` subtracted first, see :func:`centred_eta`)."""
    for i in range(losses.shape[0]):
        c[i], k[i] = relaxation_weights((losses[i] - eta0) - eta1, lam, rho)


# a sample whose loss is this many lam below the threshold has a factor below
# exp(-_FAR) = 4e-18 (relative to its weight): its term is the constant limit, and it
# adds nothing to the mass (the sums skip its exponentials)
_FAR = 40.0


@njit(**_NJIT)
def relaxed_value(losses, p, eta, lam, rho):
    """The relaxed risk's objective in the threshold,
    ``eta + (lam / rho) sum_i p_i log1p(rho expm1((l_i - eta) / lam))``."""
    far = -lam if rho == 0.0 else lam / rho * math.log1p(-rho)  # the term's limit
    s = 0.0
    for i in range(losses.shape[0]):
        if weight(p, i) > 0.0:
            d = losses[i] - eta
            if d < -_FAR * lam:
                s += weight(p, i) * far
            else:
                s += weight(p, i) * relaxation_term(d, lam, rho)
    return eta + s


@njit(**_NJIT)
def relaxed_divergence(losses, p, eta, lam, rho):
    """The divergence of the worst case ``q_i = p_i c_i`` (at the optimal threshold) from
    ``p``: the KL divergence for ``rho = 0``, the relaxed (density-capped) one for
    ``rho > 0``. It is ``(sum_i q_i l_i - R) / lam``, summed as
    ``sum_i p_i (c_i w_i - (1 / rho) log1p(rho expm1(w_i)))``, whose terms are all
    non-negative (no cancellation, also for tiny divergences at large lam)."""
    far = 1.0 if rho == 0.0 else -math.log1p(-rho) / rho  # the term's limit far below
    s = 0.0
    for i in range(losses.shape[0]):
        if weight(p, i) <= 0.0:
            continue
        d = losses[i] - eta
        if d < -_FAR * lam:
            s += weight(p, i) * far
            continue
        c = relaxation_weights(d, lam, rho)[0]
        w = d / lam
        if rho == 0.0:  # t log t - t + 1 with t = exp(w)
            s += weight(p, i) * (c * w - math.expm1(w))
        elif w < 700.0:
            s += weight(p, i) * (c * w - relaxation_term(d, lam, rho) / lam)
        else:  # c = 1 / rho: w / rho - (w + log rho) / rho
            s += weight(p, i) * (-math.log(rho) / rho)
    return s


@njit(**_NJIT)
def _log_mass(losses, p, eta, lam, rho):
    """``g = log sum_i p_i c_i`` (zero at the optimal eta) and its first two derivatives in
    eta, ``g' = -sum p k / sum p c`` and ``g'' = sum p k (1 - 2 rho c) / (lam sum p c) -
    g'^2``; recomputed in the log domain when the mass underflows (huge losses, tiny lam,
    eta far above them).

    The mass is summed with Neumaier's compensation: a plain sum of a million terms near
    1e-6 carries a rounding error near 1e-12, above the solve's tolerance on ``g``, which
    then stalled and ended by bisection after some forty passes instead of two or three."""
    s = 0.0
    err = 0.0  # the compensation of s
    t = 0.0
    u = 0.0  # sum p k (1 - 2 rho c)
    for i in range(losses.shape[0]):
        d = losses[i] - eta
        if weight(p, i) > 0.0 and d >= -_FAR * lam:
            c, k = relaxation_weights(d, lam, rho)
            x = weight(p, i) * c
            total = s + x
            if abs(s) >= abs(x):
                err += (s - total) + x
            else:
                err += (x - total) + s
            s = total
            t += weight(p, i) * k
            u += weight(p, i) * k * (1.0 - 2.0 * rho * c)
    s += err
    if s > 1e-250 and math.isfinite(s):
        dg = -t / s
        return math.log(s), dg, u / (lam * s) - dg * dg
    m = -np.inf
    s = 0.0
    t = 0.0  # sum of p c (1 - rho c) on the shift of s
    u = 0.0  # and of p c (1 - rho c) (1 - 2 rho c)
    for i in range(losses.shape[0]):
        if weight(p, i) <= 0.0:
            continue
        d = losses[i] - eta
        a = math.log(weight(p, i)) + relaxation_log_factor(d, lam, rho)
        c, k = relaxation_weights(d, lam, rho)
        one_minus = k * lam / c if c > 0.0 else 1.0
        if a > m:
            scale = math.exp(m - a)
            s = s * scale + 1.0
            t = t * scale + one_minus
            u = u * scale + one_minus * (1.0 - 2.0 * rho * c)
            m = a
        else:
            e = math.exp(a - m)
            s += e
            t += e * one_minus
            u += e * one_minus * (1.0 - 2.0 * rho * c)
    dg = -t / (s * lam)
    return m + math.log(s), dg, u / (s * lam * lam) - dg * dg


@njit(**_NJIT)
def _quantile_guess(losses, rho):
    """The (1 - rho)-quantile of a strided subsample of the losses: the root's limit as
    lam -> 0, a cheap cold start for the 1-D solve."""
    step = max(1, losses.shape[0] // 4096)
    return np.quantile(losses[::step], 1.0 - rho)


@njit(**_NJIT)
def solve_eta(losses, p, lam, rho, guess=np.nan):
    """The optimal threshold, the root of ``sum_i p_i c_i(eta) = 1`` (``rho > 0``).

    Newton's method on ``g = log(mass)`` (nearly linear in eta), started at ``guess`` when
    it is finite (else at a quantile of the losses), and safeguarded on a bracket: the
    mass is at most ``S = sum_i p_i`` at ``eta = max l`` (every ``c_i <= 1``), and at least
    1 at ``eta = min l - lam log((1 - rho) / (S - rho))`` (every ``c_i >= 1 / S``; this is
    ``min l`` for weights summing to 1; a subset of the samples has ``S < 1``). A Newton
    step that leaves the bracket is replaced by the Illinois (modified regula falsi) point
    of the bracket, or by bisection when the bracket stops shrinking. Near the root, a
    Newton step whose residual (``g'' (g / g')^2 / 2`` to leading order) is far below the
    tolerance is taken without the pass that would confirm it: from a warm start, two
    passes instead of three.
    """
    lo = np.inf
    hi = -np.inf
    total = 0.0
    for i in range(losses.shape[0]):
        if weight(p, i) > 0.0:
            lo = min(lo, losses[i])
            hi = max(hi, losses[i])
            total += weight(p, i)
    if total < 1.0 - 1e-12:
        lo -= lam * (math.log1p(-rho) - math.log(max(total - rho, 1e-300)))
    elif not hi > lo:
        return hi
    g_lo = np.inf  # g > 0 at lo, g < 0 at hi; values filled in as they are met
    g_hi = -np.inf
    if not math.isfinite(guess):
        guess = _quantile_guess(losses, rho)
    # a guess beyond the bracket starts at its nearer end (a line search's trial point
    # may move eta below the smallest loss), from where Newton's steps head for the root
    # (the midpoint of a bracket as wide as the largest loss took a dozen bisections)
    eta = min(max(guess, lo), hi)
    width = hi - lo
    for _ in range(200):
        g, dg, ddg = _log_mass(losses, p, eta, lam, rho)
        if abs(g) <= 1e-14:
            break
        if dg < 0.0 and abs(g) <= 1e-6:
            # near the root: the Newton step's residual is ddg (g / dg)^2 / 2 to its
            # leading order; where that is far below the tolerance (ddg varies on the
            # scale of lam, far above the step), the step is taken without a pass to check it
            step = g / dg
            if abs(step) <= 1e-3 * lam and 5.0 * abs(ddg) * step * step <= 1e-15:
                if lo < eta - step < hi:
                    eta -= step
                    break
        if g > 0.0:
            lo, g_lo = eta, g
            g_hi *= 0.5 if math.isfinite(g_hi) else 1.0  # Illinois: halve the stale end
        else:
            hi, g_hi = eta, g
            g_lo *= 0.5 if math.isfinite(g_lo) else 1.0
        new = eta - g / dg if dg < 0.0 else np.nan
        if not (lo < new < hi):
            if math.isfinite(g_lo) and math.isfinite(g_hi) and hi - lo < 0.5 * width:
                new = lo + (hi - lo) * g_lo / (g_lo - g_hi)
            else:
                new = 0.5 * (lo + hi)
            width = hi - lo
            if not (lo < new < hi):
                new = 0.5 * (lo + hi)
        if abs(new - eta) <= 1e-15 * (abs(eta) + lam):
            eta = new
            break
        eta = new
    return eta


@njit(**_NJIT)
def centred_eta(losses, p, lam, rho, guess=np.nan, overwrite=False):
    """The optimal threshold, solved again on the losses centred at the first root when it
    is large; for ``rho = 0``, the exact risk (the threshold of the exact form).

    Returns ``(eta0, losses - eta0, eta1)`` with the optimal eta equal to ``eta0 + eta1``;
    ``guess`` (for instance the previous optimum) speeds up the first solve. With
    ``overwrite``, ``losses`` itself is centred in place (and returned).
    Centring makes the losses near the threshold exact small numbers, so that eta, the
    weights and the risk are resolved to full precision even for losses of 1e8 with lam of
    1e-4, where the spacing of doubles near 1e8 is 1.5e-8, i.e. 1.5e-4 in units of lam.
    """
    if rho == 0.0:
        eta0 = exact_risk(losses, p, lam)
    else:
        eta0 = solve_eta(losses, p, lam, rho, guess)
    if abs(eta0) <= 1e3 * lam:
        # rounding of eta costs at most 1e3 * 2^-52 in units of lam: already resolved
        return 0.0, losses, eta0
    if overwrite:  # the caller's array becomes the centred losses: no copy
        losses -= eta0
        centred = losses
    else:
        centred = losses - eta0
    if rho == 0.0:
        return eta0, centred, 0.0
    return eta0, centred, solve_eta(centred, p, lam, rho, 0.0)


@njit(**_NJIT)
def relaxed_risk(losses, p, lam, rho, factors, guess=np.nan):
    """The relaxed risk ``min_eta relaxed_value`` (the exact risk for ``rho = 0``);
    returns (risk, optimal eta) and writes the factors ``c_i`` at the optimal eta to
    ``factors`` (the worst-case distribution is ``p * factors``). ``guess`` warm-starts
    the 1-D solve."""
    eta0, centred, eta1 = centred_eta(losses, p, lam, rho, guess)
    curvature = np.empty_like(factors)
    relaxation_terms(centred, 0.0, eta1, lam, rho, factors, curvature)
    return eta0 + relaxed_value(centred, p, eta1, lam, rho), eta0 + eta1


# --------------------------------------------------------------------------------------
# Losses of linear models (names and parameters: sklearn_lse._registry)
# --------------------------------------------------------------------------------------
SQUARED_ERROR = 0
HUBER = 1
ABSOLUTE_ERROR = 2
LOG_LOSS = 3
MULTINOMIAL = 4  # K outputs; every other loss has one
N_LOSS_CODES = 5


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
    if code == LOG_LOSS:  # softplus(m) and sigmoid(m) from one exponential
        m = -y * f
        e = math.exp(-abs(m))
        s = 1.0 / (1.0 + e) if m >= 0.0 else e / (1.0 + e)
        return max(m, 0.0) + log1p(e), -y * s, s * (1.0 - s)
    raise ValueError("unknown loss code")


@njit(inline="always", **_NJIT)
def loss_value(code, f, y, eps):
    """The loss of :func:`loss_and_derivatives` alone (the line searches' losses: for
    ``LOG_LOSS`` one exponential and one logarithm, no sigmoid)."""
    if code == LOG_LOSS:
        m = -y * f
        return max(m, 0.0) + log1p(math.exp(-abs(m)))
    return loss_and_derivatives(code, f, y, eps)[0]


@njit(inline="always", **_NJIT)
def softmax_loss(S, i, y, probs, j):
    """Cross-entropy ``logsumexp(s) - s[y]`` of the scores ``s = S[i]`` (K classes) for
    the class index ``y``; writes ``softmax(s)`` to ``probs[j]`` (the loss's gradient is
    ``softmax(s) - e_y``, its Hessian ``diag(softmax) - softmax softmax^T``). Indexed in
    place: a view of each row made the losses of 1e6 rows of 5 classes twice as slow."""
    K = S.shape[1]
    top = S[i, 0]
    for k in range(1, K):
        top = max(top, S[i, k])
    total = 0.0
    for k in range(K):
        probs[j, k] = math.exp(S[i, k] - top)
        total += probs[j, k]
    inv = 1.0 / total
    for k in range(K):
        probs[j, k] *= inv
    return max(top + math.log(total) - S[i, y], 0.0)


@njit(inline="always", **_NJIT)
def multinomial_row(pred, step, t, i, label):
    """The loss of :func:`softmax_loss` for row ``i`` of the scores ``pred + t * step``
    (n, K), alone (the line searches'), without forming the row's scores."""
    K = pred.shape[1]
    top = -np.inf
    for k in range(K):
        top = max(top, pred[i, k] + t * step[i, k])
    total = 0.0
    for k in range(K):
        total += math.exp(pred[i, k] + t * step[i, k] - top)
    return max(top + math.log(total) - (pred[i, label] + t * step[i, label]), 0.0)


@njit(**_NJIT)
def pointwise_losses(code, pred, y, eps, loss, grad, hess):
    """Fill the per-sample losses and their derivatives for the predictions ``pred`` of
    shape (n, K). ``grad`` (n, K) gets the gradient in the prediction; ``hess`` (n, K) the
    second derivative for the one-output losses, and the class probabilities ``s`` for
    ``MULTINOMIAL`` (whose Hessian is ``diag(s) - s s^T``)."""
    if code == MULTINOMIAL:  # a loop of its own
        for i in range(pred.shape[0]):
            label = int(y[i])
            loss[i] = softmax_loss(pred, i, label, hess, i)
            for k in range(pred.shape[1]):
                grad[i, k] = hess[i, k]
            grad[i, label] -= 1.0
        return
    for i in range(pred.shape[0]):
        loss[i], grad[i, 0], hess[i, 0] = loss_and_derivatives(code, pred[i, 0], y[i], eps)


@njit(**_NJIT)
def curvature_matrix(code, p, c, k, dl, ddl, irls, out):
    """Per-sample curvature coefficients ``A_i = p_i (c_i M_i + k_i g_i g_i^T)`` (K x K),
    written to ``out`` of shape (n, K, K), where ``g_i`` is the gradient of the loss in the
    prediction, ``M_i`` its Hessian, ``c_i`` the factors and ``k_i`` the curvatures of the
    relaxation: the Hessian of the objective in the coefficients is
    ``sum_i (x_i, 1)(x_i, 1)^T kron A_i``. With ``irls``, only the first part
    ``p_i c_i M_i``: the Hessian of the weighted loss with the worst case's weights fixed,
    which bounds the suboptimality (see :mod:`sklearn_lse._curvature`)."""
    K = dl.shape[1]
    for i in range(p.shape[0]):
        kk = 0.0 if irls else k[i]
        for a in range(K):
            for b in range(K):
                if code == MULTINOMIAL:
                    m = (ddl[i, a] if a == b else 0.0) - ddl[i, a] * ddl[i, b]
                else:
                    m = ddl[i, a]  # one output
                out[i, a, b] = p[i] * (c[i] * m + kk * dl[i, a] * dl[i, b])


@njit(**_NJIT)
def curvature_terms(code, p, c, k, dl, ddl, a, e, pk):
    """Per-sample curvature of the relaxed objective, for a chunk of rows.

    One sample's Hessian is ``c_i (grad f)^T M_i grad f + k_i grad u grad u^T`` with
    ``M_i`` the Hessian of the loss in the prediction and ``u_i = l_i - eta``. Writes the
    p-weighted size of the coefficient of ``(x_i, 1)(x_i, 1)^T`` (``a_i = p_i (c_i tr M_i +
    k_i |l'_i|^2)``), the cross terms with eta (``e_i = -p_i k_i l'_i``, shape (n, K)) and
    the eta-eta term (``pk_i = p_i k_i``). The one-output losses have ``M_i = l''_i``;
    ``MULTINOMIAL`` has ``M_i = diag(s) - s s^T``, with the class probabilities ``s`` in
    ``ddl``. ``a`` and ``pk`` drive the importance sampling of the stochastic epoch.
    """
    K = dl.shape[1]
    for i in range(p.shape[0]):
        trace = 0.0
        grad2 = 0.0
        for j in range(K):
            if code == MULTINOMIAL:
                trace += ddl[i, j] * (1.0 - ddl[i, j])
            else:
                trace += ddl[i, j]
            grad2 += dl[i, j] * dl[i, j]
            e[i, j] = -p[i] * k[i] * dl[i, j]
        a[i] = p[i] * (c[i] * trace + k[i] * grad2)
        pk[i] = p[i] * k[i]


@njit(**_NJIT)
def step_losses(code, pred, step, t, y, eps, loss):
    """Losses of the predictions ``pred + t * step`` (both (n, K)), for line searches along
    a direction whose change of the predictions ``step`` was computed once."""
    for i in range(pred.shape[0]):
        if code == MULTINOMIAL:
            loss[i] = multinomial_row(pred, step, t, i, int(y[i]))
        else:
            loss[i] = loss_value(code, pred[i, 0] + t * step[i, 0], y[i], eps)


@njit(**_NJIT)
def standardised_norms(X, mean, inv_scale, out):
    """``out_i = |(inv_scale * (x_i - mean), 1)|`` for the rows of a dense chunk, in one
    pass and without temporaries."""
    for i in range(X.shape[0]):
        total = 1.0
        for j in range(X.shape[1]):
            z = (X[i, j] - mean[j]) * inv_scale[j]
            total += z * z
        out[i] = math.sqrt(total)


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
    ``G = eta + (lam/rho) sum_i p_i log1p(rho expm1((l_i - eta)/lam))`` (see
    :func:`relaxed_value`). One sample's gradient is ``c_i (x_i, 1) l'_i^T`` in ``(W, b)``
    and ``1 - c_i`` in ``eta``, with the factor ``c_i`` of :func:`relaxation_weights`. The
    control variate is the same sample's gradient at the snapshot, from the snapshot's
    prediction (kept by the caller, or recomputed here from the snapshot's model while the
    row is in cache, so that no per-sample array need be kept between epochs), plus the
    snapshot's full gradient ``mu``, so the estimate stays unbiased and its variance
    vanishes at the optimum.

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
    # the same memory as rows of 2-D arrays, for softmax_loss
    f2, f_snap2, dl2, dl_snap2 = (
        f.reshape((1, K)),
        f_snap.reshape((1, K)),
        dl.reshape((1, K)),
        dl_snap.reshape((1, K)),
    )
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
                loss = softmax_loss(f2, 0, label, dl2, 0)
                loss_snap = softmax_loss(f_snap2, 0, label, dl_snap2, 0)
                dl[label] -= 1.0
                dl_snap[label] -= 1.0
            else:
                loss, dl[0], _ = loss_and_derivatives(code, f[0], y[i], eps)
                loss_snap, dl_snap[0], _ = loss_and_derivatives(code, f_snap[0], y[i], eps)
            if not math.isfinite(loss):
                return False
            c = relaxation_weights(loss - eta, lam, rho)[0]
            c_snap = relaxation_weights(loss_snap - eta_snap, lam, rho)[0]
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


@njit(**_NJIT)
def column_top(X, top):
    """``top[j] = max(top[j], max_i |X_ij|)`` for a dense X of any float type and layout."""
    n, d = X.shape
    for i in range(n):
        for j in range(d):
            a = abs(X[i, j])
            if a > top[j]:
                top[j] = a


@njit(**_NJIT)
def shifted_moments(X, p, inv_unit, shift, out):
    """In one pass over a dense X: ``out[j, 0] += sum_i p_i v_ij`` and ``out[j, 1] +=
    sum_i p_i v_ij^2`` with ``v_ij = X_ij inv_unit_j - shift_j`` (``p`` of length 1: uniform
    weights). Summed by blocks of rows, so that rounding grows with n / 1024 + 1024, not n.
    A column equal to its shift everywhere gives exact zeros."""
    n, d = X.shape
    block = np.zeros((d, 2))
    uniform = p.shape[0] == 1
    for i in range(n):
        pi = p[0] if uniform else p[i]
        for j in range(d):
            v = X[i, j] * inv_unit[j] - shift[j]
            pv = pi * v
            block[j, 0] += pv
            block[j, 1] += pv * v
        if (i + 1) % 1024 == 0 or i == n - 1:
            for j in range(d):
                out[j, 0] += block[j, 0]
                out[j, 1] += block[j, 1]
                block[j, 0] = 0.0
                block[j, 1] = 0.0
