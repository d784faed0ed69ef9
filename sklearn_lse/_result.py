"""What every solver returns, and how a fit reports on it (verbose lines, warnings)."""

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning


@dataclass
class SolverResult:
    """The outcome of one solver run.

    ``snapshot`` is the final point with its objective and optimal eta; ``history`` the
    objective after every iteration (epoch for ``"sgd"``), starting with the objective at
    the starting point; ``suboptimality`` the solver's bound (or estimate, see the
    solver) on ``objective - optimum`` at the end, relative to ``|objective|``, ``nan``
    where it has none; ``message`` why it stopped, in words.
    """

    snapshot: object
    n_iter: int
    converged: bool
    message: str
    history: list = field(default_factory=list)
    suboptimality: float = np.nan
    times: list = field(default_factory=list)  # seconds from the start, per history entry


class Log:
    """The objective history of a run: its value at the start, then after every
    iteration (a rejected step leaves it unchanged), so that ``len(history) - 1`` is the
    number of iterations; prints one line per iteration when ``verbose``, and why the run
    stopped."""

    def __init__(self, solver, verbose):
        self.solver = solver
        self.verbose = bool(verbose)
        self.history = []
        self.times = []
        self._start = time.perf_counter()

    @property
    def n_iter(self):
        return max(len(self.history) - 1, 0)

    def start(self, objective):
        self.history.append(float(objective))
        self.times.append(time.perf_counter() - self._start)

    def record(self, objective, note="", **values):
        self.history.append(float(objective))
        self.times.append(time.perf_counter() - self._start)
        if self.verbose:
            details = ", ".join(f"{name}={value:.3g}" for name, value in values.items())
            print(
                f"[{self.solver}] iteration {self.n_iter}: objective={objective:.12g}"
                + (f", {details}" if details else "")
                + (f" ({note})" if note else ""),
                flush=True,
            )

    def result(self, snapshot, converged, message, suboptimality=np.nan):
        """The :class:`SolverResult` of the run, which ends here (its closing line)."""
        self.stop(message)
        return SolverResult(
            snapshot, self.n_iter, bool(converged), message, self.history,
            float(suboptimality), self.times,
        )  # fmt: skip

    def note(self, message):
        if self.verbose:
            print(f"[{self.solver}] {message}", flush=True)

    def stop(self, message):
        if self.verbose:
            print(f"[{self.solver}] stopped: {message}", flush=True)


def warn_not_converged(solver, result, advice):
    """The ConvergenceWarning of a fit that did not converge, with the solver's reason
    and what to change."""
    warnings.warn(
        f"solver={solver!r} did not converge after {result.n_iter} iterations: "
        f"{result.message}. {advice}",
        ConvergenceWarning,
        stacklevel=4,
    )
