"""The KL-ball form (radius) and what the density cap does (rho="auto", exact_risk_,
cap_mass_, effective_sample_size_): against an independent reference, the dro package,
the limits, scale equivariance and model selection."""

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.datasets import load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV

from sklearn_lse import DROClassifier, DRORegressor, kl_ball_risk, kl_dro_risk


def heavy_tailed(n=400, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.logspace(-1, 1, d) + np.arange(d)
    y = X @ (rng.normal(size=d) / np.logspace(-1, 1, d)) + rng.standard_t(2, size=n)
    return X, y


def reference_ball(X, y, radius, p):
    """``min_(w, b, t) exp(t) radius + exp(t) log sum p exp(loss / exp(t))`` by SciPy,
    written from MATH.md section 7 without the package (standardised columns)."""
    mu, sd = X.mean(0), X.std(0)
    Z = (X - mu) / sd
    d = X.shape[1]

    def fun(v):
        coef, b, t = v[:d], v[d], v[d + 1]
        lam = np.exp(t)
        r = Z @ coef + b - y
        loss = r**2
        value = lam * logsumexp(loss / lam, b=p)
        q = p * np.exp(loss / lam - value / lam)
        grad_f = q * 2 * r
        divergence = (q @ loss - value) / lam
        grad = np.concatenate([Z.T @ grad_f, [grad_f.sum(), lam * (radius - divergence)]])
        return lam * radius + value, grad

    ols = LinearRegression().fit(Z, y, sample_weight=p)
    spread = np.ptp((ols.predict(Z) - y) ** 2)
    v0 = np.concatenate([ols.coef_, [ols.intercept_, np.log(spread)]])
    best = None
    for _ in range(5):
        res = minimize(fun, v0, jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 10000})
        v0 = res.x
        if best is not None and abs(best - res.fun) <= 1e-14 * abs(res.fun):
            break
        best = res.fun
    return res.fun, np.exp(res.x[d + 1])


