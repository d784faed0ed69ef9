"""sklearn_lse against the PyPI package ``dro`` (KL-DRO through cvxpy), on the same robust
objective.

``dro.linear_model.KLDRO(model_type="ols", eps=eps)`` solves the KL-ball problem

    min_theta max_{KL(q || p) <= eps} E_q[loss] = min_theta min_{lam > 0} lam eps + R_lam(theta)

with ``R_lam = lam * log mean exp(loss / lam)`` the exact risk that ``DRORegressor`` (with
``rho=0``) minimises at a fixed ``lam``. The mapping: the ``lam`` that ``dro``'s solution
implies (its dual variable) is the temperature at which both solve the same problem, so
``DRORegressor(lam=lam*)`` is fitted at that ``lam`` and both solutions are evaluated on
both forms: the exact risk ``R_lam*`` and the KL-ball objective ``min_lam lam eps + R_lam``.
Where ``dro`` fails or times out, ``lam*`` comes from ``DRORegressor`` itself, by a 1-D
search over ``lam`` of ``lam eps + min_theta R_lam``.

Each fit runs in its own process (fit time, peak resident memory above the data, a
time-out of 10 minutes); failures and time-outs are results, not gaps.
"""

import math
import multiprocessing as mp
import resource
import time

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

EPS = 0.1
D = 10
TIMEOUT = 600.0


def make(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    y = X @ rng.normal(size=D) + rng.standard_t(3, size=n)
    return (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()


def exact_risk(losses, lam):
    return lam * (logsumexp(losses / lam) - math.log(len(losses)))


def ball_objective(losses, eps=EPS):
    """``min_lam lam eps + R_lam(losses)``: the KL-ball worst-case risk."""
    res = minimize_scalar(
        lambda t: math.exp(t) * eps + exact_risk(losses, math.exp(t)),
        bounds=(math.log(1e-4), math.log(1e4)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return res.fun, math.exp(res.x)


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _fit_dro(n, queue):
    from dro.linear_model.kl_dro import KLDRO

    X, y = make(n)
    base = _peak_mb()
    t = time.perf_counter()
    model = KLDRO(input_dim=D, model_type="ols", eps=EPS)
    solution = model.fit(X, y)
    seconds = time.perf_counter() - t
    theta = np.asarray(solution["theta"], dtype=float)
    queue.put(
        {
            "theta": theta.tolist(),
            "b": float(solution["b"]),
            "lam": float(solution["dual"]),
            "seconds": seconds,
            "memory_mb": _peak_mb() - base,
        }
    )


def _fit_ours(n, lam, queue):
    X, y = make(n)
    from sklearn_lse import DRORegressor

    DRORegressor(lam=1.0, rho=0.0, solver="lbfgs").fit(X[:100], y[:100])  # compile
    base = _peak_mb()
    t = time.perf_counter()
    if lam is None:  # the lam of the KL ball, by a 1-D search with warm starts
        model = DRORegressor(rho=0.0, solver="lbfgs", warm_start=True)

        def value(log_lam):
            model.set_params(lam=math.exp(log_lam)).fit(X, y)
            return math.exp(log_lam) * EPS + model.risk_

        lam = math.exp(
            minimize_scalar(value, bounds=(math.log(1e-3), math.log(1e3)), method="bounded").x
        )
    model = DRORegressor(lam=lam, rho=0.0, solver="lbfgs").fit(X, y)
    seconds = time.perf_counter() - t
    queue.put(
        {
            "theta": model.coef_.tolist(),
            "b": float(model.intercept_),
            "lam": lam,
            "seconds": seconds,
            "memory_mb": _peak_mb() - base,
        }
    )


def run(target, *args, timeout=TIMEOUT):
    """Run a fit in a fresh process; returns its result, or the failure as a string."""
    queue = mp.get_context("spawn").Queue()
    process = mp.get_context("spawn").Process(target=target, args=(*args, queue))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        return f"time-out after {timeout:.0f} s"
    if process.exitcode != 0 or queue.empty():
        return f"failed (exit code {process.exitcode})"
    return queue.get()


def compare(sizes, timeout=TIMEOUT):
    lines = [
        f"KL-ball DRO regression (squared loss, d={D}, Student-t(3) noise, eps={EPS}): "
        "fit time, peak memory above the data, and the objectives each solution reaches "
        "(lower is better; `R_lam*` is the exact risk at the lam of dro's solution).",
        "",
        "| n | method | fit (s) | memory (MB) | lam* | R_lam* | KL-ball objective |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        X, y = make(n)
        theirs = run(_fit_dro, n, timeout=timeout)
        lam = theirs["lam"] if isinstance(theirs, dict) else None
        ours = run(_fit_ours, n, lam, timeout=timeout)
        if lam is None and isinstance(ours, dict):
            lam = ours["lam"]
        for name, result in (("dro (cvxpy, CLARABEL)", theirs), ("sklearn_lse", ours)):
            if not isinstance(result, dict):
                lines.append(f"| {n} | {name} | {result} | | | | |")
                continue
            losses = (X @ np.asarray(result["theta"]) + result["b"] - y) ** 2
            ball, _ = ball_objective(losses)
            risk = exact_risk(losses, lam) if lam is not None else float("nan")
            lines.append(
                f"| {n} | {name} | {result['seconds']:.3g} | {result['memory_mb']:.0f} | "
                f"{result['lam']:.4f} | {risk:.6f} | {ball:.6f} |"
            )
    return "\n".join(lines)


def report(quick):
    try:
        import dro  # noqa: F401
    except ImportError:
        return 'The `dro` package is not installed: `pip install -e ".[bench]"`.'
    return compare([1_000] if quick else [1_000, 10_000, 100_000], 120 if quick else TIMEOUT)


if __name__ == "__main__":
    print(report(quick=False))
