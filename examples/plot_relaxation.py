"""
The softplus relaxation of LogSumExp
====================================

The KL-DRO risk ``lam * log sum_i p_i exp(loss_i / lam)`` is a LogSumExp: its gradient
needs every sample. Gladin, Kroshnin, Zhu and Dvurechensky replace each exponential
``e^t`` by ``f_rho(t) = log(1 + rho e^t) / rho``, which turns the risk into a plain average
over the samples plus one scalar threshold, so that one sample gives an unbiased gradient.
This example looks at the relaxation itself, with the risk functions of
:mod:`sklearn_lse` on fixed vectors of losses (no model is fitted): the per-sample
function, the approximation error against ``rho``, the cap it puts on the worst-case
weights, and the CVaR it becomes when ``lam`` is small.

Set ``SKLEARN_LSE_QUICK=1`` for a small run.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

from sklearn_lse import kl_dro_risk, relaxation_offset, worst_case_weights

quick = os.environ.get("SKLEARN_LSE_QUICK") == "1"
n = 1_000
rhos_grid = np.logspace(-6, -0.5, 12 if quick else 45)

# %%
# The per-sample function
# -----------------------
# ``f_rho(t) = log(1 + rho e^t) / rho`` follows ``e^t`` for ``t`` well below
# ``log(1 / rho)`` (there ``log(1 + x) ~ x``) and grows only linearly, with slope
# ``1 / rho``, above it. Its derivative ``e^t / (1 + rho e^t)`` is the density ratio that
# the relaxed worst case gives a sample with scaled loss ``t``: like ``e^t`` for moderate
# losses, but never more than ``1 / rho``. That cap is the whole difference between the
# relaxed and the exact risk.
t = np.linspace(-4, 12, 400)
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].semilogy(t, np.exp(t), "k", lw=2, label="exp(t)")
axes[1].semilogy(t, np.exp(t), "k", lw=2, label="exp(t)")
for k, rho in enumerate((1e-1, 1e-2, 1e-3, 1e-4)):
    color = f"C{k}"
    f_rho = np.logaddexp(0.0, t + np.log(rho)) / rho  # overflow-free log(1 + rho e^t) / rho
    ratio = np.exp(-np.logaddexp(0.0, -t - np.log(rho))) / rho  # sigmoid(t + log rho) / rho
    axes[0].semilogy(t, f_rho, color=color, label=f"f_rho, rho={rho:g}")
    axes[1].semilogy(t, ratio, color=color, label=f"rho={rho:g}")
    for ax in axes:
        ax.axvline(np.log(1 / rho), color=color, ls=":", lw=1)
axes[0].set_title("f_rho(t) = log(1 + rho e^t) / rho")
axes[1].set_title("derivative: the density ratio, capped at 1 / rho")
for ax in axes:
    ax.set_xlabel("t = loss / lam (dotted: t = log(1 / rho))")
    ax.legend(fontsize=8)
fig.tight_layout()

# %%
# The approximation error against ``rho``
# ---------------------------------------
# Losses of 1000 samples (squared standard normal residuals), at two temperatures:
# ``lam=3``, where the worst-case weights ``p*`` are spread over many samples, and
# ``lam=0.3``, where they pile onto the few largest losses. With ``F = log sum p_i e^{phi_i}``
# and ``F_rho`` its relaxation (``phi = loss / lam``), expanding ``log(1 + x)`` to second
# order gives the estimate ``F - F_rho ~ (rho / 2) * sum_i p_i (p*_i / p_i)^2``, tight as
# ``rho -> 0``.
#
# :func:`~sklearn_lse.kl_dro_risk` with ``rho > 0`` reports ``lam * (F_rho + c(rho))``, where
# the constant ``c(rho) = relaxation_offset(rho) ~ rho / 2`` makes the relaxed risk of equal
# losses equal to that loss; it is added back below to compare with the estimate. The
# error follows the estimate until ``rho`` reaches about ``1 / (n max_i p*_i)``, where the
# cap ``1 / rho`` starts to bind on the largest weight: from there on, the relaxed risk is
# a different, less pessimistic risk, not an approximation. With concentrated weights
# (``lam=0.3``) that happens at a ``rho`` a decade smaller, and the estimate is already a
# few percent short of the error before it: it is the leading term, not a bound.
rng = np.random.default_rng(0)
losses = rng.normal(size=n) ** 2
fig, ax = plt.subplots(figsize=(6, 4.5))
for k, lam in enumerate((3.0, 0.3)):
    color = f"C{k}"
    exact = kl_dro_risk(losses, lam)  # rho=0: the exact LogSumExp risk
    p_star = worst_case_weights(losses, lam)
    gap = [
        (exact - kl_dro_risk(losses, lam, rho=r)) / lam + relaxation_offset(r) for r in rhos_grid
    ]
    estimate = rhos_grid / 2 * np.sum(p_star**2 * n)  # p_i = 1 / n
    ax.loglog(rhos_grid, gap, color=color, label=f"F - F_rho, lam={lam:g}")
    ax.loglog(
        rhos_grid, estimate, color=color, ls="--", label=f"(rho/2) sum p (p*/p)^2, lam={lam:g}"
    )
    ax.axvline(1 / (n * p_star.max()), color=color, ls=":", lw=1)
    print(
        f"lam={lam:g}: largest worst-case weight {n * p_star.max():.0f} / n, "
        f"so the cap binds from rho ~ {1 / (n * p_star.max()):.1e}"
    )
ax.set_xlabel("rho")
ax.set_ylabel("F - F_rho")
ax.set_title("Relaxation error (dotted: rho = 1 / (n max p*))")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# The worst-case weights, capped at ``1 / rho``
# ---------------------------------------------
# :func:`~sklearn_lse.worst_case_weights` of the same losses at ``lam=1``, sorted from the
# largest loss down, as multiples of the uniform weight ``1 / n``. The exact worst case
# (``rho=0``) gives the largest loss hundreds of times its share; the relaxed one never
# more than ``1 / rho`` times, and spreads the mass taken off the top over the next
# samples. With ``rho=0.001`` the cap does not bind at all, but the largest weights are
# still a little lower and the others higher than in the exact worst case.
order = np.argsort(losses)[::-1]
top = 60
fig, ax = plt.subplots(figsize=(6, 4))
exact_weights = worst_case_weights(losses, 1.0)[order] * n
ax.semilogy(np.arange(1, top + 1), exact_weights[:top], "k.-", label="exact, rho=0")
for k, rho in enumerate((1e-3, 1e-2, 1e-1)):
    weights = worst_case_weights(losses, 1.0, rho=rho)[order] * n
    ax.semilogy(np.arange(1, top + 1), weights[:top], ".-", color=f"C{k}", label=f"rho={rho:g}")
    ax.axhline(1 / rho, color=f"C{k}", ls=":", lw=1)
    print(f"rho={rho:g}: largest weight {weights.max():.1f} / n (cap {1 / rho:g} / n)")
ax.set_xlabel("rank of the loss (1 = largest)")
ax.set_ylabel("worst-case weight x n")
ax.set_title("Worst-case weights at lam=1 (dotted: caps 1 / rho)")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# Small ``lam`` at fixed ``rho``: the CVaR
# ----------------------------------------
# As ``lam -> 0`` the exact risk tends to the largest loss, but the relaxed risk at fixed
# ``rho`` tends to the mean of the worst ``rho``-fraction of the losses (the conditional
# value at risk): every one of those ``rho * n`` samples gets the full weight ``1 / rho``.
# So ``rho`` is a robustness parameter in its own right, not only an accuracy knob. Large
# ``lam`` gives the mean loss in both.
lams = np.logspace(-3, 2, 12 if quick else 40)
rho = 0.05
cvar = np.sort(losses)[::-1][: int(rho * n)].mean()
fig, ax = plt.subplots(figsize=(6, 4))
ax.semilogx(lams, [kl_dro_risk(losses, v) for v in lams], "k", label="exact, rho=0")
ax.semilogx(lams, [kl_dro_risk(losses, v, rho=rho) for v in lams], "C0", label=f"rho={rho:g}")
ax.axhline(losses.max(), color="k", ls=":", label="largest loss")
ax.axhline(cvar, color="C0", ls=":", label=f"mean of the worst {rho:.0%}")
ax.axhline(losses.mean(), color="0.5", ls="--", label="mean loss")
ax.set_xlabel("lam")
ax.set_ylabel("risk")
ax.set_title("KL-DRO risk of the losses against lam")
ax.legend(fontsize=8)
fig.tight_layout()
small = kl_dro_risk(losses, lams[0], rho=rho)
print(f"lam={lams[0]:g}, rho={rho:g}: relaxed risk {small:.4f}, CVaR at {rho:g}: {cvar:.4f}")
plt.show()
