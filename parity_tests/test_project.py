"""The project as a user meets it: the README runs as written, the API reference covers every
public name, the installed parity check starts from any directory, one version."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxseq

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_readme_python_blocks_run_in_order():
    """Every ```python block of README.md, in order, in one fresh interpreter (the library's
    defaults: float32, no x64), as a new user would paste them."""
    text = (ROOT / "README.md").read_text()
    blocks = python_blocks(text)
    assert len(blocks) == text.count("```python") >= 5
    script = "\n".join(f"# --- README block {i}\n{b}" for i, b in enumerate(blocks, 1))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_api_reference_covers_every_public_name():
    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^::: jaxseq\.(\w+)", api, flags=re.M))
    members = set(re.findall(r"members: \[(.*?)\]", api))
    listed = {m.strip() for group in members for m in group.split(",")}
    missing = [n for n in jaxseq.__all__ if n not in documented and n not in listed]
    assert not missing, f"docs/api.md does not document {missing}"


def test_parity_console_script_runs_from_any_directory(tmp_path):
    script = Path(sys.executable).parent / "jaxseq-parity"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jaxseq.parity"]
    done = subprocess.run(command + ["--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "parity table" in done.stdout, done.stderr


def test_parity_help_is_plain_text_with_every_default(capsys):
    from jaxseq.parity import report

    with pytest.raises(SystemExit) as done:
        report.main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "``" not in text and ":func:" not in text
    options = [a for a in report.parser()._actions if a.dest != "help"]
    assert options and all("(default: %(default)s)" in a.help for a in options)
    assert "(default: both)" in " ".join(text.split())
    assert "tolerance (float64\n1e-10, float32 1e-5), 1 otherwise" in text


def test_one_version():
    from importlib.metadata import version

    assert version("jaxseq") == jaxseq.__version__
    assert f"## {jaxseq.__version__}" in (ROOT / "CHANGELOG.md").read_text()
