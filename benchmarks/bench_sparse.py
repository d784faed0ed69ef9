"""Speed of DROClassifier on sparse text-like data, against SGDClassifier on the same
matrix, measured side by side in one run; and the default fits on sparse and on float32
data (the figures that must not regress).

The data: power-law (Zipf) word counts, 10^5 features, density 1e-3, log-scaled, labels
from a sparse linear model with noise. The float32 fits: dense data, d = 20, Student-t(3)
noise (regression) or logit labels (classification), the same fit on float64 and float32
copies of X.

    python benchmarks/bench_sparse.py            # n = 10^5 documents, 10^6 dense rows
    python benchmarks/bench_sparse.py --quick    # n = 10^4, 10^5 dense rows
"""

import argparse
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, SGDClassifier

from sklearn_lse import DROClassifier, DRORegressor

try:
    from .common import best_time, epoch_time, quiet_fit
except ImportError:  # run as a script
    from common import best_time, epoch_time, quiet_fit


def text_like(n, n_features=100_000, density=1e-3, seed=0):
    """CSR counts: each document draws density * n_features words from a Zipf law."""
    rng = np.random.default_rng(seed)
    per_row = int(density * n_features)
    ranks = np.arange(1, n_features + 1)
    zipf = 1.0 / ranks
    zipf /= zipf.sum()
    cols = rng.choice(n_features, size=(n, per_row), p=zipf)
    rows = np.repeat(np.arange(n), per_row)
    X = sp.csr_matrix((np.ones(n * per_row), (rows, cols.ravel())), shape=(n, n_features))
    X.sum_duplicates()
    X.data = np.log1p(X.data)
    coef = rng.normal(size=n_features) * (rng.random(n_features) < 0.05)
    y = (X @ coef + rng.logistic(size=n) * 0.5 > 0).astype(int)
    return X, y


def dense(n, task, d=20, seed=0):
    """Dense float64 data: correlated features, t(3) noise or logit labels."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ (np.eye(d) + rng.normal(size=(d, d)) / np.sqrt(d))
    score = X @ rng.normal(size=d) / np.sqrt(d)
    if task == "regression":
        return X, score + rng.standard_t(3, size=n)
    return X, (score + rng.logistic(size=n) > 0).astype(int)


def default_fit(make, X, y, repeat=2):
    """The shortest of ``repeat`` fits of ``make()``: time, the model, and whether it
    converged (no ConvergenceWarning)."""
    best = None
    for _ in range(repeat):
        model = make()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            start = time.perf_counter()
            model.fit(X, y)
            seconds = time.perf_counter() - start
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if best is None or seconds < best[0]:
            best = (seconds, model, converged)
    return best


def _row(label, seconds, model, converged):
    solver = getattr(model, "solver_", model.solver)
    mark = "✓" if converged else "✗"
    return f"| {label} | {solver} | {seconds:.3g} | {model.n_iter_} | {mark} | {model.risk_:.9g} |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args(argv)
    n = 10_000 if args.quick else 100_000
    X, y = text_like(n)
    quiet_fit(DROClassifier(max_iter=2, tol=0, random_state=0), X[:500], y[:500])
    t_dro = epoch_time(
        lambda k: DROClassifier(lam=1.0, rho=1e-2, max_iter=k, tol=0, random_state=0), X, y
    )
    sgd = SGDClassifier(loss="log_loss", max_iter=1, tol=None, random_state=0)
    t_sgd = best_time(lambda: quiet_fit(sgd, X, y))
    w = np.ones(X.shape[1])
    t_mv = best_time(lambda: X @ w, repeat=10)
    print(f"Sparse text-like data: n={n}, d={X.shape[1]}, nnz={X.nnz} (lam=1, rho=1e-2)")
    print("| DRO epoch (s) | SGDClassifier epoch (s) | X @ w (s) | DRO / SGD | DRO / X@w |")
    print("|---|---|---|---|---|")
    print(f"| {t_dro:.3f} | {t_sgd:.3f} | {t_mv:.4f} | {t_dro / t_sgd:.2f} | {t_dro / t_mv:.1f} |")

    print()
    print(
        "Default fits (lam=1, rho=1e-2, tol=1e-6; the shortest of two): the sparse matrix "
        "in float64 and float32; time, iterations (epochs for sgd), ✓ converged / ✗ "
        "ConvergenceWarning, the objective risk_."
    )
    print("| data | solver | fit (s) | iterations | converged | risk_ |")
    print("|---|---|---|---|---|---|")
    X32 = X.astype(np.float32)
    for label, data in (("CSR float64", X), ("CSR float32", X32)):
        fitted = default_fit(lambda: DROClassifier(lam=1.0, rho=1e-2, random_state=0), data, y)
        print(_row(label, *fitted))

    n_dense = 100_000 if args.quick else 1_000_000
    print()
    print(
        f"Dense data, n={n_dense}, d=20 (regression: lam = the median squared residual of "
        "least squares; classification: lam=0.3; rho=1e-2, tol=1e-6): the same fits on "
        "float64 and float32 copies of X (the shortest of two)."
    )
    print("| data | solver | fit (s) | iterations | converged | risk_ |")
    print("|---|---|---|---|---|---|")
    for task, Estimator in (("regression", DRORegressor), ("classification", DROClassifier)):
        X64, yd = dense(n_dense, task)
        if task == "regression":
            residuals = yd - LinearRegression().fit(X64, yd).predict(X64)
            lam = float(np.median(residuals**2))
        else:
            lam = 0.3
        X32d = X64.astype(np.float32)
        for solver in (None, "lbfgs", "sgd"):
            params = {} if solver is None else {"solver": solver}

            def make(Estimator=Estimator, lam=lam, params=params):
                return Estimator(lam=lam, rho=1e-2, random_state=0, **params)

            for dtype, data in (("float64", X64), ("float32", X32d)):
                label = f"{task} {dtype}" + ("" if solver is None else f" ({solver})")
                print(_row(label, *default_fit(make, data, yd)))


if __name__ == "__main__":
    main()
