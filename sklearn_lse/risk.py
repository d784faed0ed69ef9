"""The KL-DRO risk of a loss vector: exact LogSumExp form and its softplus relaxation.

This module is the one place where the mathematics of ``shared/MATH.md`` lives. The
``@njit`` functions work on plain float64 arrays and are called both by the public NumPy
functions below and by the Numba SGD kernels; the public functions validate their input.

Notation: losses ``l_i >= 0``, empirical weights ``p_i`` (normalised ``sample_weight``),
temperature ``lam > 0`` and density cap ``0 < rho < 1``.

* Exact risk: ``R = lam * log sum_i p_i exp(l_i / lam)``, worst case ``p*_i ∝ p_i e^{l_i/lam}``.
* Relaxed objective in the dual threshold ``eta`` (loss units), with
  ``z_i = (l_i - eta) / lam + log rho``::

      G(eta) = eta - lam + (lam / rho) * sum_i p_i softplus(z_i)

  Its minimiser solves ``sum_i p_i sigmoid(z_i) = rho``; the gradient factors are
  ``c_i = sigmoid(z_i) / rho`` and the relaxed worst-case distribution is ``p_i c_i``.
* The relaxed risk reported by this package is ``min_eta G + lam * offset(rho)`` where
  ``offset(rho) = 1 + (1 - rho) / rho * log(1 - rho)`` is the value of the relaxed divergence
  at ``p = p_hat``. The constant does not move the minimiser; it makes the divergence vanish
  at the empirical distribution, so that the relaxed risk equals the mean loss when all
  losses are equal, tends to the mean as ``lam -> inf`` or ``rho -> 1``, and stays below the
  exact risk: ``0 <= R - R_rho ~ lam * rho / 2 * (sum_i p*_i^2 / p_i - 1)``.
"""

import math
import numbers

import numpy as np
from numba import njit

__all__ = [
    "kl_dro_risk",
    "worst_case_weights",
    "optimal_eta",
    "relaxed_objective",
    "gradient_factors",
    "relaxation_offset",
]

_NJIT = {"cache": True, "nogil": True}


# --------------------------------------------------------------------------------------
# Overflow-free scalar primitives
# --------------------------------------------------------------------------------------
@njit(**_NJIT)
def softplus(x):
    """``log(1 + exp(x))`` without overflow for any finite ``x``."""
    if x > 0.0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@njit(**_NJIT)
def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow for any finite ``x``."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


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
    """``lam * log sum_i p_i exp(losses_i / lam)``, shifted by the largest supported loss."""
    m = _max_supported(losses, p)
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
# --------------------------------------------------------------------------------------
@njit(**_NJIT)
def _log_mass(losses, p, eta, lam, log_rho):
    """Return ``g = log sum_i p_i sigmoid(z_i) - log rho`` and its derivative in eta.

    One exponential per sample in the usual case; when the mass is so small that it may
    have lost precision to underflow (huge losses, tiny lam, eta far above them) it is
    recomputed in the log domain.
    """
    s = 0.0
    t = 0.0  # sum of p * sigmoid * (1 - sigmoid)
    for i in range(losses.shape[0]):
        sig = sigmoid((losses[i] - eta) / lam + log_rho)
        ps = weight(p, i) * sig
        s += ps
        t += ps * (1.0 - sig)
    if s > 1e-250:
        return math.log(s) - log_rho, -t / (s * lam)
    return _log_mass_log_domain(losses, p, eta, lam, log_rho)


@njit(**_NJIT)
def _log_mass_log_domain(losses, p, eta, lam, log_rho):
    """:func:`_log_mass` by an online log-sum-exp, exact when every sigmoid underflows."""
    m = -np.inf
    s = 0.0
    t = 0.0  # sum of weights * (1 - sigmoid), on the same shift as s
    for i in range(losses.shape[0]):
        if weight(p, i) <= 0.0:
            continue
        z = (losses[i] - eta) / lam + log_rho
        log_sig = -softplus(-z)
        a = math.log(weight(p, i)) + log_sig
        one_minus = sigmoid(-z)
        if a > m:
            scale = math.exp(m - a)
            s = s * scale + 1.0
            t = t * scale + one_minus
            m = a
        else:
            e = math.exp(a - m)
            s += e
            t += e * one_minus
    g = m + math.log(s) - log_rho
    dg = -t / (s * lam)
    return g, dg


