"""How the time to reach 1e-3 relative suboptimality grows with n, for the stochastic
solver and the full-batch one (DRORegressor, d = 20, Student-t(3) noise, lam = the median
squared residual of least squares, rho = 1e-2); each time is that of the shortest fit from
scratch (by max_iter) that gets there, set-up included.
"""

import numpy as np
from sklearn.linear_model import LinearRegression

from sklearn_lse import DRORegressor

try:
    from .common import quiet_fit, time_to_tolerance
except ImportError:  # run as a script
    from common import quiet_fit, time_to_tolerance


def make(n, d=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.logspace(-1, 1, d)
    y = X @ (rng.normal(size=d) / np.logspace(-1, 1, d)) + rng.standard_t(3, size=n)
    return X, y


def report(quick):
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000, 10_000_000]
    quiet_fit(DRORegressor(max_iter=2, tol=0.0, random_state=0), *make(300))
    lines = [
        "Time to 1e-3 relative suboptimality (DRORegressor, d=20, rho=1e-2):",
        "",
        "| n | sgd (s) | lbfgs (s) | sgd / lbfgs |",
        "|---|---|---|---|",
    ]
    for n in sizes:
        X, y = make(n)
        residuals = y - LinearRegression().fit(X, y).predict(X)
        lam = float(np.median(residuals**2))
        optimum = DRORegressor(lam=lam, rho=1e-2, solver="lbfgs", tol=1e-10).fit(X, y).risk_
        seconds = {}
        for solver in ("sgd", "lbfgs"):

            def make_model(k, solver=solver, lam=lam):
                return DRORegressor(
                    lam=lam, rho=1e-2, solver=solver, max_iter=k, tol=0.0, random_state=0
                )

            seconds[solver] = time_to_tolerance(make_model, X, y, optimum, 1e-3)
        (t_sgd, k_sgd), (t_lbfgs, k_lbfgs) = seconds["sgd"], seconds["lbfgs"]
        lines.append(
            f"| {n} | {t_sgd:.3f} ({k_sgd} epochs) | {t_lbfgs:.3f} ({k_lbfgs} iterations) | "
            f"{t_sgd / t_lbfgs:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(quick=False))
