"""DRORegressor: optimum without tuning, agreement with an independent reference, limits,
robustness, sample weights and bad input."""

import pickle
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logsumexp
from sklearn.base import clone
from sklearn.datasets import load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, Ridge

from sklearn_lse import DRORegressor, kl_dro_risk


def make_data(kind, n, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        X = rng.normal(size=(n, 10))
        y = X @ rng.normal(size=10) + rng.normal(size=n)
    elif kind == "unscaled_heavy_tailed":
        scales = np.logspace(-2, 2, 10)
        X = rng.normal(size=(n, 10)) * scales
        y = X @ (rng.normal(size=10) / scales) + rng.standard_t(2, size=n)
    else:
        X, y = load_diabetes(return_X_y=True)
        y = (y - y.mean()) / y.std()
    return X, y


def median_squared_residual(X, y):
    return float(np.median((y - LinearRegression().fit(X, y).predict(X)) ** 2))


# ----------------------------------------------------------------------------------------
# 1. Every solver reaches the optimum of the objective (the reference's), and a fit that
#    says it converged is within 10 tol of it
# ----------------------------------------------------------------------------------------
def fit_and_warned(model, X, y, **kwargs):
    """Fit; and whether it warned that it did not converge."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y, **kwargs)
    return model, any(issubclass(w.category, ConvergenceWarning) for w in caught)


def best_objective(X, y, **params):
    """The lowest objective any solver reaches at a tight tolerance (the optimum)."""
    values = []
    for solver in ("newton", "lbfgs"):
        model, _ = fit_and_warned(
            DRORegressor(solver=solver, tol=1e-11, max_iter=10000, **params), X, y
        )
        values.append(model.risk_)
    return min(values)


@pytest.mark.parametrize("kind", ["gaussian", "unscaled_heavy_tailed", "diabetes"])
@pytest.mark.parametrize("lam_factor", [0.03, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("rho", [1e-1, 1e-2, 1e-3, 1e-4])
def test_default_fit_reaches_the_optimum(kind, lam_factor, rho):
    X, y = make_data(kind, 500)
    lam = lam_factor * median_squared_residual(X, y)
    optimum = best_objective(X, y, lam=lam, rho=rho)
    # pytest turns warnings into errors: a ConvergenceWarning fails this test
    model = DRORegressor(lam=lam, rho=rho).fit(X, y)
    assert model.risk_ >= optimum - 1e-9 * abs(optimum)  # the optimum is the optimum
    assert model.risk_ - optimum <= 10 * model.tol * abs(optimum)
    assert model.robust_risk(X, y) == pytest.approx(model.risk_, rel=1e-10)


@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
@pytest.mark.parametrize("kind", ["gaussian", "unscaled_heavy_tailed"])
@pytest.mark.parametrize("rho, lam_factor", [(1e-2, 0.1), (1e-3, 1.0), (1e-3, 0.03)])
def test_a_converged_fit_is_within_ten_tol_of_the_optimum(solver, kind, rho, lam_factor):
    X, y = make_data(kind, 5000, seed=1)
    lam = lam_factor * median_squared_residual(X, y)
    optimum = best_objective(X, y, lam=lam, rho=rho)
    model, warned = fit_and_warned(
        DRORegressor(lam=lam, rho=rho, solver=solver, random_state=0), X, y
    )
    assert np.isfinite(model.risk_)
    if not warned:
        assert model.risk_ - optimum <= 10 * model.tol * abs(optimum)


@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
def test_no_false_convergence_when_the_cap_binds_on_one_sample(solver):
    """rho * n = 1 at a small lam: the objective is nearly piecewise linear around the
    largest losses, and Newton's decrement falls by a steady factor far below the
    suboptimality (linear convergence); taking that for quadratic convergence once made
    the sgd solver (and the Newton one before) report convergence at 6e-5 of the
    optimum. Single-threaded BLAS, as in the benchmark's cell that found it."""
    from threadpoolctl import threadpool_limits

    from benchmarks.hard_grid import regression

    X, y = regression(10_000)
    lam = 0.1 * median_squared_residual(X, y)
    with threadpool_limits(1):
        optimum = best_objective(X, y, lam=lam, rho=1e-4)
        model, warned = fit_and_warned(
            DRORegressor(lam=lam, rho=1e-4, solver=solver, random_state=0), X, y
        )
    assert np.isfinite(model.risk_)
    if not warned:
        assert model.risk_ - optimum <= 10 * model.tol * abs(optimum)
    if solver == "newton":  # the default solver reaches it
        assert not warned


@pytest.mark.parametrize("loss", ["huber", "absolute_error"])
def test_robust_losses_reach_the_optimum(loss):
    X, y = make_data("unscaled_heavy_tailed", 2000, seed=2)
    kw = dict(lam=1.0, rho=1e-2, loss=loss, epsilon=0.5)
    optimum = best_objective(X, y, **kw)
    model = DRORegressor(**kw).fit(X, y)
    assert model.risk_ - optimum <= 10 * model.tol * abs(optimum)
    r = model.predict(X) - y
    expected = np.where(np.abs(r) <= 0.5, r**2, 2 * 0.5 * np.abs(r) - 0.25)
    if loss == "absolute_error":
        expected = np.sqrt(r**2 + 0.25) - 0.5
    assert model.robust_risk(X, y) == pytest.approx(kl_dro_risk(expected, 1.0, rho=1e-2))


# ----------------------------------------------------------------------------------------
# 2. Every solver agrees with an independent NumPy/SciPy reference
# ----------------------------------------------------------------------------------------
def reference_fit(X, y, lam, rho, alpha, p):
    """Minimise the objective with SciPy, written from MATH.md without the package.

    rho > 0: joint minimisation over (w, b, eta) of
    eta - lam + lam/rho sum p softplus((l - eta)/lam + log rho) + lam c(rho) + alpha/2 |w|^2;
    rho = 0: lam logsumexp(l/lam, b=p) + alpha/2 |w|^2.
    """
    d = X.shape[1]
    mu, sd = X.mean(0), X.std(0)
    Z = (X - mu) / sd  # the reference works on standardised columns, then maps back
    offset = 0.0 if rho == 0 else 1 + (1 - rho) / rho * np.log1p(-rho)

    def unpack(t):
        v, b = t[:d], t[d]
        w = v / sd
        return w, b - mu @ w

    def fun(t):
        v, b = t[:d], t[d]
        w = v / sd
        r = Z @ v + b - y
        loss = r**2
        if rho == 0:
            val = lam * logsumexp(loss / lam, b=p)
            q = p * np.exp(loss / lam - val / lam)
            gq = q * 2 * r
            grad = np.append(Z.T @ gq + alpha * w / sd, gq.sum())
            return val + 0.5 * alpha * w @ w, grad
        eta = t[d + 1]
        z = (loss - eta) / lam + np.log(rho)
        val = eta - lam + lam / rho * p @ np.logaddexp(0, z) + lam * offset
        c = expit(z) / rho
        gq = p * c * 2 * r
        grad = np.concatenate([Z.T @ gq + alpha * w / sd, [gq.sum(), 1 - p @ c]])
        return val + 0.5 * alpha * w @ w, grad

    ols = LinearRegression().fit(Z, y, sample_weight=p)
    t0 = np.append(ols.coef_, ols.intercept_)
    if rho > 0:
        loss0 = (Z @ ols.coef_ + ols.intercept_ - y) ** 2
        t0 = np.append(t0, lam * logsumexp(loss0 / lam, b=p))
    best = None
    for _ in range(3):  # restart until the value stops moving
        res = minimize(fun, t0, jac=True, method="BFGS", options={"gtol": 1e-11, "maxiter": 5000})
        t0 = res.x
        if best is not None and abs(best - res.fun) <= 1e-14 * abs(res.fun):
            break
        best = res.fun
    w, b = unpack(res.x)
    return res.fun, w, b


@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
@pytest.mark.parametrize("rho", [0.0, 1e-3, 0.1])
@pytest.mark.parametrize("alpha", [0.0, 0.05])
@pytest.mark.parametrize("weighted", [False, True])
def test_every_solver_matches_independent_reference(solver, rho, alpha, weighted):
    if solver == "sgd" and rho == 0:
        pytest.skip("rho=0 has no unbiased stochastic gradient")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 4)) * [1.0, 3.0, 0.2, 1.0] + [0.0, 1.0, -2.0, 5.0]
    y = X @ [1.0, -0.5, 2.0, 0.3] + rng.standard_t(3, size=300)
    sw = rng.uniform(0.2, 2.0, 300) if weighted else None
    p = np.full(300, 1 / 300) if sw is None else sw / sw.sum()
    lam = 1.0
    ref_value, ref_w, ref_b = reference_fit(X, y, lam, rho, alpha, p)
    tol = 1e-12 if solver == "newton" else 1e-9
    model, warned = fit_and_warned(
        DRORegressor(lam=lam, rho=rho, alpha=alpha, solver=solver, tol=tol, random_state=0),
        X, y, sample_weight=sw,
    )  # fmt: skip
    assert model.risk_ >= ref_value - 1e-9 * abs(ref_value)
    assert model.risk_ == pytest.approx(ref_value, rel=1e-8 if solver == "newton" else 1e-7)
    if solver == "newton":  # quadratic convergence: the coefficients too
        assert not warned
        np.testing.assert_allclose(model.coef_, ref_w, rtol=1e-4, atol=1e-6)
        assert model.intercept_ == pytest.approx(ref_b, rel=1e-4, abs=1e-6)
    # the reported risk is the package's own risk function at the solution
    losses = (model.predict(X) - y) ** 2
    penalty = 0.5 * alpha * model.coef_ @ model.coef_
    assert model.risk_ == pytest.approx(
        kl_dro_risk(losses, lam, rho=rho, sample_weight=sw) + penalty, rel=1e-12
    )


