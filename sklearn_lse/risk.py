"""The KL-DRO risk of a loss vector: the exact LogSumExp form and its softplus relaxation.

The public functions validate their input and call the kernels of
:mod:`sklearn_lse._kernels`, where the mathematics of ``shared/MATH.md`` is written once
(the estimators' solvers use the same kernels).

Notation: losses ``l_i``, empirical weights ``p_i`` (normalised ``sample_weight``),
temperature ``lam > 0`` and density cap ``0 < rho < 1``.

* Exact risk: ``R = lam * log sum_i p_i exp(l_i / lam)``, worst case ``p*_i ∝ p_i e^{l_i/lam}``.
* Relaxed risk, a minimum over a threshold ``eta`` in loss units::

      R_rho = min_eta  eta + (lam / rho) * sum_i p_i * log1p(rho * expm1((l_i - eta) / lam))

  This is the softplus relaxation of Gladin et al. (2025),
  ``min_eta' eta' - lam + (lam / rho) sum_i p_i softplus((l_i - eta') / lam + log rho)``,
  plus the constant ``lam * relaxation_offset(rho)`` that makes the relaxed divergence
  vanish at the empirical distribution, written with the threshold shifted by
  ``eta = eta' - lam log(1 - rho)``: the two are equal term by term, and this form has no
  large constants to cancel (it stays exact as ``lam -> inf``). The minimiser solves
  ``sum_i p_i c_i = 1`` with the factors
  ``c_i = exp(w_i) / (1 - rho + rho exp(w_i)) = sigmoid(w_i + logit(rho)) / rho``,
  ``w_i = (l_i - eta) / lam``, and the relaxed worst-case distribution is ``p_i c_i``:
  no sample is up-weighted more than ``1 / rho`` times. The relaxed risk equals the mean
  loss when all losses are equal, tends to the mean as ``lam -> inf`` or ``rho -> 1``, and
  stays below the exact risk: ``0 <= R - R_rho ~ lam * rho / 2 * (sum_i p*_i^2 / p_i - 1)``.
"""

import math
import numbers

import numpy as np
from sklearn.utils.validation import _check_sample_weight

from ._kernels import (
    centred_eta,
    exact_risk,
    exact_weights,
    offset,
    relaxation_terms,
    relaxed_divergence,
    relaxed_risk,
    relaxed_value,
)

__all__ = [
    "kl_dro_risk",
    "kl_ball_risk",
    "worst_case_weights",
    "optimal_eta",
    "relaxed_objective",
    "gradient_factors",
    "relaxation_offset",
]


def _check_lam(lam):
    if (
        not isinstance(lam, numbers.Real)
        or isinstance(lam, bool)
        or not math.isfinite(lam)
        or not lam > 0
    ):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}.")
    return float(lam)


def _check_radius(radius):
    if (
        not isinstance(radius, numbers.Real)
        or isinstance(radius, bool)
        or not math.isfinite(radius)
        or radius < 0
    ):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}.")
    return float(radius)


def _check_rho(rho, *, allow_zero):
    interval = "[0, 1)" if allow_zero else "(0, 1)"
    if not isinstance(rho, numbers.Real) or isinstance(rho, bool) or not math.isfinite(rho):
        raise ValueError(f"rho must be a number in {interval}, got {rho!r}.")
    if not ((rho >= 0) if allow_zero else (rho > 0)) or not rho < 1:
        raise ValueError(f"rho must be in {interval}, got {rho!r}.")
    check_rho_range(rho)
    return float(rho)


def check_rho_range(rho):
    """A positive rho below 1e-300 caps density ratios at 1 / rho, which overflows
    float64: refused, with the exact risk (rho = 0) as the alternative."""
    if 0 < rho < 1e-300:
        raise ValueError(
            f"rho={rho!r} is below 1e-300, where the density cap 1 / rho overflows float64; "
            "use rho=0 for the exact KL-DRO risk, or a rho of at least 1e-300."
        )


def _check_losses(losses):
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1 or losses.shape[0] == 0:
        raise ValueError(f"losses must be a non-empty 1-D array, got shape {losses.shape}.")
    if not np.all(np.isfinite(losses)):
        raise ValueError("losses contain NaN or infinity.")
    return np.ascontiguousarray(losses)


def power_of_two(x):
    """The power of two nearest ``x > 0``: dividing by it is exact in floating point."""
    return math.ldexp(1.0, math.frexp(x)[1] - 1)


