"""``python -m benchmarks.run --quick`` runs every contender and reports sane numbers.

Timings are not asserted (they depend on the machine); only that every contender ran, computed
the same loss as torch (the runner exits non-zero otherwise) and reported finite times.
"""
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENDERS = ("jaxseq-packed", "jaxseq", "jaxseq-traced", "torch-packed", "flax-nnx.RNN")


def _rows(text):
    """``{(config, contender): median ms}`` from the printed markdown tables."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 11 and cells[1] in CONTENDERS:
            rows[cells[0], cells[1]] = float(cells[2])
    return rows


def test_quick_benchmark_smoke(tmp_path):
    report = tmp_path / "benchmarks.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--config", "bilstm2",
                           "--config", "gru", "--markdown", str(report)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _rows(done.stdout)
    assert {contender for _, contender in rows} == set(CONTENDERS), done.stdout[-3000:]
    assert {config for config, _ in rows} == {"bilstm2", "gru"}
    assert ("gru", "flax-nnx.RNN") not in rows             # Flax has no torch-exact GRU
    assert all(math.isfinite(ms) and ms > 0 for ms in rows.values()), rows
    assert "torch / packed rows" in done.stdout and "large matmul" in done.stdout
    assert "density" in done.stdout
    text = report.read_text()
    assert "python -m benchmarks.run --quick" in text and "| bilstm2 | jaxseq-packed |" in text
