"""Reliability: a failed fit, refit or partial fit leaves the estimator exactly as it was;
finite input never gives a non-finite attribute, prediction, risk or weight; malformed
sparse input is refused before any kernel reads it."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression

from sklearn_lse import DROClassifier, DRORegressor, _problem, _registry

SOLVERS = ["newton", "lbfgs", "sgd"]


def regression_data(n=300, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X @ np.arange(1.0, d + 1) + rng.normal(size=n)


def classification_data(n=300, d=3, seed=0, n_classes=3):
    X, y = regression_data(n, d, seed)
    return X, np.digitize(y, np.quantile(y, np.linspace(0, 1, n_classes + 1)[1:-1]))


def state(model):
    """Everything a fit sets, as bytes: compared before and after a failure."""
    return pickle.dumps({k: v for k, v in vars(model).items() if k.endswith("_") or k[0] == "_"})


class Interrupt(KeyboardInterrupt):
    pass


def failing(exception):
    def fit(*args, **kwargs):
        raise exception

    return fit


FAILURES = {
    "linalg": lambda: np.linalg.LinAlgError("Eigenvalues did not converge"),
    "floating point": lambda: FloatingPointError("overflow"),
    "keyboard interrupt": Interrupt,
}


@pytest.mark.parametrize(
    "Estimator, data", [(DRORegressor, regression_data), (DROClassifier, classification_data)]
)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("where", ["solver", "problem"])
def test_a_refit_that_fails_leaves_the_model_exactly_as_it_was(
    Estimator, data, solver, failure, where, monkeypatch
):
    """A refit on data of another width that fails late (in the solver, or while the
    problem is set up, after validation has seen the new data) restores every fitted
    attribute, ``n_features_in_`` included; a first fit that fails leaves the model
    unfitted."""
    X3, y3 = data(d=3)
    X6, y6 = data(d=6, seed=1)
    model = Estimator(solver=solver, rho=1e-2, random_state=0).fit(X3, y3)
    before = state(model)
    prediction = model.predict(X3)
    if where == "solver":
        patched = copy.copy(_registry.SOLVERS[solver])
        object.__setattr__(patched, "fit", failing(FAILURES[failure]()))
        monkeypatch.setitem(_registry.SOLVERS, solver, patched)
    else:
        monkeypatch.setattr(_problem.Problem, "build", classmethod(failing(FAILURES[failure]())))
    with pytest.raises((Exception, KeyboardInterrupt)) as info:
        model.fit(X6, y6)
    assert not isinstance(info.value, AssertionError)
    assert state(model) == before
    np.testing.assert_array_equal(model.predict(X3), prediction)
    fresh = Estimator(solver=solver, rho=1e-2)
    with pytest.raises((Exception, KeyboardInterrupt)):
        fresh.fit(X6, y6)
    with pytest.raises(NotFittedError):
        fresh.predict(X6)


@pytest.mark.parametrize(
    "Estimator, data", [(DRORegressor, regression_data), (DROClassifier, classification_data)]
)
def test_a_dataframe_refit_with_bad_values_keeps_the_feature_names(Estimator, data):
    pd = pytest.importorskip("pandas")
    X, y = data()
    first = pd.DataFrame(X, columns=["a", "b", "c"])
    model = Estimator(rho=1e-2).fit(first, y)
    before = state(model)
    second = pd.DataFrame(X, columns=["u", "v", "w"])
    second.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(second, y)
    assert state(model) == before
    assert list(model.feature_names_in_) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "Estimator, data", [(DRORegressor, regression_data), (DROClassifier, classification_data)]
)
def test_a_partial_fit_that_fails_leaves_the_stream_as_it_was(Estimator, data, monkeypatch):
    X, y = data()
    kwargs = {"classes": np.unique(y)} if Estimator is DROClassifier else {}
    model = Estimator(rho=1e-2, random_state=0)
    model.partial_fit(X[:100], y[:100], **kwargs)
    model.partial_fit(X[100:200], y[100:200])
    before = state(model)
    monkeypatch.setattr(_problem.Problem, "build", classmethod(failing(Interrupt())))
    with pytest.raises(Interrupt):
        model.partial_fit(X[200:], y[200:])
    assert state(model) == before


def test_targets_whose_squares_overflow_are_refused_before_work():
    X, y = regression_data()
    with pytest.raises(ValueError, match="overflows float64: rescale y"):
        DRORegressor().fit(X, y * 1e300)
    # the absolute error grows only linearly: fine
    model = DRORegressor(loss="absolute_error", epsilon=1e299, lam=1e300).fit(X, y * 1e300)
    assert np.all(np.isfinite(model.predict(X))) and np.isfinite(model.risk_)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150])
def test_targets_of_any_size_give_the_same_model_scaled(solver, scale):
    """The regressor is exactly equivariant in the scale of y (it fits on y divided by a
    power of two and scales back), so targets near the ends of float64 are fine."""
    X, y = regression_data()
    ref = DRORegressor(lam=0.5, rho=1e-2, solver=solver, random_state=0).fit(X, y)
    model = DRORegressor(lam=0.5 * scale**2 if 1e-150 <= scale <= 1e150 else 0.5, rho=1e-2,
                         solver=solver, random_state=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # lam far below the losses
        model.fit(X, y * scale)
    for value in (model.coef_, model.intercept_, model.eta_, model.risk_):
        assert np.all(np.isfinite(value))
    assert np.all(np.isfinite(model.predict(X)))
    if 1e-150 <= scale <= 1e150:
        assert model.risk_ == pytest.approx(ref.risk_ * scale**2, rel=10 * model.tol)
        if solver == "newton":  # converged quadratically: the same model to 1e-6
            np.testing.assert_allclose(model.predict(X), ref.predict(X) * scale, rtol=1e-6)


@pytest.mark.parametrize(
    "Estimator, data", [(DRORegressor, regression_data), (DROClassifier, classification_data)]
)
@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_features_of_any_size_are_fine(Estimator, data, scale):
    """Without a penalty (which is not invariant to the scale of the features) the model
    is the same, its coefficients scaled."""
    X, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning may leak
        model = Estimator(rho=1e-2, alpha=0.0, random_state=0).fit(X * scale, y)
        ref = Estimator(rho=1e-2, alpha=0.0, random_state=0).fit(X, y)
    assert model.risk_ == pytest.approx(ref.risk_, rel=1e-6)
    np.testing.assert_allclose(model.coef_ * scale, ref.coef_, rtol=1e-5)


@pytest.mark.parametrize(
    "Estimator, data", [(DRORegressor, regression_data), (DROClassifier, classification_data)]
)
def test_sample_weights_whose_sum_overflows(Estimator, data):
    X, y = data()
    ref = Estimator(rho=1e-2, random_state=0).fit(X, y)
    model = Estimator(rho=1e-2, random_state=0).fit(X, y, sample_weight=np.full(len(y), 1.7e308))
    assert model.risk_ == pytest.approx(ref.risk_, rel=1e-8)
    q = model.worst_case_weights(X, y, sample_weight=np.full(len(y), 1.7e308))
    assert np.all(np.isfinite(q)) and q.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "class_weight", [{0: np.inf, 1: 1.0, 2: 1.0}, {0: np.nan, 1: 1.0, 2: 1.0}]
)
def test_non_finite_class_weight_is_refused(class_weight):
    X, y = classification_data()
    with pytest.raises(ValueError, match="class_weight"):
        DROClassifier(class_weight=class_weight).fit(X, y)


def test_continuous_labels_are_refused_by_partial_fit():
    X, y = regression_data()
    with pytest.raises(ValueError, match="Unknown label type|continuous"):
        DROClassifier().partial_fit(X, y, classes=np.unique(y))


def malformed(kind):
    X = sp.random(20, 5, density=0.4, format="csr", random_state=0)
    if kind == "index":
        X.indices[3] = 50
    elif kind == "negative index":
        X.indices[3] = -1
    elif kind == "indptr":
        X.indptr[5] = X.indptr[6] + 3
    else:
        X.indptr[-1] += 1
    return X


@pytest.mark.parametrize("kind", ["index", "negative index", "indptr", "indptr end"])
@pytest.mark.parametrize("Estimator", [DRORegressor, DROClassifier])
def test_malformed_csr_is_refused_before_any_kernel(kind, Estimator):
    good = sp.random(20, 5, density=0.4, format="csr", random_state=0)
    y = np.arange(20.0) if Estimator is DRORegressor else np.arange(20) % 2
    with pytest.raises(ValueError, match="indices|indptr|malformed|index"):
        Estimator().fit(malformed(kind), y)
    model = Estimator(rho=1e-2).fit(good, y)
    with pytest.raises(ValueError, match="indices|indptr|malformed|index"):
        model.predict(malformed(kind))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("log_lam", [-12, -6, 0, 6, 12, 100, 300])
def test_regressor_over_the_range_of_lam(solver, log_lam):
    """From lam = 1e-12 to 1e300: finite, at least as good as the reference solvers'
    objective when it says it converged (else it warns), and least squares once lam is
    far above the losses."""
    X, y = regression_data(400, seed=3)
    lam = 10.0**log_lam
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = min(
            DRORegressor(lam=lam, rho=1e-2, solver=s, tol=1e-10, max_iter=5000).fit(X, y).risk_
            for s in ("newton", "lbfgs")
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = DRORegressor(lam=lam, rho=1e-2, solver=solver, random_state=0).fit(X, y)
    warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    assert np.isfinite(model.risk_) and np.all(np.isfinite(model.coef_))
    if not warned:
        assert model.risk_ - ref <= 10 * model.tol * abs(ref)
    if log_lam >= 12:
        ols = LinearRegression().fit(X, y)
        np.testing.assert_allclose(model.coef_, ols.coef_, rtol=1e-5)
        assert model.risk_ == pytest.approx(np.mean((ols.predict(X) - y) ** 2), rel=1e-9)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("log_lam", [-12, -6, 0, 6, 12, 100, 300])
def test_classifier_over_the_range_of_lam(solver, log_lam):
    X, y = classification_data(400, seed=3, n_classes=2)
    lam = 10.0**log_lam
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = min(
            DROClassifier(lam=lam, rho=1e-2, solver=s, tol=1e-10, max_iter=5000).fit(X, y).risk_
            for s in ("newton", "lbfgs")
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = DROClassifier(lam=lam, rho=1e-2, solver=solver, random_state=0).fit(X, y)
    warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    assert np.isfinite(model.risk_) and np.all(np.isfinite(model.coef_))
    if not warned:
        assert model.risk_ - ref <= 10 * model.tol * abs(ref)
    if log_lam >= 12:
        C = 1.0 / (model.alpha * len(y))
        logistic = LogisticRegression(C=C, tol=1e-12, max_iter=10000).fit(X, y)
        proba = logistic.predict_proba(X)
        log_loss = -np.mean(np.log(proba[np.arange(len(y)), y]))
        penalty = 0.5 * model.alpha * np.sum(logistic.coef_**2)
        assert model.risk_ == pytest.approx(log_loss + penalty, rel=10 * model.tol)
        if solver == "newton":
            np.testing.assert_allclose(model.coef_, logistic.coef_, rtol=1e-4, atol=1e-6)
