"""Peak resident memory of a fit, relative to the size of X, dense and sparse.

Each fit runs in a fresh process that loads the data from disk; its resident memory is
read before ``fit`` and sampled every millisecond during it (Linux ``/proc/self/statm``),
so that the figure is what the fit itself adds.
"""

import multiprocessing as mp
import os
import tempfile
import threading
import time

import numpy as np
import scipy.sparse as sp

try:
    from .bench_sparse import text_like
except ImportError:  # run as a script
    from bench_sparse import text_like


def _resident_bytes():
    with open("/proc/self/statm") as f:  # Linux: pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler(threading.Thread):
    """The highest resident memory seen every millisecond while running (the process's
    own high-water mark would include compilation and loading)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _resident_bytes()
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, _resident_bytes())
            time.sleep(0.001)

    def stop(self):
        self.running = False
        self.join()
        return max(self.peak, _resident_bytes())


def _measure(kind, path, queue):
    import warnings

    from sklearn_lse import DROClassifier, DRORegressor

    warnings.simplefilter("ignore")  # the capped fits do not converge, on purpose
    y = np.load(path + "_y.npy")
    if kind == "dense":
        X = np.load(path + "_X.npy")
        nbytes = X.nbytes
        model = DRORegressor(lam=1.0, rho=1e-2, random_state=0)
    else:
        X = sp.load_npz(path + "_X.npz")
        nbytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
        model = DROClassifier(lam=1.0, rho=1e-2, random_state=0)
    type(model)(max_iter=2, tol=0.0, random_state=0).fit(X[:200], y[:200])  # compile
    base = _resident_bytes()
    sampler = _PeakSampler()
    sampler.start()
    model.set_params(max_iter=5, tol=0.0).fit(X, y)  # a fixed amount of work
    queue.put((nbytes, sampler.stop() - base))


def measure(kind, n, d):
    """Make the data here, save them, and measure the fit in a fresh process that only
    loads them (so that making them sets no earlier peak)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "data")
        if kind == "dense":
            rng = np.random.default_rng(0)
            X = rng.normal(size=(n, d))
            np.save(path + "_X.npy", X)
            np.save(path + "_y.npy", X @ rng.normal(size=d) + rng.standard_t(3, size=n))
        else:
            X, y = text_like(n, n_features=d)
            sp.save_npz(path + "_X.npz", X, compressed=False)
            np.save(path + "_y.npy", y)
        del X
        context = mp.get_context("spawn")
        queue = context.Queue()
        process = context.Process(target=_measure, args=(kind, path, queue))
        process.start()
        process.join()
        return queue.get()


def report(quick):
    cases = [("dense", 100_000 if quick else 1_000_000, 20), ("sparse", 100_000, 100_000)]
    lines = [
        "Peak resident memory that a fit adds (5 epochs), relative to the memory of X:",
        "",
        "| data | n | d | X (MB) | fit adds (MB) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for kind, n, d in cases:
        nbytes, added = measure(kind, n, d)
        lines.append(
            f"| {kind} | {n} | {d} | {nbytes / 1e6:.0f} | {added / 1e6:.0f} | "
            f"{added / nbytes:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(quick=False))
