"""The estimator layer shared by DRORegressor and DROClassifier: parameters, validation,
the call into the solvers, transactional fits and the robust-risk methods.

scikit-learn's private helpers (parameter constraints, ``_fit_context``) are imported here
and nowhere else. The estimators see the solvers only through
:mod:`sklearn_lse._registry` and :func:`solve`.
"""

import contextlib
import copy
import dataclasses
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController

from . import risk
from ._ball import fit_ball
from ._curvature import uses_arrow_hessian
from ._distributed import fit_estimator, is_dask_collection
from ._kernels import exact_risk, step_losses
from ._objective import factors, losses_of, snapshot
from ._problem import Problem, least_squares_start
from ._registry import LOSSES, SOLVER_NAMES, SOLVERS, choose_solver
from ._result import Log, warn_not_converged
from ._stream import Stream
from ._stream import warn_small_block as _warn_small_block

__all__ = [
    "DOCS",
    "DROLinearModel",
    "RelaxationWarning",
    "FLOAT_DTYPES",
    "Interval",
    "StrOptions",
    "_fit_context",
    "check_csr",
    "fit_estimator",
    "is_dask_collection",
    "least_squares_start",
    "loss_code",
    "losses_of",
    "target_scale",
    "with_docs",
]

# the KL budget (nats) when neither lam nor radius is given
DEFAULT_RADIUS = 0.003
# rho="auto" for the stochastic solver: the density caps tried, largest first (the first
# is also partial_fit's)
_AUTO_RHO_SGD = (1e-3, 1e-4, 1e-5, 1e-6)


