"""The package as users get it: built into an sdist and a wheel, the sdist with what its
tests need, and the wheel installed into a fresh virtual environment that is then made
read-only, used with a read-only home and no ``NUMBA_CACHE_DIR`` (as in containers and on
clusters): the main demo runs, and says once that the kernels are cached for the process
only."""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

import sklearn_lse

pytestmark = pytest.mark.slow  # a build, a fresh virtual environment, a cold compilation

ROOT = Path(__file__).resolve().parents[1]


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist, and the wheel built from it (python -m build), as users get them."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_sdist_ships_what_its_tests_need(dist):
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = {
        str(path.relative_to(ROOT))
        for folder in ("tests", "benchmarks", "examples")
        for path in (ROOT / folder).glob("*.py")
    }
    needed |= {"docs/conf.py", "docs/index.rst", "sklearn_lse/py.typed", "LICENSE"}
    needed |= {"CHANGELOG.md", "CONTRIBUTING.md", "CITATION.cff", "README.md"}
    assert needed <= names, sorted(needed - names)
    built = ("docs/_build/", "docs/auto_examples/", "docs/generated/", "benchmarks/results/")
    assert not [name for name in names if name.startswith(built) or "__pycache__" in name]


def test_wheel_holds_the_package_and_its_version(dist):
    _, wheel = dist
    assert f"-{sklearn_lse.__version__}-" in wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "sklearn_lse/py.typed" in names
    assert "sklearn_lse/_numba_cache.py" in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]


def read_only_command(command, folders):
    """``command`` with ``folders`` read-only: made so by permissions for a user, and for
    root (whom permissions do not stop) by read-only bind mounts in a mount namespace of
    the command's own. None when neither is possible."""
    if os.geteuid() != 0:
        for folder in folders:
            subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        return command
    unshare = shutil.which("unshare")
    probe = tempfile.mkdtemp()
    try:
        mounted = unshare and subprocess.run(
            [unshare, "-m", "sh", "-c", f"mount --bind -o ro {probe} {probe}"],
            capture_output=True,
        )
        if not mounted or mounted.returncode != 0:
            return None
    finally:
        os.rmdir(probe)
    mounts = " && ".join(f"mount --bind -o ro '{f}' '{f}'" for f in folders)
    return [unshare, "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *command]


def test_installed_read_only_with_no_writable_cache_location_the_demo_runs(dist):
    _, wheel = dist
    root = Path(tempfile.mkdtemp(prefix="sklearn_lse-read-only-"))
    try:
        venv, home = root / "venv", root / "home"
        run([sys.executable, "-m", "venv", str(venv)])
        python = str(venv / "bin" / "python")
        run([python, "-m", "pip", "install", "--quiet", str(wheel)])
        home.mkdir()
        command = read_only_command([python, "-m", "sklearn_lse", "--quick"], [venv, home])
        if command is None:
            pytest.skip("running as root without mount namespaces: cannot make a folder read-only")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("NUMBA_", "XDG_", "PYTHON", "VIRTUAL_ENV"))
        }
        env["HOME"] = str(home)
        result = run(command, cwd=home, env=env)
        assert result.stderr.count("no writable folder for Numba's cache") == 1, result.stderr
        assert "Compiling the Numba kernels for this process only" in result.stderr
        assert "| DROClassifier |" in result.stdout and "| DRORegressor |" in result.stdout
        assert not list(venv.glob("lib/python*/site-packages/sklearn_lse/__pycache__/*.nbi"))
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
