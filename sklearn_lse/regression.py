"""DRORegressor: KL-DRO linear regression."""

import math
from numbers import Real

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.metaestimators import available_if

from ._base import (
    DROLinearModel,
    Interval,
    StrOptions,
    _fit_context,
    fit_estimator,
    is_dask_collection,
    least_squares_start,
    loss_code,
    losses_of,
    target_scale,
    with_docs,
)
from ._registry import LOSSES, losses_for
from .risk import empirical_weights

__all__ = ["DRORegressor"]


@with_docs
class DRORegressor(RegressorMixin, DROLinearModel):
    """Linear regression that minimises the KL distributionally robust risk.

    Minimises, over coefficients ``w`` and intercept ``b``, the worst expected loss over
    the reweightings ``q`` of the training samples within a KL budget ``radius`` of the
    empirical distribution ``p`` (the default), or, with ``lam``, penalised by ``lam``
    times their divergence::

        max_{q : D(q || p) <= radius} sum_i q_i loss_i(w, b) + alpha / 2 * ||w||^2
        R_{lam, rho}(loss_1(w, b), ..., loss_n(w, b)) + alpha / 2 * ||w||^2

    ``R_{lam, rho}`` is the relaxed KL-DRO risk of :func:`sklearn_lse.kl_dro_risk` (no
    sample up-weighted more than ``1 / rho`` times), and the ball's value is
    :func:`sklearn_lse.kl_ball_risk`. With ``radius=0`` (or ``lam -> inf``) it is
    ordinary (weighted) least squares, :class:`~sklearn.linear_model.LinearRegression`;
    larger radii put more weight on the samples the model fits worst. The model is
    equivariant in the units of ``y``: scaling ``y`` scales the predictions (``lam``, which
    is in loss units, excepted).

    Parameters
    ----------
    {robustness}
    loss : {"squared_error", "huber", "absolute_error"}, default="squared_error"
        Per-sample loss of the residual ``r = f(x) - y``: ``r^2`` (as
        :func:`~sklearn.metrics.mean_squared_error` counts it); ``"huber"``: ``r^2`` for
        ``|r| <= epsilon`` and ``2 epsilon |r| - epsilon^2`` beyond; ``"absolute_error"``:
        ``sqrt(r^2 + epsilon^2) - epsilon``, the absolute error smoothed over a width
        ``epsilon`` so that the objective stays differentiable.
    epsilon : float, default=1.0
        Width of the quadratic zone of ``"huber"`` and the smoothing width of
        ``"absolute_error"``, in target units. Ignored by ``"squared_error"``.
    alpha : float, default=0.0
        L2 penalty ``alpha / 2 * ||w||^2`` (the intercept is not penalised).
    fit_intercept : bool, default=True
        Whether to fit an intercept.
    {solver}

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        Coefficients.
    intercept_ : float
        Intercept (0.0 when ``fit_intercept=False``).
    {attributes}

    See Also
    --------
    sklearn.linear_model.LinearRegression : The ``radius=0`` limit.
    sklearn.linear_model.SGDRegressor : Stochastic gradient ERM.
    DROClassifier : The same objective for classification.

    References
    ----------
    E. Gladin, A. Kroshnin, J.-J. Zhu, P. Dvurechensky. Improved Stochastic Optimization of
    LogSumExp. arXiv:2509.24894, 2025.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_lse import DRORegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3))
    >>> y = X @ [1.0, -2.0, 0.5] + rng.normal(size=200)
    >>> reg = DRORegressor(radius=0.1).fit(X, y)
    >>> reg.coef_.shape
    (3,)
    >>> round(float(reg.worst_case_weights(X, y).sum()), 12)
    1.0
    >>> big = DRORegressor(radius=0.1).fit(X, 1000 * y)  # the radius is in nats, not units of y
    >>> bool(np.allclose(big.predict(X), 1000 * reg.predict(X)))
    True
    """

    _parameter_constraints = {
        **DROLinearModel._parameter_constraints,
        "loss": [StrOptions(losses_for("regression"))],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        radius=None,
        lam=None,
        rho="auto",
        loss="squared_error",
        epsilon=1.0,
        alpha=0.0,
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
    ):
        self.radius = radius
        self.lam = lam
        self.rho = rho
        self.loss = loss
        self.epsilon = epsilon
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
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
        """Fit the model by minimising the KL-DRO risk.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data; sparse matrices in CSR format are used as they are (other
            formats are converted), float32 data are trained without a float64 copy.
        y : array-like of shape (n_samples,)
            Target values.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the empirical distribution (normalised to sum 1).
            Integer weights are equivalent to repeating rows.

        Returns
        -------
        self : DRORegressor
            Fitted estimator.
        """
        self._check_solver_params()
        if is_dask_collection(X) or is_dask_collection(y):
            with self._transaction():
                self._commit(fit_estimator(self, X, y, sample_weight, classifier=False))
            return self
        with self._transaction():
            X, y, p, _ = self._validate_training_data(X, y, sample_weight, reset=True, total=False)
            scale = target_scale(y)
            degree = LOSSES[self.loss].degree
            if math.log2(scale) * degree >= 1020:  # scale**degree overflows
                raise ValueError(
                    f"y has values of {scale:.3g}, whose loss (of degree {degree} in y) "
                    "overflows float64: rescale y (the model is equivariant, predictions "
                    "scale with y) to values below 1e150."
                )
            attributes = self._fit_linear(
                X,
                y / scale,
                p,
                code=loss_code(self.loss),
                eps=float(self.epsilon),
                scale=scale,
                degree=degree,
            )
            self._commit(attributes)
        return self

    @available_if(DROLinearModel._has_stochastic_gradient)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with one block of samples.

        {partial_fit}

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            A block of training data.
        y : array-like of shape (n_samples,)
            Its targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the block's samples (within the block, they are the
            empirical distribution; across blocks, their totals set each block's share
            of the stream).

        Returns
        -------
        self : DRORegressor
            Updated estimator.
        """
        with self._transaction():
            first = getattr(self, "_stream", None) is None and not hasattr(self, "coef_")
            X, y, p, weight = self._validate_training_data(X, y, sample_weight, reset=first)
            attributes = self._partial_fit_linear(
                X, y, p, weight, code=loss_code(self.loss), eps=float(self.epsilon)
            )
            self._commit(attributes)
        return self

    def _validate_training_data(self, X, y, sample_weight, *, reset, total=True):
        """Validated (X, y), the empirical distribution and the block's total weight."""
        X, y = self._validate_X_y(X, y, reset, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        p, weight = empirical_weights(
            sample_weight, X.shape[0], return_total=True, compact=True, stream=total
        )
        return X, y, p, weight

    def _model_attributes(self, w, b, dtype, eta, objective, n_iter):
        return {
            "coef_": w[:, 0].astype(dtype),
            "intercept_": float(b[0]),
            **super()._model_attributes(w, b, dtype, eta, objective, n_iter),
        }

    def _cold_start(self, prob):
        # the ridge / least-squares fit (the lam -> inf limit) is one Gram pass away
        return least_squares_start(prob)

    def _erm_start(self, prob):
        # and it minimises the ERM objective only for the squared error
        if prob.loss != loss_code("squared_error"):
            return (*self._cold_start(prob), None)
        return least_squares_start(prob, curvature=True)

    def predict(self, X):
        """Predict with the linear model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted values.
        """
        X = self._validate_for_predict(X)
        return X @ self.coef_ + self.intercept_

    def _losses(self, X, y):
        X = self._validate_for_predict(X)
        self._check_target_1d(y)
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {y.shape}.")
        if not np.all(np.isfinite(y)):
            raise ValueError("Input y contains NaN or infinity.")
        w, b = self.coef_[:, None], np.array([self.intercept_])
        return losses_of(X, y, w, b, loss_code(self.loss), float(self.epsilon))[0]
