"""The tables of losses and solvers: the one place that names them.

The estimators' ``_parameter_constraints`` are built from these keys, the estimators look
their losses and solvers up here, and the kernels receive the integer codes; a name that
is not here is refused by the constraints before any work, and a kernel given an unknown
code raises instead of falling through to another loss.
"""

from dataclasses import dataclass

import scipy.sparse as sp

from ._kernels import ABSOLUTE_ERROR, HUBER, LOG_LOSS, MULTINOMIAL, SQUARED_ERROR
from ._lbfgs import fit_lbfgs
from ._newton import fit_newton
from ._sgd import fit_sgd


@dataclass(frozen=True)
class Loss:
    """A loss of the estimators.

    ``codes``: the kernel code, or for ``log_loss`` the codes of the binary (logistic) and
    of the multinomial model. ``task``: ``"regression"`` or ``"classification"``.
    ``degree``: for regression, the loss of a residual ``s r`` is ``s**degree`` times that
    of ``r`` (with ``epsilon`` scaled by ``s``), which lets the regressor fit on a
    normalised target and scale the result back exactly. ``uses_epsilon``: whether the
    ``epsilon`` parameter enters the loss.
    """

    codes: tuple
    task: str
    degree: int = 0
    uses_epsilon: bool = False

    def code(self, n_classes=2):
        """The kernel code: for a classification loss, that of ``n_classes`` classes."""
        if self.task == "classification" and n_classes > 2:
            return self.codes[1]
        return self.codes[0]


LOSSES = {
    "squared_error": Loss((SQUARED_ERROR,), "regression", degree=2),
    "huber": Loss((HUBER,), "regression", degree=2, uses_epsilon=True),
    "absolute_error": Loss((ABSOLUTE_ERROR,), "regression", degree=1, uses_epsilon=True),
    "log_loss": Loss((LOG_LOSS, MULTINOMIAL), "classification"),
}


def losses_for(task):
    """The names of the losses of a task."""
    return {name for name, loss in LOSSES.items() if loss.task == task}


@dataclass(frozen=True)
class Solver:
    """A solver: its function ``fit(prob, w, b, *, max_iter, tol, verbose, **options)``
    returning a :class:`~sklearn_lse._result.SolverResult`, whether it handles
    ``rho = 0`` (the exact LogSumExp risk, which has no unbiased stochastic gradient), and
    the estimator parameters it takes as options (``rng`` is the estimator's random
    state), and whether it can start the lam path at a warm start's temperature."""

    fit: object
    exact: bool
    options: tuple = ()
    # whether it can start the lam path at a warm start's lam (``lam_start``)
    warm_lam: bool = False
    # whether it takes the ERM objective's Hessian at a start that minimises it
    # (``erm_curvature``)
    erm_start: bool = False


SOLVERS = {
    "newton": Solver(fit_newton, exact=True, warm_lam=True, erm_start=True),
    "lbfgs": Solver(fit_lbfgs, exact=True),
    "sgd": Solver(
        fit_sgd, exact=False, options=("rng", "n_iter_no_change", "batch_size", "learning_rate")
    ),
}
# "auto" (the default) is resolved by choose_solver
SOLVER_NAMES = {"auto", *SOLVERS}

# Newton's method needs the Hessian: its size D^2 must be small next to the data, and its
# eigendecomposition (D^3) cheap
_NEWTON_MAX_DIM = 1024


def choose_solver(name, prob):
    """The solver that ``name`` means for this problem: ``"auto"`` is ``"newton"`` where
    the Hessian is cheap (at most 1024 coefficients, dense data or sparse data with at most
    1024 columns) and ``"sgd"`` otherwise (``"lbfgs"`` for ``rho = 0``)."""
    if name != "auto":
        return name
    d = prob.X.shape[1]
    if prob.dim <= _NEWTON_MAX_DIM and (not sp.issparse(prob.X) or d <= _NEWTON_MAX_DIM):
        return "newton"
    return "sgd" if prob.rho > 0 else "lbfgs"
