"""
Quickstart: robust regression and classification
================================================

:class:`~sklearn_lse.DRORegressor` and :class:`~sklearn_lse.DROClassifier` are used like
:class:`~sklearn.linear_model.LinearRegression` and
:class:`~sklearn.linear_model.LogisticRegression`: ``fit``, ``predict``, ``score``, in a
:class:`~sklearn.pipeline.Pipeline` with a scaler. What they minimise differs: not the mean
loss, but the worst expected loss over the reweightings of the training samples within a
KL budget (``radius``, in nats; a small one by default), or, with a temperature ``lam`` instead,
the KL-DRO risk ``lam * log mean(exp(loss_i / lam))``. This example fits both, reads the
attributes that come with the robust objective (``lam_``, ``risk_``, ``exact_risk_``,
``effective_sample_size_``), asks which samples the model leans on
(``worst_case_weights``) and checks that a large ``lam`` gives back ordinary least
squares.

Set ``SKLEARN_LSE_QUICK=1`` for a small run.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_lse import DROClassifier, DRORegressor, kl_ball_risk

quick = os.environ.get("SKLEARN_LSE_QUICK") == "1"
lams = [1e2, 1e3, 1e4, 1e5] if quick else np.logspace(2, 6, 9)

# %%
# Regression on the diabetes data
# -------------------------------
# The default robustness setting is a small KL budget (``radius_`` nats), which does not depend
# on the units of the target (disease progression here): the temperature it implies,
# ``lam_``, is in squared target units, about the size of the typical squared residual of
# least squares. The robust model gives up some average accuracy (its test R^2 is lower):
# that is the price of what the next cell measures.
X, y = load_diabetes(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)

ols = make_pipeline(StandardScaler(), LinearRegression()).fit(X_train, y_train)
typical = np.median((y_train - ols.predict(X_train)) ** 2)
print(f"median squared residual of least squares: {typical:.0f}")

dro = make_pipeline(StandardScaler(), DRORegressor()).fit(X_train, y_train)
reg = dro[-1]
print(f"the default radius_ = {reg.radius_:g} nats implies the temperature lam_ = {reg.lam_:.0f}")
r2_ols, r2_dro = ols.score(X_test, y_test), dro.score(X_test, y_test)
print(f"R^2 on the test set: LinearRegression {r2_ols:.3f}, DRORegressor {r2_dro:.3f}")

# %%
# The robust objective and its attributes
# ---------------------------------------
# ``risk_`` is the training objective reached (the worst expected loss over the ball, in
# squared target units); ``exact_risk_`` the same with the exact KL divergence (equal here:
# ``rho="auto"`` is the exact risk for the default solver); ``effective_sample_size_`` how
# many samples the worst case leans on. ``robust_risk`` evaluates the same risk on any
# data. The robust model has a lower robust
# risk than least squares on the test set and a higher mean squared error: it trades
# average fit for a better fit of the hard samples.
Z_train, Z_test = dro[0].transform(X_train), dro[0].transform(X_test)
ols_losses = (y_test - ols.predict(X_test)) ** 2
dro_losses = (y_test - dro.predict(X_test)) ** 2
print(f"eta_ = {reg.eta_:.0f}, risk_ = {reg.risk_:.0f}, n_iter_ = {reg.n_iter_}")
print("test set                 mean squared error    worst case over the same ball")
for name, losses in (("LinearRegression", ols_losses), ("DRORegressor", dro_losses)):
    robust = kl_ball_risk(losses, reg.radius_, rho=reg.rho_)
    print(f"{name:<24} {losses.mean():18.0f} {robust:22.0f}")
print(f"robust_risk method on the test set: {reg.robust_risk(Z_test, y_test):.0f}")

# %%
# Which samples does the robust model lean on?
# --------------------------------------------
# ``worst_case_weights`` returns the reweighting of the given samples that attains the
# robust risk: it grows with the loss (capped at ``1 / (rho * n)`` when ``rho > 0``). The
# plot shows the weights as multiples of the uniform weight ``1 / n`` (dashed line), against the
# training residuals: a few samples with large residuals carry most of the weight.
weights = reg.worst_case_weights(Z_train, y_train)
residuals = y_train - reg.predict(Z_train)
n = len(y_train)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.scatter(residuals, weights * n, s=10)
ax.axhline(1.0, color="0.5", ls="--", label="uniform")
ax.set_yscale("log")
ax.set_xlabel("training residual y - f(x)")
ax.set_ylabel("worst-case weight x n")
ax.set_title("DRORegressor on diabetes: worst-case weights")
ax.legend()
fig.tight_layout()
share = np.sort(weights)[::-1][: n // 10].sum()
print(f"the 10% hardest training samples carry {share:.0%} of the worst-case weight")

# %%
# Large ``lam`` gives back least squares
# --------------------------------------
# As ``lam`` grows, ``exp(loss / lam)`` flattens, the worst case tends to the empirical
# distribution and the robust risk to the mean loss: the coefficients converge to those of
# :class:`~sklearn.linear_model.LinearRegression`.
ols_coef = ols[-1].coef_
gaps = []
for lam in lams:
    model = DRORegressor(lam=lam, rho=1e-2, random_state=0).fit(Z_train, y_train)
    gaps.append(np.linalg.norm(model.coef_ - ols_coef) / np.linalg.norm(ols_coef))
    print(f"lam = {lam:9.0f}: relative distance to the least-squares coefficients {gaps[-1]:.1e}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(lams, gaps, "o-")
ax.axvline(typical, color="0.5", ls="--", label="median squared residual")
ax.set_xlabel("lam")
ax.set_ylabel("||coef - coef_OLS|| / ||coef_OLS||")
ax.set_title("DRORegressor tends to LinearRegression as lam grows")
ax.legend()
fig.tight_layout()

# %%
# Classification on the breast-cancer data
# ----------------------------------------
# :class:`~sklearn_lse.DROClassifier` minimises the robust risk of the cross-entropy, with
# the same default budget. It has the same
# methods as ``LogisticRegression`` (``predict_proba``, ``decision_function``, ``classes_``)
# and the same robust-risk methods as the regressor. ``alpha`` is a small L2 penalty, the
# counterpart of ``C = 1 / (alpha * n_samples)``.
X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.3, stratify=y, random_state=0
)
alpha = 1e-2
logreg = make_pipeline(
    StandardScaler(), LogisticRegression(C=1 / (alpha * len(y_train)), max_iter=1000)
).fit(X_train, y_train)
clf = make_pipeline(StandardScaler(), DROClassifier(alpha=alpha))
clf.fit(X_train, y_train)
acc_lr, acc_dro = logreg.score(X_test, y_test), clf.score(X_test, y_test)
print(f"accuracy: LogisticRegression {acc_lr:.3f}, DROClassifier {acc_dro:.3f}")
print("predict_proba of the first test sample:", clf.predict_proba(X_test[:1]).round(3))
Z_train = clf[0].transform(X_train)
weights = clf[-1].worst_case_weights(Z_train, y_train)
wrong = clf.predict(X_train) != y_train
print(
    f"the {wrong.sum()} misclassified training samples ({wrong.mean():.1%} of them) carry "
    f"{weights[wrong].sum():.1%} of the worst-case weight"
)

# %%
# On this easy, clean problem both classifiers are about as accurate: robustness costs
# little here, and it is not expected to buy much either. The other examples show data
# where the hard samples matter (a noisy subpopulation, corrupted labels), and where it
# does not help.
plt.show()
