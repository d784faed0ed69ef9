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
# The default robustness setting is a small KL budget, ``radius_`` nats, the same number
# whatever the units of the target (disease progression here). The temperature it implies,
# ``lam_``, is in squared target units: at the default radius it is far above the typical
# squared residual of least squares, and the default model stays close to least squares
# (the user guide's "Choosing the radius" shows, on real data, why the default is small).
# A larger radius, ``radius=0.1``, is a more robust model.
X, y = load_diabetes(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)

ols = make_pipeline(StandardScaler(), LinearRegression()).fit(X_train, y_train)
typical = np.median((y_train - ols.predict(X_train)) ** 2)
print(f"median squared residual of least squares: {typical:.0f}")

dro = make_pipeline(StandardScaler(), DRORegressor()).fit(X_train, y_train)
robust = make_pipeline(StandardScaler(), DRORegressor(radius=0.1)).fit(X_train, y_train)
for model in (dro, robust):
    reg = model[-1]
    print(f"radius_ = {reg.radius_:g} nats implies the temperature lam_ = {reg.lam_:.0f}")
print(
    f"R^2 on the test set: LinearRegression {ols.score(X_test, y_test):.3f}, "
    f"DRORegressor() {dro.score(X_test, y_test):.3f}, "
    f"DRORegressor(radius=0.1) {robust.score(X_test, y_test):.3f}"
)

# %%
# The robust objective and its attributes
# ---------------------------------------
# ``risk_`` is the training objective reached (the worst expected loss over the ball, in
# squared target units); ``exact_risk_`` the same with the exact KL divergence (equal here:
# ``rho="auto"`` is the exact risk for the default solver); ``effective_sample_size_`` how
# many samples the worst case leans on. ``robust_risk`` evaluates a fitted model's risk on
# any data, and :func:`~sklearn_lse.kl_ball_risk` the worst case over a ball of any radius
# of given losses. On the test set, the model fitted at radius 0.1 has a lower worst case
# over the ball of radius 0.1 than least squares, and a higher mean squared error: it trades
# average fit for a better fit of the hard samples. The default model moves both by little.
reg = robust[-1]
print(
    f"radius 0.1: eta_ = {reg.eta_:.0f}, risk_ = {reg.risk_:.0f}, "
    f"exact_risk_ = {reg.exact_risk_:.0f}, effective_sample_size_ = "
    f"{reg.effective_sample_size_:.0f} of {len(y_train)}, n_iter_ = {reg.n_iter_}"
)
print("test set                  mean squared error    worst case over the ball of radius 0.1")
for name, model in (
    ("LinearRegression", ols),
    ("DRORegressor()", dro),
    ("DRORegressor(radius=0.1)", robust),
):
    losses = (y_test - model.predict(X_test)) ** 2
    print(f"{name:<25} {losses.mean():18.0f} {kl_ball_risk(losses, 0.1):22.0f}")
Z_train, Z_test = robust[0].transform(X_train), robust[0].transform(X_test)
print(
    f"robust_risk method of the radius-0.1 model on the test set: "
    f"{reg.robust_risk(Z_test, y_test):.0f}"
)

# %%
# Which samples does the robust model lean on?
# --------------------------------------------
# ``worst_case_weights`` returns the reweighting of the given samples that attains the
# robust risk: it grows with the loss (capped at ``1 / (rho * n)`` when ``rho > 0``). The
# plot shows the weights of the radius-0.1 model as multiples of the uniform weight
# ``1 / n`` (dashed line), against the training residuals: the weight grows with the
# squared residual, and the 10% hardest samples carry about twice their share.
weights = reg.worst_case_weights(Z_train, y_train)
residuals = y_train - reg.predict(Z_train)
n = len(y_train)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.scatter(residuals, weights * n, s=10)
ax.axhline(1.0, color="0.5", ls="--", label="uniform")
ax.set_yscale("log")
ax.set_xlabel("training residual y - f(x)")
ax.set_ylabel("worst-case weight x n")
ax.set_title("DRORegressor(radius=0.1) on diabetes: worst-case weights")
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
Z_train = ols[0].transform(X_train)
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
