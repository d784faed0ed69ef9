"""
Choosing lam and rho with GridSearchCV and a robust scorer
==========================================================

``lam`` and ``rho`` are hyperparameters of the *training* objective, and cross-validating
them by mean squared error defeats their purpose: the mean squared error rewards the model
that is best on average, which least squares already is, so the search drifts to the
largest ``lam``. :func:`~sklearn_lse.metrics.make_robust_scorer` judges every candidate
by one robust criterion instead: minus the KL-DRO risk of its validation losses at a
*fixed* ``lam`` and ``rho`` of the scorer's own, whatever the candidate was trained with.
The scorer's ``lam`` says how much weight the hard validation samples deserve; it is the
one choice left to you.

The data are those of the subpopulation example: a 10% subpopulation with 5 times the
noise and a trend that a fit to the majority misses.

Set ``SKLEARN_LSE_QUICK=1`` for a small run.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV

from sklearn_lse import DRORegressor
from sklearn_lse.metrics import make_robust_scorer

quick = os.environ.get("SKLEARN_LSE_QUICK") == "1"
n_train, n_test, cv = (2_000, 20_000, 3) if quick else (4_000, 100_000, 5)
lams = np.logspace(0, 3, 4 if quick else 7)
rhos = [1e-3, 1e-2, 1e-1] if quick else [1e-3, 1e-2, 1e-1, 0.3]


def make_data(n, rng):
    """Noise 5x larger, and a missed quadratic trend, where x_0 > 1.28 (10%)."""
    X = rng.normal(size=(n, 3))
    group = X[:, 0] > 1.2816
    noise = rng.normal(size=n) * np.where(group, 5.0, 1.0)
    y = X @ [1.0, 2.0, -1.0] + 0.8 * np.maximum(X[:, 0], 0.0) ** 2 + noise
    return X, y, group


rng = np.random.default_rng(0)
X, y, _ = make_data(n_train, rng)
X_test, y_test, group_test = make_data(n_test, rng)

# %%
# One search, several criteria
# ----------------------------
# ``GridSearchCV`` with a dict of scorers fits each candidate once per fold and scores it
# by every criterion: three robust scorers, at validation ``lam`` of 10, 30 and 100 (exact
# risk, ``rho=0``), and the mean squared error. ``refit`` picks the one that selects the
# final model; ``lam=30`` is about the squared residuals of the subpopulation.
scoring = {f"robust, lam={v}": make_robust_scorer(lam=v) for v in (10, 30, 100)}
scoring["neg_mean_squared_error"] = "neg_mean_squared_error"
search = GridSearchCV(
    DRORegressor(random_state=0),
    {"lam": lams, "rho": rhos},
    scoring=scoring,
    refit="robust, lam=30",
    cv=cv,
)
search.fit(X, y)
best = search.best_params_
print(f"selected by the robust scorer at lam=30: lam={best['lam']:.3g}, rho={best['rho']:g}")

# %%
# Heat-maps of the validation scores
# ----------------------------------
# Left: minus the validation KL-DRO risk at ``lam=30``; right: minus the validation mean
# squared error (both: greater is better, the best cell is framed). The mean squared error
# prefers the largest ``lam`` (and is nearly flat there: every such model is about least
# squares); the robust score prefers a robust training objective. The robust score is
# also noisier: ``rho=0.001`` on a few thousand samples lets the worst case rest on a
# handful of them, and the fit then changes from fold to fold.
params = search.cv_results_["params"]
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for ax, key in zip(axes, ("robust, lam=30", "neg_mean_squared_error"), strict=True):
    scores = np.empty((len(lams), len(rhos)))
    for p, score in zip(params, search.cv_results_[f"mean_test_{key}"], strict=True):
        scores[list(lams).index(p["lam"]), rhos.index(p["rho"])] = score
    image = ax.imshow(scores, origin="lower", cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax)
    bright = (scores - scores.min()) > 0.6 * np.ptp(scores)  # dark text on the bright cells
    for i in range(len(lams)):
        for j in range(len(rhos)):
            color = "k" if bright[i, j] else "w"
            ax.text(j, i, f"{scores[i, j]:.3g}", ha="center", va="center", fontsize=8, c=color)
    i, j = np.unravel_index(scores.argmax(), scores.shape)
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="r", lw=2))
    ax.set_xticks(range(len(rhos)), [f"{r:g}" for r in rhos])
    ax.set_yticks(range(len(lams)), [f"{v:.3g}" for v in lams])
    ax.set_xlabel("rho (training)")
    ax.set_ylabel("lam (training)")
    ax.set_title(key)
fig.tight_layout()

# %%
# What each criterion selects, on held-out data
# ---------------------------------------------
# The model each criterion selects, refitted on all the training data, against
# :class:`~sklearn.linear_model.LinearRegression`, on a large test set from the same
# distribution: mean squared error overall, on the majority and on the subpopulation.
# Selection by mean squared error gives back least squares, the best on average and the
# worst on the subpopulation. The robust scorers select models that give up some average
# error for the subpopulation, the more so the smaller the scorer's ``lam``: the
# criterion decides the trade-off, and no criterion is right for every use.
rows = [("LinearRegression", LinearRegression().fit(X, y))]
for key in scoring:
    best = params[np.argmax(search.cv_results_[f"mean_test_{key}"])]
    model = DRORegressor(random_state=0, **best).fit(X, y)
    label = f"{key} -> lam={best['lam']:.3g}, rho={best['rho']:g}"
    rows.append((label, model))
print(f"{'selected by':<52} {'MSE':>6} {'majority':>9} {'subpop.':>8}")
for label, model in rows:
    err = (y_test - model.predict(X_test)) ** 2
    print(
        f"{label:<52} {err.mean():6.2f} {err[~group_test].mean():9.2f} "
        f"{err[group_test].mean():8.2f}"
    )
plt.show()
