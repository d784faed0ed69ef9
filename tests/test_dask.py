"""Dask on a local cluster of worker processes (pickling to the workers, the kernels
compiled or loaded from the cache there): fit on dask arrays and DataFrames against the
in-memory optimum, and dask-ml's Incremental wrapper, which feeds each chunk to
partial_fit."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a local cluster, and the dask extra

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
wrappers = pytest.importorskip("dask_ml.wrappers")

from sklearn_lse import DROClassifier, DRORegressor  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def chunked_data(n=20000, d=5, chunk=2000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ np.arange(1.0, d + 1) + rng.normal(size=n)
    return X, y, da.from_array(X, chunks=(chunk, d)), da.from_array(y, chunks=chunk)


def test_incremental_regressor_on_a_local_cluster(client):
    X, y, Xd, yd = chunked_data()
    reg = DRORegressor(lam=1.0, rho=1e-2, random_state=0)
    inc = wrappers.Incremental(reg, shuffle_blocks=False).fit(Xd, yd)
    model = inc.estimator_
    assert model.n_iter_ == 10  # one partial_fit per chunk
    # the same blocks fed by hand, in the same order, give the same model
    by_hand = DRORegressor(lam=1.0, rho=1e-2, random_state=0)
    for rows in np.array_split(np.arange(len(y)), 10):
        by_hand.partial_fit(X[rows], y[rows])
    np.testing.assert_allclose(model.coef_, by_hand.coef_, rtol=1e-12)
    batch = DRORegressor(lam=1.0, rho=1e-2, random_state=0).fit(X, y)
    assert model.robust_risk(X, y) <= batch.risk_ * (1 + 1e-3)
    prediction = inc.predict(Xd)
    assert isinstance(prediction, da.Array)
    np.testing.assert_allclose(prediction.compute(), model.predict(X))


def test_incremental_classifier_on_a_local_cluster(client):
    X, y, Xd, yd = chunked_data(seed=1)
    labels = np.where(y > np.median(y), "high", "low")
    ld = da.from_array(labels, chunks=2000)
    clf = DROClassifier(lam=1.0, rho=1e-2, random_state=0)
    inc = wrappers.Incremental(clf).fit(Xd, ld, classes=["high", "low"])
    model = inc.estimator_
    np.testing.assert_array_equal(model.classes_, ["high", "low"])
    batch = DROClassifier(lam=1.0, rho=1e-2, random_state=0).fit(X, labels)
    penalty = 0.5 * model.alpha * np.sum(model.coef_**2)
    assert model.robust_risk(X, labels) + penalty <= batch.risk_ * (1 + 1e-2)
    assert inc.score(Xd, ld) > 0.9


def test_fit_on_a_dask_array_equals_the_in_memory_optimum(client):
    X, y, Xd, yd = chunked_data()
    dist = DRORegressor(lam=0.5, rho=1e-2, tol=1e-10).fit(Xd, yd)
    ref = DRORegressor(lam=0.5, rho=1e-2, solver="newton", tol=1e-10).fit(X, y)
    assert abs(dist.risk_ - ref.risk_) <= 1e-6 * ref.risk_
    np.testing.assert_allclose(dist.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    assert dist.n_features_in_ == 5


def test_default_fit_on_a_dask_array_is_the_ball_of_the_in_memory_fit(client):
    """The default (the KL ball of radius 0.1, the exact risk) on the workers: the same
    temperature and objective as in memory."""
    X, y, Xd, yd = chunked_data()
    dist = DRORegressor(tol=1e-10).fit(Xd, yd)
    ref = DRORegressor(tol=1e-10).fit(X, y)
    assert dist.rho_ == ref.rho_ == 0.0
    assert dist.lam_ == pytest.approx(ref.lam_, rel=1e-4)
    assert dist.risk_ == pytest.approx(ref.risk_, rel=1e-6)
    np.testing.assert_allclose(dist.predict(X), ref.predict(X), rtol=1e-5, atol=1e-6)


def test_fit_on_a_dask_dataframe_of_a_classifier(client):
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    X, y, _, _ = chunked_data(seed=2)
    labels = np.digitize(y, np.quantile(y, [0.3, 0.7]))
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(5)])
    Xd = dd.from_pandas(frame, npartitions=4)
    yd = dd.from_pandas(pd.Series(labels), npartitions=4)
    dist = DROClassifier(lam=1.0, rho=1e-2, tol=1e-10).fit(Xd, yd)
    ref = DROClassifier(lam=1.0, rho=1e-2, solver="newton", tol=1e-10).fit(frame, labels)
    np.testing.assert_array_equal(dist.classes_, [0, 1, 2])
    np.testing.assert_array_equal(dist.feature_names_in_, frame.columns)
    assert abs(dist.risk_ - ref.risk_) <= 1e-6 * ref.risk_
    np.testing.assert_allclose(dist.coef_, ref.coef_, rtol=1e-5, atol=1e-7)


def test_bad_dask_input_is_refused_before_work(client):
    X, y, Xd, yd = chunked_data()
    with pytest.raises(ValueError, match="solver='sgd'"):
        DRORegressor(solver="sgd").fit(Xd, yd)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DRORegressor().fit(da.from_array(bad, chunks=(2000, 5)), yd)
    model = DRORegressor()
    with pytest.raises(ValueError, match="rows"):
        model.fit(Xd, yd[:100])
    assert not hasattr(model, "coef_")


def test_radius_zero_on_a_dask_array_is_least_squares_with_its_mean_loss(client):
    """The ball of radius 0 (lam = 1e300): the exact risk is the mean loss, summed over
    the chunks without cancellation (no lam times a rounding error in risk_)."""
    X, y, Xd, yd = chunked_data(seed=3)
    dist = DRORegressor(radius=0.0).fit(Xd, yd)
    ref = DRORegressor(radius=0.0, solver="newton").fit(X, y)
    assert dist.risk_ == pytest.approx(ref.risk_, rel=1e-12)
    np.testing.assert_allclose(dist.coef_, ref.coef_, rtol=1e-8, atol=1e-10)


def test_chunks_are_grouped_by_worker_and_balanced(client):
    """A round is one task per worker thread, on the chunks its worker holds; chunks that
    all sit on one worker are shared out (copied once), and the fit is unchanged."""
    from sklearn_lse._distributed import _groups

    X, y, _, _ = chunked_data()
    first = sorted(client.nthreads())[0]
    chunks = np.array_split(np.arange(len(y)), 10)
    Xf = client.scatter([X[rows] for rows in chunks], workers=[first])
    yf = client.scatter([y[rows] for rows in chunks], workers=[first])
    groups, (Xg, yg) = _groups(client, [Xf, yf])
    assert sorted(len(group) for group in groups) == [5, 5]
    assert sorted(i for group in groups for i in group) == list(range(10))
    distributed.wait(Xg)
    holders = client.who_has(Xg)
    for group in groups:
        assert len({holders[Xg[i].key][0] for i in group}) == 1  # one worker per group
    assert len({holders[Xg[group[0]].key][0] for group in groups}) == 2
    # a fit on the imbalanced chunks equals the in-memory optimum
    Xd = da.concatenate([da.from_delayed(f, shape=(len(r), 5), dtype=float)
                         for f, r in zip(Xf, chunks, strict=True)])  # fmt: skip
    yd = da.concatenate([da.from_delayed(f, shape=(len(r),), dtype=float)
                         for f, r in zip(yf, chunks, strict=True)])  # fmt: skip
    dist = DRORegressor(lam=0.5, rho=1e-2, tol=1e-10).fit(Xd, yd)
    ref = DRORegressor(lam=0.5, rho=1e-2, solver="newton", tol=1e-10).fit(X, y)
    assert abs(dist.risk_ - ref.risk_) <= 1e-6 * ref.risk_
