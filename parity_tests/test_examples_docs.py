"""``docs/porting.md`` is executable: its ``python`` blocks run in order in one namespace.

The blocks compare torch and jaxseq with ``assert`` / ``assert_allclose``, so a claim of the guide
that stops being true fails here.
"""
from __future__ import annotations

import re
from pathlib import Path

import jax
import pytest

pytest.importorskip("torch")

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "porting.md"


def python_blocks(text: str) -> list[str]:
    """The contents of every fenced ```python block of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_every_snippet_of_the_porting_guide_runs():
    text = GUIDE.read_text()
    blocks = python_blocks(text)
    assert len(blocks) == text.count("```python") >= 19      # no block lost to a broken fence
    namespace: dict = {"__name__": "porting_guide"}
    with jax.default_matmul_precision("highest"):
        for number, block in enumerate(blocks, 1):
            try:
                exec(compile(block, f"{GUIDE.name} block {number}", "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"{GUIDE.name} block {number} failed:\n{block}") from err
