"""``python -m benchmarks.run --quick`` runs every contender and reports sane numbers (< 60 s)."""
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENDERS = ("jaxseq", "jaxseq-traced", "torch-packed", "flax-nnx.RNN")


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
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--markdown",
                           str(report)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _rows(done.stdout)
    assert {contender for _, contender in rows} == set(CONTENDERS), done.stdout[-3000:]
    assert {config for config, _ in rows} == {"lstm", "bilstm2", "gru"}
    assert ("gru", "flax-nnx.RNN") not in rows             # Flax has no torch-exact GRU
    assert all(math.isfinite(ms) and ms > 0 for ms in rows.values()), rows
    assert "torch / jaxseq" in done.stdout and "large matmul" in done.stdout
    text = report.read_text()
    assert "python -m benchmarks.run --quick" in text and "| lstm | jaxseq |" in text
    assert elapsed < 60, f"--quick took {elapsed:.0f} s"
