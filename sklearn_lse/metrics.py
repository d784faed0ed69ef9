"""Model selection by robust risk: a KL-DRO score of any model's predictions, a scorer for
``GridSearchCV`` built on it, and the worst-class recall.

Cross-validating ``radius``, ``lam`` and ``rho`` by accuracy or mean squared error rewards the
model that is best on average, which is what DRO gives up on purpose. These scores measure
what the robust model is for: its loss under the worst reweighting of the validation samples
(within a *fixed* KL ``radius``, or at a fixed temperature ``lam``, so that models fitted
with different settings are compared on one criterion), or its accuracy on the class it
serves worst.
"""

import numpy as np
from sklearn.metrics import make_scorer
from sklearn.utils.validation import column_or_1d

from . import risk

__all__ = ["make_robust_scorer", "robust_risk_score", "worst_class_recall_score"]

# what each loss needs from the model: predictions, or probabilities of the classes
_RESPONSE = {
    "squared_error": "predict",
    "absolute_error": "predict",
    "log_loss": "predict_proba",
    "zero_one": "predict",
}


def robust_risk_score(
    y_true,
    y_pred,
    *,
    lam=None,
    radius=None,
    rho=0.0,
    loss="squared_error",
    labels=None,
    sample_weight=None,
):
    """KL-DRO risk of the per-sample losses of predictions (lower is better).

    With ``radius``, the worst expected loss over the reweightings of the samples within
    that KL divergence (in nats) of their distribution, as in
    :func:`~sklearn_lse.kl_ball_risk`: the same criterion whatever the units of the loss.
    With ``lam``, the risk ``lam * log(sum_i p_i * exp(loss_i / lam))`` at that temperature,
    as in :func:`~sklearn_lse.kl_dro_risk` (``lam -> inf`` gives the mean loss; small
    ``lam`` tends to the largest losses). ``rho > 0`` replaces either by its softplus
    relaxation with density cap ``1 / rho``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True targets, or true labels for ``loss="log_loss"`` and ``loss="zero_one"``.
    y_pred : array-like of shape (n_samples,) or (n_samples, n_classes)
        Predicted values; for ``loss="log_loss"`` the predicted probabilities of the
        classes in ``labels`` order, or, for two classes, of the second class only (as
        ``predict_proba(X)[:, 1]``).
    lam : float or None, default=None
        Temperature, in the units of the loss; must be > 0. Set ``lam`` or ``radius``, not
        both; when neither is set, ``lam=1.0``.
    radius : float or None, default=None
        KL budget ``radius >= 0``, in nats, for the worst case over a ball; ``0`` gives the
        mean loss.
    rho : float, default=0.0
        Density cap parameter of the relaxation, in [0, 1); 0 means the exact risk.
    loss : {"squared_error", "absolute_error", "log_loss", "zero_one"}, \
            default="squared_error"
        Per-sample loss: ``(y - y_pred)**2``, ``|y - y_pred|``, the cross-entropy
        ``-log p(y)`` (natural log, probabilities clipped at the float64 epsilon as
        :func:`sklearn.metrics.log_loss` does), or the misclassification indicator.
    labels : array-like of shape (n_classes,), default=None
        The classes, in the order of the columns of ``y_pred``, for ``loss="log_loss"``
        (``classes_`` of the classifier); by default the sorted labels of ``y_true``, which
        then must hold every class.
    sample_weight : array-like of shape (n_samples,), default=None
        Weights of the empirical distribution; uniform when None.

    Returns
    -------
    risk : float
        The KL-DRO risk of the per-sample losses.

    See Also
    --------
    make_robust_scorer : The scorer for ``GridSearchCV`` built on this function.
    sklearn_lse.kl_dro_risk : The penalised risk of a vector of losses.
    sklearn_lse.kl_ball_risk : The worst case over a ball of a vector of losses.

    Examples
    --------
    >>> from sklearn_lse.metrics import robust_risk_score
    >>> round(robust_risk_score([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], lam=1.0), 4)
    2.6672
    >>> round(robust_risk_score([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], radius=0.1), 4)
    1.8267
    """
    lam, radius = _check_form(lam, radius)
    losses = _pointwise_losses(y_true, y_pred, loss, labels)
    if radius is not None:
        return risk.kl_ball_risk(losses, radius, rho=rho, sample_weight=sample_weight)
    return risk.kl_dro_risk(losses, lam, rho=rho, sample_weight=sample_weight)


