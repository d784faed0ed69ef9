"""partial_fit: streaming blocks reach the objective of fit with as many passes; bad blocks
are refused and leave the model as it was."""

import copy
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning

from sklearn_lse import DROClassifier, DRORegressor


def regression_data(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 10)) * np.logspace(-1, 1, 10)
    y = X @ (rng.normal(size=10) / np.logspace(-1, 1, 10)) + rng.normal(size=n)
    return X, y


def classification_data(n_classes, n=20000, seed=0):
    return make_classification(
        n, n_features=10, n_informative=6, n_classes=n_classes, flip_y=0.05, random_state=seed
    )


def objective(model, X, y):
    """The training objective of a model on the whole data."""
    return model.robust_risk(X, y) + 0.5 * model.alpha * np.sum(model.coef_**2)


def stream(model, X, y, n_passes, n_blocks=10, **kwargs):
    for _ in range(n_passes):
        for rows in np.array_split(np.arange(len(y)), n_blocks):
            model.partial_fit(X[rows], y[rows], **kwargs)
    return model


def fit_with_passes(model, X, y, n_passes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 runs every pass
        return model.set_params(max_iter=n_passes, tol=0.0).fit(X, y)


@pytest.mark.parametrize("n_passes", [1, 3])
@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_regressor_stream_reaches_fit_objective(n_passes, lam):
    X, y = regression_data()
    kw = dict(lam=lam, rho=1e-2, random_state=0)
    streamed = stream(DRORegressor(**kw), X, y, n_passes)
    batch = fit_with_passes(DRORegressor(**kw), X, y, n_passes)
    assert streamed.n_iter_ == 10 * n_passes
    assert objective(streamed, X, y) <= batch.risk_ * (1 + 1e-2)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("n_passes", [1, 3])
def test_classifier_stream_reaches_fit_objective(n_classes, n_passes):
    X, y = classification_data(n_classes)
    kw = dict(lam=1.0, rho=1e-2, random_state=0)
    streamed = stream(DROClassifier(**kw), X, y, n_passes, classes=np.unique(y))
    batch = fit_with_passes(DROClassifier(**kw), X, y, n_passes)
    np.testing.assert_array_equal(streamed.classes_, np.unique(y))
    assert objective(streamed, X, y) <= batch.risk_ * (1 + 1e-2)


def test_partial_fit_after_fit_continues_from_the_fitted_model():
    X, y = regression_data(5000)
    model = DRORegressor(lam=1.0, rho=1e-2, random_state=0).fit(X, y)
    before = model.risk_
    model.partial_fit(X, y)
    assert objective(model, X, y) <= before * (1 + 1e-6)


def test_rho_zero_has_no_partial_fit():
    assert not hasattr(DRORegressor(rho=0.0), "partial_fit")
    assert not hasattr(DROClassifier(rho=0.0), "partial_fit")
    assert hasattr(DRORegressor(rho=1e-3), "partial_fit")


def state(model):
    return copy.deepcopy(
        {k: v for k, v in vars(model).items() if k.endswith("_") or k == "_stream"}
    )


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "_stream":
            for name in ("w", "b", "eta"):
                np.testing.assert_array_equal(a[key][name], b[key][name])
            assert a[key]["weight"] == b[key]["weight"]
        else:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("Estimator", [DRORegressor, DROClassifier])
def test_bad_blocks_are_refused_and_leave_the_model_unchanged(Estimator):
    classifier = Estimator is DROClassifier
    X, y = classification_data(3, n=600) if classifier else regression_data(600)
    kwargs = {"classes": np.unique(y)} if classifier else {}
    model = Estimator(rho=1e-2, random_state=0).partial_fit(X[:300], y[:300], **kwargs)
    before = state(model)
    X_nan = X[300:].copy()
    X_nan[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.partial_fit(X_nan, y[300:])
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[300:, :5], y[300:])
    with pytest.raises(ValueError, match="y must be 1-D"):
        model.partial_fit(X[300:], y[300:, None])
    if classifier:
        with pytest.raises(ValueError, match="not seen"):
            model.partial_fit(X[300:], np.where(y[300:] == 0, 7, y[300:]))
        with pytest.raises(ValueError, match="differs"):
            model.partial_fit(X[300:], y[300:], classes=[0, 1])
    assert_same_state(state(model), before)
    model.partial_fit(X[300:], y[300:])  # a good block still works
    assert model.n_iter_ == 2


def test_classifier_first_call_needs_classes():
    X, y = classification_data(3, n=300)
    model = DROClassifier()
    with pytest.raises(ValueError, match="classes must be passed"):
        model.partial_fit(X, y)
    with pytest.raises(ValueError, match="1 class"):
        model.partial_fit(X, y, classes=[1])
    with pytest.raises(ValueError, match="balanced"):
        DROClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])
    assert not hasattr(model, "coef_")
    # the first block may miss classes
    model.partial_fit(X[y != 2], y[y != 2], classes=[0, 1, 2])
    assert model.coef_.shape == (3, 10)
    assert model.predict_proba(X).shape == (300, 3)