# ----------------------------------------------------------------------------------------
# 3. ERM limit
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
def test_large_lam_is_least_squares(solver):
    X, y = make_data("gaussian", 2000, seed=4)
    model = DRORegressor(lam=1e8, solver=solver, tol=1e-10, random_state=0).fit(X, y)
    ols = LinearRegression().fit(X, y)
    np.testing.assert_allclose(model.coef_, ols.coef_, rtol=1e-4)
    assert model.intercept_ == pytest.approx(ols.intercept_, abs=1e-4 * np.std(y))


@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
def test_large_lam_with_penalty_is_ridge(solver):
    X, y = make_data("gaussian", 2000, seed=5)
    alpha = 0.1
    model = DRORegressor(lam=1e8, alpha=alpha, solver=solver, tol=1e-10, random_state=0)
    model.fit(X, y)
    # mean((y - f)^2) + alpha/2 |w|^2  ==  (1/n) (|y - f|^2 + n alpha/2 |w|^2)
    ridge = Ridge(alpha=len(y) * alpha / 2).fit(X, y)
    np.testing.assert_allclose(model.coef_, ridge.coef_, rtol=1e-4)
    assert model.intercept_ == pytest.approx(ridge.intercept_, abs=1e-4 * np.std(y))


# ----------------------------------------------------------------------------------------
# 4. Robustness shows on a noisy subpopulation
# ----------------------------------------------------------------------------------------
def subpopulation_data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    group = X[:, 0] > 1.2816  # about 10% of the samples
    noise = rng.normal(size=n) * np.where(group, 5.0, 1.0)
    y = X @ [1.0, 2.0, -1.0] + 0.8 * np.maximum(X[:, 0], 0) ** 2 + noise
    return X, y, group


