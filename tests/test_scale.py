"""Scale: no copy of X (float64 or float32) and little memory beyond it; sparse CSR data
agree with dense ones."""

import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from sklearn_lse import DROClassifier, DRORegressor


def fit_and_trace(model, X, y):
    """Fit, and the peak memory that Python's allocators traced during the fit (the
    kernels are compiled first on a few rows, outside the trace)."""
    clone(model).fit(X[:500], y[:500])
    tracemalloc.start()
    try:
        model.fit(X, y)
        return model, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("Estimator", [DRORegressor, DROClassifier])
def test_float32_is_trained_in_float32_without_a_float64_copy(Estimator):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 100))
    y = X @ rng.normal(size=100) + rng.standard_t(3, size=100_000)
    if Estimator is DROClassifier:
        y = y > 0
    X32 = X.astype(np.float32)
    reference = Estimator(lam=1.0, rho=1e-2, random_state=0).fit(X, y)
    model, peak = fit_and_trace(Estimator(lam=1.0, rho=1e-2, random_state=0), X32, y)
    # a float64 copy of X alone would be 2 X32.nbytes
    assert peak < 1.5 * X32.nbytes
    assert model.coef_.dtype == np.float32
    assert model.risk_ == pytest.approx(reference.risk_, rel=1e-5)
    if Estimator is DRORegressor:
        assert model.predict(X32).dtype == np.float32
    else:
        np.testing.assert_allclose(
            model.predict_proba(X32[:100]), reference.predict_proba(X32[:100]), atol=1e-3
        )


@pytest.mark.parametrize("form", [{"lam": 1.0, "rho": 1e-2}, {"rho": 1e-3}])
@pytest.mark.parametrize("solver", ["newton", "lbfgs", "sgd"])
@pytest.mark.parametrize("Estimator", [DRORegressor, DROClassifier])
def test_fit_allocates_a_few_numbers_per_row_and_no_copy_of_X(Estimator, solver, form):
    """Every solver, both forms (the ball with the default radius): no copy of X (20
    numbers per row here) and nothing of size n x d; the per-row vectors (the target,
    predictions and losses at the current point and at a trial one, the ball's 1-D
    search) stay below 16 numbers per row. Measured: 5-12."""
    rng = np.random.default_rng(0)
    n = 500_000
    X = rng.normal(size=(n, 20))
    y = X @ rng.normal(size=20) + rng.standard_t(3, size=n)
    if Estimator is DROClassifier:
        y = y > 0
    model, peak = fit_and_trace(Estimator(solver=solver, random_state=0, **form), X, y)
    assert peak < 16 * 8 * n
    assert np.all(np.isfinite(model.coef_))


def sparse_data(kind, n=3000, d=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.2)
    y = X @ rng.normal(size=d) + rng.normal(size=n)
    if kind == "binary":
        y = y > 0
    elif kind == "multinomial":
        y = np.digitize(y, [-1.0, 1.0])
    return X, y


ESTIMATORS = {"regression": DRORegressor, "binary": DROClassifier, "multinomial": DROClassifier}


@pytest.mark.parametrize("kind", ESTIMATORS)
@pytest.mark.parametrize("container", [sp.csr_matrix, sp.csr_array])
@pytest.mark.parametrize("lam", [0.3, 3.0])
def test_sparse_and_dense_fits_agree(kind, container, lam):
    X, y = sparse_data(kind)
    Estimator = ESTIMATORS[kind]
    dense = Estimator(lam=lam, rho=1e-2, random_state=0).fit(X, y)
    sparse = Estimator(lam=lam, rho=1e-2, random_state=0).fit(container(X), y)
    assert sparse.risk_ == pytest.approx(dense.risk_, rel=1e-5)
    # the same objective to the solvers' tolerance; predictions agree accordingly
    method = "predict" if kind == "regression" else "predict_proba"
    sparse_out = getattr(sparse, method)(container(X))
    np.testing.assert_allclose(sparse_out, getattr(dense, method)(X), atol=0.05)
    np.testing.assert_allclose(getattr(sparse, method)(X), sparse_out)


@pytest.mark.parametrize("fmt", ["coo", "csc", "lil"])
def test_other_sparse_formats_are_converted(fmt):
    X, y = sparse_data("binary")
    reference = DROClassifier(lam=1.0, rho=1e-2, random_state=0).fit(sp.csr_matrix(X), y)
    model = DROClassifier(lam=1.0, rho=1e-2, random_state=0).fit(sp.csr_matrix(X).asformat(fmt), y)
    np.testing.assert_allclose(model.coef_, reference.coef_)


def test_sparse_float32_and_partial_fit():
    X, y = sparse_data("regression", n=20000)
    Xs = sp.csr_matrix(X.astype(np.float32))
    model = DRORegressor(lam=1.0, rho=1e-2, random_state=0).fit(Xs, y)
    assert model.coef_.dtype == np.float32
    dense = DRORegressor(lam=1.0, rho=1e-2, random_state=0).fit(X, y)
    assert model.risk_ == pytest.approx(dense.risk_, rel=1e-5)
    streamed = DRORegressor(lam=1.0, rho=1e-2, random_state=0)
    for rows in np.array_split(np.arange(20000), 5):
        streamed.partial_fit(Xs[rows], y[rows])
    assert streamed.robust_risk(Xs, y) <= dense.risk_ * (1 + 1e-2)


def test_sparse_nan_is_refused():
    X, y = sparse_data("regression")
    Xs = sp.csr_matrix(X)
    Xs.data[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DRORegressor().fit(Xs, y)


def test_sparse_fit_holds_no_copy_of_the_non_zeros():
    """The set-up's column scaling goes by blocks of non-zeros: a fit on a CSR matrix
    allocates well under the size of X (it held two arrays of X's non-zeros at once,
    1.36 X at its peak)."""
    # a Generator: with a seed, scipy's legacy sampler draws a permutation of all
    # 2e9 positions (16 GB, minutes) to place the 4e6 non-zeros
    rng = np.random.default_rng(0)
    X = sp.random(100_000, 20_000, density=2e-3, format="csr", random_state=rng)
    y = (X @ rng.normal(size=20_000) + 0.1 * rng.normal(size=100_000)) > 0
    size = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 3 epochs: a memory test
        model, peak = fit_and_trace(DROClassifier(lam=1.0, rho=1e-2, max_iter=3), X, y)
    assert peak < 0.8 * size
    assert np.all(np.isfinite(model.coef_))