# Parameter and attribute descriptions shared by the estimators' docstrings (each puts
# them in place of its {robustness}, {solver} and {attributes} fields)
DOCS = {
    "robustness": """radius : float or None, default=None
        KL budget, in nats: the model minimises the worst expected loss over the
        distributions within this divergence of the empirical one (the KL-ball form of
        DRO). It does not depend on the units of the loss or of ``y``. ``radius=0`` is
        ERM; for intuition, a radius of 0.1 lets the worst case count a subpopulation of
        10% of the samples as about 25%, and 0.5 as about 50%. When neither ``radius`` nor
        ``lam`` is set, the radius is 0.003 (a subpopulation of 1% counted as about 2%):
        on real data it lowers the worst test losses at a small price on average, where
        larger radii cost much more on heavy-tailed targets (see the user guide's
        "Choosing the radius"). The temperature it implies is ``lam_``.
    lam : float or None, default=None
        Temperature ``lam > 0``, in the units of the loss, for the penalised form
        ``R_lam`` instead of the ball (set ``radius`` or ``lam``, not both): the worst
        case is penalised by ``lam`` times its divergence from the data. Smaller is more
        robust; ``lam -> inf`` is ERM. A ``lam`` that suits one scale of ``y`` does not
        suit another; the radius does.
    rho : float or "auto", default="auto"
        Density cap ``0 <= rho < 1`` of the softplus relaxation: no sample is up-weighted
        more than ``1 / rho`` times; ``rho=0`` is the exact KL-DRO risk (solvers
        ``"newton"`` and ``"lbfgs"``). ``"auto"`` is the exact risk for those, which solve
        it at the same cost, and for ``"sgd"`` (which needs ``rho > 0``) ``1e-3``, then
        ``1e-4``, ``1e-5`` and ``1e-6`` (each fit warm-started) until the exact risk of the
        solution exceeds the relaxed one by at most ``10 * tol`` (relative), with a
        warning if it still does; ``rho_`` is the one used. With small ``lam`` or a large
        radius, a fixed ``rho`` makes the model minimise about the mean of the worst
        ``rho``-fraction of the losses (CVaR).""",
    "solver": """solver : {"auto", "newton", "lbfgs", "sgd"}, default="auto"
        ``"newton"``: full-batch trust-region Newton on the relaxed objective with eta
        eliminated, following the path of decreasing ``lam`` from the empirical risk
        (continuation) and iterating on the samples that carry the worst case (working
        sets, screened so that the others provably stay negligible); it certifies its
        result (a duality gap, or quadratic convergence observed). ``"lbfgs"``: L-BFGS on
        the same objective, its result certified by at most ten Newton steps.
        ``"sgd"``: the stochastic method of Gladin et al. (unbiased per-sample gradients
        of the relaxation in a Numba kernel, with SVRG variance reduction, importance
        sampling and steps preconditioned by each epoch's Hessian), for data with many
        coefficients. ``"auto"`` is ``"newton"`` up to 1024 coefficients (dense data, or
        sparse data with up to 1024 columns) and ``"sgd"`` beyond (``"lbfgs"`` for
        ``rho=0``).
    max_iter : int, default=1000
        Maximum number of iterations (``"newton"``: trust-region steps over all stages;
        ``"sgd"``: epochs).
    tol : float, default=1e-6
        Relative suboptimality at which a fit stops: the objective is then within about
        ``tol`` (and by the tests within ``10 * tol``) of its optimum. Below this tolerance
        the solver must certify the point: by the duality gap of the weighted problem
        (exact for the squared error) or, for ``"newton"``, by a full Newton step whose
        decrease matches the quadratic model, followed by a superlinear fall of the
        decrement (a hundredfold, or tenfold and accelerating).
        A fit that cannot certify its point warns with ``ConvergenceWarning``.
    n_iter_no_change : int, default=5
        Number of epochs without progress before ``"sgd"`` checks its point.
    batch_size : int or "auto", default="auto"
        Samples per stochastic step (``"sgd"``). ``"auto"`` is ``4 * (n_features + 2)``
        (times the classes), which keeps the preconditioned steps stable and the cost of
        the preconditioner below that of the gradients; for sparse data with more than
        1024 features, about ``4 * n_features / (non-zeros per row)``.
    learning_rate : "auto" or float, default="auto"
        Largest multiplier of the preconditioned step of ``"sgd"`` (``"auto"``: 1.0, a
        Newton step, adapted from epoch to epoch). For :meth:`partial_fit`, a number
        multiplies the step of each block.
    random_state : int, RandomState instance or None, default=None
        Seed of the sampling of ``"sgd"`` (``"newton"`` and ``"lbfgs"`` are
        deterministic).
    warm_start : bool, default=False
        Start from the previous solution when refitting.
    verbose : int, default=0
        Print one line per iteration (objective, step, decrement) and a final line saying
        why the solver stopped.""",
    "partial_fit": """For data that arrive in blocks (streams, out-of-core arrays, Dask
        chunks), whatever ``solver`` is: an incremental Newton method on the objective
        of the whole stream (every row seen, one shared ``eta``), not of the last block.
        The first block is solved to convergence (after :meth:`fit`, the fitted model
        stands for a block of the new one's weight); afterwards the rows with the
        largest losses, which carry the worst case, are kept (at least 4096, at most
        65,536), the others enter a quadratic model (their gradient and Hessian,
        accumulated across blocks) when they leave, and each block ends with Newton's
        method on the kept rows and that model. Further passes over the same blocks
        bring the model closer to the optimum of all of them (the README's "Large data"
        gives the gaps measured per pass). Blocks should be shuffled samples, with at
        least 2 rows per coefficient in the first one (``SmallBlockWarning`` otherwise).
        A block whose objective is not finite at the current model, or that would
        multiply the objective of the blocks seen before by 100 (other units, another
        distribution), raises ValueError and leaves the model as it was. The ball form
        keeps the temperature of the first block's solution (or of the fitted model) for
        the rest of the stream; ``rho="auto"`` is ``1e-3``, and ``rho=0`` has no
        ``partial_fit``. ``risk_`` is the block's objective at the new model, ``eta_``
        the stream's threshold, ``n_iter_`` the number of blocks.""",
    "attributes": """eta_ : float
        Threshold of the relaxation at the solution, in loss units: samples with loss
        well above ``eta_ + lam_ * log(1 / rho_)`` get the full weight ``1 / rho_``, those
        well below it almost none. For ``rho_=0`` it equals the exact risk ``R_lam_``.
    risk_ : float
        Training objective reached: the (relaxed) robust risk plus the penalty; for the
        ball form, the worst expected loss over the ball.
    exact_risk_ : float
        The exact KL-DRO risk of the fitted model (with the KL divergence instead of the
        relaxed one, and the penalty), on the training data: at least ``risk_``; the two
        agree to ``10 * tol`` unless a fixed ``rho`` caps the worst case.
    lam_ : float
        The temperature of the solution: ``lam``, or for the ball form the one the
        radius implies (``inf`` for ``radius=0``).
    radius_ : float or None
        The radius of the KL ball of the fitted objective (the default one when neither
        ``radius`` nor ``lam`` is set); None for the penalised form.
    rho_ : float
        The density cap used (see ``rho="auto"``).
    cap_mass_ : float
        Share of the worst case's probability mass on samples up-weighted to (99% of)
        the cap ``1 / rho_``: near 0 when the cap does not bind.
    effective_sample_size_ : float
        ``1 / sum_i q_i^2`` of the worst case ``q`` on the training data: how many samples
        the robust objective leans on (``n_samples`` for uniform weights).
    objective_curve_ : ndarray of shape (n_iterations + 1,)
        The objective at the start and after every iteration, for plotting a fit's
        progress. For ``"newton"`` the first entries belong to the stages of the lam path
        (larger temperatures); for the ball form, to the fit at the final temperature.
    duality_gap_ : float
        The solver's bound (or, where marked in ``verbose``, estimate) of the relative
        suboptimality of the solution.
    solver_ : str
        The solver that ran (``solver="auto"`` resolved).
    n_iter_ : int
        Number of iterations run (over all stages, temperatures and values of rho).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the features seen during fit, when X has string column names.""",
}


