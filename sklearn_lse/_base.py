"""The estimator layer shared by DRORegressor and DROClassifier: parameters, validation,
the call into the solvers, transactional fits and the robust-risk methods.

scikit-learn's private helpers (parameter constraints, ``_fit_context``) are imported here
and nowhere else. The estimators see the solvers only through
:mod:`sklearn_lse._registry` and :func:`solve`.
"""

import contextlib
import copy
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from . import risk
from ._curvature import uses_arrow_hessian
from ._objective import losses_of, snapshot
from ._problem import Problem, least_squares_start
from ._registry import LOSSES, SOLVER_NAMES, SOLVERS, choose_solver
from ._result import warn_not_converged
from ._stream import Stream
from ._stream import warn_small_block as _warn_small_block

__all__ = [
    "DROLinearModel",
    "FLOAT_DTYPES",
    "Interval",
    "StrOptions",
    "_fit_context",
    "check_csr",
    "least_squares_start",
    "loss_code",
    "losses_of",
    "target_scale",
]

# float32 data are trained in float32 storage (no float64 copy of X), with float64
# accumulation; anything else is converted to float64
FLOAT_DTYPES = (np.float64, np.float32)

_ADVICE = {
    "newton": "Increase max_iter, or loosen tol.",
    "lbfgs": "Increase max_iter, loosen tol, or use solver='newton' (the default for up to "
    "1024 coefficients), which also certifies its optimum.",
    "sgd": "Increase max_iter, loosen tol, or use solver='newton' where the number of "
    "coefficients allows it.",
}


def check_csr(X):
    """Refuse a malformed CSR matrix before any kernel reads it: ``indptr`` must start at
    0, never decrease and end at the number of non-zeros, and every column index must be
    in range (a kernel would otherwise read or write outside the arrays)."""
    if not sp.issparse(X):
        return X
    indptr, indices = X.indptr, X.indices
    n, d = X.shape
    if (
        indptr.shape != (n + 1,)
        or indptr[0] != 0
        or indptr[-1] != X.data.shape[0]
        or indices.shape != X.data.shape
        or np.any(np.diff(indptr) < 0)
    ):
        raise ValueError(
            "X is a malformed CSR matrix: its indptr must start at 0, never decrease and "
            "end at the number of stored values."
        )
    if indices.shape[0] and (indices.min() < 0 or indices.max() >= d):
        raise ValueError(f"X is a malformed CSR matrix: column indices outside [0, {d}).")
    return X


def _fitted_state(estimator):
    """A copy of everything a fit may change (the fitted attributes and the state of a
    stream), to restore after a failure."""
    return {
        key: copy.deepcopy(value)
        for key, value in vars(estimator).items()
        if key.endswith("_") or key.startswith("_")
    }


