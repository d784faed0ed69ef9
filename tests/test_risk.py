"""Properties of the exact KL-DRO risk and of its softplus relaxation (sklearn_lse.risk).

Each property is checked over many random loss vectors, against an independent NumPy/SciPy
reference where one exists.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import expit, logsumexp

from sklearn_lse import (
    gradient_factors,
    kl_dro_risk,
    optimal_eta,
    relaxation_offset,
    relaxed_objective,
    worst_case_weights,
)

settings.register_profile("sklearn_lse", deadline=None, max_examples=60)
settings.load_profile("sklearn_lse")


@st.composite
def problems(draw, max_loss=30.0, min_n=1, max_n=40):
    """A loss vector, optional positive sample weights, and a temperature."""
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["uniform", "exponential", "outlier", "ties"]))
    if kind == "uniform":
        losses = rng.uniform(0, max_loss, n)
    elif kind == "exponential":
        losses = np.minimum(rng.exponential(max_loss / 10, n), max_loss)
    elif kind == "outlier":
        losses = rng.uniform(0, 1, n)
        losses[rng.integers(n)] = max_loss
    else:
        losses = rng.choice([0.0, 1.0, max_loss / 2], n)
    weights = None
    if draw(st.booleans()):
        weights = rng.uniform(0.1, 3.0, n)
    lam = 10 ** draw(st.floats(-1.5, 2.0))
    return losses, weights, lam


def normalised(weights, n):
    return np.full(n, 1.0 / n) if weights is None else weights / weights.sum()


# ----------------------------------------------------------------------------------------
# Independent references, written with NumPy/SciPy only
# ----------------------------------------------------------------------------------------
def ref_exact(losses, p, lam):
    return lam * logsumexp(losses / lam, b=p)


def ref_G(losses, p, eta, lam, rho):
    z = (losses - eta) / lam + np.log(rho)
    return eta - lam + lam / rho * np.sum(p * np.logaddexp(0.0, z))


def ref_relaxed_min(losses, p, lam, rho):
    """min over eta of G, by bounded scalar minimisation (no use of the root condition)."""
    lo = losses.min() - lam * (10 - np.log1p(-rho))
    hi = losses.max() + lam
    res = minimize_scalar(
        lambda e: ref_G(losses, p, e, lam, rho),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-12 * (1 + abs(hi))},
    )
    return res.fun, res.x


def ref_cvar(losses, p, rho):
    """Mean of the worst rho-fraction of the distribution (fractional weights included)."""
    order = np.argsort(-losses, kind="stable")
    remaining, total = 1.0, 0.0
    for i in order:
        take = min(p[i] / rho, remaining)
        total += take * losses[i]
        remaining -= take
        if remaining <= 0:
            break
    return total


# ----------------------------------------------------------------------------------------
# Agreement with the references
# ----------------------------------------------------------------------------------------
@given(problems())
def test_exact_risk_matches_logsumexp(prob):
    losses, w, lam = prob
    p = normalised(w, len(losses))
    expected = ref_exact(losses, p, lam)
    assert kl_dro_risk(losses, lam, sample_weight=w) == pytest.approx(expected, rel=1e-12)
    q = worst_case_weights(losses, lam, sample_weight=w)
    np.testing.assert_allclose(
        q, p * np.exp(losses / lam - logsumexp(losses / lam, b=p)), rtol=1e-10, atol=1e-300
    )


@given(problems(), st.floats(-6, -0.05))
def test_relaxed_risk_matches_scalar_minimisation(prob, log_rho):
    losses, w, lam = prob
    rho = 10**log_rho
    p = normalised(w, len(losses))
    ref_value, ref_eta = ref_relaxed_min(losses, p, lam, rho)
    eta = optimal_eta(losses, lam, rho, sample_weight=w)
    g = relaxed_objective(losses, eta, lam, rho, sample_weight=w)
    # the package's threshold is the paper's shifted by -lam log(1 - rho), and its
    # objective includes the offset that makes the relaxed divergence vanish at p
    offset = lam * (1 + (1 - rho) / rho * np.log1p(-rho))
    paper_eta = eta + lam * np.log1p(-rho)
    # our root is at least as good as a generic minimiser, and the same point
    assert g <= ref_value + offset + 1e-10 * (1 + abs(ref_value) + lam)
    assert g == pytest.approx(
        ref_G(losses, p, paper_eta, lam, rho) + offset, rel=1e-12, abs=1e-12 * (1 + lam)
    )
    assert paper_eta == pytest.approx(ref_eta, rel=1e-5, abs=1e-5 * lam)
    risk = kl_dro_risk(losses, lam, rho=rho, sample_weight=w)
    assert risk == pytest.approx(g, rel=1e-12, abs=1e-12 * lam)


# ----------------------------------------------------------------------------------------
# Order, gap and limits
# ----------------------------------------------------------------------------------------
@given(problems(), st.floats(-8, -0.01))
def test_relaxed_never_exceeds_exact(prob, log_rho):
    losses, w, lam = prob
    rho = 10**log_rho
    exact = kl_dro_risk(losses, lam, sample_weight=w)
    relaxed = kl_dro_risk(losses, lam, rho=rho, sample_weight=w)
    assert relaxed <= exact + 1e-10 * (abs(exact) + lam)
    # unnormalised G is below too: the offset is >= 0
    eta = optimal_eta(losses, lam, rho, sample_weight=w)
    assert relaxed_objective(losses, eta, lam, rho, sample_weight=w) <= relaxed + 1e-12 * lam
    # and the relaxed risk is still a risk: between the mean and the maximum loss
    p = normalised(w, len(losses))
    assert p @ losses - 1e-9 * (abs(p @ losses) + lam) <= relaxed


@given(problems(min_n=2))
def test_gap_matches_first_order_formula(prob):
    """F - F_rho ~ (rho/2) sum p*^2/p (unnormalised), (rho/2)(sum p*^2/p - 1) (normalised)."""
    losses, w, lam = prob
    p = normalised(w, len(losses))
    exact = kl_dro_risk(losses, lam, sample_weight=w)
    q = worst_case_weights(losses, lam, sample_weight=w)
    chi = np.sum(q**2 / p)  # >= 1
    rho = 1e-3 / np.max(q / p)
    eta = optimal_eta(losses, lam, rho, sample_weight=w)
    softplus_form = relaxed_objective(losses, eta, lam, rho, sample_weight=w)
    gap_G = exact - (softplus_form - lam * relaxation_offset(rho))
    assert gap_G == pytest.approx(lam * rho / 2 * chi, rel=2e-2)
    gap = exact - kl_dro_risk(losses, lam, rho=rho, sample_weight=w)
    predicted = lam * rho / 2 * (chi - 1)
    assert gap == pytest.approx(predicted, rel=2e-2, abs=1e-10 * (abs(exact) + lam))
    # and the gap vanishes as rho -> 0
    tiny = kl_dro_risk(losses, lam, rho=rho * 1e-3, sample_weight=w)
    assert abs(exact - tiny) <= 1e-3 * gap + 1e-10 * (abs(exact) + lam)


@given(problems(), st.floats(-6, -0.05))
def test_large_lam_gives_weighted_mean(prob, log_rho):
    losses, w, _ = prob
    p = normalised(w, len(losses))
    mean = p @ losses
    for rho in (0.0, 10**log_rho):
        assert kl_dro_risk(losses, 1e8, rho=rho, sample_weight=w) == pytest.approx(
            mean, rel=1e-6, abs=1e-6
        )


@given(problems())
def test_small_lam_gives_max_loss(prob):
    losses, w, _ = prob
    lam = 1e-6
    p = normalised(w, len(losses))
    # lam * log p_max <= R - max <= 0
    bound = lam * -np.log(p.min())
    assert losses.max() - bound - 1e-12 <= kl_dro_risk(losses, lam, sample_weight=w)
    assert kl_dro_risk(losses, lam, sample_weight=w) <= losses.max() + 1e-12


@given(problems(), st.floats(-3, -0.05))
def test_small_lam_fixed_rho_gives_cvar(prob, log_rho):
    losses, w, _ = prob
    rho = 10**log_rho
    p = normalised(w, len(losses))
    expected = ref_cvar(losses, p, rho)
    got = kl_dro_risk(losses, 1e-7, rho=rho, sample_weight=w)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


@given(problems())
def test_rho_to_one_gives_mean(prob):
    losses, w, lam = prob
    p = normalised(w, len(losses))
    rho = 1 - 1e-9
    assert kl_dro_risk(losses, lam, rho=rho, sample_weight=w) == pytest.approx(
        p @ losses, rel=1e-6, abs=1e-6 * (1 + lam)
    )
    np.testing.assert_allclose(
        worst_case_weights(losses, lam, rho=rho, sample_weight=w), p, rtol=1e-6
    )


def test_equal_losses_have_zero_gap():
    for rho in (1e-8, 1e-3, 0.5, 0.9):
        assert kl_dro_risk(np.full(7, 2.5), 0.3, rho=rho) == pytest.approx(2.5, rel=1e-13)


# ----------------------------------------------------------------------------------------
# Worst-case weights and gradients
# ----------------------------------------------------------------------------------------
@given(problems(), st.floats(-8, -0.01))
def test_relaxed_weights_are_a_capped_distribution(prob, log_rho):
    losses, w, lam = prob
    rho = 10**log_rho
    p = normalised(w, len(losses))
    q = worst_case_weights(losses, lam, rho=rho, sample_weight=w)
    assert np.all(q >= 0)
    assert q.sum() == pytest.approx(1.0, abs=1e-10)
    assert np.all(q <= p / rho * (1 + 1e-12))
    eta = optimal_eta(losses, lam, rho, sample_weight=w)
    np.testing.assert_allclose(q, p * gradient_factors(losses, eta, lam, rho), rtol=1e-8)


@given(problems(max_loss=5.0, max_n=15), st.floats(-4, -0.05))
def test_gradients_equal_finite_differences(prob, log_rho):
    losses, w, lam = prob
    lam = max(lam, 0.2)
    rho = 10**log_rho
    p = normalised(w, len(losses))
    h = 1e-6 * lam
    for r in (0.0, rho):
        grad = worst_case_weights(losses, lam, rho=r, sample_weight=w)
        for i in range(len(losses)):
            e = np.zeros_like(losses)
            e[i] = h
            fd = (
                kl_dro_risk(losses + e, lam, rho=r, sample_weight=w)
                - kl_dro_risk(losses - e, lam, rho=r, sample_weight=w)
            ) / (2 * h)
            assert fd == pytest.approx(grad[i], abs=1e-6)
    # derivative in eta away from the optimum: 1 - sum p c
    eta = optimal_eta(losses, lam, rho, sample_weight=w) + 0.3 * lam
    c = gradient_factors(losses, eta, lam, rho)
    fd = (
        relaxed_objective(losses, eta + h, lam, rho, sample_weight=w)
        - relaxed_objective(losses, eta - h, lam, rho, sample_weight=w)
    ) / (2 * h)
    assert fd == pytest.approx(1 - p @ c, abs=1e-6)
    # and the unbiased per-sample gradient of G in the losses is p_i c_i
    logit = np.log(rho) - np.log1p(-rho)
    assert p @ c == pytest.approx(np.sum(p * expit((losses - eta) / lam + logit) / rho))


# ----------------------------------------------------------------------------------------
# Extreme values: no overflow, no warnings
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [1e-4, 1e-2, 1.0])
@pytest.mark.parametrize("rho", [0.0, 1e-8, 1e-3, 0.5])
def test_huge_losses_small_lam_stay_finite(lam, rho):
    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.uniform(0, 1, 50), [1e8, 1e6, 1e8 - 3.0]])
    with np.errstate(all="raise"):
        risk = kl_dro_risk(losses, lam, rho=rho)
        q = worst_case_weights(losses, lam, rho=rho)
        if rho > 0:
            eta = optimal_eta(losses, lam, rho)
            c = gradient_factors(losses, eta, lam, rho)
            assert np.all(np.isfinite(c))
            assert np.isfinite(relaxed_objective(losses, eta, lam, rho))
    assert np.isfinite(risk)
    assert np.all(np.isfinite(q)) and q.sum() == pytest.approx(1.0, abs=1e-10)
    if rho * len(losses) < 1:
        # the worst case sits on the largest losses; the risk is close to the maximum
        assert 1e8 * (1 - 1e-3) <= risk <= 1e8
    else:
        # the cap 1/rho binds: the risk is the CVaR at level rho (lam is tiny against 1e8)
        uniform = np.full(len(losses), 1 / len(losses))
        assert risk == pytest.approx(ref_cvar(losses, uniform, rho), rel=1e-7)
    if rho == 0.0:
        uniform = np.full(len(losses), 1 / len(losses))
        assert risk == pytest.approx(ref_exact(losses, uniform, lam), rel=1e-15)


def test_huge_losses_large_lam_stay_finite():
    losses = np.array([1e8, 0.0, 3.0])
    for rho in (0.0, 1e-8):
        assert np.isfinite(kl_dro_risk(losses, 1e-4, rho=rho))
        assert kl_dro_risk(losses, 1e12, rho=rho) == pytest.approx(losses.mean(), rel=1e-3)


def test_offset_series_matches_closed_form():
    for rho in (1e-12, 1e-6, 0.01, 0.0999, 0.1, 0.5):
        closed = 1 + (1 - rho) / rho * np.log1p(-rho)
        series = relaxation_offset(rho)
        assert series == pytest.approx(closed, rel=1e-6 if rho < 1e-5 else 1e-12)
    assert relaxation_offset(1e-12) == pytest.approx(0.5e-12, rel=1e-9)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.0, -1.0, np.nan, np.inf, "1"])
def test_bad_lam(lam):
    with pytest.raises(ValueError, match="lam"):
        kl_dro_risk([1.0, 2.0], lam)


@pytest.mark.parametrize("rho", [-0.1, 1.0, 1.5, np.nan])
def test_bad_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        kl_dro_risk([1.0, 2.0], 1.0, rho=rho)
    with pytest.raises(ValueError, match="rho"):
        optimal_eta([1.0, 2.0], 1.0, 0.0)


@pytest.mark.parametrize(
    "losses, weights, match",
    [
        ([1.0, np.nan], None, "NaN"),
        ([1.0, np.inf], None, "NaN"),
        ([], None, "non-empty"),
        ([[1.0, 2.0]], None, "1-D"),
        ([1.0, 2.0], [1.0, -1.0], "sample_weight"),
        ([1.0, 2.0], [1.0, np.nan], "sample_weight"),
        ([1.0, 2.0], [0.0, 0.0], "non-zero"),
        ([1.0, 2.0], [1.0, 1.0, 1.0], "sample_weight"),
    ],
)
def test_bad_losses_and_weights(losses, weights, match):
    with pytest.raises(ValueError, match=match):
        kl_dro_risk(losses, 1.0, rho=0.1, sample_weight=weights)


def test_zero_weight_samples_are_ignored():
    losses = np.array([1.0, 50.0, 2.0])
    w = np.array([1.0, 0.0, 1.0])
    for rho in (0.0, 0.1):
        assert kl_dro_risk(losses, 0.5, rho=rho, sample_weight=w) == pytest.approx(
            kl_dro_risk(losses[[0, 2]], 0.5, rho=rho)
        )
        assert worst_case_weights(losses, 0.5, rho=rho, sample_weight=w)[1] == 0.0


# ----------------------------------------------------------------------------------------
# The whole range of lam, rho, losses and weights: exact where the limits are known
# ----------------------------------------------------------------------------------------
@given(problems(), st.floats(-8, -0.05), st.floats(15, 300))
def test_huge_lam_is_the_weighted_mean_to_rounding(prob, log_rho, log_lam):
    """Once lam is far above the spread of the losses the correction to the mean
    (about their variance over 2 lam) is below rounding: the risk is the mean to 1e-12."""
    losses, w, _ = prob
    p = normalised(w, len(losses))
    mean = p @ losses
    for rho in (0.0, 10**log_rho):
        got = kl_dro_risk(losses, 10**log_lam, rho=rho, sample_weight=w)
        assert got == pytest.approx(mean, rel=1e-12, abs=1e-12 * np.max(losses))


@given(problems(), st.floats(-8, -0.05), st.floats(-300, -12))
def test_tiny_lam_is_the_maximum_or_the_cvar(prob, log_rho, log_lam):
    losses, w, _ = prob
    lam = 10**log_lam
    p = normalised(w, len(losses))
    exact = kl_dro_risk(losses, lam, sample_weight=w)
    top = np.argmax(losses)  # R >= max + lam log p_top
    assert losses[top] + lam * np.log(p[top]) - 1e-12 <= exact <= losses.max() + 1e-12
    rho = 10**log_rho
    relaxed = kl_dro_risk(losses, lam, rho=rho, sample_weight=w)
    assert relaxed == pytest.approx(ref_cvar(losses, p, rho), rel=1e-9, abs=1e-9)
    q = worst_case_weights(losses, lam, rho=rho, sample_weight=w)
    assert np.all(np.isfinite(q)) and q.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("lam", [5e-324, 1e-300, 1e300, 1.7e308])
@pytest.mark.parametrize("rho", [0.0, 1e-300, 1e-3, 0.999])
def test_extreme_lam_and_rho_stay_finite(lam, rho):
    losses = np.random.default_rng(0).exponential(size=50)
    risk = kl_dro_risk(losses, lam, rho=rho)
    q = worst_case_weights(losses, lam, rho=rho)
    assert np.isfinite(risk) and np.all(np.isfinite(q))
    assert losses.mean() - 1e-12 <= risk <= losses.max() + 1e-12


def test_tiny_rho_is_the_exact_risk():
    losses = np.random.default_rng(0).exponential(size=50)
    for lam in (0.1, 1.0, 10.0):
        assert kl_dro_risk(losses, lam, rho=1e-300) == pytest.approx(
            kl_dro_risk(losses, lam), rel=1e-12
        )
    with pytest.raises(ValueError, match="rho=5e-324 is below 1e-300"):
        kl_dro_risk(losses, 1.0, rho=5e-324)


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_losses_of_any_size_scale_the_risk(scale):
    """The risk is homogeneous: R(s l, s lam) = s R(l, lam), at every size of float64."""
    losses = np.random.default_rng(1).exponential(size=40)
    for rho in (0.0, 1e-3):
        expected = kl_dro_risk(losses, 0.3, rho=rho)
        got = kl_dro_risk(losses * scale, 0.3 * scale, rho=rho)
        assert got == pytest.approx(expected * scale, rel=1e-12)


def test_weights_whose_sum_overflows_are_normalised():
    losses = np.array([1.0, 2.0, 5.0])
    w = np.full(3, 1.7e308)
    for rho in (0.0, 0.1):
        assert kl_dro_risk(losses, 1.0, rho=rho, sample_weight=w) == pytest.approx(
            kl_dro_risk(losses, 1.0, rho=rho)
        )
        np.testing.assert_allclose(
            worst_case_weights(losses, 1.0, rho=rho, sample_weight=w),
            worst_case_weights(losses, 1.0, rho=rho),
        )


@pytest.mark.parametrize("rho", ["0.1", None, [0.1], True])
def test_rho_that_is_not_a_number_names_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        kl_dro_risk([1.0, 2.0], 1.0, rho=rho)


@pytest.mark.parametrize("rho", [1e-4, 1e-2, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_threshold_solve_from_any_guess(rho, weighted):
    """The 1-D solve for the threshold reaches the optimum from guesses far outside its
    bracket (below the smallest loss, above the largest: a line search's trial point can
    move its guess there), far inside it and near the root: the mass condition
    sum p c = 1 holds and the relaxed objective is the same to rounding (its minimiser in
    eta is an interval where the cap binds on rho n samples exactly, as at rho = 1e-4
    here); heavy-tailed losses at a lam far below their spread."""
    from sklearn_lse._kernels import relaxation_terms, relaxed_value, solve_eta

    rng = np.random.default_rng(5)
    losses = rng.standard_t(2, size=20_000) ** 2
    p = rng.random(losses.shape[0]) if weighted else np.ones(losses.shape[0])
    p /= p.sum()
    lam = 1e-4 * float(losses.max())
    root = solve_eta(losses, p, lam, rho)
    best = relaxed_value(losses, p, root, lam, rho)
    for guess in (-1e3 * lam, losses.min() - 50 * lam, root - 100 * lam, root + 1e-9 * lam,
                  root + 300 * lam, losses.max(), 2 * losses.max() + 1.0):  # fmt: skip
        eta = solve_eta(losses, p, lam, rho, guess)
        c, k = np.empty_like(losses), np.empty_like(losses)
        relaxation_terms(losses, 0.0, eta, lam, rho, c, k)
        assert float(p @ c) == pytest.approx(1.0, abs=1e-12)
        assert relaxed_value(losses, p, eta, lam, rho) == pytest.approx(best, rel=1e-11)
