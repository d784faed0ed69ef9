"""scikit-learn compliance of the estimators: common checks, meta-estimators, pandas input
and metadata routing."""

import warnings

import numpy as np
import pytest
import sklearn
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_lse import DROClassifier, DRORegressor
from sklearn_lse._stream import SmallBlockWarning

# The sgd solver converges tightly enough that even the sample-weight equivalence checks
# (from which scikit-learn exempts its own SGD estimators) pass. The one expected failure
# is a design decision: a y of shape (n, 1) is refused with a ValueError (as every other
# 2-D y) instead of being ravelled with a DataConversionWarning.
EXPECTED_FAILURES = {
    "check_supervised_y_2d": "y of shape (n, 1) raises ValueError by design: the estimators "
    "have one output per sample and do not reshape the user's target silently",
}


def _listed(mark):
    """The parametrize mark with its values in a list: scikit-learn 1.6-1.8 hand pytest a
    generator, which pytest 9 deprecates with a warning (an error here, by
    ``filterwarnings = error``, that would make this file fail to collect)."""
    argnames, argvalues, *rest = mark.args
    return pytest.mark.parametrize(argnames, list(argvalues), *rest, **mark.kwargs)


@_listed(
    parametrize_with_checks(
        [
            DRORegressor(random_state=0),
            DRORegressor(solver="lbfgs", rho=0.0),
            DROClassifier(random_state=0),
            DROClassifier(solver="lbfgs", rho=0.0),
        ],
        expected_failed_checks=lambda estimator: EXPECTED_FAILURES,
    )
)
def test_sklearn_common_checks(estimator, check):
    # the checks' partial_fit on 15 rows of 16 coefficients rightly warns that such a
    # first block poorly determines the stream's start; the warning is tested elsewhere
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallBlockWarning)
        check(estimator)


def regression_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = X @ [1.0, -2.0, 0.5, 0.0] + rng.standard_t(3, size=n)
    return X, y


def classification_data(n=300, seed=0):
    X, _ = regression_data(n, seed)
    scores = X @ [[1.0, -1.0, 0.0], [0.5, 0.5, -1.0], [0.0, 1.0, 1.0], [0.2, 0.0, 0.0]]
    noise = np.random.default_rng(seed + 1).gumbel(size=(n, 3))
    return X, np.array(["low", "mid", "high"])[np.argmax(scores + noise, axis=1)]


# each estimator with data, the hyperparameters to search and its dimension of coef_
CASES = {
    "regressor": (DRORegressor, regression_data, {"lam": [0.5, 5.0], "rho": [1e-2, 1e-1]}),
    "classifier": (
        DROClassifier,
        classification_data,
        {"lam": [0.5, 5.0], "rho": [1e-2, 1e-1], "alpha": [1e-4, 1e-2]},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_grid_search_in_parallel(case):
    Estimator, data, grid_params = CASES[case]
    X, y = data()
    grid = GridSearchCV(Estimator(random_state=0), grid_params, cv=3, n_jobs=2)
    grid.fit(X, y)
    assert set(grid.best_params_) == set(grid_params)
    assert grid.best_estimator_.coef_.shape[-1] == 4
    assert np.isfinite(grid.best_score_)


@pytest.mark.parametrize("case", CASES)
def test_pipeline_with_scaler(case):
    Estimator, data, _ = CASES[case]
    X, y = data()
    X = X * 100 + 7
    pipe = make_pipeline(StandardScaler(), Estimator(solver="lbfgs")).fit(X, y)
    Z = (X - X.mean(0)) / X.std(0)
    direct = Estimator(solver="lbfgs").fit(Z, y)
    np.testing.assert_array_equal(pipe.predict(X), direct.predict(Z))
    method = "predict" if case == "regressor" else "predict_proba"
    np.testing.assert_allclose(
        getattr(pipe, method)(X), getattr(direct, method)(Z), rtol=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("case", CASES)
def test_dataframe_keeps_feature_names(case):
    pd = pytest.importorskip("pandas")
    Estimator, data, _ = CASES[case]
    X, y = data()
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    model = Estimator(random_state=0).fit(df, pd.Series(y))
    assert list(model.feature_names_in_) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(
        model.predict(df), Estimator(random_state=0).fit(X, y).predict(X)
    )
    with pytest.warns(UserWarning, match="feature names"):
        model.predict(X)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("routing", [False, True])
def test_sample_weight_reaches_fit_through_grid_search(case, routing):
    Estimator, data, _ = CASES[case]
    X, y = data()
    sw = np.random.default_rng(1).integers(1, 4, size=len(y)).astype(float)
    with sklearn.config_context(enable_metadata_routing=routing):
        est = Estimator(solver="lbfgs", lam=2.0, rho=0.1)
        if routing:
            est = est.set_fit_request(sample_weight=True).set_score_request(sample_weight=False)
        grid = GridSearchCV(est, {"lam": [2.0]}, cv=2, refit=True)
        grid.fit(X, y, sample_weight=sw)
    direct = Estimator(solver="lbfgs", lam=2.0, rho=0.1).fit(X, y, sample_weight=sw)
    unweighted = Estimator(solver="lbfgs", lam=2.0, rho=0.1).fit(X, y)
    np.testing.assert_allclose(grid.best_estimator_.coef_, direct.coef_, rtol=1e-6)
    assert not np.allclose(unweighted.coef_, direct.coef_, rtol=1e-3)