class DROLinearModel(BaseEstimator):
    """Common machinery of the KL-DRO linear models (not for direct use)."""

    _parameter_constraints = {
        "lam": [Interval(Real, 0, None, closed="neither")],
        "rho": [Interval(Real, 0, 1, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "fit_intercept": ["boolean"],
        "solver": [StrOptions(SOLVER_NAMES)],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
    }

    @contextlib.contextmanager
    def _transaction(self):
        """Everything a fit, refit or partial fit changes is restored if it fails in any
        way (a bad input found late, a numerical failure, KeyboardInterrupt): a fitted
        model stays exactly as it was, an unfitted one stays unfitted."""
        saved = _fitted_state(self)
        try:
            yield
        except BaseException:
            for key in [k for k in vars(self) if k.endswith("_") or k.startswith("_")]:
                del self.__dict__[key]
            self.__dict__.update(saved)
            raise

    def _check_solver_params(self):
        """Checks that involve more than one parameter, or a range that the constraints
        cannot say; run before any work."""
        risk.check_rho_range(self.rho)
        if self.rho == 0 and self.solver in SOLVERS and not SOLVERS[self.solver].exact:
            raise ValueError(
                f"rho=0 means the exact LogSumExp risk, which has no unbiased stochastic "
                f"gradient: solver={self.solver!r} needs rho > 0. Use solver='newton' or "
                "'lbfgs' (or the default 'auto') for rho=0, or a small rho > 0 (e.g. 1e-3)."
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

    def _validate_X_y(self, X, y, reset, **kwargs):
        self._check_target_1d(y)
        X, y = validate_data(
            self, X, y, reset=reset, dtype=FLOAT_DTYPES, order="C", accept_sparse="csr", **kwargs
        )
        return check_csr(X), y

    def _problem(self, X, y, p, *, code, eps, n_outputs, lam, alpha):
        return Problem.build(
            X,
            y,
            p,
            n_outputs=n_outputs,
            loss=code,
            eps=eps,
            lam=lam,
            rho=float(self.rho),
            alpha=alpha,
            fit_intercept=self.fit_intercept,
        )

    def _fit_linear(self, X, y, p, *, code, eps, n_outputs=1, scale=1.0, degree=0):
        """Solve for (W, b) of shapes (d, K) and (K,) on validated arrays; returns the
        fitted attributes (see :meth:`_model_attributes`), so that the caller sets them
        all at once.

        ``scale`` (a power of two) and ``degree``: the target was divided by ``scale``, so
        the loss is divided by ``scale**degree``; lam, epsilon and alpha are scaled to
        match, and the solution is scaled back exactly."""
        loss_scale = scale**degree  # may underflow or overflow: only used to scale back
        lam = float(self.lam)
        for _ in range(degree):  # one division at a time: scale**2 may not be a float
            lam /= scale
        # above 1e300 on the normalised losses (of size at most about 1), lam is the
        # lam -> inf limit (least squares) to rounding
        lam = min(lam, 1e300)
        alpha = float(self.alpha) * (scale if degree == 1 else 1.0)
        if not np.isfinite(alpha):
            raise ValueError(
                f"alpha={self.alpha!r} is out of range for targets of size {scale:.3g}: "
                "alpha times that size must be finite. Rescale y."
            )
        prob = self._problem(
            X, y, p, code=code, eps=eps / scale, n_outputs=n_outputs, lam=lam, alpha=alpha
        )
        # below 1e-20 of the losses' size, lam changes the optimum by less than rounding
        prob.lam = risk.smallest_lam(lam, 1e8 * prob.objective_floor())
        name, result = self._run_solver(prob, *self._initial_point(prob, scale))
        snap = result.snapshot
        _check_finite(snap)
        if not result.converged:
            warn_not_converged(name, result, _ADVICE[name])
        attributes = self._model_attributes(
            snap.w * scale, snap.b * scale, X.dtype, snap.eta * loss_scale,
            snap.objective * loss_scale, result.n_iter,
        )  # fmt: skip
        attributes.update(
            solver_=name,
            objective_curve_=np.asarray(result.history) * loss_scale,
            # seconds from the start of the solver to each entry (for the benchmarks)
            _objective_times=np.asarray(result.times),
            duality_gap_=float(result.suboptimality),
            _stream=None,  # a full fit ends any stream of partial fits
        )
        return attributes

    def _run_solver(self, prob, w, b, rng=None):
        """The registered solver that ``solver`` means for this problem, from (w, b);
        returns (its name, its result)."""
        name = choose_solver(self.solver, prob)
        solver = SOLVERS[name]
        options = {
            "rng": check_random_state(self.random_state) if rng is None else rng,
            "n_iter_no_change": self.n_iter_no_change,
            "batch_size": self._batch_size(prob),
            "learning_rate": self.learning_rate,
        }
        # BLAS runs single-threaded in a fit: its products are a chunk of rows by D
        # columns, where threads cost more in synchronisation than they gain, and on a
        # loaded machine (or under GridSearchCV's n_jobs) spinning BLAS threads starve
        # each other (an eigendecomposition of size 651 measured 25 times slower with two
        # threads than with one on a busy 2-core machine). Parallelism comes from n_jobs.
        limits = threadpool_limits(limits=1, user_api="blas")
        try:
            result = solver.fit(
                prob,
                w,
                b,
                max_iter=self.max_iter,
                tol=self.tol,
                verbose=self.verbose,
                **{key: options[key] for key in solver.options},
            )
        finally:
            limits.restore_original_limits()
        return name, result

    def _commit(self, attributes):
        """Set the fitted attributes of a successful fit, all at once."""
        for key, value in attributes.items():
            if value is None:
                self.__dict__.pop(key, None)
            else:
                setattr(self, key, value)

    def _partial_fit_linear(self, X, y, p, weight, *, code, eps, n_outputs=1):
        """Take one block into the stream's model (see :mod:`sklearn_lse._stream`),
        whatever ``solver``: an incremental Newton step on the objective of the whole
        stream, with the curvature accumulated over the blocks. The first block is solved
        to convergence first (after :meth:`fit`, the fitted model stands for a block of the
        same weight as the first one instead). ``eta_`` is the stream's threshold,
        ``risk_`` the block's objective at the new model. Returns the fitted attributes."""
        prob = self._problem(
            X, y, p, code=code, eps=eps, n_outputs=n_outputs, lam=float(self.lam),
            alpha=float(self.alpha),
        )  # fmt: skip
        stream = getattr(self, "_stream", None)
        if stream is not None and stream.u.shape[0] != prob.dim:
            stream = None  # the classes changed (a refit): start afresh
        if stream is None:
            rng = check_random_state(self.random_state)
            if hasattr(self, "coef_"):  # continue from a full fit
                w, b = self._model_point(prob)
                if w.shape[1] != prob.n_outputs:
                    w, b = self._cold_start(prob)
                eta = snapshot(prob, w, b).eta
                stream = Stream.start(prob, w, b, eta, rng)
                # the fitted model stands for a block of this one's weight at its optimum
                stream.add_prior(prob, weight)
            else:
                _warn_small_block(prob, first=True)
                # the first block is solved to convergence: the later blocks' models are
                # taken at its solution, where they are accurate
                first = self._run_solver(prob, *self._cold_start(prob), rng)[1].snapshot
                stream = Stream.start(prob, first.w, first.b, first.eta, rng)
        else:
            stream = copy.deepcopy(stream)  # the transaction keeps the old one
        kappa = 1.0 if self.learning_rate == "auto" else float(self.learning_rate)
        with np.errstate(over="ignore", invalid="ignore"):
            value = stream.update(prob, weight, step=kappa)
        w, b, eta = stream.model()
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise FloatingPointError(
                "partial_fit diverged on this block. Scale the features, or lower learning_rate."
            )
        attributes = self._model_attributes(w, b, X.dtype, eta, value, stream.n_iter)
        attributes["_stream"] = stream
        return attributes

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

    def _model_attributes(self, w, b, dtype, eta, objective, n_iter):
        """The fitted attributes of the model W (d, K), b (K,): ``coef_`` and
        ``intercept_`` (subclasses) and those common to both estimators."""
        return {"eta_": float(eta), "risk_": float(objective), "n_iter_": int(n_iter)}

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

    def _initial_point(self, prob, scale=1.0):
        if self.warm_start and hasattr(self, "coef_"):
            w, b = self._model_point(prob)
            if w.shape[1] == prob.n_outputs:  # else the classes changed: start afresh
                return w / scale, b / scale
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
        ``p_i c_i``, capped at ``p_i / rho``, for ``rho > 0`` (the factors of
        :func:`~sklearn_lse.gradient_factors`).

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
        X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES, order="C", accept_sparse="csr")
        return check_csr(X)


def _check_finite(snap):
    if not (np.all(np.isfinite(snap.w)) and np.all(np.isfinite(snap.b))):
        raise FloatingPointError(
            "The solver produced non-finite coefficients. Scale the features, or try "
            "solver='lbfgs'."
        )


def target_scale(y):
    """A power of two of the size of the targets: the regressor fits on ``y / scale``
    (exactly, a power of two) and scales the solution back, so that targets of any size
    (1e-300 to 1e300) are solved with the same numbers."""
    top = float(np.max(np.abs(y))) if y.shape[0] else 0.0
    if not top > 0:
        return 1.0
    return risk.power_of_two(top)


def loss_code(name, n_classes=2):
    """The kernel code of a registered loss."""
    return LOSSES[name].code(n_classes)
