"""The distributed fit: ``fit`` on dask arrays and dask DataFrames.

Newton's method on the relaxed objective with eta eliminated, as in
:mod:`sklearn_lse._newton` (continuation in lam, the 1-D solve for eta at every point),
with every pass over the data a chunk-wise reduction on the workers: each task reads one
chunk of rows where it lives and returns a result of the size of the model (the Hessian's
sums, the gradient, the sums of the 1-D solve for eta), which the client adds up. It is
parallel by construction: all the chunks of a pass are computed at once, on every worker.
The per-sample losses of the current point (one number per row) stay on the workers as
persisted chunks, for the rounds of the 1-D solve; nothing else of the size of the data is
kept, and X never reaches the client.

The tasks are module-level functions of NumPy arrays and scalars: they pickle to worker
processes and to remote workers, which compile (or load from their Numba cache) the
kernels of :mod:`sklearn_lse._kernels` on first use. dask is imported here only, and only
when a fit is given a dask collection.
"""

import math

import numpy as np

from ._kernels import (
    LOG_LOSS,
    MULTINOMIAL,
    curvature_matrix,
    pointwise_losses,
    relaxation_terms,
    relaxed_divergence,
    relaxed_value,
)
from ._result import Log
from ._stream import solve

# continuation in lam: divided by this per stage, each intermediate stage solved to a
# Newton decrement of _STAGE_TOL lam (as in sklearn_lse._newton)
_STAGE_FACTOR = 10.0
_STAGE_TOL = 0.25
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
    of one chunk."""
    X = _as_float(X)
    finite = bool(np.all(np.isfinite(X)))
    if y is not None and y.dtype.kind in "fc":
        finite = finite and bool(np.all(np.isfinite(y)))
    X64 = X.astype(np.float64, copy=False)
    n = X.shape[0]
    mean = X64.mean(axis=0) if n else np.zeros(X.shape[1])
    m2 = ((X64 - mean) ** 2).sum(axis=0)
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
    Z = _standardised(X, mean, inv_scale)
    pZ = Z * p[:, None]
    return Z.T @ pZ, pZ.T @ t


def _standardised(X, mean, inv_scale):
    X = _as_float(X)
    Z = np.empty((X.shape[0], X.shape[1] + 1))
    np.subtract(X, mean, out=Z[:, :-1])
    Z[:, :-1] *= inv_scale
    Z[:, -1] = 1.0
    return Z


def _losses(X, t, w, b, code, eps):
    """The per-sample losses of a chunk (kept on its worker)."""
    pred = _as_float(X).astype(np.float64, copy=False) @ w + b
    loss, dl, ddl = np.empty(pred.shape[0]), np.empty_like(pred), np.empty_like(pred)
    pointwise_losses(code, pred, t, eps, loss, dl, ddl)
    return loss


def _eta_sums(loss, p, etas, lam, rho, with_range=False):
    """For each threshold of ``etas``: ``sum p c``, ``sum p k``, ``sum p dk/deta`` and
    the relaxed sum ``sum p term`` of the chunk's losses; with ``with_range``, also the
    smallest and largest supported loss and ``sum p l``."""
    out = np.empty((len(etas), 4))
    pw = p if p.shape[0] > 1 else np.full(loss.shape[0], p[0])
    c, k = np.empty_like(loss), np.empty_like(loss)
    for j, eta in enumerate(etas):
        relaxation_terms(loss, eta, 0.0, lam, rho, c, k)
        pk = pw * k
        out[j] = (
            pw @ c, pk.sum(), pk @ (1.0 - 2.0 * rho * c) / lam,
            relaxed_value(loss, p, eta, lam, rho) - eta,
        )  # fmt: skip
    if not with_range:
        return out
    supported = loss[pw > 0]
    if not supported.shape[0]:
        return out, (np.inf, -np.inf, 0.0)
    return out, (float(supported.min()), float(supported.max()), float(pw @ loss))


def _combine(*parts):
    """Sums of the parts of :func:`_eta_sums` with the range: the sums added, the range
    combined."""
    sums = _add(*[part[0] for part in parts])
    ranges = [part[1] for part in parts]
    return sums, (min(r[0] for r in ranges), max(r[1] for r in ranges), sum(r[2] for r in ranges))


def _divergence_sums(loss, p, eta, lam, rho):
    """The chunk's part of the divergence of the worst case (see
    :func:`sklearn_lse._kernels.relaxed_divergence`)."""
    return float(relaxed_divergence(loss, p, eta, lam, rho))


def _exp_sums(loss, p, shift, lam):
    """``sum p exp((l - shift) / lam)`` of the chunk (the exact risk, ``rho = 0``)."""
    pw = p if p.shape[0] > 1 else np.full(loss.shape[0], p[0])
    return float(pw @ np.exp(np.minimum((loss - shift) / lam, 700.0)))


def _system(X, t, p, w, b, eta, code, eps, lam, rho, mean, inv_scale):
    """The gradient (``(d + 1, K)``, in the standardised coordinates, without the
    penalty) and the joint Hessian in ``(V, b_c, eta)`` of one chunk."""
    d, K = w.shape
    D = (d + 1) * K
    Z = _standardised(X, mean, inv_scale)
    pred = Z[:, :-1] @ (w / inv_scale[:, None]) + (b + mean @ w)
    n = pred.shape[0]
    loss, dl, ddl = np.empty(n), np.empty_like(pred), np.empty_like(pred)
    pointwise_losses(code, pred, t, eps, loss, dl, ddl)
    c, k = np.empty(n), np.empty(n)
    relaxation_terms(loss, eta, 0.0, lam, rho, c, k)
    pw = p if p.shape[0] > 1 else np.full(n, p[0])
    A = np.empty((n, K, K))
    curvature_matrix(code, pw, c, k, dl, ddl, False, A)
    grad = Z.T @ ((pw * c)[:, None] * dl)
    H = np.zeros((d + 1, K, d + 1, K))
    if K == 1:
        H[:, 0, :, 0] = Z.T @ (Z * A[:, 0, 0][:, None])
    else:
        step = int(max(64, 2**21 // ((d + 1) * K * K)))
        for start in range(0, n, step):
            Z_, A_ = Z[start : start + step], A[start : start + step]
            ZA = (Z_[:, :, None, None] * A_[:, None, :, :]).reshape(Z_.shape[0], -1)
            H += (Z_.T @ ZA).reshape(d + 1, d + 1, K, K).transpose(0, 2, 1, 3)
    M = np.empty((D + 1, D + 1))
    M[:D, :D] = H.reshape(D, D)
    M[:D, D] = M[D, :D] = -(Z.T @ ((pw * k)[:, None] * dl)).ravel()
    M[D, D] = float(pw @ k)
    return grad, M


def _add(*parts):
    """The sum of the parts (dicts of arrays, tuples, arrays or numbers)."""
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(_add(*items) for items in zip(*parts, strict=True))
    total = first
    for part in parts[1:]:
        total = total + part
    return total


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
        self.X = list(X.to_delayed(optimize_graph=False).ravel())
        self.y = list(y.to_delayed(optimize_graph=False).ravel())
        self.sw = (
            [None] * len(self.X)
            if sample_weight is None
            else list(sample_weight.to_delayed(optimize_graph=False).ravel())
        )
        self.client = _client()
        if self.client is not None:  # futures: a round costs a few milliseconds
            self.X, self.y = self.client.compute(self.X), self.client.compute(self.y)
            if sample_weight is not None:
                self.sw = self.client.compute(self.sw)

    def map(self, func, *columns, **kwargs):
        """``func`` applied to every chunk, lazily (futures with a distributed client,
        dask Delayed otherwise)."""
        if self.client is not None:
            return [
                self.client.submit(func, *args, **kwargs, pure=False)
                for args in zip(*columns, strict=True)
            ]
        delayed = self.delayed(func, pure=False)
        return [delayed(*args, **kwargs) for args in zip(*columns, strict=True)]

    def reduce(self, func, *columns, combine=None, **kwargs):
        """``func`` on every chunk on the workers, combined (summed by default) in a tree
        on the workers; only the result comes back."""
        combine = _add if combine is None else combine
        parts = self.map(func, *columns, **kwargs)
        if self.client is not None:
            while len(parts) > 1:
                parts = [
                    self.client.submit(combine, *parts[i : i + 8], pure=False)
                    for i in range(0, len(parts), 8)
                ]
            return parts[0].result()
        add = self.delayed(combine, pure=True)
        while len(parts) > 1:
            parts = [add(*parts[i : i + 8]) for i in range(0, len(parts), 8)]
        return self.dask.compute(parts[0])[0]

    def gather(self, func, *columns, **kwargs):
        """``func`` on every chunk; the list of the (small) results."""
        if self.client is not None:
            return self.client.gather(self.map(func, *columns, **kwargs))
        return list(self.dask.compute(*self.map(func, *columns, **kwargs)))

    def persist(self, func, *columns, **kwargs):
        """``func`` on every chunk, its results kept on the workers."""
        if self.client is not None:
            return self.map(func, *columns, **kwargs)
        return list(self.dask.persist(*self.map(func, *columns, **kwargs)))


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
        u = np.asarray(u).reshape(-1, self.n_outputs)
        w = u[:-1] * self.inv_scale[:, None]
        b = u[-1] - self.mean @ w if self.fit_intercept else np.zeros(self.n_outputs)
        return w, b

    def to_standard(self, w, b):
        b_c = b + self.mean @ w if self.fit_intercept else np.zeros(self.n_outputs)
        return np.vstack((w / self.inv_scale[:, None], b_c)).ravel()

    def point(self, w, b, lam, eta_guess=np.nan):
        """The losses of (W, b) (kept on the workers), the optimal eta and the objective
        at ``lam``: one pass for the losses, then a few rounds of sums for eta (the first
        with the pass)."""
        losses = self.data.persist(_losses, self.data.X, self.t, w=w, b=b, code=self.loss,
                                   eps=self.eps)  # fmt: skip
        eta, terms, lo, hi = self._solve_eta(losses, lam, eta_guess)
        value = eta + terms + self.penalty(w)
        return {"w": w, "b": b, "eta": eta, "value": value, "losses": losses,
                "range": (lo, hi)}  # fmt: skip

    def _sums(self, losses, lam, etas, with_range=False):
        return self.data.reduce(
            _eta_sums, losses, self.p, etas=etas, lam=lam, rho=self.rho,
            with_range=with_range, combine=_combine if with_range else _add,
        )  # fmt: skip

    def _solve_eta(self, losses, lam, guess):
        """The optimal eta (root of ``g = log sum p c``), ``sum p term`` there and the
        range of the losses: Halley's method on ``g`` (nearly linear in eta), safeguarded
        on the bracket ``[min l, max l]``, one round of sums per
        iteration. For ``rho = 0``, the exact risk ``lam log sum p exp(l / lam)``."""
        first = guess if math.isfinite(guess) else 0.0
        sums, (lo, hi, mean_loss) = self._sums(losses, lam, [first], with_range=True)
        if self.rho == 0:
            s = self.data.reduce(_exp_sums, losses, self.p, shift=hi, lam=lam)
            eta = hi + lam * math.log(s)
            return eta, float(self._sums(losses, lam, [eta])[0, 3]), lo, hi
        # every c_i >= 1 at eta = min l (the weights sum to 1), every c_i <= 1 at max l
        left = lo - 1e-12 * (abs(lo) + lam)
        right = hi
        if not hi > lo:
            return hi, float(self._sums(losses, lam, [hi])[0, 3]), lo, hi
        eta = first
        if not (math.isfinite(guess) and left < eta < right):
            eta = min(max(mean_loss, left), right)
            sums = self._sums(losses, lam, [eta])
        for _ in range(100):
            S, K, L, terms = sums[0]
            g = math.log(max(S, 1e-300))
            if abs(g) <= 1e-13:
                break
            if g > 0:
                left = eta
            else:
                right = eta
            dg = -K / max(S, 1e-300)
            ddg = (-L * S - K * K) / max(S * S, 1e-300)
            denominator = 2 * dg * dg - g * ddg
            new = eta - 2 * g * dg / denominator if denominator != 0 else np.nan
            if not left < new < right:
                new = eta - g / dg if dg < 0 else np.nan
            if not left < new < right:
                new = 0.5 * (left + right)
            if abs(new - eta) <= 1e-15 * (abs(eta) + lam):
                break
            eta = new
            sums = self._sums(losses, lam, [eta])
        return eta, float(sums[0, 3]), lo, hi

    def system(self, pt, lam):
        """The gradient and the joint Hessian at a point: one pass."""
        grad, M = self.data.reduce(
            _system, self.data.X, self.t, self.p, w=pt["w"], b=pt["b"], eta=pt["eta"],
            code=self.loss, eps=self.eps, lam=lam, rho=self.rho, mean=self.mean,
            inv_scale=self.inv_scale,
        )  # fmt: skip
        d, K = self.d, self.n_outputs
        s = self.inv_scale
        grad = grad.copy()
        M = M.copy()
        if self.alpha:
            grad[:d] += self.alpha * (s[:, None] * pt["w"])
            index = np.arange(d * K)
            M[index, index] += self.alpha * np.repeat(s**2, K)
        return grad.ravel(), M


def fit_distributed(prob, w, b, *, max_iter, tol, verbose, lam_start=None, eta_guess=np.nan):
    """Newton's method with continuation in lam and eta eliminated, every pass a
    chunk-wise reduction (see the module docstring); ``lam_start`` starts the path at a
    warm start's temperature. Returns (point, n_iter, converged, message, history).

    A small decrement is trusted as the suboptimality only where the quadratic model has
    just been verified (a full step whose decrease matched the model's, then a fourfold
    smaller decrement), as in :mod:`sklearn_lse._newton`."""
    log = Log("newton", verbose)
    lam_target = prob.lam
    D = prob.dim - 1
    free = np.ones(D, dtype=bool)
    if not prob.fit_intercept:
        free[prob.d * prob.n_outputs :] = False
    pt = prob.point(w, b, lam_target, eta_guess)
    lo, hi = pt["range"]
    lam = max(lam_target, hi - lo if lam_start is None else min(hi - lo, lam_start))
    if lam != lam_target:
        pt = prob.point(w, b, lam, pt["eta"])
    if not math.isfinite(pt["value"]):
        raise ValueError("The objective is not finite at the starting point.")
    log.start(pt["value"])
    n_iter = 0
    converged = False
    message = f"reached max_iter={max_iter}"
    while True:
        final = lam <= lam_target
        previous = None
        while n_iter < max_iter:
            g, M = prob.system(pt, lam)
            h, h_eta = M[:D, D], M[D, D]
            S = M[:D, :D] - np.outer(h, h) / h_eta if h_eta > 0 else M[:D, :D]
            step = -solve(S, g, free)
            decrement = -0.5 * float(g @ step)
            scale = max(abs(pt["value"]), 1e-300)
            if not final and decrement <= _STAGE_TOL * lam:
                break
            if final and decrement <= tol * scale:
                verified = previous is not None and (
                    previous[0] <= 1e-14 * scale
                    or (previous[1] and 0.5 * previous[2] <= previous[3] <= 2.0 * previous[2]
                        and decrement <= 0.25 * previous[0])
                )  # fmt: skip
                if verified:
                    converged = True
                    message = f"converged: Newton decrement {decrement / scale:.2g} <= tol"
                    # the step from a point this close costs one evaluation: take it
                    trial = prob.point(*_moved(prob, pt, step, 1.0), lam, pt["eta"])
                    if trial["value"] <= pt["value"]:
                        pt = trial
                        n_iter += 1
                        log.record(pt["value"], "final Newton step", lam=lam)
                    break
            t = 1.0
            u0 = prob.to_standard(pt["w"], pt["b"])
            for _ in range(_MAX_HALVINGS):
                trial = prob.point(*prob.to_model(u0 + t * step), lam, pt["eta"])
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
            previous = (decrement, t == 1.0, decrement, pt["value"] - trial["value"])
            pt = trial
            log.record(pt["value"], lam=lam, step=t, decrement=decrement / scale)
        if final or n_iter >= max_iter:
            break
        lam = max(lam / _STAGE_FACTOR, lam_target)
        pt = prob.point(pt["w"], pt["b"], lam, pt["eta"])
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
        raise ValueError("sample_weight must have a positive sum (all weights are zero).")
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
        p = [np.array([1.0 / n])] * len(data.X)
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
        first = prob.point(w, b, 1.0)
        lo, hi = first["range"]
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