def test_dro_beats_least_squares_on_the_noisy_subpopulation():
    X, y, _ = subpopulation_data(4000, seed=0)
    Xt, yt, gt = subpopulation_data(20000, seed=1)
    ols = LinearRegression().fit(X, y)
    lam = median_squared_residual(X, y)
    dro = DRORegressor(lam=lam, rho=1e-2, random_state=0).fit(X, y)
    mse_ols = np.mean((ols.predict(Xt[gt]) - yt[gt]) ** 2)
    mse_dro = np.mean((dro.predict(Xt[gt]) - yt[gt]) ** 2)
    assert mse_dro < 0.97 * mse_ols
    # and the worst-case weights do single out the subpopulation
    q = dro.worst_case_weights(X, y)
    _, _, g = subpopulation_data(4000, seed=0)
    assert q[g].sum() > 0.5


# ----------------------------------------------------------------------------------------
# 5. Sample weights
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
def test_integer_weights_equal_repeated_rows(solver):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(200, 3))
    y = X @ [1.0, -1.0, 0.5] + rng.standard_t(3, size=200)
    sw = rng.integers(0, 4, size=200)
    Xr, yr = np.repeat(X, sw, axis=0), np.repeat(y, sw)
    kw = dict(lam=1.0, rho=1e-2, solver=solver, random_state=0)
    if solver != "sgd":
        kw["tol"] = 1e-12 if solver == "newton" else 1e-10
    a = DRORegressor(**kw).fit(X, y, sample_weight=sw)
    b = DRORegressor(**kw).fit(Xr, yr)
    if solver != "sgd":
        assert a.risk_ == pytest.approx(b.risk_, rel=1e-8)
        np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-5)
    else:
        assert a.risk_ == pytest.approx(b.risk_, rel=1e-3)
        assert b.robust_risk(X, y, sample_weight=sw) == pytest.approx(a.risk_, rel=1e-3)


