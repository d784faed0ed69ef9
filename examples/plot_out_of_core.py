"""
Training on data larger than memory
===================================

``partial_fit`` takes one block of rows at a time, so the data never have to fit in
memory: here they live in a file on disk (a NumPy memmap, written block by block), and
each pass streams the blocks through :class:`~sklearn_lse.DRORegressor`. The objective on
the whole data is evaluated block by block too (only the per-sample losses, one number per
row, are kept).

On a Dask array the estimator goes further (last cell): ``fit`` takes the array itself and
runs Newton's method with every pass over the data a chunk-wise reduction on the workers,
all of them in parallel, so that only model-sized sums travel; connect a
``distributed.Client`` to a cluster's scheduler and the same code runs on many machines.
``dask_ml.wrappers.Incremental`` still streams the chunks through ``partial_fit``.

Set ``SKLEARN_LSE_QUICK=1`` for a small run.
"""

import os
import shutil
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np

from sklearn_lse import DRORegressor, kl_dro_risk

quick = os.environ.get("SKLEARN_LSE_QUICK") == "1"
n_samples, n_features, block = (50_000, 10, 10_000) if quick else (4_000_000, 20, 200_000)

# %%
# Write the data to disk, block by block
# --------------------------------------
# Each block is generated, written and dropped; the file holds ``n_samples`` rows.
folder = tempfile.mkdtemp()
path_X = os.path.join(folder, "X.dat")
path_y = os.path.join(folder, "y.dat")
X = np.lib.format.open_memmap(path_X, mode="w+", dtype=np.float64, shape=(n_samples, n_features))
y = np.lib.format.open_memmap(path_y, mode="w+", dtype=np.float64, shape=(n_samples,))
rng = np.random.default_rng(0)
coef = rng.normal(size=n_features)
for start in range(0, n_samples, block):
    rows = slice(start, min(start + block, n_samples))
    Xb = rng.normal(size=(rows.stop - rows.start, n_features))
    noise = rng.standard_t(5, size=Xb.shape[0]) * np.where(Xb[:, 0] > 1.5, 4.0, 1.0)
    X[rows], y[rows] = Xb, Xb @ coef + noise
X.flush()
y.flush()
del X, y
print(f"{n_samples} x {n_features} float64 on disk: {8 * n_samples * n_features / 1e6:.0f} MB")

# %%
# Stream the blocks through ``partial_fit``
# -----------------------------------------
# Three passes over the file, each block read from disk when it is used.
X = np.load(path_X, mmap_mode="r")
y = np.load(path_y, mmap_mode="r")
model = DRORegressor(lam=1.0, rho=1e-2, random_state=0)


def objective_on_disk(model, X, y):
    """The robust risk of the model on all the data, computed block by block."""
    losses = np.empty(n_samples)
    for start in range(0, n_samples, block):
        rows = slice(start, start + block)
        losses[rows] = (model.predict(np.asarray(X[rows])) - y[rows]) ** 2
    return kl_dro_risk(losses, model.lam_, rho=model.rho_)


order = np.random.default_rng(1).permutation(range(0, n_samples, block))
risks = []
for epoch in range(1, 4):
    t = time.perf_counter()
    for start in order:
        rows = slice(start, start + block)
        model.partial_fit(np.asarray(X[rows]), np.asarray(y[rows]))
    seconds = time.perf_counter() - t
    risks.append(objective_on_disk(model, X, y))
    print(f"pass {epoch}: robust risk {risks[-1]:.5f} ({seconds:.1f} s)")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(range(1, len(risks) + 1), risks, "o-")
ax.set(xlabel="pass over the file", ylabel="robust risk on all the data", xticks=[1, 2, 3])
ax.set_title("partial_fit, block by block from disk")
fig.tight_layout()

# %%
# The same on a Dask array, and on a cluster
# ------------------------------------------
# ``fit`` on the Dask array solves the same objective as the stream, on all the data at
# once: each Newton iteration is a few chunk-wise reductions (the losses, the threshold
# ``eta``, the gradient and the Hessian) computed where the chunks live. Its robust risk is
# the optimum that the passes above approach. ``Incremental`` feeds each chunk to
# ``partial_fit`` instead, one worker at a time (a true stream). On several machines,
# replace the ``LocalCluster`` by the address of a running scheduler,
# ``Client("tcp://scheduler:8786")``: the code is otherwise the same. The cluster here has
# worker threads, so that this file runs as it is; a script that starts worker processes
# (``processes=True``, the default) must put its work under
# ``if __name__ == "__main__":``, since every worker imports it.
try:
    import dask.array as da
    from dask_ml.wrappers import Incremental
    from distributed import Client, LocalCluster
except ImportError:  # pip install "sklearn-lse[dask]"
    print("dask, distributed and dask-ml are not installed: skipping the Dask cell")
else:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        with Client(cluster):
            Xd = da.from_array(X, chunks=(block, n_features))
            yd = da.from_array(y, chunks=block)
            t = time.perf_counter()
            direct = DRORegressor(lam=1.0, rho=1e-2).fit(Xd, yd)
            seconds = time.perf_counter() - t
            optimum = objective_on_disk(direct, X, y)
            print(
                f"Dask fit: robust risk {optimum:.5f} "
                f"({seconds:.1f} s, {direct.n_iter_} Newton iterations)"
            )
            gaps = ", ".join(f"{(risk - optimum) / optimum:.1e}" for risk in risks)
            print(f"relative gap of the passes of partial_fit to it: {gaps}")
            inc = Incremental(DRORegressor(lam=1.0, rho=1e-2, random_state=0))
            inc.fit(Xd, yd)
            print(
                f"Incremental, one pass: robust risk {objective_on_disk(inc.estimator_, X, y):.5f}"
            )

# %%
# Clean up the files.
del X, y
shutil.rmtree(folder)
