"""The fast and the full suite.

``python -m pytest`` runs the fast suite; ``python -m pytest --run-slow`` also runs the
tests marked ``slow`` (``.ci/run`` does). A ``-m`` expression selects by marker as usual
(``-m slow`` runs the slow tests only) and overrides the default.

Whole files of slow tests say so themselves (``pytestmark = pytest.mark.slow``). The slow
tests of files whose other tests are fast are listed here, by a regular expression on
their node id (``file.py::test_name[parameters]``), with what makes them slow.
"""

import re

import pytest

SLOW_TESTS = [
    # the default fit against the optimum on digits (650 coefficients, 12 settings)
    r"test_classification\.py::test_default_fit_reaches_the_optimum\[.*-digits\]",
    # grid searches of both models over 3 seeds of noisy digits: about 75 s
    r"test_classification\.py::test_dro_beats_logistic_regression_on_the_worst_class",
    # large n: 10^5 x 100 float32 (20-40 s), 10^6 rows (memory), n up to 20000 x 8 settings
    r"test_scale\.py::test_float32_is_trained_in_float32_without_a_float64_copy\[.*\]",
    r"test_scale\.py::test_fit_allocates_a_few_numbers_per_row_and_no_copy_of_X\[.*\]",
    # a sparse fit on 10^5 x 2 10^4 (about 3 minutes)
    r"test_scale\.py::test_sparse_fit_holds_no_copy_of_the_non_zeros",
    r"test_regression\.py::test_a_converged_fit_is_within_ten_tol_of_the_optimum\[.*\]",
    r"test_regression\.py::test_no_false_convergence_when_the_cap_binds_on_one_sample\[.*\]",
]
_PATTERNS = {pattern: re.compile(pattern) for pattern in SLOW_TESTS}
_UNMATCHED = pytest.StashKey[set]()


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (benchmarks, examples, Dask, docs, "
        "installation, large n)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    unmatched = set(_PATTERNS)
    for item in items:
        node = item.nodeid.rsplit("/", 1)[-1]
        for pattern, regex in _PATTERNS.items():
            if regex.fullmatch(node):
                item.add_marker(pytest.mark.slow)
                unmatched.discard(pattern)
    whole_files = not any("::" in arg for arg in config.args)
    config.stash[_UNMATCHED] = {
        p
        for p in unmatched
        if whole_files and any(p.split(r"\.py")[0] + ".py" in item.nodeid for item in items)
    }
    if config.getoption("--run-slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_terminal_summary(terminalreporter, config):
    """A listed slow test that was renamed or removed would silently join the fast
    suite: name the patterns that matched nothing in a file that was collected."""
    for pattern in sorted(config.stash.get(_UNMATCHED, ())):
        terminalreporter.write_line(
            f"tests/conftest.py: the slow-test pattern {pattern!r} matched no test", yellow=True
        )
