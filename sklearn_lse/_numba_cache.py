"""Where Numba caches the compiled kernels, decided before any kernel module is imported.

The kernels are compiled with ``cache=True``, and Numba looks for a cache folder when a
kernel is *decorated*, at import: ``NUMBA_CACHE_DIR`` when it is set, else the
``__pycache__`` folder next to the source, else the user's cache folder
(``~/.cache/numba``). When none of them is writable (a read-only install with no writable
home, as in some containers and clusters), Numba raises ``RuntimeError: cannot cache
function ...: no locator available`` and the package cannot be imported.

This module asks Numba first, with a probe function from the kernels' own folder (so that
it gets the answer the kernels would get), and in that case points Numba at a temporary
folder for this process (removed at exit), with one warning. The kernels then work, but
are compiled again in every new process; setting ``NUMBA_CACHE_DIR`` to a writable folder
compiles them once.
"""

import atexit
import shutil
import tempfile
import warnings

import numba

__all__ = ["TEMPORARY_CACHE"]


def _probe():
    """Never called: only decorated, to ask Numba where it would cache this folder's
    functions."""


def _numba_can_cache():
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError as error:
        if "no locator available" not in str(error):
            raise
        return False
    return True


def _temporary_cache():
    try:
        folder = tempfile.mkdtemp(prefix="sklearn_lse-numba-cache-")
    except OSError as error:
        raise ImportError(
            "sklearn_lse: Numba finds no writable folder for its cache (not the package's "
            "folder, not the home folder, not the temporary folder): set NUMBA_CACHE_DIR to "
            "a writable folder"
        ) from error
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    numba.config.CACHE_DIR = folder
    warnings.warn(
        "sklearn_lse: no writable folder for Numba's cache (the package's folder and the "
        "home folder are read-only and NUMBA_CACHE_DIR is not set, or not writable); the "
        f"kernels are cached in {folder} for this process only and compiled again in every "
        "new process. Set NUMBA_CACHE_DIR to a writable folder to compile them once.",
        UserWarning,
        stacklevel=2,
    )
    return folder


#: The temporary folder the kernels are cached in for this process, or None when Numba
#: found a lasting cache location (the usual case).
TEMPORARY_CACHE = None if _numba_can_cache() else _temporary_cache()
