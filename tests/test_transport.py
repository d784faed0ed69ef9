"""EntropicTransport against an exact log-domain Sinkhorn written here in NumPy/SciPy, and
against POT where it is installed."""

import pickle
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline

from sklearn_lse import EntropicTransport


def clouds(n=150, m=110, d=2, seed=0, weighted=True):
    """Two Gaussian mixtures (the target shifted and stretched) and random weights."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [2.5, 0.5], [0.5, 2.5]])[:, :d]
    Xs = centres[rng.integers(0, 3, n)] + 0.6 * rng.normal(size=(n, d))
    Xt = 1.3 * (centres[rng.integers(0, 3, m)] + 0.6 * rng.normal(size=(m, d))) + 1.0
    if not weighted:
        return Xs, Xt, np.full(n, 1 / n), np.full(m, 1 / m)
    a = rng.uniform(0.5, 2.0, n)
    b = rng.uniform(0.5, 2.0, m)
    return Xs, Xt, a / a.sum(), b / b.sum()


def sinkhorn(a, b, C, eps, tol=1e-11, max_iter=200_000):
    """Exact log-domain Sinkhorn: potentials, plan, <P, C> + eps KL(P || ab), <P, C>."""
    la, lb = np.log(a), np.log(b)
    f, g = np.zeros(len(a)), np.zeros(len(b))
    for it in range(max_iter):
        f = -eps * logsumexp(lb[None, :] + (g[None, :] - C) / eps, axis=1)
        g = -eps * logsumexp(la[:, None] + (f[:, None] - C) / eps, axis=0)
        if it % 10 == 0:
            log_p = la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - C) / eps
            if np.abs(np.exp(logsumexp(log_p, axis=1)) - a).sum() < tol:
                break
    log_p = la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - C) / eps
    P = np.exp(log_p)
    cost = float((P * C).sum())
    kl = float((P * (log_p - la[:, None] - lb[None, :])).sum())
    return f, g, P, cost + eps * kl, cost


def fit(Xs, Xt, a=None, b=None, **params):
    params = {"random_state": 0, **params}
    return EntropicTransport(**params).fit(Xs, Xt, source_weight=a, target_weight=b)


@pytest.fixture(scope="module")
def problem():
    Xs, Xt, a, b = clouds()
    C = cdist(Xs, Xt, "sqeuclidean")
    eps = 0.05 * np.median(C)
    return Xs, Xt, a, b, C, eps, sinkhorn(a, b, C, eps)


@pytest.fixture(scope="module")
def fitted(problem):
    Xs, Xt, a, b, C, eps, _ = problem
    return fit(Xs, Xt, a, b, epsilon=eps)


def test_value_matches_exact_sinkhorn(problem, fitted):
    *_, (f, g, P, value, cost) = problem
    assert fitted.value_ == pytest.approx(value, rel=1e-3)
    assert fitted.transport_cost_ == pytest.approx(cost, rel=2e-2)
    assert fitted.marginal_error_ < 2e-2


@pytest.mark.parametrize("rel", [0.3, 0.01])
def test_value_on_held_out_clouds_and_weights(rel):
    """Other clouds, sizes, weights and temperatures than the fixture's."""
    Xs, Xt, a, b = clouds(n=90, m=130, seed=3)
    C = cdist(Xs, Xt, "sqeuclidean")
    eps = rel * np.median(C)
    value = sinkhorn(a, b, C, eps)[3]
    assert fit(Xs, Xt, a, b, epsilon=eps).value_ == pytest.approx(value, rel=2e-3)


def test_plan_rows_match_the_exact_plan(problem, fitted):
    Xs, Xt, a, b, C, eps, (f, g, P, value, cost) = problem
    idx = np.array([0, 5, 17, -1])
    rows = fitted.plan_rows(idx)
    assert rows.shape == (4, Xt.shape[0])
    np.testing.assert_allclose(rows.sum(axis=1), a[idx], rtol=3e-2)
    # the rows of the plan, compared as distributions over the targets
    err = np.abs(rows / rows.sum(1, keepdims=True) - P[idx] / P[idx].sum(1, keepdims=True))
    assert err.sum(axis=1).max() < 5e-2
    assert np.all(rows <= a[idx, None] * b[None, :] / fitted.rho)