@njit(**_NJIT)
def _quantile_guess(losses, rho):
    """The (1 - rho)-quantile of a strided subsample of the losses: the root's limit as
    lam -> 0, a cheap cold start for the 1-D solve."""
    step = max(1, losses.shape[0] // 4096)
    return np.quantile(losses[::step], 1.0 - rho)


@njit(**_NJIT)
def solve_eta(losses, p, lam, rho, guess=np.nan):
    """The minimiser of ``G(eta)``: the root of ``sum_i p_i sigmoid(z_i) = rho``.

    Newton's method on ``g = log(mass) - log(rho)`` (nearly linear in eta when rho is
    small), started at ``guess`` when it is finite (else at a quantile of the losses),
    and safeguarded on the bracket
    ``[min l + lam log(1-rho), max l + lam log(1-rho)]``: a Newton step that
    leaves the bracket is replaced by the Illinois (modified regula falsi) point of the
    bracket, or by bisection when the bracket stops shrinking.
    """
    log_rho = math.log(rho)
    shift = lam * math.log1p(-rho)
    lo = np.inf
    hi = -np.inf
    for i in range(losses.shape[0]):
        if weight(p, i) > 0.0:
            lo = min(lo, losses[i])
            hi = max(hi, losses[i])
    lo += shift
    hi += shift
    if not hi > lo:
        return hi
    g_lo = np.inf  # g > 0 at lo, g < 0 at hi; values filled in as they are met
    g_hi = -np.inf
    if not math.isfinite(guess):
        guess = _quantile_guess(losses, rho)
    eta = guess if lo < guess < hi else hi
    width = hi - lo
    for _ in range(200):
        g, dg = _log_mass(losses, p, eta, lam, log_rho)
        if abs(g) <= 1e-13:
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
def relaxed_value(losses, p, eta, lam, rho):
    """``G(eta) = eta - lam + (lam / rho) * sum_i p_i softplus(z_i)``."""
    log_rho = math.log(rho)
    s = 0.0
    for i in range(losses.shape[0]):
        if weight(p, i) > 0.0:
            s += weight(p, i) * softplus((losses[i] - eta) / lam + log_rho)
    return eta - lam + lam / rho * s


@njit(**_NJIT)
def relaxed_factors(losses, eta, lam, rho, out):
    """Write the gradient factors ``c_i = sigmoid(z_i) / rho`` to out."""
    log_rho = math.log(rho)
    for i in range(losses.shape[0]):
        out[i] = sigmoid((losses[i] - eta) / lam + log_rho) / rho


@njit(**_NJIT)
def centred_eta(losses, p, lam, rho, guess=np.nan, overwrite=False):
    """Solve for eta, and again on the losses centred at the first root when it is large.

    Returns ``(eta0, losses - eta0, eta1)`` with the optimal eta equal to ``eta0 + eta1``;
    ``guess`` (for instance the previous optimum) speeds up the first solve. With
    ``overwrite``, ``losses`` itself is centred in place (and returned).
    Centring makes the losses near the threshold exact small numbers, so that eta, the
    weights and the risk are resolved to full precision even for losses of 1e8 with lam of
    1e-4, where the spacing of doubles near 1e8 is 1.5e-8, i.e. 1.5e-4 in units of lam.
    """
    eta0 = solve_eta(losses, p, lam, rho, guess)
    if abs(eta0) <= 1e3 * lam:
        # rounding of eta costs at most 1e3 * 2^-52 in units of lam: already resolved
        return 0.0, losses, eta0
    if overwrite:  # the caller's array becomes the centred losses: no copy
        losses -= eta0
        centred = losses
    else:
        centred = losses - eta0
    return eta0, centred, solve_eta(centred, p, lam, rho, 0.0)


@njit(**_NJIT)
def relaxed_risk(losses, p, lam, rho, factors, guess=np.nan):
    """``min_eta G(eta) + lam * offset(rho)``; returns (risk, optimal eta).

    Also writes the gradient factors ``c_i`` at the optimal eta to ``factors`` (the relaxed
    worst-case distribution is ``p * factors``). ``guess`` warm-starts the 1-D solve.
    """
    eta0, centred, eta1 = centred_eta(losses, p, lam, rho, guess)
    relaxed_factors(centred, eta1, lam, rho, factors)
    value = eta0 + relaxed_value(centred, p, eta1, lam, rho) + lam * offset(rho)
    return value, eta0 + eta1


# --------------------------------------------------------------------------------------
# Public NumPy API
# --------------------------------------------------------------------------------------
def _check_lam(lam):
    if (
        not isinstance(lam, numbers.Real)
        or isinstance(lam, bool)
        or not math.isfinite(lam)
        or lam <= 0
    ):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}.")
    return float(lam)


