"""The documentation builds offline and its formulas render offline.

The pages are built with the examples not executed (``SKLEARN_LSE_DOCS_EXECUTE=0``), or
taken from ``SKLEARN_LSE_DOCS_HTML`` when that names a finished build (``.ci/run`` builds
the executed documentation once and points this test at it). Every page loads its
scripts and styles from the build itself, and in headless Chromium (the Debian package
``chromium``) MathJax turns every formula of every page into rendered math, with no TeX
error and no TeX left as text.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Sphinx build, and a browser

ROOT = Path(__file__).resolve().parents[1]
MATH = re.compile(r'<(span|div) class="math notranslate nohighlight">')
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    built = os.environ.get("SKLEARN_LSE_DOCS_HTML")
    if built:
        return Path(built)
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("html")
    env = {**os.environ, "SKLEARN_LSE_DOCS_EXECUTE": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def pages(html):
    return sorted(html.rglob("*.html"))


def test_pages_load_nothing_from_the_network(html):
    remote = re.compile(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"')
    offenders = {
        str(page.relative_to(html)): remote.findall(page.read_text(encoding="utf-8"))
        for page in pages(html)
    }
    assert not {page: tags for page, tags in offenders.items() if tags}


def test_mathjax_is_served_with_the_pages(html):
    with_math = [page for page in pages(html) if MATH.search(page.read_text(encoding="utf-8"))]
    assert {"index.html", "user_guide.html"} <= {page.name for page in with_math}
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    for page in with_math:
        text = page.read_text(encoding="utf-8")
        assert re.search(r'<script[^>]*src="(\.\./)*_static/mathjax/tex-chtml\.js', text), page


def rendered_dom(url):
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        result = subprocess.run(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt install chromium)")
def test_every_formula_renders_offline(html):
    checked = 0
    for page in pages(html):
        source = page.read_text(encoding="utf-8")
        formulas = len(MATH.findall(source))
        if not formulas:
            continue
        dom = rendered_dom(page.as_uri())
        name = page.relative_to(html)
        assert dom.count("<mjx-container") == formulas, f"{name}: not every formula rendered"
        assert "<mjx-merror" not in dom, f"{name}: a TeX error"
        body = re.sub(r"<style\b.*?</style>|<script\b.*?</script>", "", dom, flags=re.S)
        assert not re.search(r"\\\(|\\\[", body), f"{name}: TeX left as text"
        checked += formulas
    assert checked > 50