# ----------------------------------------------------------------------------------------
# 6. Bad input, before any work; no half-fitted estimator
# ----------------------------------------------------------------------------------------
X_OK = np.random.default_rng(0).normal(size=(20, 2))
Y_OK = X_OK @ [1.0, 2.0]


@pytest.mark.parametrize(
    "params, match",
    [
        ({"lam": 0.0}, "lam"),
        ({"lam": -1.0}, "lam"),
        ({"rho": -0.1}, "rho"),
        ({"rho": 1.0}, "rho"),
        ({"rho": 0.0, "solver": "sgd"}, "newton"),
        ({"rho": 1e-320}, "rho"),
        ({"alpha": -1.0}, "alpha"),
        ({"loss": "hinge"}, "loss"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        DRORegressor(**params).fit(X_OK, Y_OK)


def with_value(a, index, value):
    a = np.array(a, dtype=float)
    a[index] = value
    return a


@pytest.mark.parametrize(
    "X, y, sw, match",
    [
        (with_value(X_OK, (0, 0), np.nan), Y_OK, None, "NaN"),
        (with_value(X_OK, (0, 0), np.inf), Y_OK, None, "infinity"),
        (X_OK, with_value(Y_OK, 3, np.nan), None, "NaN"),
        (X_OK, Y_OK, with_value(np.ones(20), 2, np.nan), "sample_weight"),
        (X_OK, Y_OK, with_value(np.ones(20), 2, -1.0), "sample_weight"),
        (X_OK, Y_OK, np.ones(19), "sample_weight"),
        (X_OK, Y_OK[:-1], None, "inconsistent numbers of samples"),
        (X_OK, np.c_[Y_OK, Y_OK], None, "y must be 1-D"),
        (X_OK, Y_OK[:, None], None, "y must be 1-D"),
        (X_OK[0], Y_OK, None, "2D array"),
        (np.array([["a", "b"]] * 20), Y_OK, None, "string|float"),
    ],
)
def test_bad_data(X, y, sw, match):
    model = DRORegressor()
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, sample_weight=sw)
    assert not hasattr(model, "coef_")


@pytest.mark.parametrize("lam", [1e-3, 1.0])
@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
def test_extreme_losses_do_not_overflow(lam, solver):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 2))
    y = X @ [1.0, 1.0] + rng.normal(size=300)
    y[:3] += 1000.0  # losses of about 1e6 at the start
    model, _ = fit_and_warned(DRORegressor(lam=lam, rho=1e-2, solver=solver, random_state=0), X, y)
    assert np.all(np.isfinite(model.coef_)) and np.isfinite(model.risk_)
    q = model.worst_case_weights(X, y)
    assert np.all(np.isfinite(q)) and q.sum() == pytest.approx(1.0)