@pytest.mark.parametrize("radius", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_ball_matches_an_independent_reference(radius, weighted):
    X, y = heavy_tailed()
    rng = np.random.default_rng(1)
    sw = rng.uniform(0.5, 2.0, len(y)) if weighted else None
    p = np.full(len(y), 1 / len(y)) if sw is None else sw / sw.sum()
    value, lam = reference_ball(X, y, radius, p)
    model = DRORegressor(radius=radius, rho=0.0, tol=1e-10).fit(X, y, sample_weight=sw)
    assert model.risk_ >= value - 1e-8 * value
    assert model.risk_ == pytest.approx(value, rel=1e-8)
    assert model.lam_ == pytest.approx(lam, rel=1e-3)
    # the risk is the ball's value of the model's own losses
    losses = (model.predict(X) - y) ** 2
    assert model.risk_ == pytest.approx(kl_ball_risk(losses, radius, sample_weight=sw), rel=1e-9)
    assert model.robust_risk(X, y, sample_weight=sw) == pytest.approx(model.risk_, rel=1e-9)


@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
def test_every_solver_solves_the_ball(solver):
    X, y = heavy_tailed(600, seed=2)
    ref = DRORegressor(radius=0.2, rho=1e-3, tol=1e-11).fit(X, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = DRORegressor(radius=0.2, rho=1e-3, solver=solver, random_state=0).fit(X, y)
    if not any(issubclass(w.category, ConvergenceWarning) for w in caught):
        assert model.risk_ - ref.risk_ <= 10 * model.tol * abs(ref.risk_)
    assert model.lam_ == pytest.approx(ref.lam_, rel=1e-2)


def test_classifier_ball_and_its_limits():
    X, y = heavy_tailed(500, seed=3)
    labels = np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
    model = DROClassifier(radius=0.1, tol=1e-10).fit(X, labels)
    proba = model.predict_proba(X)
    losses = -np.log(proba[np.arange(len(y)), labels])
    penalty = 0.5 * model.alpha * np.sum(model.coef_**2)
    assert model.risk_ == pytest.approx(kl_ball_risk(losses, 0.1) + penalty, rel=1e-7)
    # radius 0 is logistic regression
    erm = DROClassifier(radius=0.0, tol=1e-10).fit(X, labels)
    logistic = LogisticRegression(C=1 / (erm.alpha * len(y)), tol=1e-12, max_iter=10000)
    logistic.fit(X, labels)
    np.testing.assert_allclose(erm.predict_proba(X), logistic.predict_proba(X), atol=1e-5)
    assert erm.lam_ == np.inf


def test_radius_zero_is_least_squares_and_large_radius_the_worst_loss():
    X, y = heavy_tailed()
    erm = DRORegressor(radius=0.0).fit(X, y)
    ols = LinearRegression().fit(X, y)
    np.testing.assert_allclose(erm.coef_, ols.coef_, rtol=1e-6)
    np.testing.assert_allclose(erm.worst_case_weights(X, y), np.full(len(y), 1 / len(y)))
    # a budget beyond log(n) does not bind: the worst case is the largest loss
    wide = DRORegressor(radius=50.0, rho=0.0).fit(X, y)
    losses = (wide.predict(X) - y) ** 2
    assert wide.risk_ == pytest.approx(losses.max(), rel=1e-5)


@pytest.mark.parametrize("Estimator", [DRORegressor, DROClassifier])
def test_lam_and_radius_are_exclusive(Estimator):
    X, y = heavy_tailed()
    y = y > 0 if Estimator is DROClassifier else y
    with pytest.raises(ValueError, match="lam=1.0 and radius=0.1 are both set"):
        Estimator(lam=1.0, radius=0.1).fit(X, y)
    with pytest.raises(ValueError, match="radius"):
        Estimator(radius=-0.1).fit(X, y)


@pytest.mark.parametrize("c", [1e-3, 1.0, 1e3])
def test_default_regressor_is_equivariant_in_the_units_of_y(c):
    X, y = load_diabetes(return_X_y=True)
    ref = DRORegressor().fit(X, y)
    model = DRORegressor().fit(X, c * y)
    np.testing.assert_allclose(model.predict(X), c * ref.predict(X), rtol=1e-6)
    assert model.lam_ == pytest.approx(c**2 * ref.lam_, rel=1e-6)


def test_default_classifier_is_the_same_for_any_feature_scaling():
    """With the penalty off (it is not invariant to the scale of the features, as in
    LogisticRegression), rescaled features give the same probabilities."""
    X, y = heavy_tailed(500, seed=4)
    labels = y > np.median(y)
    ref = DROClassifier(alpha=0.0).fit(X, labels)
    model = DROClassifier(alpha=0.0).fit(X * [1e-3, 1.0, 1e3, 1e6], labels)
    np.testing.assert_allclose(model.predict_proba(X * [1e-3, 1.0, 1e3, 1e6]),
                               ref.predict_proba(X), atol=1e-6)  # fmt: skip


def test_gridsearch_over_the_radius():
    X, y = heavy_tailed(300, seed=5)
    search = GridSearchCV(DRORegressor(), {"radius": [0.0, 0.05, 0.2]}, cv=3).fit(X, y)
    assert search.best_params_["radius"] in (0.0, 0.05, 0.2)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_what_the_cap_did_is_reported():
    """A worst case that piles onto a few samples: with a fixed rho the cap binds (its
    mass and the gap between the exact and the relaxed risk show it), and rho="auto"
    goes on to the exact risk."""
    X, y = heavy_tailed(300, seed=6)
    y[:3] += 50.0  # three outliers
    capped = DRORegressor(lam=1.0, rho=0.05).fit(X, y)
    assert capped.cap_mass_ > 0.1
    assert capped.exact_risk_ > capped.risk_ * (1 + 1e-3)
    losses = (capped.predict(X) - y) ** 2
    assert capped.exact_risk_ == pytest.approx(kl_dro_risk(losses, 1.0), rel=1e-9)
    assert 1 <= capped.effective_sample_size_ <= len(y)
    auto = DRORegressor(lam=1.0).fit(X, y)  # newton: the exact risk
    assert auto.rho_ == 0.0
    assert auto.exact_risk_ == pytest.approx(auto.risk_, rel=1e-9)
    assert auto.exact_risk_ <= capped.exact_risk_
    # the stochastic solver needs rho > 0: auto lowers it until the cap stops mattering
    stochastic = DRORegressor(lam=3.0, solver="sgd", random_state=0).fit(X, y)
    assert stochastic.rho_ < 1e-3
    assert stochastic.exact_risk_ - stochastic.risk_ <= 10 * stochastic.tol * stochastic.risk_


def test_dro_package_agrees_on_the_ball():
    """The ``dro`` package (cvxpy) solves the same KL-ball least squares; at n = 200 its
    solver succeeds, and both solutions have the same ball objective to 1e-6."""
    kl_dro = pytest.importorskip("dro.linear_model.kl_dro")
    rng = np.random.default_rng(7)
    X = rng.normal(size=(200, 3))
    y = X @ [1.0, -1.0, 0.5] + rng.standard_t(3, size=200)
    radius = 0.1
    try:
        solution = kl_dro.KLDRO(input_dim=3, model_type="ols", eps=radius).fit(X, y)
    except Exception as error:  # the solver's own failure is not ours to test
        pytest.skip(f"dro failed: {error}")
    theta, b = np.asarray(solution["theta"], dtype=float), float(solution["b"])
    theirs = kl_ball_risk((X @ theta + b - y) ** 2, radius)
    model = DRORegressor(radius=radius, rho=0.0, tol=1e-10).fit(X, y)
    ours = kl_ball_risk((model.predict(X) - y) ** 2, radius)
    assert ours <= theirs * (1 + 1e-6)
    assert ours == pytest.approx(theirs, rel=1e-4)
