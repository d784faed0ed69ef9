"""The benchmark's scaled and truncated reference (benchmarks/bench_transport.py) against
its dense log-domain Sinkhorn, and against Newton's method on all pairs where the dense
Sinkhorn is too slow to converge (small eps)."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from benchmarks.bench_transport import (
    _lse_dense,
    _newton,
    mixtures,
    reference,
    reference_scaled,
)


def problem(n, d, rel):
    Xs, Xt = mixtures(n, d)
    a = b = np.full(n, 1.0 / n)
    C = cdist(Xs, Xt, "sqeuclidean")
    return a, b, C, rel * float(np.median(C))


@pytest.mark.parametrize(("n", "d", "rel"), [(1000, 10, 0.1), (300, 2, 0.01)])
def test_scaled_reference_matches_the_dense_sinkhorn(n, d, rel):
    a, b, C, eps = problem(n, d, rel)
    exact, _, err = reference(a, b, C, eps)
    value, _, scaled_err, stages = reference_scaled(a, b, C, eps)
    assert err < 1e-9 and scaled_err < 1e-9
    assert abs(value - exact) <= 1e-12 * abs(exact)
    if rel < 0.1:
        assert stages[-1][2] != "dense"  # the truncated path ran


def test_scaled_reference_at_small_eps_matches_newton_on_all_pairs():
    """At 1e-3 x median the dense Sinkhorn needs 1e5+ iterations; 2000 of them, then Newton
    on the dense dual (all pairs, no scaling, no truncation), reach the same value."""
    a, b, C, eps = problem(300, 2, 0.001)
    value, _, err, stages = reference_scaled(a, b, C, eps)
    assert err < 1e-9 and stages[-1][2] < 0.2 and stages[-1][5] > 0  # truncated, Newton
    n, m = C.shape
    f, g = np.zeros(n), np.zeros(m)

    CT = np.ascontiguousarray(C.T)
    for _ in range(2000):
        _lse_dense(C, np.log(b), g, eps, f)
        _lse_dense(CT, np.log(a), f, eps, g)
    indptr = np.arange(0, n * m + 1, m)
    idx = np.tile(np.arange(m, dtype=np.int32), n)
    _newton(indptr, idx, C.ravel(), np.log(a), np.log(b), f, g, eps, 1e-11)
    P = a[:, None] * b[None, :] * np.exp((f[:, None] + g[None, :] - C) / eps)
    assert np.abs(P.sum(1) - a).sum() < 1e-9 and np.abs(P.sum(0) - b).sum() < 1e-9
    dense = a @ f + b @ g - eps * (P.sum() - 1.0)
    assert abs(value - dense) <= 1e-12 * abs(dense)


def test_a_dropped_pair_that_matters_is_caught():
    """With a cut so tight that the support misses pairs of the optimal plan, the full pass
    finds them and the support is rebuilt, until the value is the exact one."""
    a, b, C, eps = problem(300, 2, 0.01)
    exact, _, _, _ = reference_scaled(a, b, C, eps)
    value, _, err, stages = reference_scaled(a, b, C, eps, cut=3.0, recut=2.0)
    assert err < 1e-9 and abs(value - exact) <= 1e-12 * abs(exact)
    assert sum(len(s) > 5 for s in stages) > 1  # the last stage's support was rebuilt