def with_docs(cls):
    """Put the shared descriptions in place of the fields of the class's docstring and of
    its ``partial_fit``'s."""

    def fill(doc):
        for field, text in DOCS.items():
            doc = doc.replace("{" + field + "}", text)
        return doc

    cls.__doc__ = fill(cls.__doc__)
    method = cls.__dict__.get("partial_fit")
    if method is not None:  # the available_if descriptor of the method
        function = getattr(method, "fn", method)
        function.__doc__ = fill(function.__doc__)
    return cls


_CONTROLLER = []  # the thread-pool controller, made at the first fit


def _single_threaded_blas():
    """Limit BLAS to one thread (restore with ``restore_original_limits``), from a
    controller kept between fits: making one scans the loaded libraries, 2 ms, a tenth of
    a small fit. The BLAS libraries of NumPy and SciPy are loaded when this package is
    imported, so the first fit's scan finds them."""
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


class RelaxationWarning(UserWarning):
    """The density cap of the relaxation moves the solution's exact KL-DRO risk by more
    than the tolerance."""


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
        "lam": [Interval(Real, 0, None, closed="neither"), None],
        "radius": [Interval(Real, 0, None, closed="left"), None],
        "rho": [Interval(Real, 0, 1, closed="left"), StrOptions({"auto"})],
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
        self._robustness()
        if self.rho != "auto":
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
            rho=_AUTO_RHO_SGD[0] if self.rho == "auto" else float(self.rho),
            alpha=alpha,
            fit_intercept=self.fit_intercept,
        )

    def _robustness(self):
        """``("penalty", lam)`` or ``("ball", radius)``: the form of the robust objective
        the parameters ask for (neither set: the ball of the default radius)."""
        if self.lam is not None and self.radius is not None:
            raise ValueError(
                f"lam={self.lam!r} and radius={self.radius!r} are both set: set one of them "
                "(radius, in nats, for the KL-ball form; lam, in loss units, for the "
                "penalised form), or neither for the default radius."
            )
        if self.lam is not None:
            return "penalty", float(self.lam)
        return "ball", DEFAULT_RADIUS if self.radius is None else float(self.radius)

    def _rho_ladder(self, name):
        """The values of rho to try: the given one; for ``rho="auto"``, the exact risk
        (``rho = 0``) for the full-batch solvers, which handle it at the cost of any other
        rho, and for ``"sgd"`` a decreasing ladder (warm-started) that stops as soon as
        the density cap moves the solution's exact risk by at most ``10 tol``."""
        if self.rho != "auto":
            return [float(self.rho)]
        return [0.0] if SOLVERS[name].exact else list(_AUTO_RHO_SGD)

    def _fit_linear(self, X, y, p, *, code, eps, n_outputs=1, scale=1.0, degree=0):
        """Solve for (W, b) of shapes (d, K) and (K,) on validated arrays; returns the
        fitted attributes (see :meth:`_model_attributes`), so that the caller sets them
        all at once.

        ``scale`` (a power of two) and ``degree``: the target was divided by ``scale``, so
        the loss is divided by ``scale**degree``; lam, epsilon and alpha are scaled to
        match, and the solution is scaled back exactly (the radius is in nats: it does
        not scale)."""
        loss_scale = scale**degree  # may underflow or overflow: only used to scale back
        form, value = self._robustness()
        lam = value if form == "penalty" else 1.0  # the ball's lam is solved for
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
        name = choose_solver(self.solver, prob)
        w, b, curvature = self._initial_point(prob, scale)
        rng = check_random_state(self.random_state)
        n_iter = 0
        history, times = [], []  # along every fit of the rho ladder
        for rho in self._rho_ladder(name):
            prob = dataclasses.replace(prob, rho=rho)
            result, prob = self._solve_form(name, prob, w, b, form, value, rng, curvature)
            n_iter += result.n_iter
            start = 0 if not history else 1
            elapsed = times[-1] if times else 0.0
            history.extend(result.history[start:])
            times.extend(elapsed + t for t in result.times[start:])
            snap = result.snapshot
            _check_finite(snap)
            diagnostics = _diagnostics(prob, snap, form, value)
            if diagnostics["relaxation_gap"] <= 10 * self.tol:
                break
            w, b, curvature = snap.w, snap.b, None  # warm start at the next rho
        if not result.converged:
            warn_not_converged(name, result, _ADVICE[name])
        if self.rho == "auto" and diagnostics["relaxation_gap"] > 10 * self.tol:
            warnings.warn(
                f"The density cap 1/rho (rho={prob.rho:g}, the smallest that "
                f"solver={name!r} tries) still raises the exact KL-DRO risk of the "
                f"solution {diagnostics['relaxation_gap']:.2g} (relative) above the "
                "relaxed risk it minimises: the worst case piles onto a few samples. Use "
                "solver='newton' (which reaches the exact risk, rho=0), or a larger "
                "radius / lam.",
                RelaxationWarning,
                stacklevel=4,
            )
        attributes = self._model_attributes(
            snap.w * scale, snap.b * scale, X.dtype, snap.eta * loss_scale,
            snap.objective * loss_scale, n_iter,
        )  # fmt: skip
        attributes.update(
            solver_=name,
            _robust_form=(form, value),
            lam_=np.inf if (form, value) == ("ball", 0.0) else float(prob.lam * loss_scale),
            rho_=float(prob.rho),
            exact_risk_=float(diagnostics["exact_risk"] * loss_scale),
            cap_mass_=float(diagnostics["cap_mass"]),
            effective_sample_size_=float(diagnostics["effective_sample_size"]),
            objective_curve_=np.asarray(history) * loss_scale,
            # seconds from the start of the solver to each entry (for the benchmarks)
            _objective_times=np.asarray(times),
            duality_gap_=float(result.suboptimality),
            _stream=None,  # a full fit ends any stream of partial fits
        )
        return attributes

    def _solve_form(self, name, prob, w, b, form, value, rng, curvature=None):
        """The penalised fit at ``prob.lam``, or the ball's (``value`` the radius, lam
        solved for); returns (result, the problem at the solution's lam). ``curvature``:
        the ERM objective's Hessian where (w, b) minimises it (see
        :meth:`_initial_point`), for the solvers that use it."""
        if form == "penalty":
            extra = {"erm_curvature": curvature} if SOLVERS[name].erm_start else {}
            return self._run_solver(name, prob, w, b, rng, **extra), prob
        iterations = [0]
        history = []  # the ball objective lam radius + R_lam along every inner fit
        times = []

        def inner(prob_lam, w0, b0, lam0, eta0):
            extra = {"lam_start": lam0, "eta_guess": eta0} if SOLVERS[name].warm_lam else {}
            result = self._run_solver(name, prob_lam, w0, b0, rng, **extra)
            iterations[0] += result.n_iter
            start = 0 if not history else 1  # each fit starts where the last one ended
            elapsed = times[-1] if times else 0.0
            history.extend(v + prob_lam.lam * value for v in result.history[start:])
            times.extend(elapsed + t for t in result.times[start:])
            return result

        log = Log("ball", self.verbose)
        result, lam = fit_ball(prob, w, b, radius=value, inner=inner, tol=self.tol, log=log)
        result.n_iter, result.history, result.times = iterations[0], history, times
        return result, prob.with_lam(lam)

    def _run_solver(self, name, prob, w, b, rng=None, **extra):
        """The registered solver ``name`` on this problem, from (w, b); returns its
        result."""
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
        limits = _single_threaded_blas()
        try:
            return solver.fit(
                prob,
                w,
                b,
                max_iter=self.max_iter,
                tol=self.tol,
                verbose=self.verbose,
                **{key: options[key] for key in solver.options},
                **extra,
            )
        finally:
            limits.restore_original_limits()

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
        ``risk_`` the block's objective at the new model. Returns the fitted attributes.

        The ball form's temperature is the one of the first block's (or the fitted
        model's) solution, kept for the rest of the stream; ``rho="auto"`` is ``1e-3``."""
        form, value = self._robustness()
        lam = value if form == "penalty" else getattr(self, "lam_", None)
        prob = self._problem(
            X, y, p, code=code, eps=eps, n_outputs=n_outputs, lam=1.0 if lam is None else lam,
            alpha=float(self.alpha),
        )  # fmt: skip
        if lam is None:  # the ball's temperature, from the first block, is kept after it
            _, prob = self._solve_form(
                choose_solver(self.solver, prob), prob, *self._cold_start(prob), form, value,
                check_random_state(self.random_state),
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
                name = choose_solver(self.solver, prob)
                first = self._run_solver(name, prob, *self._cold_start(prob), rng).snapshot
                stream = Stream.start(prob, first.w, first.b, first.eta, rng)
        else:
            stream = copy.deepcopy(stream)  # the transaction keeps the old one
        kappa = 1.0 if self.learning_rate == "auto" else float(self.learning_rate)
        with np.errstate(over="ignore", invalid="ignore"):
            block_value = stream.update(prob, weight, step=kappa)
        w, b, eta = stream.model()
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise FloatingPointError(
                "partial_fit diverged on this block. Scale the features, or lower learning_rate."
            )
        attributes = self._model_attributes(w, b, X.dtype, eta, block_value, stream.n_iter)
        attributes.update(
            _stream=stream, _robust_form=(form, value), lam_=float(prob.lam),
            rho_=float(prob.rho),
        )  # fmt: skip
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
        """The starting point (W, b) and, where it minimises the ERM objective (the
        ``lam -> inf`` limit), that objective's Hessian there (else None)."""
        if self.warm_start and hasattr(self, "coef_"):
            w, b = self._model_point(prob)
            if w.shape[1] == prob.n_outputs:  # else the classes changed: start afresh
                return w / scale, b / scale, None
        return self._erm_start(prob)

    def _erm_start(self, prob):
        """The cold start (W, b) and, where it minimises the ERM objective, that
        objective's Hessian in the standardised coordinates (see
        :func:`~sklearn_lse._problem.least_squares_start`), else None."""
        return (*self._cold_start(prob), None)

    def _model_point(self, prob):
        """The fitted (W, b) as arrays of shapes (d, K) and (K,)."""
        d = prob.X.shape[1]
        w = np.array(self.coef_, dtype=np.float64).reshape(-1, d).T.copy()
        return w, np.array(self.intercept_, dtype=np.float64).reshape(-1)

    def _losses(self, X, y):
        """Per-sample losses of the fitted model on (X, y)."""
        raise NotImplementedError

    @property
    def radius_(self):
        """The radius (nats) of the KL ball of the fitted objective.

        ``radius``, or the default radius when neither ``radius`` nor ``lam`` was set;
        None for the penalised form (``lam`` set).
        """
        check_is_fitted(self, "_robust_form")
        form, value = self._robust_form
        return value if form == "ball" else None

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
        if self._robust_form == ("ball", 0.0):  # no budget: the empirical distribution
            return risk.empirical_weights(sample_weight, losses.shape[0])
        lam = self._temperature(losses, sample_weight)
        return risk.worst_case_weights(losses, lam, rho=self.rho_, sample_weight=sample_weight)

    def _temperature(self, losses, sample_weight):
        """The temperature of the robust risk of these losses: the model's lam, or for the
        ball form the one at which these losses' worst case has the radius."""
        form, value = self._robust_form
        if form == "penalty" or value == 0:
            return self.lam_
        p = risk.empirical_weights(sample_weight, losses.shape[0])
        scale = risk.loss_scale(losses)
        return risk.ball_temperature(losses / scale, p, value, self.rho_) * scale

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
        form, value = self._robust_form
        if form == "ball":
            return risk.kl_ball_risk(losses, value, rho=self.rho_, sample_weight=sample_weight)
        return risk.kl_dro_risk(losses, self.lam_, rho=self.rho_, sample_weight=sample_weight)

    def _validate_for_predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES, order="C", accept_sparse="csr")
        return check_csr(X)


def _diagnostics(prob, snap, form, value):
    """What the density cap did to the solution (one pass for its losses): its exact
    KL-DRO risk (penalised or over the ball, with the penalty), the relative amount by
    which that exceeds the relaxed objective the solver minimised, the share of the worst
    case's mass on samples at the cap ``1 / rho``, and the worst case's effective sample
    size ``1 / sum q_i^2``."""
    # one per-sample array (the losses), the rest chunk by chunk
    losses = np.empty(prob.n_samples)
    for rows in prob.chunks():
        F = prob.predictions_of(rows, snap.w, snap.b)
        step_losses(prob.loss, F, F, 0.0, prob.y[rows], prob.eps, losses[rows])
    penalty = prob.penalty(snap.w)
    if form == "penalty":
        exact = exact_risk(losses, prob.p, prob.lam)
    elif value == 0:
        exact = prob.weighted_sum(losses)
    else:
        lam = risk.ball_temperature(losses, prob.p, value, 0.0)
        exact = lam * value + exact_risk(losses, prob.p, lam)
    exact += penalty
    # the worst case q_i = p_i c_i / sum_j p_j c_j: its mass at the cap, sum q_i^2
    total = at_cap = squares = 0.0
    for rows in prob.chunks():
        c, _ = factors(prob, losses[rows], 0.0, snap.eta)
        q = prob.weights(rows) * c
        total += float(np.sum(q))
        squares += float(q @ q)
        if prob.rho > 0:
            at_cap += float(np.sum(q[c >= 0.99 / prob.rho]))
    scale = max(abs(snap.objective), prob.objective_floor())
    return {
        "exact_risk": exact,
        "relaxation_gap": max(exact - snap.objective, 0.0) / scale,
        "cap_mass": at_cap / total,
        "effective_sample_size": total * total / squares,
    }


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