def test_transform_of_new_points_is_the_barycentric_map(problem, fitted):
    Xs, Xt, a, b, C, eps, (f, g, P, value, cost) = problem
    X_new = clouds(n=40, seed=7)[0]
    # exact map: the c-transform of the exact target potential gives the rows
    log_rows = np.log(b)[None, :] + (g[None, :] - cdist(X_new, Xt, "sqeuclidean")) / eps
    rows = np.exp(log_rows - logsumexp(log_rows, axis=1, keepdims=True))
    expected = rows @ Xt
    mapped = fitted.transform(X_new)
    assert mapped.shape == X_new.shape
    spread = np.linalg.norm(Xt - Xt.mean(0), axis=1).mean()
    assert np.abs(mapped - expected).max() < 0.02 * spread


def test_transform_of_training_points_matches_the_plan(problem, fitted):
    Xs, Xt, *_ = problem
    rows = fitted.plan_rows(np.arange(Xs.shape[0]))
    projection = rows @ Xt / rows.sum(axis=1, keepdims=True)
    spread = np.linalg.norm(Xt - Xt.mean(0), axis=1).mean()
    assert np.abs(fitted.transform(Xs) - projection).max() < 0.02 * spread


def test_rho_caps_the_plan_and_biases_the_value_upwards(problem):
    """The relaxed value exceeds the exact one by about eps rho / 2 chi2(P || ab)."""
    Xs, Xt, a, b, C, eps, (f, g, P, value, cost) = problem
    chi2 = float((P**2 / (a[:, None] * b[None, :])).sum() - 1.0)
    rho = 1e-3
    model = fit(Xs, Xt, a, b, epsilon=eps, rho=rho)
    gap = model.value_ - value
    assert gap == pytest.approx(eps * rho / 2 * chi2, rel=0.3)
    coarse = fit(Xs, Xt, a, b, epsilon=eps, rho=0.2)
    rows = coarse.plan_rows(np.arange(Xs.shape[0]))
    assert np.all(rows <= a[:, None] * b[None, :] / 0.2 * (1 + 1e-12))
    assert coarse.value_ > model.value_ > value


def test_small_epsilon_stays_finite():
    """eps = 1e-4 x the median cost: exp((f + g - C) / eps) would overflow; the relaxed
    weights stay below 1 / rho and the fit, value and map stay finite."""
    Xs, Xt, a, b = clouds(n=80, m=70, seed=1)
    C = cdist(Xs, Xt, "sqeuclidean")
    eps = 1e-4 * np.median(C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = fit(Xs, Xt, a, b, epsilon=eps, max_iter=20_000)
    assert np.all(np.isfinite(model.source_potential_))
    assert np.all(np.isfinite(model.target_potential_))
    assert np.all(np.isfinite(model.transform(Xs)))
    # near the unregularised OT cost, which bounds the entropic value from below
    ot = pytest.importorskip("ot")
    exact = ot.emd2(a, b, C)
    assert exact <= model.value_ * (1 + 1e-6)
    assert model.value_ == pytest.approx(exact, rel=2e-2)


def test_against_pot_sinkhorn_log():
    ot = pytest.importorskip("ot")
    Xs, Xt, a, b = clouds(n=100, m=100, seed=2, weighted=False)
    C = cdist(Xs, Xt, "sqeuclidean")
    eps = 0.05 * np.median(C)
    P = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=1e-12, numItermax=100_000)
    model = fit(Xs, Xt, epsilon=eps)
    # ot.sinkhorn2 returns the transport cost <P, C>: our transport_cost_
    assert model.transport_cost_ == pytest.approx(float((P * C).sum()), rel=2e-2)
    rows = model.plan_rows(np.arange(100))
    assert np.abs(rows - P).sum() < 3e-2


def test_metric_names_and_callables_agree():
    Xs, Xt, a, b = clouds(n=60, m=50, seed=4)
    on_the_fly = fit(Xs, Xt, a, b, epsilon=0.3, metric="cityblock")
    callable_ = fit(Xs, Xt, a, b, epsilon=0.3, metric=lambda X, Y: cdist(X, Y, "cityblock"))
    np.testing.assert_allclose(on_the_fly.value_, callable_.value_, rtol=1e-10)
    np.testing.assert_allclose(on_the_fly.transform(Xs[:5]), callable_.transform(Xs[:5]))
    chebyshev = fit(Xs, Xt, a, b, epsilon=0.3, metric="chebyshev")
    exact = sinkhorn(a, b, cdist(Xs, Xt, "chebyshev"), 0.3)[3]
    assert chebyshev.value_ == pytest.approx(exact, rel=1e-3)


