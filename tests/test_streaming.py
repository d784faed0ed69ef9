"""partial_fit: shuffled blocks reach the optimum of the whole stream (heavy tails, binary
and multinomial logistic, one-hot columns constant within blocks); bad blocks are refused
and leave the model as it was."""

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
            for name in ("u", "A", "beta", "X", "y", "sw"):
                np.testing.assert_array_equal(getattr(a[key], name), getattr(b[key], name))
            assert a[key].weight == b[key].weight and a[key].n_iter == b[key].n_iter
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


def relative_gaps(model, X, y, block, n_passes, seed=0, **kwargs):
    """The relative suboptimality of the whole-stream objective after each pass over
    shuffled blocks (the blocks' order drawn again every pass)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    reference = model.__class__(**model.get_params()).set_params(solver="newton", tol=1e-10)
    best = objective(reference.fit(X, y), X, y)
    starts = np.arange(0, len(y), block)
    gaps = []
    for _ in range(n_passes):
        for start in rng.permutation(starts):
            model.partial_fit(X[start : start + block], y[start : start + block], **kwargs)
        gaps.append((objective(model, X, y) - best) / best)
    return gaps


def heavy_tailed(n, df, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)) * np.logspace(-1, 1, 8)
    y = X @ rng.normal(size=8) + rng.standard_t(df, size=n)
    residual = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    return X, y, 0.3 * float(np.median(residual**2))


def one_hot_data(n=6000, seed=0):
    """Two numeric columns and two categorical ones, one-hot with every level (the
    dummies of a category sum to 1), with rare levels: most blocks of 100 rows have
    constant dummy columns."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(n, 2))
    first = rng.choice(5, size=n, p=[0.6, 0.25, 0.1, 0.04, 0.01])
    second = rng.choice(4, size=n, p=[0.5, 0.3, 0.15, 0.05])
    X = np.column_stack((numeric, np.eye(5)[first], np.eye(4)[second]))
    effect = np.array([0.0, 0.5, -1.0, 2.0, 4.0])[first] + np.array([0, 1, -1, 3.0])[second]
    y = numeric @ [1.0, -0.5] + effect + rng.standard_t(4, size=n) * 0.5
    return X, y


@pytest.mark.parametrize("df, rho, block", [(1.5, 1e-2, 500), (3.0, 1e-3, 2000)])
def test_heavy_tailed_stream_converges_to_the_whole_stream_optimum(df, rho, block):
    X, y, lam = heavy_tailed(10000, df)
    gaps = relative_gaps(DRORegressor(lam=lam, rho=rho, random_state=0), X, y, block, 3)
    assert gaps[0] <= 1e-3
    assert gaps[-1] <= 1e-4
    assert all(later <= earlier + 1e-6 for earlier, later in zip(gaps[:-1], gaps[1:], strict=True))


def test_one_hot_columns_constant_within_blocks():
    X, y = one_hot_data()
    gaps = relative_gaps(DRORegressor(lam=1.0, rho=1e-2), X, y, 100, 2)
    assert gaps[0] <= 1e-3 and gaps[1] <= 1e-4


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classifier_stream_converges_to_the_whole_stream_optimum(n_classes):
    X, y = classification_data(n_classes, n=6000)
    model = DROClassifier(lam=0.5, rho=1e-2, random_state=0)
    gaps = relative_gaps(model, X, y, 300, 2, classes=np.unique(y))
    assert gaps[0] <= 1e-3 and gaps[1] <= 1e-4


def test_a_block_in_other_units_is_refused_and_leaves_the_model_unchanged():
    X, y = regression_data(3000)
    model = DRORegressor(lam=1.0, rho=1e-2)
    for rows in np.array_split(np.arange(2000), 4):
        model.partial_fit(X[rows], y[rows])
    before = state(model)
    with pytest.raises(ValueError, match="refused this block"):
        model.partial_fit(X[2000:] * 1e200, y[2000:])
    assert_same_state(state(model), before)
    model.partial_fit(X[2000:], y[2000:])
    assert model.n_iter_ == 5


def test_a_tiny_first_block_warns_with_the_block_size_that_works():
    X, y = regression_data(300)
    with pytest.warns(UserWarning, match="Blocks of at least 100 rows"):
        DRORegressor().partial_fit(X[:12], y[:12])


def test_the_stream_state_pickles():
    import pickle

    X, y = regression_data(2000)
    model = DRORegressor(rho=1e-2).partial_fit(X[:1000], y[:1000])
    clone = pickle.loads(pickle.dumps(model))
    model.partial_fit(X[1000:], y[1000:])
    clone.partial_fit(X[1000:], y[1000:])
    np.testing.assert_array_equal(model.coef_, clone.coef_)
