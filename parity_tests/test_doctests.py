"""Every docstring example in jaxseq/ and torch_ref/ runs and prints what it shows.

Run in a subprocess: the suite's conftest turns on float64, while the examples show the library's
default (float32) behaviour.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_doctests_pass():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--doctest-modules",
         "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), "jaxseq", "torch_ref"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
