"""The distributed fit: ``fit`` on dask arrays and dask DataFrames.

Newton's method on the relaxed objective with eta eliminated, as in
:mod:`sklearn_lse._newton` (continuation in lam, the 1-D solve for eta at every point),
with every pass over the data a chunk-wise reduction on the workers. The chunks are
grouped by the worker that holds them, one group per worker thread (a worker holding more
than its share gives copies of the extra chunks to the others, once): a pass is one task
per group, which reads its chunks where they live, in blocks of rows, and returns a result
of the size of the model (the Hessian's sums, the gradient, three numbers per chunk for a
round of the 1-D solve for eta), which the client adds up. It is parallel by
construction: every worker thread computes its share of every pass at once, and a round
costs the client a few milliseconds whatever the number of chunks. The per-sample losses
of the current point (one number per row) stay on the workers, for the rounds of the 1-D
solve; nothing else of the size of the data is kept, and X never reaches the client.

A point costs one pass over X (the losses) and a few rounds over the losses (Newton's
method on the log of the mass, stopped where the objective is within 1e-15 of its minimum
in eta, the objective computed with the round predicted to be the last; the exact risk,
``rho = 0``, in one round); a Newton iteration, one more pass over X for the gradient and
the Hessian, whose gradient is corrected for the 1-D solve's residual. A new stage of the
lam path reuses the losses of its starting point.

The tasks are module-level functions of NumPy arrays and scalars: they pickle to worker
processes and to remote workers, which compile (or load from their Numba cache) the
kernels of :mod:`sklearn_lse._kernels` on first use (:func:`warm_up` does it ahead, e.g.
``client.run(warm_up)`` before a timed fit). dask is imported here only, and only when a
fit is given a dask collection.
"""

import math

import numpy as np

from ._kernels import (
    LOG_LOSS,
    MULTINOMIAL,
    SQUARED_ERROR,
    _log_mass,
    curvature_matrix,
    pointwise_losses,
    relaxation_terms,
    relaxed_divergence,
    relaxed_value,
)
from ._newton import _STAGE_FACTOR, _STAGE_TOL, next_stage, superlinear
from ._problem import to_model, to_standard
from ._result import Log
from ._stream import solve

_MAX_HALVINGS = 30


def is_dask_collection(X):
    """Whether ``X`` is a dask collection (without importing dask when it is not)."""
    module = type(X).__module__ or ""
    if not module.startswith("dask"):
        return False
    import dask

    return dask.is_dask_collection(X)


# --------------------------------------------------------------------------------------
# Tasks: one chunk of rows each, model-sized results
# --------------------------------------------------------------------------------------
def _as_float(X):
    X = np.asarray(X)
    if X.dtype not in (np.float64, np.float32):
        X = X.astype(np.float64)
    return np.ascontiguousarray(X)


def _check_chunk(X, y, sample_weight):
    """Rows, finiteness and the column moments (count, mean, sum of squared deviations)
    of one chunk (X read twice, in blocks for the deviations)."""
    X = _as_float(X)
    n, d = X.shape
    total = X.sum(axis=0, dtype=np.float64)
    # a finite sum has only finite terms; a sum that overflows is checked term by term
    finite = math.isfinite(float(total.sum())) or bool(np.all(np.isfinite(X)))
    if y is not None and y.dtype.kind in "fc":
        finite = finite and bool(np.all(np.isfinite(y)))
    mean = total / n if n else np.zeros(d)
    m2 = np.zeros(d)
    if finite:
        buffer = np.empty((min(n, _BLOCK), d))
        for start in range(0, n, _BLOCK):
            Xb = X[start : start + _BLOCK]
            deviation = buffer[: Xb.shape[0]]
            np.subtract(Xb, mean, out=deviation)
            m2 += np.einsum("ij,ij->j", deviation, deviation)
    if sample_weight is not None:
        sw = np.asarray(sample_weight, dtype=np.float64)
        finite = finite and bool(np.all(np.isfinite(sw))) and bool(np.all(sw >= 0))
        weight = float(sw.sum())
    else:
        weight = float(n)
    labels = None if y is None or y.dtype.kind in "fc" else np.unique(y)
    return {"n": n, "finite": finite, "mean": mean, "m2": m2, "weight": weight, "labels": labels}


def _targets(y, classes, n_outputs):
    """Float targets of the kernels: y itself for regression, -1/+1 for two classes, the
    class index for more."""
    if classes is None:
        return np.asarray(y, dtype=np.float64)
    index = np.searchsorted(classes, y)
    if n_outputs == 1:
        return np.where(index == 1, 1.0, -1.0)
    return index.astype(np.float64)


def _weights(y, sample_weight, classes, class_weights, total):
    """The empirical weights of a chunk (sample weight times class weight, divided by
    the total over all the data)."""
    n = y.shape[0]
    p = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if class_weights is not None:
        p = p * class_weights[np.searchsorted(classes, y)]
    return p / total


def _class_totals(y, sample_weight, classes):
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    return np.bincount(np.searchsorted(classes, y), weights=sw, minlength=classes.shape[0])


def _gram(X, t, p, mean, inv_scale):
    """Sums of the least-squares start on standardised rows: ``Z^T diag(p) Z`` and
    ``Z^T (p t)``."""
    X = _as_float(X)
    d = X.shape[1]
    gram, moment = np.zeros((d + 1, d + 1)), np.zeros(d + 1)
    uniform = p.shape[0] == 1
    buffer = None if uniform else np.empty((min(X.shape[0], _BLOCK), d + 1))
    for start, Z in _standardised_blocks(X, mean, inv_scale):
        m = Z.shape[0]
        tb = t[start : start + m]
        pZ = Z if uniform else np.multiply(Z, p[start : start + m, None], out=buffer[:m])
        gram += Z.T @ pZ
        moment += pZ.T @ tb
    if uniform:
        gram *= p[0]
        moment *= p[0]
    return gram, moment


