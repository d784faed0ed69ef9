"""The structure the code promises: cached Numba kernels call only jitted functions of
their own file, every registered loss and the relaxation agree with NumPy (values,
derivatives by finite differences), unknown codes raise, and the estimators see the
solvers only through the base layer."""

import ast
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher
from scipy.special import logsumexp, softmax

import sklearn_lse
from sklearn_lse import _kernels
from sklearn_lse._registry import LOSSES

PACKAGE = Path(sklearn_lse.__file__).parent
MODULES = [
    importlib.import_module(f"sklearn_lse.{info.name}")
    for info in pkgutil.iter_modules([str(PACKAGE)])
    if info.name != "__main__"
]


def cached_kernels():
    for module in MODULES:
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.py_func.__module__ == module.__name__:
                if type(value._cache).__name__ != "NullCache":  # cache=True
                    yield module, name, value


def test_cached_kernels_call_only_jitted_functions_of_their_own_file():
    """Numba's cache does not notice edits to other files: a cached kernel that called a
    jitted function of another module would keep running its old code."""
    offenders = []
    for module, name, kernel in cached_kernels():
        globals_ = kernel.py_func.__globals__
        for called in kernel.py_func.__code__.co_names:
            target = globals_.get(called)
            if isinstance(target, CPUDispatcher) and target.py_func.__module__ != module.__name__:
                offenders.append(
                    f"{module.__name__}.{name} -> {target.py_func.__module__}.{called}"
                )
    assert not offenders, offenders
    assert any(True for _ in cached_kernels())


def test_estimators_see_the_solvers_only_through_the_base_layer():
    allowed = {"_base", "_registry", "risk"}
    for name in ("regression", "classification"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1
        }
        assert imported <= allowed, (name, imported - allowed)


def numpy_loss(code, f, y, eps):
    """The losses of MATH.md written with NumPy: value per sample."""
    if code == _kernels.SQUARED_ERROR:
        return (f[:, 0] - y) ** 2
    if code == _kernels.HUBER:
        r = np.abs(f[:, 0] - y)
        return np.where(r <= eps, r**2, 2 * eps * r - eps**2)
    if code == _kernels.ABSOLUTE_ERROR:
        r = f[:, 0] - y
        return np.sqrt(r**2 + eps**2) - eps
    if code == _kernels.LOG_LOSS:
        return np.logaddexp(0.0, -y * f[:, 0])
    if code == _kernels.MULTINOMIAL:
        return logsumexp(f, axis=1) - f[np.arange(len(y)), y.astype(int)]
    raise AssertionError(f"no NumPy reference for loss code {code}")


def kernel_codes():
    return sorted({code for loss in LOSSES.values() for code in loss.codes})


def test_the_registry_covers_every_kernel_code():
    assert kernel_codes() == list(range(_kernels.N_LOSS_CODES))


@pytest.mark.parametrize("code", kernel_codes())
def test_every_kernel_loss_matches_numpy_and_its_derivatives(code):
    rng = np.random.default_rng(code)
    n, K = 50, (4 if code == _kernels.MULTINOMIAL else 1)
    f = rng.normal(size=(n, K)) * 2
    eps = 0.7
    if code == _kernels.MULTINOMIAL:
        y = rng.integers(0, K, n).astype(float)
    elif code == _kernels.LOG_LOSS:
        y = rng.choice([-1.0, 1.0], n)
    else:
        y = rng.normal(size=n) * 2
    loss, grad, hess = np.empty(n), np.empty((n, K)), np.empty((n, K))
    _kernels.pointwise_losses(code, f, y, eps, loss, grad, hess)
    np.testing.assert_allclose(loss, numpy_loss(code, f, y, eps), rtol=1e-12, atol=1e-12)
    # the line searches' losses, at f + t * step
    step, t = rng.normal(size=(n, K)), 0.3
    along = np.empty(n)
    _kernels.step_losses(code, f, step, t, y, eps, along)
    expected = numpy_loss(code, f + t * step, y, eps)
    np.testing.assert_allclose(along, expected, rtol=1e-12, atol=1e-12)
    h = 1e-6
    for k in range(K):
        e = np.zeros(K)
        e[k] = h
        fd = (numpy_loss(code, f + e, y, eps) - numpy_loss(code, f - e, y, eps)) / (2 * h)
        np.testing.assert_allclose(grad[:, k], fd, rtol=1e-6, atol=1e-6)
    # the second derivative (the class probabilities for the multinomial loss, whose
    # Hessian is diag(s) - s s^T)
    if code == _kernels.MULTINOMIAL:
        np.testing.assert_allclose(hess, softmax(f, axis=1), rtol=1e-12)
    else:
        plus, minus = np.empty(n), np.empty(n)
        g_plus, g_minus = np.empty((n, 1)), np.empty((n, 1))
        _kernels.pointwise_losses(code, f + h, y, eps, plus, g_plus, np.empty((n, 1)))
        _kernels.pointwise_losses(code, f - h, y, eps, minus, g_minus, np.empty((n, 1)))
        fd = (g_plus - g_minus)[:, 0] / (2 * h)
        smooth = np.ones(n, dtype=bool)
        if code == _kernels.HUBER:  # the second derivative jumps at |r| = eps
            smooth = np.abs(np.abs(f[:, 0] - y) - eps) > 1e-3
        np.testing.assert_allclose(hess[smooth, 0], fd[smooth], rtol=1e-5, atol=1e-6)