def make_robust_scorer(lam=None, rho=0.0, *, radius=None, loss="squared_error", labels=None):
    """Scorer that ranks models by minus their KL-DRO risk on the validation data.

    Use it as ``scoring=`` in :class:`~sklearn.model_selection.GridSearchCV` or
    :func:`~sklearn.model_selection.cross_val_score`: the ``radius`` (or ``lam``) and
    ``rho`` given here are fixed, so every candidate (whatever its own settings, and any
    estimator, :class:`~sklearn.linear_model.LinearRegression` included) is judged by the
    same robust criterion. ``radius``, a KL budget in nats, means the same whatever the
    units of the loss; ``lam`` is in the units of the loss. Like scikit-learn's ``neg_*``
    scorers, it returns the negated risk, so that greater is better. ``sample_weight``
    reaches it through metadata routing (``scorer.set_score_request(sample_weight=True)``).

    Parameters
    ----------
    lam : float or None, default=None
        Temperature of the validation risk, in the units of the loss; must be > 0. Set
        ``lam`` or ``radius``, not both; when neither is set, ``lam=1.0``.
    rho : float, default=0.0
        Density cap parameter of the validation risk, in [0, 1); 0 means the exact risk.
    radius : float or None, default=None
        KL budget of the validation risk, ``radius >= 0`` nats: the worst expected loss
        over the reweightings of the validation samples within that divergence.
    loss : {"squared_error", "absolute_error", "log_loss", "zero_one"}, \
            default="squared_error"
        Per-sample loss (see :func:`robust_risk_score`). ``"log_loss"`` calls the
        estimator's ``predict_proba``, the others its ``predict``.
    labels : array-like of shape (n_classes,), default=None
        The classes of a classifier, for ``loss="log_loss"`` on validation folds that may
        miss a class; by default the labels present in each fold.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y, sample_weight=None)`` returning ``-robust_risk_score``.

    See Also
    --------
    robust_risk_score : The risk this scorer negates.
    worst_class_recall_score : A worst-group score for classifiers.

    Examples
    --------
    >>> from sklearn.datasets import make_regression
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn_lse import DRORegressor
    >>> from sklearn_lse.metrics import make_robust_scorer
    >>> X, y = make_regression(200, 3, noise=5.0, random_state=0)
    >>> search = GridSearchCV(
    ...     DRORegressor(),
    ...     {"radius": [0.003, 0.03, 0.3]},
    ...     scoring=make_robust_scorer(radius=0.03),
    ... ).fit(X, y)
    >>> sorted(search.best_params_)
    ['radius']
    """
    lam, radius = _check_form(lam, radius)
    risk._check_rho(rho, allow_zero=True)
    _check_loss(loss)
    form = {"lam": lam} if radius is None else {"radius": radius}
    return make_scorer(
        robust_risk_score,
        greater_is_better=False,
        response_method=_RESPONSE[loss],
        rho=rho,
        loss=loss,
        labels=labels,
        **form,
    )


def worst_class_recall_score(y_true, y_pred, *, sample_weight=None):
    """Recall of the class the classifier serves worst.

    The smallest, over the classes present in ``y_true``, of the (weighted) fraction of
    that class's samples predicted correctly. Wrap it with
    :func:`~sklearn.metrics.make_scorer` to select hyperparameters by the worst class.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_pred : array-like of shape (n_samples,)
        Predicted labels.
    sample_weight : array-like of shape (n_samples,), default=None
        Sample weights; uniform when None.

    Returns
    -------
    score : float
        The worst per-class recall, in [0, 1].

    See Also
    --------
    sklearn.metrics.recall_score : The per-class recalls, with ``average=None``.

    Examples
    --------
    >>> from sklearn_lse.metrics import worst_class_recall_score
    >>> worst_class_recall_score(["a", "a", "b", "b"], ["a", "a", "a", "b"])
    0.5
    """
    y_true = column_or_1d(y_true)
    y_pred = column_or_1d(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred have different lengths: {len(y_true)} and {len(y_pred)}."
        )
    p = risk.empirical_weights(sample_weight, y_true.shape[0])
    hit = p * (y_true == y_pred)
    recalls = [hit[y_true == k].sum() / p[y_true == k].sum() for k in np.unique(y_true)]
    return float(min(recalls))


def _check_form(lam, radius):
    """``(lam, radius)`` checked, one of them None: the temperature 1 when neither is set."""
    if lam is not None and radius is not None:
        raise ValueError(
            f"set lam (a temperature) or radius (a KL budget), not both; got lam={lam!r} "
            f"and radius={radius!r}."
        )
    if radius is not None:
        return None, risk._check_radius(radius)
    return risk._check_lam(1.0 if lam is None else lam), None


def _check_loss(loss):
    if loss not in _RESPONSE:
        raise ValueError(f"loss must be one of {sorted(_RESPONSE)}, got {loss!r}.")


def _pointwise_losses(y_true, y_pred, loss, labels):
    _check_loss(loss)
    if loss == "zero_one":
        y_true, y_pred = column_or_1d(y_true), column_or_1d(y_pred)
        _check_lengths(y_true, y_pred)
        return (y_true != y_pred).astype(np.float64)
    if loss == "log_loss":
        return _cross_entropy(column_or_1d(y_true), np.asarray(y_pred, dtype=np.float64), labels)
    y_true = column_or_1d(y_true).astype(np.float64)
    y_pred = column_or_1d(y_pred).astype(np.float64)
    _check_lengths(y_true, y_pred)
    residual = y_true - y_pred
    return residual**2 if loss == "squared_error" else np.abs(residual)


def _cross_entropy(y_true, proba, labels):
    labels = np.unique(y_true) if labels is None else np.asarray(labels)
    _check_lengths(y_true, proba)
    if proba.ndim == 1:  # probability of the second class, as scorers pass for 2 classes
        if labels.shape[0] != 2:
            raise ValueError(
                "y_pred holds one probability per sample, which needs exactly 2 classes, "
                f"but {labels.shape[0]} were found in y_true: pass labels=classes_ (e.g. "
                "make_robust_scorer(..., labels=model.classes_))."
            )
        proba = np.column_stack((1.0 - proba, proba))
    if proba.ndim != 2 or proba.shape[1] != labels.shape[0]:
        raise ValueError(
            f"y_pred has shape {proba.shape}, but there are {labels.shape[0]} classes: "
            "pass labels=classes_ when a validation fold misses a class."
        )
    order = np.argsort(labels)
    index = order[np.minimum(np.searchsorted(labels[order], y_true), labels.shape[0] - 1)]
    unknown = labels[index] != y_true
    if np.any(unknown):
        raise ValueError(f"y_true holds labels not in labels: {np.unique(y_true[unknown])}.")
    eps = np.finfo(np.float64).eps
    return -np.log(np.clip(proba[np.arange(proba.shape[0]), index], eps, 1.0))


def _check_lengths(y_true, y_pred):
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(
            f"y_true and y_pred have different lengths: {y_true.shape[0]} and {y_pred.shape[0]}."
        )