def _check_rho(rho, *, allow_zero):
    low_ok = (rho >= 0) if allow_zero else (rho > 0)
    if not isinstance(rho, numbers.Real) or isinstance(rho, bool) or not (low_ok and rho < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"rho must be in {interval}, got {rho!r}.")
    return float(rho)


def _check_losses(losses):
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1 or losses.shape[0] == 0:
        raise ValueError(f"losses must be a non-empty 1-D array, got shape {losses.shape}.")
    if not np.all(np.isfinite(losses)):
        raise ValueError("losses contain NaN or infinity.")
    return np.ascontiguousarray(losses)


def empirical_weights(sample_weight, n_samples, *, return_total=False, compact=False):
    """The empirical distribution ``p_hat``: normalised ``sample_weight``, uniform if None
    (and with ``return_total``, the total weight before normalisation). With ``compact``,
    uniform weights are returned as one value, an array of length 1 (as the solvers take
    them).

    Raises ValueError for a wrong length, negative, non-finite or all-zero weights.
    """
    if sample_weight is None:
        p = np.full(1 if compact else n_samples, 1.0 / n_samples)
        return (p, float(n_samples)) if return_total else p
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.shape != (n_samples,):
        raise ValueError(
            f"sample_weight has shape {w.shape}, expected ({n_samples},) to match the samples."
        )
    if not np.all(np.isfinite(w)):
        raise ValueError("sample_weight contains NaN or infinity.")
    if np.any(w < 0):
        raise ValueError("sample_weight must be non-negative.")
    total = w.sum()
    if not total > 0:
        raise ValueError("sample_weight must have a positive sum (all weights are zero or less).")
    p = np.ascontiguousarray(w / total)
    return (p, float(total)) if return_total else p


def _prepare(losses, lam, rho, sample_weight, *, allow_zero_rho=True):
    losses = _check_losses(losses)
    return (
        losses,
        _check_lam(lam),
        _check_rho(rho, allow_zero=allow_zero_rho),
        empirical_weights(sample_weight, losses.shape[0]),
    )


def kl_dro_risk(losses, lam, *, rho=0.0, sample_weight=None):
    """KL-DRO risk of a vector of per-sample losses.

    With ``rho=0`` this is the exact risk
    ``lam * log(sum_i p_i * exp(losses_i / lam))``, the worst expected loss over all
    distributions ``q`` penalised by ``lam * KL(q || p)``. With ``0 < rho < 1`` it is the
    softplus relaxation of Gladin et al. (2025), which caps every density ratio ``q_i / p_i``
    at ``1 / rho``::

        min_eta  eta - lam + (lam / rho) * sum_i p_i * softplus((losses_i - eta) / lam + log rho)
                 + lam * relaxation_offset(rho)

    The constant ``lam * relaxation_offset(rho)`` makes the relaxed divergence vanish at
    ``q = p``; it does not change the minimiser. The relaxed risk never exceeds the exact one
    and approaches it as ``rho -> 0``; with ``lam -> 0`` it tends to the CVaR at level
    ``rho`` (the mean of the worst ``rho``-fraction of the losses).

    Parameters
    ----------
    losses : array-like of shape (n_samples,)
        Per-sample losses (any finite values; the estimators use non-negative ones).
    lam : float
        Temperature ``lam > 0``: small values are more robust (towards the maximum loss),
        large values tend to the weighted mean loss.
    rho : float, default=0.0
        Density cap ``0 <= rho < 1``; ``0`` means the exact LogSumExp risk.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative weights of the empirical distribution ``p`` (normalised to sum 1);
        uniform when None.

    Returns
    -------
    risk : float
        The (relaxed) KL-DRO risk, in the units of the losses.

    See Also
    --------
    worst_case_weights : The distribution over the samples that attains the risk.
    sklearn_lse.metrics.robust_risk_score : The same risk of a model's predictions.
    DRORegressor : Linear regression that minimises this risk.
    DROClassifier : Logistic regression that minimises this risk.

    Examples
    --------
    >>> from sklearn_lse import kl_dro_risk
    >>> round(kl_dro_risk([1.0, 1.0, 1.0], lam=0.5), 6)
    1.0
    >>> kl_dro_risk([0.0, 10.0], lam=1.0) > 5.0
    True

    With a small ``lam``, the relaxed risk is about the mean of the worst ``rho``-fraction
    of the losses (here the two largest of four):

    >>> round(kl_dro_risk([0.0, 1.0, 2.0, 10.0], lam=0.01, rho=0.5), 2)
    5.99
    """
    losses, lam, rho, p = _prepare(losses, lam, rho, sample_weight)
    if rho == 0.0:
        return float(exact_risk(losses, p, lam))
    return float(relaxed_risk(losses, p, lam, rho, np.empty_like(losses))[0])


