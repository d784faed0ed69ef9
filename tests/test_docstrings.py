"""The public docstrings are complete numpydoc docstrings, and their examples run.

numpydoc's validation runs over every public class and function of ``sklearn_lse`` and
``sklearn_lse.metrics`` (their ``__all__``) and over the public methods that sklearn_lse
defines (``fit``, ``partial_fit``, ``predict``, ``worst_case_weights``, ...); the methods
inherited from scikit-learn (``get_params``, ``score``, ``set_*_request``, ...) are
scikit-learn's to document.
"""

import doctest
import inspect

import pytest

validate = pytest.importorskip("numpydoc.validate")

import sklearn_lse  # noqa: E402
from sklearn_lse import metrics  # noqa: E402

# Ignored everywhere:
# - RT02 ("the first line of the Returns section should contain only the type"): the
#   Returns sections name their values (``self : DRORegressor``, ``risk : float``), as in
#   scikit-learn, which ignores RT02 for the same reason.
# - GL01 (where the summary starts): numpydoc before 1.7 wanted it on the line after the
#   opening quotes; this project puts it on the first line, as PEP 257 does.
IGNORED = {"RT02", "GL01"}
# Ignored for methods only, as scikit-learn does: the class docstring carries the
# extended description, the examples and the cross-references of its methods.
IGNORED_FOR_METHODS = {"ES01", "SA01", "EX01"}


def _public_objects():
    """(import path, object, is_method) of the public API, each object once (the
    functions of sklearn_lse.metrics are also exported by sklearn_lse: they are checked
    under their home module)."""
    seen = set()
    found = []
    for module in (metrics, sklearn_lse):
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            path = f"{module.__name__}.{name}"
            found.append((path, obj, False))
            if inspect.isclass(obj):
                found.extend(
                    (f"{path}.{method}", getattr(obj, method), True)
                    for method in _own_public_methods(obj)
                )
    return found


def _own_public_methods(cls):
    """Public methods and properties of ``cls`` defined in sklearn_lse (inherited from
    sklearn_lse's base class included, scikit-learn's excluded)."""
    names = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, property):
            member = member.fget
        else:
            member = getattr(cls, name)  # through descriptors such as available_if
            if not callable(member):
                continue
        if getattr(member, "__module__", "").startswith("sklearn_lse"):
            names.append(name)
    return names


OBJECTS = _public_objects()


def test_the_public_api_is_all_checked():
    """The methods users call most are among the checked objects (a guard against a
    filter that silently drops them)."""
    paths = {path for path, _, _ in OBJECTS}
    for cls in ("DRORegressor", "DROClassifier"):
        for method in ("fit", "partial_fit", "predict", "worst_case_weights", "robust_risk"):
            assert f"sklearn_lse.{cls}.{method}" in paths
    assert "sklearn_lse.DROClassifier.predict_proba" in paths
    assert "sklearn_lse.metrics.make_robust_scorer" in paths
    assert "sklearn_lse.kl_dro_risk" in paths
    assert not any(path.endswith((".get_params", ".score", ".set_fit_request")) for path in paths)


@pytest.mark.parametrize(
    "path, is_method",
    [(path, is_method) for path, _, is_method in OBJECTS],
    ids=[path for path, _, _ in OBJECTS],
)
def test_numpydoc_validation(path, is_method):
    result = validate.validate(path)
    ignored = IGNORED | (IGNORED_FOR_METHODS if is_method else set())
    errors = [f"{code}: {message}" for code, message in result["errors"] if code not in ignored]
    assert not errors, f"{path} ({result['file']}:{result['file_line']}):\n" + "\n".join(errors)


EXAMPLES = [(path, obj) for path, obj, _ in OBJECTS if ">>>" in (inspect.getdoc(obj) or "")]


@pytest.mark.parametrize("path, obj", EXAMPLES, ids=[path for path, _ in EXAMPLES])
def test_docstring_examples_run(path, obj):
    """The Examples sections print what they say."""
    tests = doctest.DocTestFinder(recurse=False).find(obj, path, globs={})
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    failures = []
    for test in tests:
        runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
