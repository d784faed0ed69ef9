"""Curvature of the relaxed objective and the preconditioner of the stochastic solver.

The Hessian at a snapshot is gathered chunk by chunk during the gradient pass, exact or
from an importance-sampled sketch of the rows, in the standardised coordinates
``(V, b_c, eta)``; for sparse data with many coefficients, its diagonal with the exact
intercept/eta border (an "arrow"), and for several outputs with many coefficients, its
class blocks. :class:`Preconditioner` holds its damped inverse, the gradient and the
importance-sampling probabilities of the stochastic epoch.
"""

import numpy as np
import scipy.sparse as sp

from ._kernels import apply_arrow, csr_moments, curvature_matrix, curvature_terms
from ._objective import derivative_chunks, full_gradient, standardised_gradient

# Exact Hessians cost n ((d + 1) K)^2 flops and an eigendecomposition of size D; above this
# many flops, models with several outputs use the class-block-diagonal Hessian instead.
_EXACT_HESSIAN_FLOPS = 2e9


def exact_hessian_is_costly(prob):
    """Whether the exact Hessian (its sums over the rows, or over a sketch of them, and
    its eigendecomposition) would cost more than ``_EXACT_HESSIAN_FLOPS``."""
    n, dim = prob.X.shape[0], prob.dim
    rows = min(n, max(4 * n // (dim - 1), 100 * dim))
    return rows * (dim - 1) ** 2 + dim**3 > _EXACT_HESSIAN_FLOPS


def uses_arrow_hessian(prob):
    """Sparse data with many coefficients use the arrow (diagonal plus border) Hessian,
    which needs no dense rows; the others the exact one, or its class blocks."""
    many = prob.X.shape[1] * prob.n_outputs > 1024
    return sp.issparse(prob.X) and (many or exact_hessian_is_costly(prob))


class _CurvatureSums:
    """The Hessian of the objective at a snapshot, gathered chunk by chunk during the
    gradient pass (:meth:`add`), as sums over the raw rows ``(x_i, 1)`` mapped at the end
    to the standardised coordinates ``z_i = (s * (x_i - mean), 1)`` (no copy of X, no
    per-sample array).

    ``mode``: ``"exact"`` gathers the (W, b) block ``sum_i z_i z_i^T kron A_i`` of shape
    (d + 1, K, d + 1, K) (``A_i`` from :func:`~sklearn_lse._kernels.curvature_matrix`);
    ``"blocks"`` only its diagonal blocks per output, shape (K, d + 1, d + 1); ``"arrow"``
    (sparse data with many coefficients) the diagonal over the coefficients and the dense
    border over the intercepts and eta, from the squares of the non-zeros. The cross terms
    with eta ``h = sum_i z_i kron e_i`` and the eta-eta term are always exact. The (W, b)
    block of the first two modes is exact when it costs about as much as the stochastic
    pass (up to 32 coefficients); beyond, it is estimated without bias from about
    ``m = max(4 n / D, 100 (d + 2))`` rows (D the number of variables; ``100 (D + 1)``
    for the full block), each row kept with probability ``q_i = min(1, m pi_i)`` and
    weighted by ``1 / q_i``, where ``pi`` is the importance distribution of
    :meth:`sampling_probabilities` at the row level (its normalisers taken from the
    previous Hessian of the same problem, or from a pilot subsample): the preconditioner
    needs the curvature's shape, not every digit, and the heavily weighted rows that
    shape it are kept.
    """

    def __init__(self, prob, mode, block_size, rng):
        n, d = prob.X.shape
        K = prob.n_outputs
        self.prob, self.mode, self.block_size, self.rng = prob, mode, block_size, rng
        size = d + 2 if mode == "blocks" else prob.dim
        self.m = max(4 * n // (prob.dim - 1), 100 * size)
        self.sketch = mode != "arrow" and d * K > 32 and self.m < n
        n_blocks = (n + block_size - 1) // block_size
        self.block_sums = np.zeros((3, n_blocks))  # p, a and p k per block of rows
        self.cross = np.zeros((d + 1, K))
        if mode == "arrow":
            self.diag = np.zeros((d, K))
            self.arrow_cross = np.zeros((d, K, K + 1))
            self.border = np.zeros((K + 1, K + 1))
        else:
            self.raw = np.zeros((K, d + 1, d + 1) if mode == "blocks" else (d + 1, K, d + 1, K))

    def _terms(self, pc, c, k, dl, ddl):
        a, pk = np.empty(pc.shape[0]), np.empty(pc.shape[0])
        e = np.empty_like(dl)
        curvature_terms(self.prob.loss, pc, c, k, dl, ddl, a, e, pk)
        return a, e, pk

    def start(self, snap):
        """Set the sketch's normalisers: the last Hessian's totals, or a pilot estimate
        from a strided subsample of rows."""
        if not self.sketch:
            return
        if self.prob.curvature_totals is None:
            n = self.prob.X.shape[0]
            rows = np.unique(np.linspace(0, n - 1, min(n, 4096)).astype(np.int64))
            _, _, pc, c, k, dl, ddl = next(derivative_chunks(self.prob, snap, [rows]))
            a, _, pk = self._terms(pc, c, k, dl, ddl)
            self.totals = (a.sum() * n / len(rows), pk.sum() * n / len(rows))
        else:
            self.totals = self.prob.curvature_totals

    def add(self, rows, Xc, pc, c, k, dl, ddl):
        """Add one chunk of rows (a slice) with its weights, factors, curvatures and the
        loss's derivatives."""
        a, e, pk = self._terms(pc, c, k, dl, ddl)
        first, last = rows.start // self.block_size, (rows.stop - 1) // self.block_size
        edges = np.maximum(np.arange(first, last + 1) * self.block_size - rows.start, 0)
        self.block_sums[:, first : last + 1] += np.add.reduceat(
            np.vstack((pc, a, pk)), edges, axis=1
        )
        d = self.cross.shape[0] - 1
        self.cross[d] += e.sum(axis=0)
        if self.mode != "arrow":  # the arrow gathers its cross terms with the diagonal
            self.cross[:d] += np.asarray(Xc.T @ e)
        if self.mode == "arrow":
            self._add_arrow(Xc, self._matrices(pc, c, k, dl, ddl), e)
        elif not self.sketch:
            self._add_raw(Xc, self._matrices(pc, c, k, dl, ddl))
        else:
            pi = 0.5 * pc
            for values, total in zip((a, pk), self.totals, strict=True):
                if total > 0:
                    pi += 0.25 * values / total
            q = np.minimum(1.0, self.m * pi)
            keep = self.rng.random(q.shape[0]) < q
            A = self._matrices(pc[keep], c[keep], k[keep], dl[keep], ddl[keep])
            A /= q[keep, None, None]
            self._add_raw(Xc[keep], A)

    def _matrices(self, pc, c, k, dl, ddl):
        prob = self.prob
        A = np.empty((pc.shape[0], prob.n_outputs, prob.n_outputs))
        curvature_matrix(prob.loss, pc, c, k, dl, ddl, False, A)
        return A

    def _add_raw(self, Xc, A):
        raw, K = self.raw, A.shape[1]
        Xc = Xc.toarray() if sp.issparse(Xc) else Xc
        d = Xc.shape[1]
        # sub-chunks keep the (rows, d, K, K) products within a few MB
        step = int(max(64, 2**21 // ((d + 1) * (1 if self.mode == "blocks" else K * K))))
        for start in range(0, Xc.shape[0], step):
            X_, A_ = Xc[start : start + step], A[start : start + step]
            if self.mode == "blocks":
                diag = np.einsum("ikk->ik", A_)  # (rows, K)
                for k in range(K):
                    raw[k, :d, :d] += X_.T @ (X_ * diag[:, k, None])
                xa = X_.T @ diag  # (d, K)
                raw[:, :d, d] += xa.T
                raw[:, d, :d] += xa.T
                raw[:, d, d] += diag.sum(axis=0)
            else:
                XA = (X_[:, :, None, None] * A_[:, None, :, :]).reshape(X_.shape[0], -1)
                raw[:d, :, :d, :] += (X_.T @ XA).reshape(d, d, K, K).transpose(0, 2, 1, 3)
                xa = (X_.T @ A_.reshape(-1, K * K)).reshape(d, K, K)
                raw[:d, :, d, :] += xa
                raw[d, :, :d, :] += xa.transpose(1, 0, 2)
                raw[d, :, d, :] += A_.sum(axis=0)

    def _add_arrow(self, Xc, A, e):
        """One pass over the chunk's non-zeros for the diagonal and the border's cross
        terms (in the standardised coordinates)."""
        m, s = self.prob.mean, self.prob.inv_scale
        d, K = self.diag.shape
        Adiag = np.einsum("ikk->ik", A)
        moments = np.zeros((d, K * K + 2 * K))
        V = np.column_stack((A.reshape(-1, K * K), e))
        csr_moments(Xc.data, Xc.indices, Xc.indptr, V, Adiag, moments)
        x_A = moments[:, : K * K].reshape(d, K, K)
        x_e, x2_a = moments[:, K * K : K * K + K], moments[:, K * K + K :]
        x_a = np.einsum("jkk->jk", x_A)
        sum_A = A.sum(axis=0)
        self.diag += s[:, None] ** 2 * (
            x2_a - 2 * m[:, None] * x_a + m[:, None] ** 2 * Adiag.sum(axis=0)
        )
        self.arrow_cross[:, :, :K] += s[:, None, None] * (x_A - m[:, None, None] * sum_A)
        self.arrow_cross[:, :, K] += s[:, None] * x_e
        self.border[:K, :K] += sum_A

    @property
    def sum_pk(self):
        return self.block_sums[2].sum()

    def sampling_probabilities(self):
        """Probabilities of the blocks of rows for the stochastic epoch: half the
        empirical distribution, half by curvature (``a`` and ``p k`` in equal parts), so
        that a drawn block's weighted curvature is bounded."""
        p, a, pk = self.block_sums
        pi = 0.5 * p
        for values in (a, pk):
            if values.sum() > 0:
                pi += 0.25 * values / values.sum()
        return pi / pi.sum()

    def finish(self):
        """The Hessian in the standardised coordinates: ``(H_w, h)`` for the exact and
        block modes, ``(diag, cross, border)`` flattened for the arrow. Records the
        totals that normalise the next sketch."""
        prob = self.prob
        prob.curvature_totals = (self.block_sums[1].sum(), self.block_sums[2].sum())
        d1, K = self.cross.shape
        d = d1 - 1
        s, m = prob.inv_scale, prob.mean
        if self.mode == "arrow":
            sum_e = self.cross[d]
            cross = self.arrow_cross
            cross[:, :, K] -= s[:, None] * m[:, None] * sum_e
            border = self.border
            border[:K, K] = border[K, :K] = sum_e
            border[K, K] = self.sum_pk
            diag = self.diag + prob.penalty_curvature[:, None]
            if not prob.fit_intercept:
                cross[:, :, :K] = 0.0
                border[:K, :] = border[:, :K] = 0.0
                border[np.arange(K), np.arange(K)] = 1.0
            return diag.ravel(), cross.reshape(d * K, K + 1), border
        # to the standardised rows z = M (x, 1), M = [[diag(s), -s * mean], [0, 1]]
        M = np.eye(d + 1)
        M[:d, :d] = np.diag(s)
        M[:d, d] = -s * m
        if self.mode == "blocks":
            H_w = np.einsum("ia,kab,jb->kij", M, self.raw, M, optimize=True)
            H_w[:, np.arange(d), np.arange(d)] += prob.penalty_curvature
        else:
            H_w = np.einsum("ia,akbl,jb->ikjl", M, self.raw, M, optimize=True)
            H_w[np.arange(d), :, np.arange(d), :] += prob.alpha * (
                s[:, None, None] ** 2 * np.eye(K)
            )
        return H_w, M @ self.cross


MIN_DAMPING = 1e-8


class Preconditioner:
    """Second-order information at a snapshot, in the standardised coordinates
    ``(V, b_c, eta)``: the damped inverse Hessian ``P``, the full gradient ``g``, the same
    without the penalty ``mu`` (the kernel adds the penalty's exact gradient at every
    step), the sampling probabilities ``block_pi`` of blocks of ``block_size`` rows by
    curvature, and the decrement
    ``g^T P g / 2`` (about the suboptimality once the damping is small).

    Damping (Levenberg-Marquardt) adds ``damping * max eigenvalue`` to the Hessian: near a
    kink of the objective (small lam, losses far apart) the Hessian is nearly singular in
    directions where the objective is not quadratic at all, and undamped Newton-scaled
    steps overshoot there.

    The Hessian is exact (one eigendecomposition of size D) unless that costs more than
    ``_EXACT_HESSIAN_FLOPS``; then, for several outputs, its (W, b) block is replaced by
    its diagonal blocks, one per output (the coupling between the classes of the softmax
    is dropped), with the eta row and column kept exact and eliminated by a Schur
    complement: K eigendecompositions of size d + 1 instead of one of size (d + 1) K + 1.
    """

    def __init__(self, prob, snap, damping, rng, block_size=64):
        d, K = snap.w.shape
        dim = prob.dim
        self.arrow = uses_arrow_hessian(prob)
        self.blocks = not self.arrow and K > 1 and exact_hessian_is_costly(prob)
        mode = "arrow" if self.arrow else "blocks" if self.blocks else "exact"
        sums = _CurvatureSums(prob, mode, block_size, rng)
        sums.start(snap)
        grad = full_gradient(prob, snap, sums.add)
        self.block_pi = sums.sampling_probabilities()
        if self.arrow:
            self.diag, self.cross, self.border = sums.finish()
        elif self.blocks:
            H_w, h = sums.finish()
            self.h, self.h_eta = h.ravel(), sums.sum_pk
            self.ev, self.V = np.linalg.eigh(H_w)  # (K, d + 1) and (K, d + 1, d + 1)
            self.index = np.arange(d + 1)[None, :] * K + np.arange(K)[:, None]
        else:
            H_w, h = sums.finish()
            H = np.empty((dim, dim))
            H[:-1, :-1] = H_w.reshape(dim - 1, dim - 1)
            H[:-1, -1] = H[-1, :-1] = h.ravel()
            H[-1, -1] = sums.sum_pk
            self.ev, self.V = np.linalg.eigh(H)
        self.intercepts = None if prob.fit_intercept else slice(d * K, (d + 1) * K)
        self.g = standardised_gradient(prob, grad)
        self.mu = self.g.copy()
        self.mu[: d * K] -= prob.alpha * (prob.inv_scale[:, None] * snap.w).ravel()
        # the decrement that judges convergence is taken at the smallest damping: a damped
        # one shrinks with the steps, not with the distance to the optimum
        self.damp(MIN_DAMPING)
        self.decrement_undamped = self.decrement
        self.damp(damping)

    def kernel_preconditioner(self):
        """``(P, dinv, C, Sinv)`` for the epoch kernel: the dense P and empty arrow
        arrays, or an empty P and the arrow."""
        empty = np.zeros((0, 0))
        if self.arrow:
            return empty, self.dinv, self.cross, self.Sinv
        return self.P, np.zeros(0), empty, empty

    def apply(self, g):
        """``P g``."""
        if self.arrow:
            out = np.empty_like(g)
            apply_arrow(self.dinv, self.cross, self.Sinv, g, out)
            return out
        return self.P @ g

    def damp(self, damping):
        """Set the damping of ``P`` (and the decrement that goes with it)."""
        if self.arrow:
            K = self.border.shape[0] - 1
            top = max(self.diag.max(), np.linalg.eigvalsh(self.border).max(), 1e-300)
            diag = np.maximum(self.diag, 1e-12 * top) + damping * top
            self.dinv = 1.0 / diag
            schur = self.border + damping * top * np.eye(K + 1)
            schur -= self.cross.T @ (self.cross * self.dinv[:, None])
            ev, V = np.linalg.eigh(schur)
            self.Sinv = (V / np.maximum(ev, 1e-12 * top)) @ V.T
            if self.intercepts is not None:
                self.Sinv[:K, :] = self.Sinv[:, :K] = 0.0
            self.decrement = 0.5 * float(self.g @ self.apply(self.g))
            return self
        top = max(self.ev.max(), self.h_eta if self.blocks else 0.0, 1e-300)
        ev = np.maximum(self.ev, 1e-12 * top) + damping * top
        if self.blocks:
            dim = self.h.shape[0] + 1
            self.P = np.zeros((dim, dim))
            for k, index in enumerate(self.index):
                self.P[np.ix_(index, index)] = (self.V[k] / ev[k]) @ self.V[k].T
            # eta by its Schur complement (kept positive: the blocks only approximate)
            u = self.P[:-1, :-1] @ self.h
            diag = self.h_eta + damping * top
            schur = max(diag - self.h @ u, 1e-3 * diag)
            self.P[:-1, :-1] += np.outer(u, u) / schur
            self.P[:-1, -1] = self.P[-1, :-1] = -u / schur
            self.P[-1, -1] = 1.0 / schur
        else:
            self.P = (self.V / ev) @ self.V.T
        if self.intercepts is not None:
            self.P[self.intercepts, :] = self.P[:, self.intercepts] = 0.0
        self.decrement = 0.5 * float(self.g @ self.P @ self.g)
        return self