def worst_case_weights(losses, lam, *, rho=0.0, sample_weight=None):
    """Worst-case distribution over the samples that attains :func:`kl_dro_risk`.

    With ``rho=0`` it is ``p*_i ∝ p_i exp(losses_i / lam)``; with ``rho > 0`` it is the
    relaxed distribution ``p_i * sigmoid(z_i) / rho`` at the optimal ``eta``, which never
    exceeds ``p_i / rho``.

    Parameters
    ----------
    losses : array-like of shape (n_samples,)
        Per-sample losses.
    lam : float
        Temperature ``lam > 0``.
    rho : float, default=0.0
        Density cap ``0 <= rho < 1``; ``0`` means the exact KL worst case.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights of the empirical distribution; uniform when None.

    Returns
    -------
    weights : ndarray of shape (n_samples,)
        Non-negative weights summing to 1. They are also the gradient of the risk with
        respect to the losses.

    See Also
    --------
    kl_dro_risk : The risk that these weights attain.
    DRORegressor.worst_case_weights : The same distribution for a fitted model's losses.

    Examples
    --------
    >>> from sklearn_lse import worst_case_weights
    >>> worst_case_weights([0.0, 0.0, 1.0], lam=1.0).round(3)
    array([0.212, 0.212, 0.576])

    The exact worst case puts nearly all the weight on a large loss; with ``rho=0.5`` no
    sample gets more than ``1 / rho = 2`` times its empirical weight ``1 / 4``:

    >>> worst_case_weights([0.0, 0.0, 0.0, 10.0], lam=1.0).round(3)
    array([0., 0., 0., 1.])
    >>> worst_case_weights([0.0, 0.0, 0.0, 10.0], lam=1.0, rho=0.5).round(3)
    array([0.167, 0.167, 0.167, 0.5  ])
    """
    losses, lam, rho, p = _prepare(losses, lam, rho, sample_weight)
    out = np.empty_like(losses)
    if rho == 0.0:
        exact_weights(losses, p, lam, out)
        return out
    relaxed_risk(losses, p, lam, rho, out)
    out *= p
    return out


def optimal_eta(losses, lam, rho, *, sample_weight=None):
    """Optimal dual threshold ``eta`` of the relaxation (in the units of the losses).

    ``eta`` is the minimiser of :func:`relaxed_objective`. Samples whose loss is well
    above ``eta + lam * log(1 / rho)`` get the full weight ``1 / rho`` times their empirical
    weight in the relaxed worst case, and those well below it almost none; as
    ``lam -> 0``, ``eta`` tends to the ``(1 - rho)``-quantile of the losses.

    Parameters
    ----------
    losses : array-like of shape (n_samples,)
        Per-sample losses.
    lam : float
        Temperature ``lam > 0``.
    rho : float
        Density cap ``0 < rho < 1``.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights of the empirical distribution; uniform when None.

    Returns
    -------
    eta : float
        The root of ``sum_i p_i * sigmoid((losses_i - eta) / lam + log rho) = rho``, i.e.
        the minimiser of :func:`relaxed_objective`.

    See Also
    --------
    relaxed_objective : The objective that ``eta`` minimises.
    gradient_factors : The per-sample weights at a given ``eta``.

    Examples
    --------
    >>> from sklearn_lse import optimal_eta
    >>> round(optimal_eta([0.0, 1.0, 2.0, 10.0], lam=0.01, rho=0.25), 6)
    4.0
    """
    losses, lam, rho, p = _prepare(losses, lam, rho, sample_weight, allow_zero_rho=False)
    return float(relaxed_risk(losses, p, lam, rho, np.empty_like(losses))[1])