def test_clone_pickle_and_pipeline(problem, fitted):
    Xs, Xt, a, b, C, eps, _ = problem
    X_new = Xs[:10] + 0.1
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(X_new), fitted.transform(X_new))
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "value_")
    pipe = make_pipeline(EntropicTransport(epsilon=eps, random_state=0)).fit(Xs, Xt)
    direct = fit(Xs, Xt, epsilon=eps)
    np.testing.assert_allclose(pipe.transform(X_new), direct.transform(X_new))
    np.testing.assert_allclose(
        EntropicTransport(epsilon=eps, random_state=0).fit_transform(Xs, Xt),
        direct.transform(Xs),
    )


def test_not_converged_warns():
    Xs, Xt, a, b = clouds(n=60, m=50, seed=5)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        fit(Xs, Xt, epsilon=0.01, max_iter=2)


@pytest.mark.parametrize(
    "params, data, match",
    [
        ({"epsilon": 0.0}, {}, "epsilon"),
        ({"epsilon": -1.0}, {}, "epsilon"),
        ({"rho": 0.0}, {}, "rho"),
        ({"rho": 1.0}, {}, "rho"),
        ({"metric": "no-such-metric"}, {}, "metric"),
        ({}, {"Xs_nan": True}, "NaN"),
        ({}, {"Xt_nan": True}, "NaN"),
        ({}, {"Xt_dim": 3}, "features"),
        ({}, {"a_negative": True}, "source_weight"),
        ({}, {"b_length": 7}, "target_weight"),
        ({}, {"b_zero": True}, "target_weight"),
        ({}, {"no_target": True}, "target points"),
    ],
)
def test_bad_input_raises_before_work(params, data, match):
    Xs, Xt, a, b = clouds(n=20, m=15, seed=6)
    if data.get("Xs_nan"):
        Xs[3, 1] = np.nan
    if data.get("Xt_nan"):
        Xt[2, 0] = np.nan
    if "Xt_dim" in data:
        Xt = np.hstack([Xt, np.ones((15, 1))])
    if data.get("a_negative"):
        a = a.copy()
        a[0] = -0.1
    if "b_length" in data:
        b = np.ones(data["b_length"])
    if data.get("b_zero"):
        b = np.zeros(15)
    if data.get("no_target"):
        Xt = None
    with pytest.raises(ValueError, match=match):
        EntropicTransport(**params).fit(Xs, Xt, source_weight=a, target_weight=b)


def test_transform_checks_its_input(fitted):
    with pytest.raises(ValueError, match="features"):
        fitted.transform(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        fitted.transform(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="indices"):
        fitted.plan_rows([10_000])


def exact_dual_newton(a, b, C, eps, steps=200):
    """The exact entropic OT value by damped Newton on its dual over all pairs (dense,
    least-squares solves: the dual is flat along (f + t, g - t)), from 200 Sinkhorn
    iterations; a reference that stays accurate where Sinkhorn's slow mode (mass moving
    between clusters) would take it 1e5 iterations."""
    la, lb = np.log(a), np.log(b)
    f, g = np.zeros(len(a)), np.zeros(len(b))
    for _ in range(200):
        f = -eps * logsumexp(lb[None, :] + (g[None, :] - C) / eps, axis=1)
        g = -eps * logsumexp(la[:, None] + (f[:, None] - C) / eps, axis=0)

    def dual(f, g):
        log_p = la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - C) / eps
        with np.errstate(over="ignore"):  # a trial step too long: rejected
            P = np.exp(log_p)
        return a @ f + b @ g - eps * (P.sum() - 1.0), P

    value, P = dual(f, g)
    n = len(a)
    for _ in range(steps):
        grad = np.concatenate([a - P.sum(axis=1), b - P.sum(axis=0)])
        H = np.block([[np.diag(P.sum(axis=1)), P], [P.T, np.diag(P.sum(axis=0))]])
        d = eps * np.linalg.lstsq(H, grad, rcond=None)[0]
        t = 1.0
        while True:
            trial, P_t = dual(f + t * d[:n], g + t * d[n:])
            if trial >= value or t < 1e-12:
                break
            t *= 0.5
        if not trial > value:
            break
        f, g, value, P = f + t * d[:n], g + t * d[n:], trial, P_t
    return value


