"""Numba compilation: the first fit in a fresh process, with a cold cache and with the
cache of an earlier process (NUMBA_CACHE_DIR), measured in subprocesses.

    python benchmarks/bench_compile.py
"""

import os
import subprocess
import sys
import tempfile
import time

FIRST_FIT = """
import time
t = time.perf_counter()
import numpy as np
from sklearn_lse import DRORegressor
rng = np.random.default_rng(0)
X = rng.normal(size=(1000, 5))
y = X @ np.ones(5) + rng.normal(size=1000)
t_import = time.perf_counter()
DRORegressor(random_state=0).fit(X, y)
print(f"{t_import - t:.2f} {time.perf_counter() - t_import:.2f}")
"""


def first_fit(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", FIRST_FIT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1]), time.perf_counter() - t


def main():
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = first_fit(cache_dir)
        warm = first_fit(cache_dir)
    print("First DRORegressor fit in a fresh process (dense float64):")
    print("| Numba cache | import (s) | first fit (s) | whole process (s) |")
    print("|---|---|---|---|")
    for name, (t_import, t_fit, t_all) in (("cold", cold), ("warm", warm)):
        print(f"| {name} | {t_import:.2f} | {t_fit:.2f} | {t_all:.2f} |")


if __name__ == "__main__":
    main()
