"""The project as a user meets it: the API reference covers every public name, the installed
parity check starts from any directory with a plain-text help, one version. (The README's and the
guides' code blocks run in ``test_examples_docs.py``.)"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxseq

ROOT = Path(__file__).resolve().parents[1]


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
