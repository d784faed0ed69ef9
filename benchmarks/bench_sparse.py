"""Speed of DROClassifier on sparse text-like data, against SGDClassifier on the same
matrix, measured side by side in one run.

The data: power-law (Zipf) word counts, 10^5 features, density 1e-3, log-scaled, labels
from a sparse linear model with noise.

    python benchmarks/bench_sparse.py            # n = 10^5 documents
    python benchmarks/bench_sparse.py --quick    # n = 10^4
"""

import argparse

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier

from sklearn_lse import DROClassifier

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


if __name__ == "__main__":
    main()
