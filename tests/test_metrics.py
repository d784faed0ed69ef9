"""The robust-risk scorer and the worst-class recall: model selection by robust criteria."""

import doctest

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LinearRegression
from sklearn.metrics import log_loss, make_scorer, mean_squared_error
from sklearn.model_selection import GridSearchCV, cross_val_score

from sklearn_lse import (
    DROClassifier,
    DRORegressor,
    kl_dro_risk,
    make_robust_scorer,
    metrics,
    robust_risk_score,
    worst_class_recall_score,
)


def subpopulation_data(n, seed):
    """10% of the samples have 5 times the noise and their own slope."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    group = rng.random(n) < 0.1
    y = X @ [1.0, -2.0, 0.5] + rng.normal(size=n) * np.where(group, 5.0, 1.0)
    y[group] += 3.0 * X[group, 0]
    return X, y, group


def test_docstring_examples_run():
    assert doctest.testmod(metrics).failed == 0


@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_score_is_the_risk_of_the_pointwise_losses(rho):
    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    sw = rng.random(50)
    for loss, pointwise in [("squared_error", (y - pred) ** 2), ("absolute_error", abs(y - pred))]:
        got = robust_risk_score(y, pred, lam=0.7, rho=rho, loss=loss, sample_weight=sw)
        assert got == pytest.approx(kl_dro_risk(pointwise, 0.7, rho=rho, sample_weight=sw))
    labels = rng.integers(0, 3, size=50)
    guess = rng.integers(0, 3, size=50)
    got = robust_risk_score(labels, guess, lam=0.7, rho=rho, loss="zero_one")
    assert got == pytest.approx(kl_dro_risk((labels != guess) * 1.0, 0.7, rho=rho))


def test_large_lam_gives_the_mean_loss():
    rng = np.random.default_rng(1)
    y, pred = rng.normal(size=40), rng.normal(size=40)
    assert robust_risk_score(y, pred, lam=1e9) == pytest.approx(mean_squared_error(y, pred))
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, size=40)]
    proba = rng.dirichlet(np.ones(3), size=40)
    got = robust_risk_score(labels, proba, lam=1e9, loss="log_loss")
    assert got == pytest.approx(log_loss(labels, proba))


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_scorer_equals_the_fitted_models_robust_risk(n_classes, rho):
    X, y = make_classification(
        300, n_features=5, n_informative=4, n_redundant=0, n_classes=n_classes, random_state=0
    )
    y = np.array(["ant", "bee", "cat", "dog"])[y]
    model = DROClassifier(lam=0.5, rho=rho, solver="lbfgs").fit(X, y)
    scorer = make_robust_scorer(lam=0.5, rho=rho, loss="log_loss")
    assert scorer(model, X, y) == pytest.approx(-model.robust_risk(X, y), rel=1e-6)

    Xr, yr, _ = subpopulation_data(300, 0)
    reg = DRORegressor(lam=2.0, rho=rho, solver="lbfgs").fit(Xr, yr)
    sw = np.random.default_rng(0).random(300)
    scorer = make_robust_scorer(lam=2.0, rho=rho)
    assert scorer(reg, Xr, yr, sample_weight=sw) == pytest.approx(
        -reg.robust_risk(Xr, yr, sample_weight=sw), rel=1e-10
    )


def test_log_loss_with_a_missing_class_needs_the_labels():
    X, y = make_classification(
        200, n_features=4, n_classes=3, n_informative=3, n_redundant=0, random_state=0
    )
    model = DROClassifier(lam=1.0, rho=1e-2, solver="lbfgs").fit(X, y)
    keep = y != 2
    with pytest.raises(ValueError, match="labels=classes_"):
        make_robust_scorer(loss="log_loss")(model, X[keep], y[keep])
    scorer = make_robust_scorer(rho=1e-2, loss="log_loss", labels=model.classes_)
    assert scorer(model, X[keep], y[keep]) == pytest.approx(-model.robust_risk(X[keep], y[keep]))


def test_robust_scorer_selects_the_robust_model():
    """Mean squared error prefers least squares; the validation KL-DRO risk prefers the
    model that protects the noisy subpopulation, and that model has the smaller error on
    it."""
    X, y, group = subpopulation_data(4000, 1)
    grid = {"lam": [3.0, 1e8]}
    kw = dict(cv=3, n_jobs=2)
    base = DRORegressor(rho=1e-2, solver="lbfgs")
    by_mse = GridSearchCV(base, grid, scoring="neg_mean_squared_error", **kw).fit(X, y)
    by_risk = GridSearchCV(base, grid, scoring=make_robust_scorer(lam=3.0), **kw).fit(X, y)
    assert by_mse.best_params_["lam"] == 1e8
    assert by_risk.best_params_["lam"] == 3.0
    Xt, yt, gt = subpopulation_data(4000, 2)
    mse = [mean_squared_error(yt[gt], m.predict(Xt[gt])) for m in (by_mse, by_risk)]
    assert mse[1] < mse[0]
    # any estimator can be scored by the same criterion
    ols = cross_val_score(LinearRegression(), X, y, scoring=make_robust_scorer(lam=3.0), cv=3)
    assert ols.mean() < by_risk.best_score_


def test_worst_class_recall():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    assert worst_class_recall_score(y, pred) == 0.5
    assert worst_class_recall_score(
        y, pred, sample_weight=[1, 1, 1, 1, 1, 1, 3, 1]
    ) == pytest.approx(0.75)
    X, yc = make_classification(
        300, n_features=5, n_informative=4, n_redundant=0, n_classes=3, random_state=0
    )
    search = GridSearchCV(
        DROClassifier(solver="lbfgs"),
        {"lam": [0.5, 5.0]},
        scoring=make_scorer(worst_class_recall_score),
        cv=3,
    ).fit(X, yc)
    assert 0.0 <= search.best_score_ <= 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": 0.0}, "lam"),
        ({"lam": -1.0}, "lam"),
        ({"rho": 1.0}, "rho"),
        ({"rho": -0.5}, "rho"),
        ({"loss": "hinge"}, "loss must be one of"),
    ],
)
def test_bad_scorer_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_robust_scorer(**kwargs)


def test_bad_score_input():
    with pytest.raises(ValueError, match="different lengths"):
        robust_risk_score([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        robust_risk_score([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="not in labels"):
        robust_risk_score(["a", "z"], [[0.5, 0.5], [0.5, 0.5]], loss="log_loss", labels=["a", "b"])


def test_radius_scorer_is_the_ball_risk_and_scale_free():
    """With a radius, the score is the worst case over the ball (kl_ball_risk of the
    losses), scales with the target's units squared, and ranks LinearRegression and the
    robust models on one criterion in a grid search over the radius."""
    from sklearn.linear_model import LinearRegression

    from sklearn_lse import kl_ball_risk

    X, y, _ = subpopulation_data(300, 0)
    sw = np.random.default_rng(1).random(300)
    model = DRORegressor(radius=0.1).fit(X, y)
    losses = (y - model.predict(X)) ** 2
    assert robust_risk_score(y, model.predict(X), radius=0.1, rho=1e-3) == pytest.approx(
        kl_ball_risk(losses, 0.1, rho=1e-3), rel=1e-12
    )
    scorer = make_robust_scorer(radius=0.1)
    assert scorer(model, X, y, sample_weight=sw) == pytest.approx(
        -kl_ball_risk(losses, 0.1, sample_weight=sw), rel=1e-12
    )
    scaled = DRORegressor(radius=0.1).fit(X, 1e3 * y)
    assert scorer(scaled, X, 1e3 * y) == pytest.approx(1e6 * scorer(model, X, y), rel=1e-6)
    # the model fitted for the criterion scores best on its training data
    ols = LinearRegression().fit(X, y)
    assert scorer(model, X, y) > scorer(ols, X, y)
    search = GridSearchCV(DRORegressor(), {"radius": [0.0, 0.1, 1.0]}, scoring=scorer, cv=3).fit(
        X, y
    )
    assert search.best_params_["radius"] in (0.1, 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": 1.0, "radius": 0.1}, "not both"),
        ({"radius": -0.1}, "radius"),
        ({"radius": np.inf}, "radius"),
    ],
)
def test_bad_radius_scorer_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_robust_scorer(**kwargs)
    with pytest.raises(ValueError, match=match):
        robust_risk_score([1.0, 2.0], [1.0, 1.0], **kwargs)
