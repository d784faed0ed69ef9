"""DROClassifier: KL-DRO logistic regression, binary and multinomial."""

import numpy as np
from scipy.special import log_expit, log_softmax
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from ._base import (
    DROLinearModel,
    StrOptions,
    _fit_context,
    fit_estimator,
    is_dask_collection,
    loss_code,
    losses_of,
    with_docs,
)
from ._registry import losses_for
from .risk import empirical_weights

__all__ = ["DROClassifier"]


@with_docs
class DROClassifier(ClassifierMixin, DROLinearModel):
    """Logistic regression that minimises the KL distributionally robust risk.

    Minimises, over coefficients ``W`` and intercepts ``b``, the worst expected
    cross-entropy (natural log, as :func:`~sklearn.metrics.log_loss` counts it) over the
    reweightings ``q`` of the training samples within a KL budget ``radius`` of the
    empirical distribution ``p`` (the default), or, with ``lam``, penalised by ``lam``
    times their divergence::

        max_{q : D(q || p) <= radius} sum_i q_i loss_i(W, b) + alpha / 2 * ||W||^2
        R_{lam, rho}(loss_1(W, b), ..., loss_n(W, b)) + alpha / 2 * ||W||^2

    ``R_{lam, rho}`` is the relaxed KL-DRO risk of :func:`sklearn_lse.kl_dro_risk` (no
    sample up-weighted more than ``1 / rho`` times), and the ball's value is
    :func:`sklearn_lse.kl_ball_risk`. For two classes the model is the logistic one; for
    more it is multinomial (softmax), and the worst-case distribution is one distribution
    over the samples, shared by all classes (never one-vs-rest). With ``radius=0`` (or
    ``lam -> inf``) it is :class:`~sklearn.linear_model.LogisticRegression` with
    ``C = 1 / (alpha * n_samples)``; larger radii put more weight on the samples the model
    fits worst.

    Parameters
    ----------
    {robustness}
    loss : {"log_loss"}, default="log_loss"
        Per-sample loss: the cross-entropy, logistic for two classes and multinomial for
        more.
    alpha : float, default=1e-4
        L2 penalty ``alpha / 2 * ||W||^2`` (the intercepts are not penalised), as in
        :class:`~sklearn.linear_model.SGDClassifier`. It keeps the coefficients finite on
        separable data (where the unpenalised optimum is at infinity); it corresponds to
        ``C = 1 / (alpha * n_samples)`` of
        :class:`~sklearn.linear_model.LogisticRegression`.
    fit_intercept : bool, default=True
        Whether to fit intercepts.
    {solver}
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, folded into the empirical distribution: sample ``i`` weighs
        ``sample_weight[i] * class_weight[y[i]]`` before normalisation. ``"balanced"``
        uses ``n_samples / (n_classes * np.bincount(y))``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Coefficients; one row (for ``classes_[1]``) when there are two classes.
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Intercepts (zeros when ``fit_intercept=False``).
    {attributes}

    See Also
    --------
    sklearn.linear_model.LogisticRegression : The ``radius=0`` limit.
    DRORegressor : The same objective for regression.

    References
    ----------
    E. Gladin, A. Kroshnin, J.-J. Zhu, P. Dvurechensky. Improved Stochastic Optimization of
    LogSumExp. arXiv:2509.24894, 2025.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_lse import DROClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = DROClassifier(radius=0.1).fit(X, y)
    >>> clf.coef_.shape
    (3, 4)
    >>> clf.predict_proba(X[:2]).sum(axis=1)
    array([1., 1.])
    """

    _parameter_constraints = {
        **DROLinearModel._parameter_constraints,
        "loss": [StrOptions(losses_for("classification"))],
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(
        self,
        *,
        radius=None,
        lam=None,
        rho="auto",
        loss="log_loss",
        alpha=1e-4,
        fit_intercept=True,
        solver="auto",
        max_iter=1000,
        tol=1e-6,
        n_iter_no_change=5,
        batch_size="auto",
        learning_rate="auto",
        random_state=None,
        warm_start=False,
        verbose=0,
        class_weight=None,
    ):
        self.radius = radius
        self.lam = lam
        self.rho = rho
        self.loss = loss
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model by minimising the KL-DRO risk of the cross-entropy.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data; sparse matrices in CSR format are used as they are (other
            formats are converted), float32 data are trained without a float64 copy.
        y : array-like of shape (n_samples,)
            Class labels (strings, integers or booleans); at least two classes.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the empirical distribution (normalised to sum 1, after
            ``class_weight`` is applied). Integer weights are equivalent to repeating rows.

        Returns
        -------
        self : DROClassifier
            Fitted estimator.
        """
        self._check_solver_params()
        with self._transaction():
            if is_dask_collection(X) or is_dask_collection(y):
                self._commit(fit_estimator(self, X, y, sample_weight, classifier=True))
            else:
                self._commit(self._fit(X, y, sample_weight))
        return self

    def _fit(self, X, y, sample_weight):
        X, y = self._validate_X_y(X, y, reset=True)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        classes, y_index = encoder.classes_, encoder.transform(y)
        if classes.shape[0] < 2:
            raise ValueError(
                "DROClassifier needs samples of at least 2 classes; the data contain "
                f"1 class: {classes[0]!r}."
            )
        p, _ = self._distribution(sample_weight, classes, y, y_index, stream=False)
        weighted = np.bincount(y_index, minlength=classes.shape[0]) > 0
        if p.shape[0] > 1:
            weighted = np.bincount(y_index, weights=p, minlength=classes.shape[0]) > 0
        if weighted.sum() < 2:
            raise ValueError(
                "DROClassifier needs samples of at least 2 classes with positive weight; "
                f"sample_weight leaves 1 class: {classes[weighted][0]!r}."
            )
        code, target, n_outputs = _encode(self.loss, y_index, classes.shape[0])
        attributes = self._fit_linear(X, target, p, code=code, eps=0.0, n_outputs=n_outputs)
        attributes["classes_"] = classes
        return attributes

    @available_if(DROLinearModel._has_stochastic_gradient)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Update the model with one block of samples.

        {partial_fit}
        A block may miss classes; ``class_weight="balanced"`` is not available (it
        needs all the labels at once; pass a dict).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            A block of training data.
        y : array-like of shape (n_samples,)
            Its labels, all among ``classes``.
        classes : array-like of shape (n_classes,), default=None
            All the classes of the stream; required on the first call (the first block may
            not contain them all), and if given later, the same.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the block's samples (within the block, they are the
            empirical distribution; across blocks, their totals set each block's share
            of the stream).

        Returns
        -------
        self : DROClassifier
            Updated estimator.
        """
        with self._transaction():
            self._commit(self._partial_fit(X, y, classes, sample_weight))
        return self

    def _partial_fit(self, X, y, classes, sample_weight):
        first = not hasattr(self, "classes_")
        if classes is not None:
            classes = np.unique(column_or_1d(classes))
        if first:
            if classes is None:
                raise ValueError(
                    "classes must be passed on the first call to partial_fit: all the labels "
                    "of the stream, e.g. classes=np.unique(y_all)."
                )
            if classes.shape[0] < 2:
                raise ValueError(
                    f"DROClassifier needs at least 2 classes; classes has 1 class: {classes}."
                )
        elif classes is not None and not np.array_equal(classes, self.classes_):
            raise ValueError(
                f"classes={classes.tolist()} differs from the classes of the first call to "
                f"partial_fit, {self.classes_.tolist()}."
            )
        else:
            classes = self.classes_
        if self.class_weight == "balanced":
            raise ValueError(
                "class_weight='balanced' needs all the labels at once and is not available "
                "with partial_fit; pass a dict of class weights."
            )
        X, y = self._validate_X_y(X, y, reset=first and not hasattr(self, "coef_"))
        check_classification_targets(y)
        y_index = _label_index(y, classes)
        p, weight = self._distribution(sample_weight, classes, y, y_index)
        code, target, n_outputs = _encode(self.loss, y_index, classes.shape[0])
        attributes = self._partial_fit_linear(
            X, target, p, weight, code=code, eps=0.0, n_outputs=n_outputs
        )
        attributes["classes_"] = classes
        return attributes

    def _distribution(self, sample_weight, classes, y, y_index, stream=True):
        """The empirical distribution (sample weights times class weights, normalised)
        and the total sample weight."""
        p, total = empirical_weights(
            sample_weight, y_index.shape[0], return_total=True, compact=True, stream=stream
        )
        if self.class_weight is not None:
            weights = compute_class_weight(self.class_weight, classes=classes, y=y)
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError(
                    f"class_weight must give every class a finite non-negative weight, got "
                    f"{dict(zip(classes.tolist(), weights.tolist(), strict=True))}."
                )
            p = p * (weights / weights.max() if weights.max() > 0 else weights)[y_index]
            if not p.sum() > 0:
                raise ValueError("class_weight and sample_weight leave no sample any weight.")
            p /= p.sum()
        return p, total

    def _model_attributes(self, w, b, dtype, eta, objective, n_iter):
        return {
            "coef_": np.ascontiguousarray(w.T, dtype=dtype),
            "intercept_": b.astype(dtype),
            **super()._model_attributes(w, b, dtype, eta, objective, n_iter),
        }

    def _cold_start(self, prob):
        # zero coefficients and the intercepts of the class frequencies: the best constant
        # model, from which the solver's first Newton-preconditioned epochs take over
        w = np.zeros((prob.X.shape[1], prob.n_outputs))
        if not self.fit_intercept:
            return w, np.zeros(prob.n_outputs)
        if prob.n_outputs == 1:  # targets -1/+1
            positive = prob.weighted_sum(prob.y > 0)
            prior = np.array([1.0 - positive, positive])
        else:  # class indices
            weights = prob.weights(slice(None))
            prior = np.bincount(prob.y.astype(np.intp), weights, minlength=prob.n_outputs)
        log_prior = np.log(np.maximum(prior, 1e-12))
        if prob.n_outputs == 1:
            return w, np.array([log_prior[1] - log_prior[0]])
        return w, log_prior - log_prior.mean()

    def decision_function(self, X):
        """Class scores of the linear model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            For two classes, the log-odds of ``classes_[1]``; otherwise one score per class
            (the logits of the softmax).
        """
        X = self._validate_for_predict(X)
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if self.classes_.shape[0] == 2 else scores

    def predict(self, X):
        """Predict the most probable class.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted labels, from ``classes_``.
        """
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities of the classes in the order of ``classes_``; rows sum to 1.
        """
        return np.exp(self.predict_log_proba(X))

    def predict_log_proba(self, X):
        """Logarithm of the class probabilities.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Natural logarithms of the probabilities of the classes in the order of
            ``classes_``.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return np.column_stack((log_expit(-scores), log_expit(scores)))
        return log_softmax(scores, axis=1)

    def _losses(self, X, y):
        X = self._validate_for_predict(X)
        self._check_target_1d(y)
        y = column_or_1d(y)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"y has {y.shape[0]} samples but X has {X.shape[0]}.")
        index = _label_index(y, self.classes_)
        code, target, _ = _encode(self.loss, index, self.classes_.shape[0])
        w, b = self.coef_.T, self.intercept_
        return losses_of(X, target, w, b, code, 0.0)[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags


def _label_index(y, classes):
    """Index of each label in ``classes``; ValueError naming the labels that are not."""
    encoder = LabelEncoder()
    encoder.classes_ = classes
    try:
        return encoder.transform(y)
    except (ValueError, TypeError):
        known = set(classes.tolist())
        unseen = sorted({label for label in np.asarray(y).tolist() if label not in known}, key=str)
        raise ValueError(
            f"y contains labels not seen during fit: {unseen}; the classes are {classes.tolist()}."
        ) from None


def _encode(loss, index, n_classes):
    """Loss code, float targets for the kernels and number of outputs: labels -1/+1 and
    one output (the logistic loss) for two classes, class indices and one output per
    class (the multinomial loss) for more."""
    code = loss_code(loss, n_classes)
    if n_classes == 2:
        return code, np.where(index == 1, 1.0, -1.0), 1
    return code, index.astype(np.float64), n_classes