def test_too_large_learning_rate_recovers():
    X, y = make_data("gaussian", 1000)
    model = DRORegressor(lam=1.0, rho=1e-2, solver="sgd", learning_rate=1e4, random_state=0)
    model.fit(X, y)
    ref = DRORegressor(lam=1.0, rho=1e-2, tol=1e-10).fit(X, y)
    assert np.all(np.isfinite(model.coef_))
    assert model.risk_ - ref.risk_ <= 1e-3 * abs(ref.risk_)


# ----------------------------------------------------------------------------------------
# Methods and attributes
# ----------------------------------------------------------------------------------------
def test_attributes_and_methods():
    X, y = make_data("gaussian", 400)
    model = DRORegressor(lam=1.0, rho=0.05, random_state=0).fit(X, y)
    assert model.coef_.shape == (10,)
    assert isinstance(model.intercept_, float)
    assert model.n_features_in_ == 10
    assert model.n_iter_ >= 1
    q = model.worst_case_weights(X, y)
    assert q.shape == (400,) and q.sum() == pytest.approx(1.0)
    assert q.max() <= 1 / (0.05 * 400) * (1 + 1e-9)  # the 1/rho cap
    assert model.robust_risk(X, y) == pytest.approx(model.risk_, rel=1e-10)
    assert 0.5 < model.score(X, y) <= 1.0
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :3])


def test_pickle_and_clone_round_trip():
    X, y = make_data("gaussian", 300)
    model = DRORegressor(lam=2.0, rho=0.01, random_state=0).fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    fresh = clone(model)
    assert fresh.get_params() == model.get_params()
    assert not hasattr(fresh, "coef_")


def test_warm_start_continues_from_previous_solution():
    X, y = make_data("gaussian", 2000)
    model = DRORegressor(lam=1.0, rho=1e-2, warm_start=True, random_state=0).fit(X, y)
    first = model.n_iter_
    model.fit(X, y)
    assert model.n_iter_ < first


@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
def test_verbose_prints_a_line_per_iteration_and_why_it_stopped(solver, capsys):
    X, y = make_data("unscaled_heavy_tailed", 1000)
    model = DRORegressor(lam=0.3, verbose=1, solver=solver, random_state=0).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    iterations = [ln for ln in lines if f"[{solver}] iteration" in ln]
    assert len(iterations) >= 1 and "objective=" in iterations[-1]
    assert lines[-1].startswith(f"[{solver}] stopped: converged")
    # the history attribute has the objective before the first iteration and after each
    # recorded one; it never rises above its start and ends at risk_
    curve = model.objective_curve_
    assert len(curve) == len(iterations) + 1
    assert curve[-1] == pytest.approx(model.risk_, rel=1e-6)
    assert model.solver_ == solver


@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
def test_constant_column_changes_nothing(solver):
    """A constant column (here 1/3, whose variance E x^2 - (E x)^2 rounds to 1e-15) is
    collinear with the intercept: the fit and its predictions are those without it."""
    X, y = make_data("gaussian", 600)
    Xc = np.column_stack((X, np.full(600, 1 / 3)))
    kw = dict(lam=1.0, rho=1e-2, solver=solver, random_state=0)
    with_column = DRORegressor(**kw).fit(Xc, y)
    without = DRORegressor(**kw).fit(X, y)
    assert with_column.risk_ == pytest.approx(without.risk_, rel=1e-6)
    atol = {"newton": 1e-6, "lbfgs": 1e-4, "sgd": 1e-2}[solver]  # the objective to its tol
    np.testing.assert_allclose(with_column.predict(Xc), without.predict(X), atol=atol)