def loss_scale(losses):
    """A power of two of the size of the largest loss (1 for losses within [1e-100,
    1e100]): the risk is homogeneous, ``R(s l, s lam) = s R(l, lam)``, and computed on
    ``l / s`` no intermediate sum can overflow (a loss of 1e306 over rho = 1e-3 would)."""
    top = float(np.max(np.abs(losses)))
    if 1e-100 <= top <= 1e100 or top == 0.0:
        return 1.0
    return power_of_two(top)


def empirical_weights(sample_weight, n_samples, *, return_total=False, compact=False, stream=True):
    """The empirical distribution ``p_hat``: normalised ``sample_weight``, uniform if None
    (and with ``return_total``, the total weight before normalisation). With ``compact``,
    uniform weights are returned as one value, an array of length 1 (as the solvers take
    them).

    Weights are divided by their largest value before they are summed, so that weights
    whose sum overflows are still normalised exactly. Raises ValueError for a wrong length,
    negative, non-finite or all-zero weights (and, with ``return_total`` and ``stream``,
    for a total that overflows: a block of a stream needs it).
    """
    if sample_weight is None:
        p = np.full(1 if compact else n_samples, 1.0 / n_samples)
        return (p, float(n_samples)) if return_total else p
    w = _check_sample_weight(
        sample_weight, np.empty((n_samples, 0)), dtype=np.float64, ensure_non_negative=True
    )
    top = float(w.max())
    if not top > 0:
        raise ValueError("sample_weight must contain at least one non-zero weight (all are zero).")
    scaled = w / top
    total = float(scaled.sum())
    p = np.ascontiguousarray(scaled / total)
    if return_total:
        # the total sets a block's share of a stream: it must be a float (for a fit it
        # does not matter: inf then)
        if stream and not math.isfinite(top * total):
            raise ValueError(
                "The sum of sample_weight overflows float64: divide the weights of every "
                "block of the stream by a common factor (only their ratios matter)."
            )
        return p, float(top * total)
    return p


def _prepare(losses, lam, rho, sample_weight, *, allow_zero_rho=True):
    """Validated (losses / s, lam / s, rho, p, s) for the loss scale ``s``."""
    losses = _check_losses(losses)
    lam = _check_lam(lam)
    rho = _check_rho(rho, allow_zero=allow_zero_rho)
    p = empirical_weights(sample_weight, losses.shape[0])
    s = loss_scale(losses)
    losses = losses / s if s != 1.0 else losses
    return losses, smallest_lam(lam / s, np.max(np.abs(losses))), rho, p, s


def smallest_lam(lam, loss_size):
    """``lam``, raised to ``1e-20`` times the size of the losses if it is smaller: the risk
    is then its ``lam -> 0`` limit to well below rounding (it moves by at most
    ``lam log(1 / min p)``), while differences of losses of the order of ``lam``, which
    the relaxation divides by ``rho``, would be lost to rounding."""
    return max(lam, 1e-20 * float(loss_size), 1e-300)


def kl_dro_risk(losses, lam, *, rho=0.0, sample_weight=None):
    """KL-DRO risk of a vector of per-sample losses.

    With ``rho=0`` this is the exact risk
    ``lam * log(sum_i p_i * exp(losses_i / lam))``, the worst expected loss over all
    distributions ``q`` penalised by ``lam * KL(q || p)``. With ``0 < rho < 1`` it is the
    softplus relaxation of Gladin et al. (2025), which caps every density ratio ``q_i / p_i``
    at ``1 / rho``::

        min_eta  eta + (lam / rho) * sum_i p_i * log1p(rho * expm1((losses_i - eta) / lam))

    (the paper's softplus form plus ``lam * relaxation_offset(rho)``, which makes the
    relaxed divergence vanish at ``q = p``; see :func:`relaxed_objective`). It is computed
    without overflow or cancellation for any ``lam > 0``: as ``lam -> inf`` it tends to the
    weighted mean loss. The relaxed risk never exceeds the exact one
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
    losses, lam, rho, p, s = _prepare(losses, lam, rho, sample_weight)
    if rho == 0.0:
        return float(exact_risk(losses, p, lam)) * s
    return float(relaxed_risk(losses, p, lam, rho, np.empty_like(losses))[0]) * s


def worst_case_weights(losses, lam, *, rho=0.0, sample_weight=None):
    """Worst-case distribution over the samples that attains :func:`kl_dro_risk`.

    With ``rho=0`` it is ``p*_i ∝ p_i exp(losses_i / lam)``; with ``rho > 0`` it is the
    relaxed distribution ``p_i * c_i`` at the optimal ``eta`` (the factors of
    :func:`gradient_factors`), which never exceeds ``p_i / rho``.

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
    losses, lam, rho, p, _ = _prepare(losses, lam, rho, sample_weight)
    out = np.empty_like(losses)
    if rho == 0.0:
        exact_weights(losses, p, lam, out)
        return out
    relaxed_risk(losses, p, lam, rho, out)
    out *= p
    out /= out.sum()  # the root's residual, of order 1e-14
    return out


