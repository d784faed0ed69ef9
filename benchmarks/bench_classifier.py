"""Speed of DROClassifier against scikit-learn, measured side by side in one run.

Prints (a) the time of one SGD epoch of DROClassifier divided by one epoch of
SGDClassifier(loss="log_loss") (which runs one-vs-rest for several classes) and by one
``X @ W`` pass, binary and 10 classes at n = 2e5, d = 100; and (b) the wall time of
DROClassifier(solver="sgd") to reach 1e-3 relative suboptimality of its objective, and of
its default fit, against LogisticRegression(solver="lbfgs") at n = 1e6, d = 20.

    python benchmarks/bench_classifier.py            # the sizes above
    python benchmarks/bench_classifier.py --quick    # small sizes, for a smoke run
"""

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier

from sklearn_lse import DROClassifier

try:
    from .common import best_time, epoch_time, quiet_fit, time_to_tolerance
except ImportError:  # run as a script
    from common import best_time, epoch_time, quiet_fit, time_to_tolerance


def make(n, d, n_classes, seed=0):
    """Softmax-linear labels with Gumbel noise (a multinomial logit model)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, n_classes)) / np.sqrt(d) * 2
    y = np.argmax(X @ W + rng.gumbel(size=(n, n_classes)), axis=1)
    return X, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args(argv)
    n_epoch, d_epoch = (5_000, 20) if args.quick else (200_000, 100)
    n_fit, d_fit = (20_000, 10) if args.quick else (1_000_000, 20)
    quiet_fit(DROClassifier(max_iter=2, tol=0, random_state=0), *make(300, 3, 2))
    quiet_fit(DROClassifier(max_iter=2, tol=0, random_state=0), *make(300, 3, 3))

    print(f"One epoch at n={n_epoch}, d={d_epoch} (lam=1, rho=1e-2):")
    print(
        "| classes | DRO epoch (s) | SGDClassifier epoch (s) | X @ W (s) | DRO / SGD | DRO / X@W |"
    )
    print("|---|---|---|---|---|---|")
    for n_classes in (2, 10):
        X, y = make(n_epoch, d_epoch, n_classes)
        t_dro = epoch_time(
            lambda k: DROClassifier(
                lam=1.0, rho=1e-2, solver="sgd", max_iter=k, tol=0, random_state=0
            ),
            X,
            y,
        )
        sgd = SGDClassifier(loss="log_loss", max_iter=1, tol=None, random_state=0)
        t_sgd = best_time(lambda sgd=sgd, X=X, y=y: quiet_fit(sgd, X, y))
        W = np.ones((d_epoch, 1 if n_classes == 2 else n_classes))
        t_mv = best_time(lambda X=X, W=W: X @ W, repeat=10)
        print(
            f"| {n_classes} | {t_dro:.3f} | {t_sgd:.3f} | {t_mv:.4f} | "
            f"{t_dro / t_sgd:.2f} | {t_dro / t_mv:.1f} |"
        )

    print()
    print(f"Fit time at n={n_fit}, d={d_fit} (DRO: lam=1, rho=1e-2, alpha=1e-4):")
    print(
        "| classes | DRO to 1e-3 (s) | DRO default (s) | LogisticRegression lbfgs (s) "
        "| DRO to 1e-3 / LR | DRO default / LR |"
    )
    print("|---|---|---|---|---|---|")
    for n_classes in (2, 10):
        X, y = make(n_fit, d_fit, n_classes, seed=1)
        optimum = DROClassifier(lam=1.0, rho=1e-2, solver="lbfgs", tol=1e-10).fit(X, y).risk_

        def dro(k):
            return DROClassifier(
                lam=1.0, rho=1e-2, solver="sgd", max_iter=k, tol=0, random_state=0
            )

        t_tol, k = time_to_tolerance(dro, X, y, optimum, 1e-3)
        t = time.perf_counter()
        DROClassifier(lam=1.0, rho=1e-2, random_state=0).fit(X, y)
        t_default = time.perf_counter() - t
        t = time.perf_counter()
        LogisticRegression(C=1 / (1e-4 * n_fit)).fit(X, y)
        t_lr = time.perf_counter() - t
        print(
            f"| {n_classes} | {t_tol:.2f} ({k} epochs) | {t_default:.2f} | {t_lr:.2f} | "
            f"{t_tol / t_lr:.2f} | {t_default / t_lr:.2f} |"
        )


if __name__ == "__main__":
    main()
