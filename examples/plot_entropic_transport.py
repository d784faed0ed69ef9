"""
Entropic optimal transport with the relaxation
==============================================

The third experiment of Gladin, Kroshnin, Zhu and Dvurechensky: entropy-regularised
optimal transport, whose dual is a LogSumExp over the pairs of points. Its stochastic
gradients (Genevay et al. 2016, Seguy et al. 2018) weigh a pair by
``exp((f_i + g_j - C_ij) / eps)``, which overflows when the temperature ``eps`` is small
next to the costs. :class:`~sklearn_lse.EntropicTransport` replaces the exponential by the
softplus relaxation, whose per-pair weight is bounded by ``1 / rho``, and learns the dual
potentials by unbiased stochastic steps over pairs. This example maps one point cloud onto
another, compares the value with an exact log-domain Sinkhorn, and shows the small
temperature where the exponential stochastic dual breaks down and the relaxed one does not.

Set ``SKLEARN_LSE_QUICK=1`` for a small run.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from sklearn_lse import EntropicTransport

quick = os.environ.get("SKLEARN_LSE_QUICK") == "1"
n = 300 if quick else 1000
rng = np.random.default_rng(0)

# %%
# Two point clouds
# ----------------
# The source is a mixture of three Gaussians; the target a ring, shifted. The cost is the
# squared Euclidean distance; ``eps`` is set relative to the median cost.
centres = np.array([[0.0, 0.0], [2.5, 0.5], [0.5, 2.5]])
X_source = centres[rng.integers(0, 3, n)] + 0.5 * rng.normal(size=(n, 2))
angle = rng.uniform(0, 2 * np.pi, n)
X_target = np.c_[np.cos(angle), np.sin(angle)] * (2.0 + 0.2 * rng.normal(size=(n, 1)))
X_target += [5.0, 1.0]
C = cdist(X_source, X_target, "sqeuclidean")
median = np.median(C)
eps = 0.01 * median

ot_map = EntropicTransport(epsilon=eps, random_state=0).fit(X_source, X_target)
mapped = ot_map.transform(X_source)

# %%
# The learned map
# ---------------
# Each source point is sent to the barycentre of its row of the plan. New points go
# through the relaxed c-transform of the target potential; here a grid around the source.
grid = np.stack(np.meshgrid(np.linspace(-1, 3.5, 7), np.linspace(-1, 3.5, 7)), -1).reshape(-1, 2)
grid_mapped = ot_map.transform(grid)
fig, ax = plt.subplots(figsize=(7, 4.5))
ax.scatter(*X_source.T, s=6, c="C0", label="source")
ax.scatter(*X_target.T, s=6, c="C1", label="target")
for start, end in zip(X_source[::6], mapped[::6], strict=True):
    ax.plot(*np.c_[start, end], color="0.6", lw=0.5)
ax.scatter(*grid.T, marker="+", c="k", label="new points")
ax.scatter(*grid_mapped.T, marker="x", c="k", s=15, label="their images")
ax.set_title(f"Barycentric map of the relaxed plan (eps = {eps / median:g} x median cost)")
ax.legend(fontsize=8, loc="lower right")
ax.set_aspect("equal")
fig.tight_layout()

# %%
# The value against an exact Sinkhorn
# -----------------------------------
# A log-domain Sinkhorn on the full cost matrix gives the exact entropic value
# ``<P, C> + eps KL(P || a b^T)``. The fitted ``value_`` is the dual value at the learned
# potentials; ``transport_cost_`` is ``<P, C>``, what POT's ``ot.sinkhorn2`` returns.
a = np.full(n, 1.0 / n)
f, g = np.zeros(n), np.zeros(n)
for _ in range(3000):
    f = -eps * logsumexp(np.log(a)[None, :] + (g[None, :] - C) / eps, axis=1)
    g = -eps * logsumexp(np.log(a)[:, None] + (f[:, None] - C) / eps, axis=0)
exact = a @ f + a @ g
print(
    f"exact entropic value {exact:.5f}, EntropicTransport {ot_map.value_:.5f} "
    f"(relative error {abs(ot_map.value_ - exact) / exact:.1e}), "
    f"transport cost {ot_map.transport_cost_:.5f}, marginal error "
    f"{ot_map.marginal_error_:.1e}"
)

# %%
# A small temperature: where the exponential stochastic semi-dual fails
# ---------------------------------------------------------------------
# The averaged SGD of Genevay et al. (2016) on the semi-dual, as POT implements it in
# ``ot.stochastic.solve_semi_dual_entropic(..., "ASGD")`` (transcribed below, with its
# default step ``lr = eps / max(a)``), draws a source point and computes the softmax of
# ``(g_j - C_ij) / eps`` over the targets by plain exponentials. At ``eps = 1e-3`` times the
# median cost, ``exp(-C_ij / eps)`` underflows to 0 for every target of most source points:
# the softmax is 0 / 0 and the potential becomes NaN. The relaxed weights are sigmoids,
# evaluated in their overflow-free form at any ``z``, and bounded by ``1 / rho``.
small = 1e-3 * median
beta, average = np.zeros(n), np.zeros(n)
lr = small / a.max()
with np.errstate(all="ignore"):
    for k in range(1, 2001):
        i = rng.integers(n)
        weights = np.exp(-(C[i] - beta) / small) * a
        beta += lr / np.sqrt(k) * (a - weights / weights.sum())
        average += (beta - average) / k
failed = not np.all(np.isfinite(average))
relaxed = EntropicTransport(epsilon=small, random_state=0, max_iter=20_000).fit(X_source, X_target)
print(
    f"eps = 1e-3 x median cost: ASGD potentials finite: {not failed}; relaxed: value "
    f"{relaxed.value_:.4f}, finite potentials: "
    f"{np.all(np.isfinite(relaxed.target_potential_))}, "
    f"marginal error {relaxed.marginal_error_:.1e}"
)
plt.show()