def fit_against_exact(Xs, Xt, a, b, rel, **params):
    """The fit at ``eps = rel x median cost`` (a ConvergenceWarning fails the test), and
    the exact value of :func:`exact_dual_newton`."""
    C = cdist(Xs, Xt, "sqeuclidean")
    eps = rel * np.median(C)
    exact = exact_dual_newton(a, b, C, eps)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = fit(Xs, Xt, a, b, epsilon=eps, **params)
    return model, exact


@pytest.mark.parametrize("rel", [0.1, 0.01, 0.002])
def test_a_fit_that_converged_is_within_tol_of_the_value(rel):
    """The default tol at small temperatures, where the decrement of the half-steps is
    hundreds of times below the gap (the old stop claimed convergence at 1e-3 relative
    error with tol = 1e-5); rho = 1e-10 makes the relaxation's bias negligible."""
    Xs, Xt, a, b = clouds(n=70, m=60, seed=7)
    for tol in (1e-5, 1e-7):
        model, exact = fit_against_exact(Xs, Xt, a, b, rel, rho=1e-10, tol=tol, max_iter=5000)
        assert abs(model.value_ - exact) <= 10 * tol * abs(exact)


@pytest.mark.parametrize("rel", [0.1, 0.01])
def test_the_default_fit_is_within_its_tol_of_the_exact_value(rel):
    """At the defaults (rho and tol), the relaxation's bias is below the tolerance too:
    at rho = 1e-5 it was 4e-6 of the value here, 40 x the default tol."""
    Xs, Xt, a, b = clouds(n=70, m=60, seed=12)
    model, exact = fit_against_exact(Xs, Xt, a, b, rel)
    assert abs(model.value_ - exact) <= 10 * model.tol * abs(exact)


def test_half_steps_alone_stop_honestly(monkeypatch):
    """When the support is too large to store, the half-steps go on alone: their stop must
    be as honest (here they stop at a tenth of the iterations Sinkhorn would need)."""
    import sklearn_lse.transport as transport

    monkeypatch.setattr(transport, "_SUPPORT_PAIRS", 0)
    Xs, Xt, a, b = clouds(n=70, m=60, seed=8)
    C = cdist(Xs, Xt, "sqeuclidean")
    eps = 0.01 * np.median(C)
    exact = exact_dual_newton(a, b, C, eps)
    model = fit(Xs, Xt, a, b, epsilon=eps, rho=1e-10, tol=1e-6, max_iter=100_000)
    assert abs(model.value_ - exact) <= 10 * 1e-6 * abs(exact)


def test_separated_clusters_of_unequal_mass():
    """Two clusters far apart with 70/30 of the mass at the source and 30/70 at the
    target: 40% of the mass must cross, through pairs that carry none where the fit
    starts (the Newton steps' support is cut in two and must be rebuilt)."""
    rng = np.random.default_rng(9)
    Xs = np.vstack([rng.normal(size=(35, 2)), rng.normal(size=(15, 2)) + [8.0, 0.0]])
    Xt = np.vstack([rng.normal(size=(15, 2)), rng.normal(size=(35, 2)) + [8.0, 0.0]])
    a, b = np.full(50, 0.02), np.full(50, 0.02)
    model, exact = fit_against_exact(Xs, Xt, a, b, 0.005, rho=1e-10)
    assert model.value_ == pytest.approx(exact, rel=1e-6)
    assert model.marginal_error_ < 1e-3
    crossing = model.plan_rows(np.arange(35))[:, 15:].sum()
    assert crossing == pytest.approx(0.4, abs=1e-3)


@pytest.mark.slow
def test_concentrated_plan_in_ten_dimensions_is_certified():
    """d = 10, eps = 0.001 x median: a few pairs per point, a support in many weakly joined
    parts (the conjugate gradients' residual stalls along modes that no longer move the
    decrement); the default fit must still stop, converged and within 10 x tol."""
    from benchmarks.bench_transport import mixtures

    Xs, Xt = mixtures(200, 10, seed=11)
    a = b = np.full(200, 1 / 200)
    model, exact = fit_against_exact(Xs, Xt, a, b, 0.001, rho=1e-10)
    assert abs(model.value_ - exact) <= 10 * 1e-7 * abs(exact)