# rows per block of a pass over a chunk (the block's standardised rows and per-sample
# arrays stay in the cache). The tasks allocate their per-block arrays once per chunk:
# dask's workers set MALLOC_TRIM_THRESHOLD_, which leaves glibc's mmap threshold at
# 128 kB, so that a large temporary allocated per block costs its page faults every time.
_BLOCK = 2048


def _block_rows(d, K):
    """Rows per block for a model of ``K`` outputs on ``d`` features (the multinomial
    curvature's blocks hold ``(d + 1) K^2`` numbers per row)."""
    return _BLOCK if K == 1 else int(max(64, 2**21 // ((d + 1) * K * K)))


def _predict(Xb, w, b, out, scratch):
    """``Xb @ w + b`` written to ``out``, in float64 (``scratch`` holds float32 rows
    converted; None for float64 ones)."""
    if scratch is not None:
        np.copyto(scratch[: Xb.shape[0]], Xb)
        Xb = scratch[: Xb.shape[0]]
    np.matmul(Xb, w, out=out)
    out += b
    return out


def _standardised_blocks(X, mean, inv_scale, block=_BLOCK):
    """``(start, Z)`` for the blocks of rows of ``X``, ``Z = [(x - mean) * inv_scale, 1]``
    (one buffer, overwritten from block to block)."""
    n, d = X.shape
    buffer = np.empty((min(n, block), d + 1))
    buffer[:, -1] = 1.0
    centred = np.empty((min(n, block), d))  # (in place, numpy would allocate per block)
    for start in range(0, n, block):
        Xb = X[start : start + block]
        m = Xb.shape[0]
        Z = buffer[:m]
        np.subtract(Xb, mean, out=centred[:m])
        np.multiply(centred[:m], inv_scale, out=Z[:, :-1])
        yield start, Z


def _losses(X, t, w, b, code, eps):
    """The per-sample losses of a chunk (kept on its worker), in the blocks of
    :func:`_system`."""
    X = _as_float(X)
    n, d = X.shape
    K = w.shape[1]
    block = _block_rows(d, K)
    rows = min(n, block)
    loss = np.empty(n)
    pred, dl, ddl = np.empty((rows, K)), np.empty((rows, K)), np.empty((rows, K))
    scratch = None if X.dtype == np.float64 else np.empty((rows, d))
    for start in range(0, n, block):
        Xb = X[start : start + block]
        m = Xb.shape[0]
        F = _predict(Xb, w, b, pred[:m], scratch)
        pointwise_losses(code, F, t[start : start + m], eps, loss[start : start + m],
                         dl[:m], ddl[:m])  # fmt: skip
    return loss


def _eta_parts(loss, p, eta, lam, rho, with_range=False, mass=True, terms=True):
    """The chunk's part of a round of the 1-D solve for eta, in a form whose combination
    over the chunks loses nothing (:func:`_combine_eta`); one pass over the losses.

    For ``rho > 0`` and a finite ``eta``: ``(g, dg, terms)``, with ``g = log sum p c`` and
    its derivative in eta ``-sum p k / sum p c`` (the kernels' one-pass ``_log_mass``,
    which moves to the log domain where the mass underflows) and ``terms = sum p term``,
    the relaxed sum (the objective is eta plus its total); ``g = -inf`` for a chunk
    without a supported loss; None for a non-finite eta or ``lam=None`` (the range
    only); ``g = dg = 0`` without ``mass``, ``terms = nan`` without ``terms``. For
    ``rho = 0`` (eta unused):
    ``(m, total, e)``, the largest supported loss, ``sum p`` and
    ``sum p expm1((l - m) / lam)`` (the exact risk without cancellation at large lam, as
    in :func:`sklearn_lse._kernels.exact_risk`). With ``with_range``, also the smallest
    and the largest supported loss and ``sum p l``."""
    uniform = p.shape[0] == 1
    if uniform:
        supported, weights = loss, p[0]
    elif with_range or rho == 0 or not (p.shape[0] and p.max() > 0):
        keep = p > 0
        supported, weights = loss[keep], p[keep]
    else:  # not needed (the kernels skip the unsupported losses)
        supported, weights = loss, p
    if not supported.shape[0]:
        parts = (
            None
            if lam is None or (rho > 0 and not math.isfinite(eta))
            else (np.array([-np.inf, 0.0, 0.0]))
        )
    elif lam is None:
        parts = None
    elif rho == 0:
        m = float(supported.max())
        total = float(weights * supported.shape[0]) if uniform else float(weights.sum())
        e = np.subtract(supported, m)
        e /= lam
        np.expm1(e, out=e)
        e = float(weights * e.sum()) if uniform else float(weights @ e)
        parts = np.array([m, total, e])
    elif math.isfinite(eta):
        g, dg = _log_mass(loss, p, eta, lam, rho)[:2] if mass else (0.0, 0.0)
        value = relaxed_value(loss, p, eta, lam, rho) - eta if terms else np.nan
        parts = np.array([g, dg, value])
    else:
        parts = None
    if not with_range:
        return parts
    if not supported.shape[0]:
        return parts, (np.inf, -np.inf, 0.0)
    mean = float(weights * supported.sum()) if uniform else float(weights @ supported)
    return parts, (float(supported.min()), float(supported.max()), mean)


def _combine_eta(parts, lam, rho):
    """The chunks' parts of :func:`_eta_parts` combined. For ``rho > 0``: ``(g, dg,
    terms)`` of all the data (the masses added in the log domain). For ``rho = 0``:
    ``(eta, terms)``, the exact risk ``lam log sum p exp(l / lam)`` (shifted by the largest
    loss, in ``log1p`` form while the sum is not near -1, as in
    :func:`sklearn_lse._kernels.exact_risk`) and ``lam sum p expm1((l - eta) / lam)`` (zero
    to rounding)."""
    parts = [part for part in parts if part[0] > -np.inf]
    if rho > 0:
        m = max(part[0] for part in parts)
        scales = [math.exp(part[0] - m) for part in parts]
        s = sum(scales)
        dg = sum(scale * part[1] for scale, part in zip(scales, parts, strict=True)) / s
        return m + math.log(s), dg, sum(part[2] for part in parts)
    m = max(part[0] for part in parts)
    total = sum(part[1] for part in parts)

    def residual(shift):  # sum p expm1((l - shift) / lam)
        return sum(part[2] * math.exp((part[0] - shift) / lam)
                   + part[1] * math.expm1((part[0] - shift) / lam) for part in parts)  # fmt: skip

    # the weights' sum differs from 1 by rounding (ignored) or for a subset of the data
    deficit = total - 1.0 if abs(total - 1.0) > 1e-12 else 0.0
    s = residual(m) + deficit
    if s > -0.5:
        eta = m + lam * math.log1p(s)
    else:
        eta = m + lam * math.log(
            sum((part[1] + part[2]) * math.exp((part[0] - m) / lam) for part in parts)
        )
    return eta, lam * (residual(eta) + deficit)


def _divergence_sums(loss, p, eta, lam, rho):
    """The chunk's part of the divergence of the worst case (see
    :func:`sklearn_lse._kernels.relaxed_divergence`)."""
    return float(relaxed_divergence(loss, p, eta, lam, rho))


def _system(X, t, p, w, b, eta, code, eps, lam, rho, mean, inv_scale):
    """The gradient (``(d + 1, K)``, in the standardised coordinates, without the
    penalty), the joint Hessian in ``(V, b_c, eta)`` and the mass ``sum p c`` at eta of
    one chunk: one pass over its rows, in blocks."""
    X = _as_float(X)
    n = X.shape[0]
    d, K = w.shape
    D = (d + 1) * K
    block = _block_rows(d, K)
    rows = min(n, block)
    uniform = p.shape[0] == 1
    pred, dl, ddl = np.empty((rows, K)), np.empty((rows, K)), np.empty((rows, K))
    loss, c, k, pc, pk, a = (np.empty(rows) for _ in range(6))
    weights = np.full(rows, p[0]) if uniform else None
    R = np.empty((rows, 2 * K))
    ZA = np.empty((rows, (d + 1) * K * K))
    A = None if K == 1 else np.empty((rows, K, K))
    scratch = None if X.dtype == np.float64 else np.empty((rows, d))
    sums = np.zeros((d + 1, 2 * K))  # the gradient, then the cross terms with eta
    H = np.zeros((d + 1, K, d + 1, K))
    mass = curvature = 0.0
    for start, Z in _standardised_blocks(X, mean, inv_scale, block):
        m = Z.shape[0]
        F = _predict(X[start : start + m], w, b, pred[:m], scratch)  # as in _losses
        L, G, GG = loss[:m], dl[:m], ddl[:m]
        pointwise_losses(code, F, t[start : start + m], eps, L, G, GG)
        C, Kc = c[:m], k[:m]
        relaxation_terms(L, eta, 0.0, lam, rho, C, Kc)
        pw = weights[:m] if uniform else p[start : start + m]
        PC, PK = np.multiply(pw, C, out=pc[:m]), np.multiply(pw, Kc, out=pk[:m])
        Rb = R[:m]
        np.multiply(PC[:, None], G, out=Rb[:, :K])
        np.multiply(PK[:, None], G, out=Rb[:, K:])
        sums += Z.T @ Rb
        mass += float(PC.sum())
        curvature += float(PK.sum())
        if K == 1:  # curvature_matrix's coefficient for one output
            Ab = np.multiply(G[:, 0], G[:, 0], out=a[:m])
            Ab *= PK
            np.multiply(PC, GG[:, 0], out=C)  # c is not needed any more
            Ab += C
            H[:, 0, :, 0] += Z.T @ np.multiply(Z, Ab[:, None], out=ZA[:m])
        else:
            Ab = A[:m]
            curvature_matrix(code, pw, C, Kc, G, GG, False, Ab)
            ZAb = ZA[:m].reshape(m, d + 1, K, K)
            np.multiply(Z[:, :, None, None], Ab[:, None, :, :], out=ZAb)
            H += (Z.T @ ZA[:m]).reshape(d + 1, d + 1, K, K).transpose(0, 2, 1, 3)
    M = np.empty((D + 1, D + 1))
    M[:D, :D] = H.reshape(D, D)
    M[:D, D] = M[D, :D] = -sums[:, K:].ravel()
    M[D, D] = curvature
    return np.ascontiguousarray(sums[:, :K]), M, mass


def _add(*parts):
    """The sum of the parts (tuples, arrays or numbers)."""
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(_add(*items) for items in zip(*parts, strict=True))
    total = first
    for part in parts[1:]:
        total = total + part
    return total


def warm_up():
    """Run every task once on a few rows, so that the worker that runs this has imported
    the package and compiled (or loaded from the Numba cache) the kernels the tasks call:
    ``client.run(warm_up)`` before a timed fit."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 2))
    y = X[:, 0] + rng.normal(size=6)
    p_uniform, p = np.array([1.0 / 6]), np.full(6, 1.0 / 6)
    mean, inv_scale = X.mean(axis=0), 1.0 / X.std(axis=0)
    _check_chunk(X, y, None)
    _gram(X, y, p_uniform, mean, inv_scale)
    for K, code in ((1, SQUARED_ERROR), (1, LOG_LOSS), (3, MULTINOMIAL)):
        t = {LOG_LOSS: np.where(y > 0, 1.0, -1.0), MULTINOMIAL: np.arange(6) % 3.0}.get(code, y)
        w, b = np.zeros((2, K)), np.zeros(K)
        for weights in (p_uniform, p):
            loss = _losses(X, t, w, b, code, 0.0)
            for rho in (0.0, 1e-2):
                _eta_parts(loss, weights, float(np.mean(loss)), 1.0, rho, with_range=True)
                _divergence_sums(loss, weights, float(np.mean(loss)), 1.0, rho)
                _system(X, t, weights, w, b, float(np.mean(loss)), code, 0.0, 1.0, rho,
                        mean, inv_scale)  # fmt: skip
    return True


# --------------------------------------------------------------------------------------
# The driver (client side)
# --------------------------------------------------------------------------------------
class DaskData:
    """The chunks of a fit on dask collections (persisted on the workers), and the
    reductions over them."""

    def __init__(self, X, y, sample_weight):
        import dask
        import dask.array as da

        self.dask = dask
        self.delayed = dask.delayed
        names = None
        if hasattr(X, "to_dask_array"):  # a dask DataFrame
            names = np.asarray(X.columns, dtype=object)
            X = X.to_dask_array(lengths=True)
        if hasattr(y, "to_dask_array"):
            y = y.to_dask_array(lengths=True)
        if hasattr(sample_weight, "to_dask_array"):
            sample_weight = sample_weight.to_dask_array(lengths=True)
        if not isinstance(X, da.Array) or X.ndim != 2:
            raise ValueError(
                f"X must be a 2-D dask array or a dask DataFrame, got {type(X).__name__}"
                + (f" of {X.ndim} dimensions." if hasattr(X, "ndim") else ".")
            )
        if any(math.isnan(c) for c in X.chunks[0]):
            X = X.compute_chunk_sizes()
        X = X.rechunk({1: -1})
        y = da.asarray(y) if not isinstance(y, da.Array) else y
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D, of shape (n_samples,); got shape {y.shape}.")
        if any(math.isnan(c) for c in y.chunks[0]):
            y = y.compute_chunk_sizes()
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}.")
        y = y.rechunk((X.chunks[0],))
        if sample_weight is not None:
            sample_weight = da.asarray(sample_weight).rechunk((X.chunks[0],))
            if sample_weight.shape != y.shape:
                raise ValueError(f"sample_weight must have shape {y.shape}.")
        self.feature_names = names
        self.shape = X.shape
        self.dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        # the chunks stay on the workers for the fit (the collections hold them)
        self.collections = dask.persist(X, y, sample_weight)
        X, y, sample_weight = self.collections
        X = list(X.to_delayed(optimize_graph=False).ravel())
        y = list(y.to_delayed(optimize_graph=False).ravel())
        sw = (
            [None] * len(X)
            if sample_weight is None
            else list(sample_weight.to_delayed(optimize_graph=False).ravel())
        )
        self.n_chunks = len(X)
        self._held = []
        self.client = _client()
        if self.client is None:  # dask's local schedulers: a task per chunk
            groups = [[i] for i in range(len(X))]
        else:  # futures, grouped by the worker that holds them
            X, y = self.client.compute(X), self.client.compute(y)
            if sample_weight is not None:
                sw = self.client.compute(sw)
            groups, (X, y, sw) = _groups(self.client, [X, y, sw])
        self.groups = groups
        self.X, self.y, self.sw = ([[column[i] for i in group] for group in groups]
                                   for column in (X, y, sw))  # fmt: skip

    def constant(self, value):
        """A column of ``value`` for every chunk."""
        return [[value] * len(group) for group in self.groups]

    def map(self, func, *columns, reduce=None, **kwargs):
        """``func`` applied to every chunk, one task per group of chunks (see
        :func:`_groups`), lazily: futures with a distributed client, dask Delayed
        otherwise. Each task returns the list of its chunks' results, or with ``reduce``,
        their combination by it."""
        groups = list(zip(*columns, strict=True))
        if self.client is not None:  # one message to the scheduler for all the tasks
            n = len(groups)
            return self.client.map(_on_group, [func] * n, [reduce] * n, groups, [kwargs] * n,
                                   pure=False)  # fmt: skip
        delayed = self.delayed(_on_group, pure=False)
        return [delayed(func, reduce, cols, kwargs) for cols in groups]

    def _results(self, tasks):
        if self.client is not None:
            # the futures of a round's (small) results are kept until the fit ends:
            # released at once, they would send the scheduler a message just before the
            # next round's tasks, which the client's batched stream then holds back
            # for its interval (10 ms)
            self._held.append(tasks)
            return self.client.gather(tasks)
        return list(self.dask.compute(*tasks))

    def reduce(self, func, *columns, combine=None, **kwargs):
        """``func`` on every chunk on the workers, combined (summed by default) on the
        worker within each group of chunks; the groups' results (as many as the workers'
        threads, model-sized) are combined in the client."""
        combine = _add if combine is None else combine
        return combine(*self._results(self.map(func, *columns, reduce=combine, **kwargs)))

    def gather(self, func, *columns, **kwargs):
        """``func`` on every chunk; the list of the (small) results, in chunk order within
        each group."""
        return [part for group in self._results(self.map(func, *columns, **kwargs))
                for part in group]  # fmt: skip

    def persist(self, func, *columns, **kwargs):
        """``func`` on every chunk, its results kept on the workers (a column: one future
        per group of chunks, holding the list of their results)."""
        if self.client is not None:
            return self.map(func, *columns, **kwargs)
        return list(self.dask.persist(*self.map(func, *columns, **kwargs)))


def _on_group(func, reduce, columns, kwargs):
    """The task of a group of chunks: ``func`` on each chunk (the columns hold one list
    per argument), the results as a list or combined by ``reduce``."""
    results = [func(*args, **kwargs) for args in zip(*columns, strict=True)]
    return results if reduce is None else reduce(*results)


def _identity(x):
    return x


def _groups(client, columns):
    """The chunks (indices) in groups, as many for each worker as it has threads, each of
    chunks that the worker holds: a round over the data is then one task per worker
    thread, run where its chunks are, and costs a few milliseconds of scheduling instead
    of a task (and a tree of additions) per chunk. Chunks of a worker that holds more
    than its share (by threads) are copied once to the workers that hold less, so that
    the workers' passes take the same time. ``columns`` are lists of futures, one per
    chunk (X first, placed by it); returns the groups and the columns with the copies."""
    from distributed import wait

    futures = columns[0]
    wait(futures)
    holders = client.who_has(futures)
    threads = {worker: max(int(n), 1) for worker, n in client.nthreads().items()}
    held = {worker: [] for worker in threads}
    lost = []
    for i, future in enumerate(futures):
        workers = [worker for worker in holders.get(future.key, ()) if worker in held]
        if workers:
            held[min(workers, key=lambda w: len(held[w]) / threads[w])].append(i)
        else:
            lost.append(i)
    total = sum(threads.values())
    share = {worker: len(futures) * n / total for worker, n in threads.items()}
    moves = {}
    for i in lost:  # held by no known worker: placed where the share is not reached
        worker = min(held, key=lambda w: len(held[w]) - share[w])
        held[worker].append(i)
        moves[i] = worker
    while True:
        source = max(held, key=lambda w: len(held[w]) - share[w])
        target = min(held, key=lambda w: len(held[w]) - share[w])
        if len(held[source]) - share[source] < 1 or share[target] - len(held[target]) < 1:
            break
        i = held[source].pop()
        held[target].append(i)
        moves[i] = target
    columns = [list(column) for column in columns]
    for i, worker in moves.items():
        for column in columns:
            if column[i] is not None:
                column[i] = client.submit(_identity, column[i], workers=[worker], pure=False)
    groups = []
    for worker, chunks in held.items():
        groups.extend(sorted(chunks[j :: threads[worker]]) for j in range(threads[worker]))
    return [group for group in groups if group], columns


def _client():
    """The distributed client in use, or None (dask's local schedulers)."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:
        return None


class DistributedProblem:
    """The data (on the workers) and hyperparameters of a distributed fit, with the
    passes a Newton iteration needs."""

    def __init__(self, data, targets, p, *, n_outputs, loss, eps, lam, rho, alpha,
                 fit_intercept, mean, inv_scale):  # fmt: skip
        self.data, self.t, self.p = data, targets, p
        self.n_outputs, self.loss, self.eps = n_outputs, loss, eps
        self.lam, self.rho, self.alpha = lam, rho, alpha
        self.fit_intercept, self.mean, self.inv_scale = fit_intercept, mean, inv_scale
        self.d = data.shape[1]

    @property
    def dim(self):
        return (self.d + 1) * self.n_outputs + 1

    def penalty(self, w):
        return 0.5 * self.alpha * float(np.sum(np.square(w))) if self.alpha else 0.0

    def to_model(self, u):
        return to_model(self, u)

    def to_standard(self, w, b):
        return to_standard(self, w, b)

    def losses(self, w, b):
        """The per-sample losses of (W, b), kept on the workers (one pass over X)."""
        return self.data.persist(_losses, self.data.X, self.t, w=w, b=b, code=self.loss,
                                 eps=self.eps)  # fmt: skip

    def spread(self, losses):
        """The smallest and largest supported loss and ``sum p l`` (one round)."""
        return _combine_range(
            self.data.gather(
                _eta_parts, losses, self.p, eta=np.nan, lam=None, rho=self.rho, with_range=True
            )  # fmt: skip
        )[1]

    def point(self, w, b, lam, eta_guess=np.nan, losses=None, spread=None, close=False):
        """The losses of (W, b) (kept on the workers; given, for the same (W, b) at
        another lam), the optimal eta and the objective at ``lam``: one pass for the
        losses, then the rounds of the 1-D solve for eta (the range of the losses with the
        first; ``close``: the guess is a prediction that may need no further round)."""
        if losses is None:
            losses = self.losses(w, b)
        eta, terms, spread = self._solve_eta(losses, lam, eta_guess, spread, close)
        value = eta + terms + self.penalty(w)
        return {"w": w, "b": b, "eta": eta, "value": value, "losses": losses,
                "range": spread}  # fmt: skip

    def _round(self, losses, lam, eta, with_range=False, mass=True, terms=True):
        """One round of the 1-D solve: :func:`_combine_eta` of the chunks' parts at eta
        (None for a non-finite eta and ``rho > 0``), with the range if asked; ``mass`` and
        ``terms`` say which of the parts to compute (see :func:`_eta_parts`)."""
        parts = self.data.gather(_eta_parts, losses, self.p, eta=eta, lam=lam, rho=self.rho,
                                 with_range=with_range, mass=mass, terms=terms)  # fmt: skip
        spread = None
        if with_range:
            parts, spread = _combine_range(parts)
        combined = None if parts[0] is None else _combine_eta(parts, lam, self.rho)
        return (combined, spread) if with_range else combined

    def _solve_eta(self, losses, lam, guess, spread=None, close=False):
        """The optimal eta (root of ``g = log sum p c``), ``sum p term`` there and the
        range of the losses (computed with the first round unless given). Newton's method
        on ``g`` (nearly linear in eta), safeguarded on the bracket ``[min l, max l]``, one
        round per iteration (a task per worker thread, three numbers per chunk). It stops
        at an eta whose objective is within 1e-15 of the minimum in eta (relative to the
        larger of eta and the mean loss, below the objective), to second order,
        ``(1 - S)^2 / (2 sum p k)`` with ``S = sum p c``; :meth:`system` corrects the
        gradient for the remaining ``1 - S`` (to first order, exact to second). The
        relaxed sum (the objective), which costs more than the mass, is computed with the
        round that Newton's quadratic convergence predicts to be the last (``|g|`` falling
        to at most ``g^2 / 2``; the first round if the guess is ``close``), or by a round of
        its own. For ``rho = 0``, the exact risk
        ``lam log sum p exp(l / lam)``: one round."""
        if self.rho == 0:
            if spread is None:
                (eta, terms), spread = self._round(losses, lam, np.nan, with_range=True)
            else:
                eta, terms = self._round(losses, lam, np.nan)
            return eta, terms, spread
        if spread is None:
            sums, spread = self._round(losses, lam, guess, with_range=True, terms=close)
        else:
            sums = self._round(losses, lam, guess, terms=close) if math.isfinite(guess) else None
        lo, hi, mean_loss = spread
        if not hi > lo:
            return hi, self._round(losses, lam, hi, mass=False)[2], spread
        # every c_i >= 1 at eta = min l (the weights sum to 1), every c_i <= 1 at max l
        left = lo - 1e-12 * (abs(lo) + lam)
        right = hi
        eta = guess
        if sums is None or not left < eta < right:
            eta = min(max(mean_loss, left), right)
            sums = self._round(losses, lam, eta, terms=False)
        floor = 1e-15 * max(abs(eta), abs(mean_loss), 1e-300)

        def near(g, curvature):  # the objective's distance to its minimum is below floor
            mass = math.exp(g)
            return (1.0 - mass) ** 2 <= 2.0 * curvature * floor

        for _ in range(100):
            g, dg, terms = sums
            if g > 0:
                left = eta
            elif g < 0:
                right = eta
            curvature = -dg * math.exp(g)
            if abs(g) <= 1e-13 or near(g, curvature):
                break
            new = eta - g / dg if dg < 0 else np.nan
            if not left < new < right:
                new = 0.5 * (left + right)
            if abs(new - eta) <= 1e-15 * (abs(eta) + lam):
                break
            eta = new
            last = abs(g) <= 1e-6 or near(0.5 * g * g, curvature)
            sums = self._round(losses, lam, eta, terms=last)
        if math.isnan(terms):
            terms = self._round(losses, lam, eta, mass=False)[2]
        return eta, terms, spread

    def system(self, pt, lam):
        """The gradient, the joint Hessian at a point and the residual ``1 - S`` of its
        1-D solve (``S = sum p c``, the objective's derivative in eta): one pass. The
        gradient is that of the objective with eta eliminated: the gradient at the
        point's eta, corrected by ``-h (1 - S) / h_eta`` (``h`` and ``h_eta`` the
        Hessian's cross and eta-eta terms), which moves it to the optimal eta to first
        order."""
        grad, M, mass = self.data.reduce(
            _system, self.data.X, self.t, self.p, w=pt["w"], b=pt["b"], eta=pt["eta"],
            code=self.loss, eps=self.eps, lam=lam, rho=self.rho, mean=self.mean,
            inv_scale=self.inv_scale,
        )  # fmt: skip
        d, K = self.d, self.n_outputs
        D = (d + 1) * K
        s = self.inv_scale
        grad = grad.copy()
        M = M.copy()
        if M[D, D] > 0:
            grad -= (M[:D, D] * ((1.0 - mass) / M[D, D])).reshape(grad.shape)
        if self.alpha:
            grad[:d] += self.alpha * (s[:, None] * pt["w"])
            index = np.arange(d * K)
            M[index, index] += self.alpha * np.repeat(s**2, K)
        return grad.ravel(), M, 1.0 - mass


def _combine_range(parts):
    """Split the chunks' ``(parts, range)`` of :func:`_eta_parts`: the parts, and the
    range of all the data."""
    parts, ranges = zip(*parts, strict=True)
    return list(parts), (
        min(r[0] for r in ranges),
        max(r[1] for r in ranges),
        sum(r[2] for r in ranges),
    )


def fit_distributed(prob, w, b, *, max_iter, tol, verbose, lam_start=None, eta_guess=np.nan):
    """Newton's method with continuation in lam and eta eliminated, every pass a
    chunk-wise reduction (see the module docstring); ``lam_start`` starts the path at a
    warm start's temperature. Returns (point, n_iter, converged, message, history).

    A small decrement is trusted as the suboptimality only where the quadratic model has
    just been verified (a full step whose decrease matched the model's, then a
    superlinear fall of the decrement, :func:`sklearn_lse._newton.superlinear`), as in
    :mod:`sklearn_lse._newton`."""
    log = Log("newton", verbose)
    lam_target = prob.lam
    D = prob.dim - 1
    free = np.ones(D, dtype=bool)
    if not prob.fit_intercept:
        free[prob.d * prob.n_outputs :] = False
    # the first stage: at a lam of the losses' spread the worst case is nearly the
    # empirical distribution, whose threshold is about the mean loss
    losses = prob.losses(w, b)
    spread = prob.spread(losses)
    lo, hi, mean_loss = spread
    lam = max(lam_target, hi - lo if lam_start is None else min(hi - lo, lam_start))
    guess = eta_guess if lam_start is not None or lam == lam_target else mean_loss
    pt = prob.point(w, b, lam, guess, losses=losses, spread=spread)
    if not math.isfinite(pt["value"]):
        raise ValueError("The objective is not finite at the starting point.")
    log.start(pt["value"])
    n_iter = 0
    converged = False
    message = f"reached max_iter={max_iter}"
    factor = _STAGE_FACTOR
    while True:
        final = lam <= lam_target
        previous = before = None
        stage_start = n_iter
        while n_iter < max_iter:
            g, M, residual = prob.system(pt, lam)
            h, h_eta = M[:D, D], M[D, D]
            S = M[:D, :D] - np.outer(h, h) / h_eta if h_eta > 0 else M[:D, :D]
            step = -solve(S, g, free)
            decrement = -0.5 * float(g @ step)
            scale = max(abs(pt["value"]), 1e-300)
            # the threshold after a step t of it, by the joint quadratic model in (u, eta)
            slope = float(h @ step)

            def eta_after(t, eta=pt["eta"], slope=slope, residual=residual, h_eta=h_eta):
                return eta - (residual + t * slope) / h_eta if h_eta > 0 else eta

            if not final and decrement <= _STAGE_TOL * lam:
                break
            if final and decrement <= tol * scale:
                verified = previous is not None and (
                    previous[0] <= 1e-14 * scale
                    or (previous[1] and 0.5 * previous[2] <= previous[3] <= 2.0 * previous[2]
                        and superlinear(before, previous[0], decrement))
                )  # fmt: skip
                if verified:
                    converged = True
                    message = f"converged: Newton decrement {decrement / scale:.2g} <= tol"
                    # the step from a point this close costs one evaluation: take it
                    trial = prob.point(*_moved(prob, pt, step, 1.0), lam, eta_after(1.0),
                                       close=True)  # fmt: skip
                    if trial["value"] <= pt["value"]:
                        pt = trial
                        n_iter += 1
                        log.record(pt["value"], "final Newton step", lam=lam)
                    break
            t = 1.0
            u0 = prob.to_standard(pt["w"], pt["b"])
            for _ in range(_MAX_HALVINGS):
                trial = prob.point(*prob.to_model(u0 + t * step), lam, eta_after(t), close=True)
                if trial["value"] <= pt["value"] - 2e-4 * t * decrement:  # Armijo
                    break
                t *= 0.5
            else:
                converged = final and decrement <= 1e-14 * scale  # at rounding
                message = (
                    f"no step lowers the objective (Newton decrement {decrement / scale:.2g})"
                )
                break
            n_iter += 1
            before = previous[0] if previous is not None else None
            previous = (decrement, t == 1.0, decrement, pt["value"] - trial["value"])
            pt = trial
            log.record(pt["value"], lam=lam, step=t, decrement=decrement / scale)
        if final or n_iter >= max_iter:
            break
        # the next stage's point has the same losses
        ratio = decrement / (_STAGE_TOL * lam)
        lam, factor = next_stage(lam, lam_target, factor, n_iter - stage_start, ratio)
        pt = prob.point(pt["w"], pt["b"], lam, pt["eta"], losses=pt["losses"],
                        spread=pt["range"])  # fmt: skip
    if not final:
        message = f"reached max_iter={max_iter} before the last stage of the lam path"
        converged = False
    log.stop(message)
    pt["decrement"] = decrement / scale
    return pt, n_iter, converged, message, log.history


def _moved(prob, pt, step, t):
    return prob.to_model(prob.to_standard(pt["w"], pt["b"]) + t * step)


def build(estimator, X, y, sample_weight, *, classifier):
    """Validate the dask collections (one pass on the workers, before any other work)
    and build the distributed problem, its starting point and the attributes that do not
    come from the solver. Returns (prob, w, b, extra attributes)."""
    data = DaskData(X, y, sample_weight)
    checks = data.gather(_check_chunk, data.X, data.y, data.sw)
    if not all(c["finite"] for c in checks):
        raise ValueError(
            "Input X, y or sample_weight contains NaN or infinity, or sample_weight is negative."
        )
    n = sum(c["n"] for c in checks)
    if n == 0:
        raise ValueError("X has 0 samples: a fit needs at least one.")
    mean = sum(c["n"] * c["mean"] for c in checks) / n
    m2 = sum(c["m2"] + c["n"] * (c["mean"] - mean) ** 2 for c in checks)
    scale = np.sqrt(m2 / n)
    scale[scale <= 1e-12 * (1.0 + np.abs(mean))] = 0.0
    if not estimator.fit_intercept:
        mean = np.zeros_like(mean)
        scale = np.sqrt(sum(c["m2"] + c["n"] * c["mean"] ** 2 for c in checks) / n)
    inv_scale = 1.0 / np.where(scale > 0, scale, 1.0)
    total = sum(c["weight"] for c in checks)
    if not total > 0:
        raise ValueError("sample_weight must contain at least one non-zero weight (all are zero).")
    extra = {"n_features_in_": data.shape[1]}
    if data.feature_names is not None and all(isinstance(c, str) for c in data.feature_names):
        extra["feature_names_in_"] = data.feature_names
    classes = class_weights = None
    if classifier:
        labels = [c["labels"] for c in checks if c["labels"] is not None]
        if not labels:  # float labels
            labels = data.gather(np.unique, data.y)
        classes = np.unique(np.concatenate(labels))
        if classes.shape[0] < 2:
            raise ValueError(
                "DROClassifier needs samples of at least 2 classes; the data contain "
                f"1 class: {classes[0]!r}."
            )
        counts = data.reduce(_class_totals, data.y, data.sw, classes=classes)
        if estimator.class_weight is not None:
            from sklearn.utils.class_weight import compute_class_weight

            if estimator.class_weight == "balanced":
                class_weights = counts.sum() / (classes.shape[0] * np.maximum(counts, 1e-300))
            else:
                class_weights = compute_class_weight(estimator.class_weight, classes=classes,
                                                     y=classes)  # fmt: skip
            total = float(counts @ class_weights)
        extra["classes_"] = classes
        extra["_counts"] = counts if class_weights is None else counts * class_weights
    K = 1 if not classifier or classes.shape[0] == 2 else classes.shape[0]
    code = (LOG_LOSS if K == 1 else MULTINOMIAL) if classifier else None
    targets = data.persist(_targets, data.y, classes=classes, n_outputs=K)
    uniform = sample_weight is None and class_weights is None
    if uniform:
        p = data.constant(np.array([1.0 / n]))
    else:
        p = data.persist(_weights, data.y, data.sw, classes=classes,
                         class_weights=class_weights, total=total)  # fmt: skip
    return data, targets, p, K, code, mean, inv_scale, extra


def _fit_ball(prob, w, b, radius, options):
    """The KL-ball form on the workers: the temperature by
    :func:`sklearn_lse._ball.search_temperature`, each inner fit distributed and
    warm-started, the divergence a reduction. Returns the point (its value the ball's
    objective), the iterations, convergence, message, history and lam."""
    from ._ball import LAM_MAX, search_temperature

    totals = {"n_iter": 0, "converged": True, "message": "", "history": []}

    def solve(lam, start):
        w0, b0, lam0, eta0 = start
        prob.lam = lam
        pt, n_iter, converged, message, history = fit_distributed(
            prob, w0, b0, lam_start=lam0, eta_guess=eta0, **options
        )
        totals["n_iter"] += n_iter
        totals["converged"], totals["message"] = converged, message
        totals["history"].extend(
            v + lam * radius for v in history[1 if totals["history"] else 0 :]
        )
        divergence = prob.data.reduce(
            _divergence_sums, pt["losses"], prob.p, eta=pt["eta"], lam=lam, rho=prob.rho
        )
        return pt, float(divergence)

    if radius == 0.0:
        pt, _ = solve(LAM_MAX, (w, b, None, np.nan))
        lam = LAM_MAX
    else:
        lo, hi, _ = prob.spread(prob.losses(w, b))
        size = max(abs(lo), abs(hi), 1e-300)
        lam, pt = search_temperature(
            solve, max(hi - lo, 1e-3 * size), (w, b, None, np.nan), radius=radius,
            lam_min=1e-12 * size, tol=options["tol"], floor=1e-12 * size,
            objective_of=lambda pt: pt["value"],
            start_of=lambda pt, lam: (pt["w"], pt["b"], lam, pt["eta"]),
        )  # fmt: skip
    pt = dict(pt, value=pt["value"] + lam * radius)
    return pt, totals["n_iter"], totals["converged"], totals["message"], totals["history"], lam


def start_point(prob, counts=None):
    """Least squares (regression, from one pass for the Gram matrix) or, given the
    weighted class totals ``counts``, the best constant model (classification)."""
    d, K = prob.d, prob.n_outputs
    if counts is not None:
        w = np.zeros((d, K))
        if not prob.fit_intercept:
            return w, np.zeros(K)
        log_prior = np.log(np.maximum(counts / counts.sum(), 1e-12))
        if K == 1:
            return w, np.array([log_prior[1] - log_prior[0]])
        return w, log_prior - log_prior.mean()
    gram, moment = prob.data.reduce(_gram, prob.data.X, prob.t, prob.p, mean=prob.mean,
                                    inv_scale=prob.inv_scale)  # fmt: skip
    gram = gram.copy()
    gram[np.arange(d), np.arange(d)] += 0.5 * prob.alpha * prob.inv_scale**2
    index = np.arange(d + 1) if prob.fit_intercept else np.arange(d)
    ev, V = np.linalg.eigh(gram[np.ix_(index, index)])
    keep = ev > 1e-12 * max(ev.max(), 1e-300)
    u = np.zeros(d + 1)
    u[index] = V[:, keep] @ ((V[:, keep].T @ moment[index]) / ev[keep])
    return prob.to_model(u)


def fit_estimator(estimator, X, y, sample_weight, *, classifier):
    """Fit ``estimator`` on dask collections; returns its fitted attributes (the
    estimator commits them at once)."""
    from sklearn.exceptions import ConvergenceWarning

    from ._registry import LOSSES

    if estimator.solver not in ("auto", "newton"):
        raise ValueError(
            f"solver={estimator.solver!r} is not available for dask collections: the "
            "distributed fit runs Newton's method, whose passes are chunk-wise reductions "
            "on the workers (parallel by construction). Use solver='auto' or 'newton', or "
            "train on the chunks with dask_ml.wrappers.Incremental (partial_fit)."
        )
    if classifier:
        if sample_weight is not None and not is_dask_collection(sample_weight):
            raise ValueError("sample_weight must be a dask collection chunked like y.")
    data, targets, p, K, code, mean, inv_scale, extra = build(
        estimator, X, y, sample_weight, classifier=classifier
    )
    counts = extra.pop("_counts", None)
    if (mean.shape[0] + 1) * K + 1 > 1024:
        raise ValueError(
            f"The distributed fit needs at most 1024 coefficients (Newton's method); "
            f"this model has {(mean.shape[0] + 1) * K}. Use dask_ml.wrappers.Incremental."
        )
    if not classifier:
        code = LOSSES[estimator.loss].code()
    form, value = estimator._robustness()
    rho = 0.0 if estimator.rho == "auto" else float(estimator.rho)  # Newton: exact
    prob = DistributedProblem(
        data, targets, p, n_outputs=K, loss=code,
        eps=0.0 if classifier else float(estimator.epsilon),
        lam=value if form == "penalty" else 1.0, rho=rho, alpha=float(estimator.alpha),
        fit_intercept=estimator.fit_intercept, mean=mean, inv_scale=inv_scale,
    )  # fmt: skip
    w, b = start_point(prob, counts)
    options = {"max_iter": estimator.max_iter, "tol": estimator.tol, "verbose": estimator.verbose}
    if form == "penalty":
        pt, n_iter, converged, message, history = fit_distributed(prob, w, b, **options)
        lam = prob.lam
    else:
        pt, n_iter, converged, message, history, lam = _fit_ball(prob, w, b, value, options)
    if not (np.all(np.isfinite(pt["w"])) and np.all(np.isfinite(pt["b"]))):
        raise FloatingPointError("The distributed fit produced non-finite coefficients.")
    if not converged:
        import warnings

        warnings.warn(
            f"solver='newton' (distributed) did not converge after {n_iter} iterations: "
            f"{message}. Increase max_iter, or loosen tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    attributes = estimator._model_attributes(
        pt["w"], pt["b"], data.dtype, pt["eta"], pt["value"], n_iter
    )
    attributes.update(
        solver_="newton",
        _robust_form=(form, value),
        lam_=np.inf if (form, value) == ("ball", 0.0) else float(lam),
        rho_=rho,
        objective_curve_=np.asarray(history),
        duality_gap_=float(pt["decrement"]),
        _objective_times=None,
        _stream=None,
        **{"feature_names_in_": None, **extra},
    )
    return attributes
