"""Every ```python block of README.md and docs/*.md runs alone, as a new user pastes it into a
fresh interpreter: its imports and setup lines are in the block.

The blocks compare torch and jaxseq with ``assert`` / ``assert_allclose``, so a claim of the text
that stops being true fails here. Blocks are found anew at each run, so new ones are covered.

Default suite: each block is executed in its own empty namespace in this process (one JAX and
torch import for all of them), with the global state a fresh interpreter has set around it (JAX's
x64 mode off, the default matmul precision; torch's default dtype and TF32 flags restored after),
so a name defined by another block, or a setting the suite made, cannot leak in. ``slow``: each
block in a real fresh ``python -c`` subprocess, the exact user experience.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every fenced ```python block of a Markdown text."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)]


BLOCKS = [(path, line, code) for path in DOCUMENTS
          for line, code in python_blocks(path.read_text())]
IDS = [f"{path.name}:{line}" for path, line, _ in BLOCKS]


@contextlib.contextmanager
def fresh_interpreter_state() -> Iterator[None]:
    """JAX's and torch's global settings as in a fresh interpreter, restored afterwards."""
    jax_saved = {"jax_enable_x64": jax.config.jax_enable_x64,
                 "jax_default_matmul_precision": jax.config.jax_default_matmul_precision}
    torch_saved = (torch.get_default_dtype(), torch.backends.cuda.matmul.allow_tf32,
                   torch.backends.cudnn.allow_tf32)
    jax.config.update("jax_enable_x64", False)
    jax.config.update("jax_default_matmul_precision", None)
    try:
        yield
    finally:
        for name, value in jax_saved.items():
            jax.config.update(name, value)
        torch.set_default_dtype(torch_saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = torch_saved[1:]


def test_every_document_has_its_blocks():
    """No block lost to a broken fence, and the documents that should have blocks have them."""
    for path in DOCUMENTS:
        text = path.read_text()
        assert len(python_blocks(text)) == text.count("```python"), path.name
    counts = {path.name: sum(p == path for p, _, _ in BLOCKS) for path in DOCUMENTS}
    assert counts["README.md"] >= 10 and counts["porting.md"] >= 26, counts


@pytest.mark.parametrize("path, line, code", BLOCKS, ids=IDS)
def test_block_runs_alone(path, line, code):
    with fresh_interpreter_state():
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), {"__name__": "__main__"})
        except Exception as err:
            raise AssertionError(f"{path.name}, block at line {line}, run alone, failed:\n"
                                 f"{code}") from err


@pytest.mark.slow
@pytest.mark.parametrize("path, line, code", BLOCKS, ids=IDS)
def test_block_runs_alone_in_a_fresh_interpreter(path, line, code):
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{path.name}:{line}\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