def test_the_kernels_log1p_is_accurate_to_a_few_ulps():
    x = np.concatenate([
        np.logspace(-300, 300, 20_001), -np.logspace(-300, -1e-12, 20_001),
        np.random.default_rng(0).uniform(-1.0, 5.0, 20_001),
    ])  # fmt: skip
    x = x[x > -1.0]
    got = np.array([_kernels.log1p(v) for v in x])
    np.testing.assert_allclose(got, np.log1p(x), rtol=4 * np.finfo(float).eps, atol=0)


def test_an_unknown_loss_code_raises():
    f = np.zeros((3, 1))
    with pytest.raises(ValueError, match="unknown loss code"):
        _kernels.pointwise_losses(_kernels.N_LOSS_CODES, f, np.zeros(3), 1.0, np.empty(3),
                                  np.empty((3, 1)), np.empty((3, 1)))  # fmt: skip


@pytest.mark.parametrize("rho", [0.0, 1e-6, 1e-3, 0.3])
@pytest.mark.parametrize("lam", [0.01, 1.0])
def test_the_relaxation_factor_and_curvature_are_the_term_s_derivatives(rho, lam):
    """``relaxation_term(d)`` has derivative ``c`` and second derivative ``k`` in the loss
    ``d`` above the threshold; in the softplus form, ``c = sigmoid(z) / rho``."""
    d = np.linspace(-5, 5, 41) * lam
    h = 1e-6 * lam
    term = np.vectorize(lambda x: _kernels.relaxation_term(x, lam, rho))
    weights = np.array([_kernels.relaxation_weights(x, lam, rho) for x in d])
    c, k = weights[:, 0], weights[:, 1]
    np.testing.assert_allclose(c, (term(d + h) - term(d - h)) / (2 * h), rtol=1e-6)
    c_of = np.vectorize(lambda x: _kernels.relaxation_weights(x, lam, rho)[0])
    np.testing.assert_allclose(k, (c_of(d + h) - c_of(d - h)) / (2 * h), rtol=1e-5)
    if rho > 0:
        z = d / lam + np.log(rho) - np.log1p(-rho)
        np.testing.assert_allclose(c, 1 / (1 + np.exp(-z)) / rho, rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_dense_column_moments_match_numpy(weighted, fit_intercept):
    """The two-pass kernels behind the standardisation give NumPy's weighted mean and
    standard deviation (about zero without an intercept); a constant column has a scale of
    exactly zero (not rounding), and
    columns of 1e200 or 1e-200 times the data have that many times its moments, finite.
    Float32 and Fortran-ordered data give the same as their float64 C-ordered copy."""
    from sklearn_lse._problem import _column_moments

    rng = np.random.default_rng(0)
    n = 5000
    base = np.column_stack([rng.normal(size=n), 2000 + 10 * rng.normal(size=n)])
    X = np.column_stack([base, np.full(n, 0.7), 1e200 * base[:, 0], 1e-200 * base[:, 0]])
    p = rng.random(n) if weighted else np.ones(n)
    p /= p.sum()
    weights = p if weighted else p[:1]
    mean, scale, _ = _column_moments(X, weights, fit_intercept)
    ref_mean = np.average(base, axis=0, weights=p) if fit_intercept else np.zeros(2)
    ref_scale = np.sqrt(np.average((base - ref_mean) ** 2, axis=0, weights=p))
    np.testing.assert_allclose(mean[:2], ref_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(scale[:2], ref_scale, rtol=1e-10)
    if fit_intercept:
        assert scale[2] == 0.0
    else:  # the root mean square about zero
        assert scale[2] == pytest.approx(0.7, rel=1e-14)
    np.testing.assert_allclose(scale[3:], [1e200 * scale[0], 1e-200 * scale[0]], rtol=1e-12)
    np.testing.assert_allclose(mean[3:], [1e200 * mean[0], 1e-200 * mean[0]], rtol=1e-10)
    small = X[:, :3].astype(np.float32)
    for variant in (small, np.asfortranarray(small)):
        got = _column_moments(variant, weights, fit_intercept)
        want = _column_moments(small.astype(np.float64), weights, fit_intercept)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_multinomial_hessian_from_the_off_diagonal_class_blocks():
    """Newton's multinomial Hessian, whose diagonal class blocks are minus the sums of the
    others (each row's curvature sums to zero over the classes), equals the sum over all
    K (K + 1) / 2 blocks, the relaxation's curvature included."""
    from sklearn_lse._newton import _add_gram

    rng = np.random.default_rng(1)
    n, d, K = 400, 6, 4
    Z = np.column_stack([rng.normal(size=(n, d)), np.ones(n)])
    F = rng.normal(size=(n, K)) * 3
    y = rng.integers(0, K, n).astype(float)
    loss, dl, ddl = np.empty(n), np.empty((n, K)), np.empty((n, K))
    _kernels.pointwise_losses(_kernels.MULTINOMIAL, F, y, 0.0, loss, dl, ddl)
    p, c, k = np.full(n, 1 / n), rng.random(n) * 5, rng.random(n)
    for irls in (False, True):
        A = np.empty((n, K, K))
        _kernels.curvature_matrix(_kernels.MULTINOMIAL, p, c, k, dl, ddl, irls, A)
        full, zero_sums = np.zeros((d + 1, K, d + 1, K)), np.zeros((d + 1, K, d + 1, K))
        _add_gram(full, Z, A)
        _add_gram(zero_sums, Z, A, zero_sums=True)
        np.testing.assert_allclose(zero_sums, full, rtol=0, atol=1e-13 * np.abs(full).max())


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_first_stage_decrement_from_the_least_squares_hessian(fit_intercept, weighted):
    """The Newton path's first stage, at a least-squares start, is decided without a pass
    of exponentials: the decrement that :func:`_erm_ratio` predicts from the ERM
    objective's Hessian is the one of the Newton model at that stage (the pass it
    replaces) to leading order in 1 / lam: within 2% at 100 times the losses' spread
    (uncentred correlated features, heavy-tailed noise, a ridge penalty)."""
    from sklearn_lse._newton import _STAGE_TOL, _erm_ratio, _Model, _Rows, _system
    from sklearn_lse._problem import Problem, least_squares_start

    rng = np.random.default_rng(3)
    n, d = 3000, 4
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 5.0
    y = X @ rng.normal(size=d) + rng.standard_t(3, size=n)
    p = rng.random(n) if weighted else np.ones(1)
    p = p / (p.sum() if weighted else n)
    for rho in (0.0, 1e-3):
        prob = Problem.build(
            X, y, p, n_outputs=1, loss=_kernels.SQUARED_ERROR, eps=0.0, lam=1.0, rho=rho,
            alpha=1e-2, fit_intercept=fit_intercept,
        )  # fmt: skip
        w, b, H = least_squares_start(prob, curvature=True)
        F = prob.predictions(w, b)
        losses = (F[:, 0] - y) ** 2
        mean = prob.weighted_sum(losses)
        prob = prob.with_lam(100 * float(losses.max() - losses.min()))
        model = _Model(*_system(prob, _Rows(prob, w, b, mean), exact=True))
        predicted = _erm_ratio(prob, F, losses, mean, H) * _STAGE_TOL * prob.lam
        assert predicted == pytest.approx(model.decrement, rel=2e-2)


def test_small_models_take_the_steps_of_the_cholesky_factorisations(monkeypatch):
    """A Newton model of few coordinates solves its steps from one eigendecomposition,
    a larger one by Cholesky factorisations; both give the same Newton step, decrement
    and trust-region steps, also where a direction has rounding-size curvature and the
    gradient a component along it (the objective is nearly linear there: its long step
    and large decrement must not be truncated away, or a fit near a kink takes a small
    decrement for convergence)."""
    from sklearn_lse import _newton

    rng = np.random.default_rng(5)
    D = 12
    V, _ = np.linalg.qr(rng.normal(size=(D, D)))
    ev = np.logspace(0, -6, D)
    ev[-1] = 1e-14  # below the relative rounding of the factorisations
    M = np.empty((D + 1, D + 1))
    M[:D, :D] = (V * ev) @ V.T
    M[:D, D] = M[D, :D] = 0.0  # (the eta row's Schur complement would blur ev[-1])
    M[D, D] = 1.0
    g = V @ rng.normal(size=D)
    free, flat = np.ones(D + 1, dtype=bool), np.empty((0, 1), dtype=np.intp)
    small = _newton._Model(g, M, free, flat)
    monkeypatch.setattr(_newton, "_EIGEN_SIZE", 0)
    large = _newton._Model(g, M, free, flat)
    assert small.eigen is not None and large.eigen is None
    # (to the rounding of a condition number of 1e12)
    assert small.decrement == pytest.approx(large.decrement, rel=1e-3)
    assert small.decrement > 1e9  # the nearly flat direction's
    np.testing.assert_allclose(small.newton, large.newton, rtol=1e-3)
    for share in (0.5, 1e-3, 1e-9):
        radius = share * large.newton_length
        s_small, length_small, predicted_small, _ = small.step(radius)
        s_large, length_large, predicted_large, _ = large.step(radius)
        assert length_small == pytest.approx(radius, rel=1e-3)
        assert length_large == pytest.approx(radius, rel=1e-3)
        assert predicted_small == pytest.approx(predicted_large, rel=1e-2)
        np.testing.assert_allclose(s_small, s_large, atol=5e-3 * radius)