def optimal_eta(losses, lam, rho, *, sample_weight=None):
    """Optimal dual threshold ``eta`` of the relaxation (in the units of the losses).

    ``eta`` is the minimiser of :func:`relaxed_objective`: the loss itself when all the
    losses are equal, the weighted mean loss as ``lam -> inf`` and the ``(1 - rho)``-quantile
    of the losses as ``lam -> 0``. Samples whose loss is well above
    ``eta + lam * log(1 / rho)`` get the full weight ``1 / rho`` times their empirical
    weight in the relaxed worst case, and those well below ``eta`` almost none.

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
        The root of ``sum_i p_i * c_i(eta) = 1`` (the factors of :func:`gradient_factors`),
        i.e. the minimiser of :func:`relaxed_objective`.

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
    losses, lam, rho, p, s = _prepare(losses, lam, rho, sample_weight, allow_zero_rho=False)
    return float(relaxed_risk(losses, p, lam, rho, np.empty_like(losses))[1]) * s


def relaxed_objective(losses, eta, lam, rho, *, sample_weight=None):
    """Objective of the softplus relaxation at a given threshold ``eta``.

    ``G(eta) = eta + (lam / rho) * sum_i p_i * log1p(rho * expm1((losses_i - eta) / lam))``,
    whose minimum over ``eta`` is the relaxed risk :func:`kl_dro_risk`. It is the softplus
    form of Gladin et al. (2025),
    ``eta' - lam + (lam / rho) * sum_i p_i * softplus((losses_i - eta') / lam + log rho)``,
    at ``eta' = eta + lam * log(1 - rho)``, plus ``lam * relaxation_offset(rho)``: the two
    agree term by term, and this one has no large constants to cancel.

    Parameters
    ----------
    losses : array-like of shape (n_samples,)
        Per-sample losses.
    eta : float
        Threshold, in the units of the losses.
    lam : float
        Temperature ``lam > 0``.
    rho : float
        Density cap ``0 < rho < 1``.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights of the empirical distribution; uniform when None.

    Returns
    -------
    value : float
        ``G(eta)``, at least :func:`kl_dro_risk`. Its derivative in ``eta`` is
        ``1 - sum_i p_i * c_i`` and in ``losses_i`` is ``p_i * c_i``, with ``c_i`` from
        :func:`gradient_factors`.

    See Also
    --------
    optimal_eta : The minimiser of ``G``.
    kl_dro_risk : The relaxed risk, ``min G``.
    relaxation_offset : The constant between this form and the softplus form.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_lse import kl_dro_risk, optimal_eta, relaxed_objective
    >>> losses = np.array([0.5, 1.0, 4.0])
    >>> eta = optimal_eta(losses, lam=1.0, rho=0.1)
    >>> value = relaxed_objective(losses, eta, lam=1.0, rho=0.1)
    >>> bool(np.isclose(value, kl_dro_risk(losses, lam=1.0, rho=0.1)))
    True
    """
    losses, lam, rho, p, s = _prepare(losses, lam, rho, sample_weight, allow_zero_rho=False)
    return float(relaxed_value(losses, p, _check_eta(eta) / s, lam, rho)) * s


def gradient_factors(losses, eta, lam, rho):
    """Per-sample gradient factors of the relaxed objective at a threshold ``eta``.

    ``c_i = exp(w_i) / (1 - rho + rho * exp(w_i))`` with ``w_i = (losses_i - eta) / lam``
    (the paper's ``sigmoid(z_i) / rho``). One sample's stochastic gradient of
    :func:`relaxed_objective` is ``c_i * grad(loss_i)`` in the model parameters and
    ``1 - c_i`` in ``eta``; both are unbiased.

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
    losses, lam, rho, _, s = _prepare(losses, lam, rho, None, allow_zero_rho=False)
    out = np.empty_like(losses)
    relaxation_terms(losses, 0.0, _check_eta(eta) / s, lam, rho, out, np.empty_like(losses))
    return out


def relaxation_offset(rho):
    """Value ``1 + (1 - rho) / rho * log(1 - rho)`` of the relaxed divergence at ``q = p``.

    The relaxed risk is the minimum of the paper's softplus form plus
    ``lam * relaxation_offset(rho)``, so that the relaxed risk of equal losses is that
    loss; the constant does not move the minimiser (:func:`relaxed_objective` includes
    it).

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
    relaxed_objective : The relaxed objective, which includes the offset.

    Examples
    --------
    >>> from sklearn_lse import relaxation_offset
    >>> round(relaxation_offset(1e-3), 7)
    0.0005002
    """
    return float(offset(_check_rho(rho, allow_zero=False)))


def _check_eta(eta):
    if not isinstance(eta, numbers.Real) or isinstance(eta, bool) or not math.isfinite(eta):
        raise ValueError(f"eta must be a finite number, got {eta!r}.")
    return float(eta)


def _risk_and_divergence(losses, p, lam, rho):
    """The (relaxed) risk at ``lam`` and the divergence of its worst case."""
    eta0, centred, eta1 = centred_eta(losses, p, lam, rho, np.nan, False)
    value = eta0 + relaxed_value(centred, p, eta1, lam, rho)
    return value, relaxed_divergence(centred, p, eta1, lam, rho)


def ball_temperature(losses, p, radius, rho):
    """The temperature ``lam*`` of the KL-ball risk of a loss vector (the root of
    ``D(q_lam) = radius``, by bisection in ``log lam``), or the smallest lam tried when the
    radius is beyond every worst case's divergence (the budget does not bind)."""
    supported = losses[p > 0] if p.shape[0] > 1 else losses
    spread = float(np.max(supported) - np.min(supported))
    size = max(spread, float(np.max(np.abs(supported))), 1e-300)
    if spread <= 1e-15 * size:  # equal losses: the budget never binds (lam* -> 0)
        return 1e-12 * size
    lo, hi = math.log(1e-12 * size), math.log(1e12 * spread / radius)
    if _risk_and_divergence(losses, p, math.exp(lo), rho)[1] < radius:
        return math.exp(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _risk_and_divergence(losses, p, math.exp(mid), rho)[1] >= radius:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13:
            break
    return math.exp(0.5 * (lo + hi))


def kl_ball_risk(losses, radius, *, rho=0.0, sample_weight=None):
    """Worst expected loss over the distributions within a divergence ``radius`` of ``p``.

    ``max_{q : D(q || p) <= radius} sum_i q_i losses_i = min_{lam > 0} lam * radius +
    R_lam(losses)``, with ``D`` the KL divergence for ``rho=0`` (the exact risk ``R_lam``
    of :func:`kl_dro_risk`) and the relaxed, density-capped divergence for ``rho > 0``.
    Unlike ``lam``, the radius is in nats whatever the units of the losses: scaling the
    losses scales the risk. ``radius=0`` gives the weighted mean loss; a radius beyond
    the largest divergence any distribution can have (``log(1 / min p)`` for the KL) gives
    the largest loss (the CVaR at level ``rho`` for ``rho > 0``).

    Parameters
    ----------
    losses : array-like of shape (n_samples,)
        Per-sample losses.
    radius : float
        Divergence budget ``radius >= 0``, in nats.
    rho : float, default=0.0
        Density cap ``0 <= rho < 1``; ``0`` means the KL divergence.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights of the empirical distribution; uniform when None.

    Returns
    -------
    risk : float
        The worst-case expected loss over the ball.

    See Also
    --------
    kl_dro_risk : The penalised form, at a fixed temperature ``lam``.

    Examples
    --------
    >>> from sklearn_lse import kl_ball_risk
    >>> round(kl_ball_risk([1.0, 2.0, 3.0], 0.0), 6)
    2.0
    >>> 2.0 < kl_ball_risk([1.0, 2.0, 3.0], 0.1) < 3.0
    True
    """
    losses, _, rho, p, s = _prepare(losses, 1.0, rho, sample_weight)
    radius = _check_radius(radius)
    if radius == 0 or np.max(losses) == np.min(losses):
        return float(p @ losses) * s
    lam = ball_temperature(losses, p, radius, rho)
    return (lam * radius + _risk_and_divergence(losses, p, lam, rho)[0]) * s