def relaxed_objective(losses, eta, lam, rho, *, sample_weight=None):
    """Relaxed objective ``G(eta)`` of the softplus relaxation at a given dual threshold.

    ``G(eta) = eta - lam + (lam / rho) * sum_i p_i * softplus((losses_i - eta) / lam + log rho)``;
    ``kl_dro_risk(losses, lam, rho=rho) == min_eta G(eta) + lam * relaxation_offset(rho)``.

    Parameters
    ----------
    losses : array-like of shape (n_samples,)
        Per-sample losses.
    eta : float
        Dual threshold, in the units of the losses.
    lam : float
        Temperature ``lam > 0``.
    rho : float
        Density cap ``0 < rho < 1``.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights of the empirical distribution; uniform when None.

    Returns
    -------
    value : float
        ``G(eta)``. Its derivative in ``eta`` is ``1 - sum_i p_i * c_i`` and in ``losses_i``
        is ``p_i * c_i``, with ``c_i`` from :func:`gradient_factors`.

    See Also
    --------
    optimal_eta : The minimiser of ``G``.
    kl_dro_risk : The relaxed risk, ``min G`` plus the offset.
    relaxation_offset : The offset.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_lse import kl_dro_risk, optimal_eta, relaxation_offset, relaxed_objective
    >>> losses = np.array([0.5, 1.0, 4.0])
    >>> eta = optimal_eta(losses, lam=1.0, rho=0.1)
    >>> value = relaxed_objective(losses, eta, lam=1.0, rho=0.1) + relaxation_offset(0.1)
    >>> bool(np.isclose(value, kl_dro_risk(losses, lam=1.0, rho=0.1)))
    True
    """
    losses, lam, rho, p = _prepare(losses, lam, rho, sample_weight, allow_zero_rho=False)
    return float(relaxed_value(losses, p, float(eta), lam, rho))


def gradient_factors(losses, eta, lam, rho):
    """Per-sample gradient factors ``c_i = sigmoid(z_i) / rho`` of the relaxed objective.

    One sample's stochastic gradient of ``G`` is ``c_i * grad(loss_i)`` in the model
    parameters and ``1 - c_i`` in ``eta``; both are unbiased.

    Parameters
    ----------
    losses : array-like of shape (n_samples,)
        Per-sample losses.
    eta : float
        Dual threshold, in the units of the losses.
    lam : float
        Temperature ``lam > 0``.
    rho : float
        Density cap ``0 < rho < 1``.

    Returns
    -------
    factors : ndarray of shape (n_samples,)
        Values in ``(0, 1 / rho)``.

    See Also
    --------
    optimal_eta : The ``eta`` at which ``p * factors`` is the relaxed worst case.
    relaxed_objective : The objective whose gradient the factors give.

    Examples
    --------
    At the optimal ``eta``, the factors times the empirical weights are the relaxed
    worst-case distribution:

    >>> import numpy as np
    >>> from sklearn_lse import gradient_factors, optimal_eta, worst_case_weights
    >>> losses = np.array([0.5, 1.0, 4.0])
    >>> eta = optimal_eta(losses, lam=1.0, rho=0.1)
    >>> factors = gradient_factors(losses, eta, lam=1.0, rho=0.1)
    >>> factors.round(3)
    array([0.111, 0.182, 2.708])
    >>> bool(np.allclose(factors / 3, worst_case_weights(losses, lam=1.0, rho=0.1)))
    True
    """
    losses = _check_losses(losses)
    out = np.empty_like(losses)
    relaxed_factors(losses, float(eta), _check_lam(lam), _check_rho(rho, allow_zero=False), out)
    return out


def relaxation_offset(rho):
    """Value ``1 + (1 - rho) / rho * log(1 - rho)`` of the relaxed divergence at ``q = p``.

    :func:`kl_dro_risk` adds ``lam * relaxation_offset(rho)`` to the minimum of
    :func:`relaxed_objective`, so that the relaxed risk of equal losses is that loss; the
    constant does not move the minimiser.

    Parameters
    ----------
    rho : float
        Density cap ``0 < rho < 1``.

    Returns
    -------
    offset : float
        ``sum_k rho^k / (k (k + 1))``, about ``rho / 2`` for small ``rho``.

    See Also
    --------
    kl_dro_risk : The relaxed risk, which includes the offset.

    Examples
    --------
    >>> from sklearn_lse import relaxation_offset
    >>> round(relaxation_offset(1e-3), 7)
    0.0005002
    """
    return float(offset(_check_rho(rho, allow_zero=False)))
