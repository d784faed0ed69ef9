"""Speed of DRORegressor against scikit-learn, measured side by side in one run.

Prints, for each problem size, the time of one SGD epoch of DRORegressor divided by
(a) one epoch of scikit-learn's SGDRegressor and (b) one ``X @ w`` pass, and the wall time
for solver="sgd" and solver="lbfgs" to reach 1e-3 relative suboptimality (each the
shortest fit from scratch, over max_iter, that gets there).

    python benchmarks/bench_regressor.py            # n = 1e6 x 10 and 2e5 x 100
    python benchmarks/bench_regressor.py --quick    # small sizes, for a smoke run
"""

import argparse
import time

import numpy as np
from sklearn.linear_model import LinearRegression, SGDRegressor

from sklearn_lse import DRORegressor

try:
    from .common import best_time, epoch_time, quiet_fit
    from .common import time_to_tolerance as common_time_to_tolerance
except ImportError:  # run as a script
    from common import best_time, epoch_time, quiet_fit
    from common import time_to_tolerance as common_time_to_tolerance


def make(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + rng.standard_t(3, size=n)
    return X, y


def dro_epoch_time(X, y, lam):
    return epoch_time(
        lambda k: DRORegressor(lam=lam, rho=1e-2, solver="sgd", max_iter=k, tol=0, random_state=0),
        X,
        y,
    )


def sgd_epoch_time(X, y):
    return best_time(lambda: quiet_fit(SGDRegressor(max_iter=1, tol=None, random_state=0), X, y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args(argv)
    sizes = [(20_000, 10), (5_000, 100)] if args.quick else [(1_000_000, 10), (200_000, 100)]
    # compile once outside the timings
    quiet_fit(DRORegressor(max_iter=2, tol=0, random_state=0), *make(200, 3))
    print("| n | d | DRO epoch (s) | SGDRegressor epoch (s) | X @ w (s) | DRO / SGD | DRO / X@w |")
    print("|---|---|---|---|---|---|---|")
    for n, d in sizes:
        X, y = make(n, d)
        w = np.ones(d)
        t_dro = dro_epoch_time(X, y, lam=1.0)
        t_sgd = sgd_epoch_time(X, y)
        t_mv = best_time(lambda X=X, w=w: X @ w, repeat=10)
        print(
            f"| {n} | {d} | {t_dro:.3f} | {t_sgd:.3f} | {t_mv:.4f} | "
            f"{t_dro / t_sgd:.2f} | {t_dro / t_mv:.1f} |"
        )
    n, d = sizes[0]
    X, y = make(n, d, seed=1)
    median = float(np.median((y - LinearRegression().fit(X, y).predict(X)) ** 2))
    print()
    print(f"Time to reach 1e-3 relative suboptimality at n={n}, d={d}, Student-t(3) noise:")
    print("| lam / median squared residual | rho | sgd (s) | lbfgs (s) | sgd / lbfgs |")
    print("|---|---|---|---|---|")
    defaults = []
    for lam_factor, rho in ((1.0, 1e-2), (0.1, 1e-3)):
        lam = lam_factor * median
        optimum = DRORegressor(lam=lam, rho=rho, solver="lbfgs", tol=1e-10).fit(X, y).risk_
        seconds = {}
        for solver in ("sgd", "lbfgs"):
            seconds[solver], k = time_to_tolerance(X, y, solver, lam, rho, optimum, 1e-3)
            seconds[solver + "_k"] = k
        for solver in ("sgd", "lbfgs"):
            t = time.perf_counter()
            fitted = DRORegressor(lam=lam, rho=rho, solver=solver, random_state=0).fit(X, y)
            seconds[solver + "_default"] = time.perf_counter() - t
            seconds[solver + "_gap"] = (fitted.risk_ - optimum) / abs(optimum)
        defaults.append(
            f"| {lam_factor} | {rho} | {seconds['sgd_default']:.2f} "
            f"(gap {seconds['sgd_gap']:.0e}) | {seconds['lbfgs_default']:.2f} "
            f"(gap {seconds['lbfgs_gap']:.0e}) | "
            f"{seconds['sgd_default'] / seconds['lbfgs_default']:.2f} |"
        )
        print(
            f"| {lam_factor} | {rho} | {seconds['sgd']:.2f} ({seconds['sgd_k']} epochs) | "
            f"{seconds['lbfgs']:.2f} ({seconds['lbfgs_k']} iterations) | "
            f"{seconds['sgd'] / seconds['lbfgs']:.2f} |"
        )
    print()
    print("Default fits, each to its own stopping rule (gap: relative to the optimum):")
    print("| lam / median squared residual | rho | sgd (s) | lbfgs (s) | sgd / lbfgs |")
    print("|---|---|---|---|---|")
    print("\n".join(defaults))


def time_to_tolerance(X, y, solver, lam, rho, optimum, rel):
    def make(k):
        return DRORegressor(lam=lam, rho=rho, solver=solver, max_iter=k, tol=0, random_state=0)

    return common_time_to_tolerance(make, X, y, optimum, rel)


if __name__ == "__main__":
    main()
