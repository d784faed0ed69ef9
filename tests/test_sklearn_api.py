"""scikit-learn compliance of the estimators: common checks, meta-estimators, pandas input
and metadata routing."""

import numpy as np
import pytest
import sklearn
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_lse import DRORegressor

# The sgd solver converges tightly enough that even the sample-weight equivalence checks
# (from which scikit-learn exempts its own SGD estimators) pass. The one expected failure
# is a design decision: a y of shape (n, 1) is refused with a ValueError (as every other
# 2-D y) instead of being ravelled with a DataConversionWarning.
EXPECTED_FAILURES = {
    "check_supervised_y_2d": "y of shape (n, 1) raises ValueError by design: the estimators "
    "have one output per sample and do not reshape the user's target silently",
}


@parametrize_with_checks(
    [
        DRORegressor(random_state=0),
        DRORegressor(solver="lbfgs", rho=0.0),
    ],
    expected_failed_checks=lambda estimator: EXPECTED_FAILURES,
)
def test_sklearn_common_checks(estimator, check):
    check(estimator)


def regression_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = X @ [1.0, -2.0, 0.5, 0.0] + rng.standard_t(3, size=n)
    return X, y


def test_grid_search_over_lam_and_rho_in_parallel():
    X, y = regression_data()
    grid = GridSearchCV(
        DRORegressor(random_state=0), {"lam": [0.5, 5.0], "rho": [1e-2, 1e-1]}, cv=3, n_jobs=2
    )
    grid.fit(X, y)
    assert set(grid.best_params_) == {"lam", "rho"}
    assert grid.best_estimator_.coef_.shape == (4,)


def test_pipeline_with_scaler():
    X, y = regression_data()
    X = X * 100 + 7
    pipe = make_pipeline(StandardScaler(), DRORegressor(solver="lbfgs")).fit(X, y)
    Z = (X - X.mean(0)) / X.std(0)
    direct = DRORegressor(solver="lbfgs").fit(Z, y)
    np.testing.assert_allclose(pipe.predict(X), direct.predict(Z), rtol=1e-6, atol=1e-8)


def test_dataframe_keeps_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = regression_data()
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    model = DRORegressor(random_state=0).fit(df, y)
    assert list(model.feature_names_in_) == ["a", "b", "c", "d"]
    expected = X @ model.coef_ + model.intercept_
    np.testing.assert_allclose(model.predict(df), expected)
    with pytest.warns(UserWarning, match="feature names"):
        model.predict(X)


@pytest.mark.parametrize("routing", [False, True])
def test_sample_weight_reaches_fit_through_grid_search(routing):
    X, y = regression_data()
    sw = np.random.default_rng(1).integers(1, 4, size=len(y)).astype(float)
    with sklearn.config_context(enable_metadata_routing=routing):
        est = DRORegressor(solver="lbfgs", lam=2.0, rho=0.1)
        if routing:
            est = est.set_fit_request(sample_weight=True).set_score_request(sample_weight=False)
        grid = GridSearchCV(est, {"lam": [2.0]}, cv=2, refit=True)
        grid.fit(X, y, sample_weight=sw)
    direct = DRORegressor(solver="lbfgs", lam=2.0, rho=0.1).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(grid.best_estimator_.coef_, direct.coef_, rtol=1e-6)
