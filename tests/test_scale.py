"""Scale: float32 data are trained without a float64 copy of X."""

import tracemalloc

import numpy as np
import pytest

from sklearn_lse import DROClassifier, DRORegressor


@pytest.mark.parametrize("Estimator", [DRORegressor, DROClassifier])
def test_float32_is_trained_in_float32_without_a_float64_copy(Estimator):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 100))
    y = X @ rng.normal(size=100) + rng.standard_t(3, size=100_000)
    if Estimator is DROClassifier:
        y = y > 0
    X32 = X.astype(np.float32)
    reference = Estimator(lam=1.0, rho=1e-2, random_state=0).fit(X, y)
    tracemalloc.start()
    try:
        model = Estimator(lam=1.0, rho=1e-2, random_state=0).fit(X32, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
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
