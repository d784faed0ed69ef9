"""The estimator layer shared by DRORegressor and DROClassifier: parameters, validation,
the call into the solvers and the robust-risk methods.

scikit-learn's private helpers (parameter constraints, ``_fit_context``) are imported here
and nowhere else.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from . import risk
from ._solvers import (
    Problem,
    fit_lbfgs,
    fit_sgd,
    snapshot,
    stochastic_newton_step,
    uses_arrow_hessian,
    warn_not_converged,
)

__all__ = ["DROLinearModel", "FLOAT_DTYPES", "Interval", "StrOptions", "_fit_context"]

# float32 data are trained in float32 storage (no float64 copy of X), with float64
# accumulation; anything else is converted to float64
FLOAT_DTYPES = (np.float64, np.float32)


class DROLinearModel(BaseEstimator):
    """Common machinery of the KL-DRO linear models (not for direct use)."""

    _parameter_constraints = {
        "lam": [Interval(Real, 0, None, closed="neither")],
        "rho": [Interval(Real, 0, 1, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "fit_intercept": ["boolean"],
        "solver": [StrOptions({"sgd", "lbfgs"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
    }

    def _check_solver_params(self):
        """Checks that involve more than one parameter; run before any work."""
        if self.rho == 0 and self.solver == "sgd":
            raise ValueError(
                "rho=0 means the exact LogSumExp risk, which has no unbiased stochastic "
                "gradient: use solver='lbfgs' for rho=0, or a small rho > 0 (e.g. 1e-3) "
                "with solver='sgd'."
            )

    def _check_target_1d(self, y):
        """Any 2-D y, a single column included, is refused: the model has one output per
        sample, and reshaping the user's target silently would hide a mistake."""
        if y is None:
            return  # validate_data says that y is required
        shape = getattr(y, "shape", None)
        if shape is None:  # lists, and array-likes that only convert
            shape = np.asarray(y).shape
        if len(shape) != 1:
            raise ValueError(
                f"y must be 1-D, of shape (n_samples,); got shape {shape}. "
                f"{type(self).__name__} fits a single target: pass y.ravel() for a column "
                "vector, or use sklearn.multioutput for several targets."
            )

    def _problem(self, X, y, p, *, loss, eps, n_outputs):
        return Problem.build(
            X,
            y,
            p,
            n_outputs=n_outputs,
            loss=loss,
            eps=eps,
            lam=float(self.lam),
            rho=float(self.rho),
            alpha=float(self.alpha),
            fit_intercept=self.fit_intercept,
        )

    def _fit_linear(self, X, y, p, *, loss, eps, n_outputs=1):
        """Solve for (W, b) of shapes (d, K) and (K,) on validated arrays and store the
        fitted model (see :meth:`_store_model`)."""
        prob = self._problem(X, y, p, loss=loss, eps=eps, n_outputs=n_outputs)
        w, b = self._initial_point(prob)
        if self.solver == "lbfgs":
            snap, n_iter, converged = fit_lbfgs(prob, w, b, max_iter=self.max_iter, tol=self.tol)
        else:
            snap, n_iter, converged = self._fit_sgd(
                prob, w, b, check_random_state(self.random_state)
            )
        _check_finite(snap)
        if not converged:
            warn_not_converged(self.solver, self.max_iter)
        self.__dict__.pop("_stream", None)  # a full fit ends any stream of partial fits
        self._store_model(snap.w.astype(X.dtype), snap.b, snap.eta, snap.objective, n_iter)

    def _fit_sgd(self, prob, w, b, rng):
        """The stochastic solver with the estimator's settings; (snapshot, n_iter,
        converged)."""
        return fit_sgd(
            prob,
            w,
            b,
            rng=rng,
            max_iter=self.max_iter,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            batch_size=self._batch_size(prob),
            learning_rate=self.learning_rate,
            verbose=self.verbose,
        )

    def _partial_fit_linear(self, X, y, p, weight, *, loss, eps, n_outputs=1):
        """One stochastic Newton step on the joint relaxed objective (W, b, eta) with the
        block's gradient, whatever ``solver`` (see
        :func:`~sklearn_lse._solvers.stochastic_newton_step`), from the previous iterate,
        scaled by the block's share of the total sample ``weight`` seen so far.
        ``risk_`` and ``eta_`` are those of the model on this block (eta solved exactly)."""
        prob = self._problem(X, y, p, loss=loss, eps=eps, n_outputs=n_outputs)
        stream = getattr(self, "_stream", None)
        if stream is None:
            rng = check_random_state(self.random_state)
            if hasattr(self, "coef_"):  # continue from a full fit
                w, b = self._model_point(prob)
                eta = snapshot(prob, w, b).eta
            else:
                # the first block is solved to convergence: the stochastic Newton steps of
                # the next ones average out its noise, but would be slow to undo its bias
                # (one Newton step from the least-squares start is not near the optimum)
                start = self._cold_start(prob)
                first, _, _ = self._fit_sgd(prob, *start, rng)
                w, b, eta = first.w, first.b, first.eta
            stream = {"rng": rng, "w": w, "b": b, "eta": eta, "weight": 0.0, "n_iter": 0}
        kappa = 1.0 if self.learning_rate == "auto" else float(self.learning_rate)
        total = stream["weight"] + weight
        with np.errstate(over="ignore", invalid="ignore"):
            w, b, eta = stochastic_newton_step(
                prob,
                stream["w"],
                stream["b"],
                stream["eta"],
                step=kappa * weight / total,
                rng=stream["rng"],
            )
            snap = snapshot(prob, w, b, eta)
        if not np.isfinite(snap.objective):
            raise FloatingPointError(
                "partial_fit diverged on this block; the estimator was left unchanged. "
                "Scale the features, or lower learning_rate."
            )
        _check_finite(snap)
        self._stream = {
            **stream,
            "w": w,
            "b": b,
            "eta": eta,
            "weight": total,
            "n_iter": stream["n_iter"] + 1,
        }
        self._store_model(
            snap.w.astype(X.dtype), snap.b, snap.eta, snap.objective, self._stream["n_iter"]
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # CSR (other formats are converted)
        return tags

    def _has_stochastic_gradient(self):
        """``partial_fit`` exists only for ``rho > 0``: the exact LogSumExp risk
        (``rho=0``) has no unbiased stochastic gradient."""
        if self.rho == 0:
            raise AttributeError(
                "partial_fit needs rho > 0: the exact LogSumExp risk (rho=0) has no "
                "unbiased stochastic gradient."
            )
        return True

    def _store_model(self, w, b, eta, objective, n_iter):
        """Set ``coef_`` and ``intercept_`` from W (d, K) and b (K,) (subclasses), and the
        attributes common to both estimators."""
        self.eta_ = float(eta)
        self.risk_ = float(objective)
        self.n_iter_ = int(n_iter)

    def _batch_size(self, prob):
        """``"auto"``: 4 D for D variables (4 (d + 2) for one output), so that the D^2
        preconditioner costs less per step than the gradients, and the mini-batch noise
        stays below the preconditioned curvature (the per-sample smoothness is about D in
        that metric). For sparse data, enough rows that their non-zeros outnumber the
        d K coefficients four times over: their per-step work (centring, preconditioning,
        the update) costs as much per coefficient as the rows do per non-zero."""
        if self.batch_size != "auto":
            return self.batch_size
        if uses_arrow_hessian(prob):
            n, d = prob.X.shape
            per_row = max(prob.X.nnz / max(n, 1), 1.0)
            return int(min(n, max(4 * (prob.n_outputs + 1), np.ceil(4 * d / per_row))))
        return 4 * prob.dim

    def _initial_point(self, prob):
        if self.warm_start and hasattr(self, "coef_"):
            w, b = self._model_point(prob)
            if w.shape[1] == prob.n_outputs:  # else the classes changed: start afresh
                return w, b
        return self._cold_start(prob)

    def _model_point(self, prob):
        """The fitted (W, b) as arrays of shapes (d, K) and (K,)."""
        d = prob.X.shape[1]
        w = np.array(self.coef_, dtype=np.float64).reshape(-1, d).T.copy()
        return w, np.array(self.intercept_, dtype=np.float64).reshape(-1)

    def _losses(self, X, y):
        """Per-sample losses of the fitted model on (X, y)."""
        raise NotImplementedError

    def worst_case_weights(self, X, y, sample_weight=None):
        """Worst-case distribution over the given samples under the fitted model.

        It is the reweighting of ``(X, y)`` that attains :meth:`robust_risk`: the softmax
        ``p_i exp(loss_i / lam)`` for ``rho=0``, and the relaxed distribution
        ``p_i sigmoid(z_i) / rho``, capped at ``p_i / rho``, for ``rho > 0``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.
        y : array-like of shape (n_samples,)
            Targets (class labels for :class:`~sklearn_lse.DROClassifier`).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the empirical distribution; uniform when None.

        Returns
        -------
        weights : ndarray of shape (n_samples,)
            Non-negative weights summing to 1; large ones mark the samples the model finds
            hardest.
        """
        losses = self._losses(X, y)
        return risk.worst_case_weights(losses, self.lam, rho=self.rho, sample_weight=sample_weight)

    def robust_risk(self, X, y, sample_weight=None):
        """KL-DRO risk of the fitted model on the given samples (no penalty term).

        The risk of the per-sample losses of the model at its own ``lam`` and ``rho``: the
        expected loss under :meth:`worst_case_weights`, minus ``lam`` times the divergence
        of these weights from the empirical distribution (the KL divergence for ``rho=0``,
        its relaxed "safe" form, finite only for density ratios up to ``1 / rho``,
        otherwise). On held-out data it measures the model by the criterion it was trained
        for; to compare models fitted with different ``lam`` and ``rho``, use
        :func:`sklearn_lse.metrics.make_robust_scorer`, whose ``lam`` and ``rho`` are fixed.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.
        y : array-like of shape (n_samples,)
            Targets (class labels for :class:`~sklearn_lse.DROClassifier`).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the empirical distribution; uniform when None.

        Returns
        -------
        risk : float
            ``kl_dro_risk(losses, lam, rho=rho)`` of the per-sample losses.
        """
        losses = self._losses(X, y)
        return risk.kl_dro_risk(losses, self.lam, rho=self.rho, sample_weight=sample_weight)

    def _validate_for_predict(self, X):
        check_is_fitted(self)
        return validate_data(
            self, X, reset=False, dtype=FLOAT_DTYPES, order="C", accept_sparse="csr"
        )


def _check_finite(snap):
    if not (np.all(np.isfinite(snap.w)) and np.all(np.isfinite(snap.b))):
        raise FloatingPointError(
            "The solver produced non-finite coefficients; the estimator was left "
            "unchanged. Scale the features, or try solver='lbfgs'."
        )
