"""``python -m benchmarks.run --quick`` runs every contender and reports sane numbers.

Timings are not asserted (they depend on the machine); only that every contender ran, computed
the same loss as torch (the runner exits non-zero otherwise), reported finite times, and that the
JSON lines, torch's fastrnns problems, the GPU selection (with the emulated cuDNN path), the
budget, the report's sections and the benchmark modules' import graph work.
"""
import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.report import KEPT_MARKER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_CONTENDERS = {"jaxseq-packed", "jaxseq-staircase", "jaxseq-traced", "torch-packed",
                  "flax-nnx.RNN", "floor-padded/hoisted", "floor-padded/in_loop",
                  "floor-packed/hoisted", "floor-packed/in_loop"}
FASTRNNS_CONTENDERS = {"jaxseq-traced/in_loop", "jaxseq-traced/hoisted", "jaxseq-packed/in_loop",
                       "jaxseq-packed/hoisted", "jaxseq-staircase", "torch-packed",
                       "torch-packed/1 thread", "flax-nnx.RNN",
                       "floor-padded/hoisted", "floor-padded/in_loop", "floor-packed/hoisted",
                       "floor-packed/in_loop"}
GPU_CONTENDERS = {"jaxseq-traced", "jaxseq-cudnn", "torch-packed", "flax-nnx.RNN", "jaxseq-packed"}


def _run(*args, timeout=600):
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _json_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quick_cpu_benchmark(tmp_path):
    report, rows_file = tmp_path / "benchmarks.md", tmp_path / "rows.jsonl"
    kept = f"{KEPT_MARKER}\n\n## Long sequences and remat\n\nan earlier table\n"
    report.write_text("# an earlier report\n\n## Ratios\n\nold figures\n\n" + kept)
    out = _run("--config", "lstm", "--config", "vl_py", "--torch-threads", "2", "--json",
               str(rows_file), "--markdown", str(report))
    rows = _json_rows(rows_file)
    timed = {r["contender"]: r for r in rows if r["kind"] in ("step", "floor")
             and r["config"] == "lstm"}
    assert set(timed) == CPU_CONTENDERS, sorted(timed)
    assert all(r["status"] == "ok" and r["selection"] == "cpu" for r in timed.values())
    assert all(math.isfinite(r["ms"]) and r["ms"] > 0 and r["cpu_ms"] >= 0 for r in timed.values())
    # every JAX path reports its compile split; the floors have no loss, the models one loss
    assert all(r["lower_s"] > 0 and r["compile_s"] > 0 for n, r in timed.items()
               if not n.startswith("torch"))
    assert all(r["loss_rel_diff"] is None for n, r in timed.items() if n.startswith("floor"))
    assert all(r["loss_rel_diff"] < 1e-4 for n, r in timed.items() if not n.startswith("floor"))
    assert "time_chunks=2" in timed["jaxseq-staircase"]["note"]        # quick: 2 chunks
    # torch's vl_py: random states (per sequence in packed rows), parameter gradients only
    varlen = {r["contender"]: r for r in rows if r["config"] == "vl_py"}
    assert set(varlen) == FASTRNNS_CONTENDERS, sorted(varlen)
    assert all(r["status"] == "ok" and math.isfinite(r["ms"]) for r in varlen.values())
    assert all(r["loss_rel_diff"] < 1e-4 for n, r in varlen.items() if not n.startswith("floor"))
    assert "pack_sequence" in varlen["torch-packed"]["note"]
    text = report.read_text()
    for heading in ("## Ratios", "## The GEMM floor", "## Compile time of the first jitted step",
                    "## All measurements", "## torch's own benchmark configs"):
        assert heading in text, heading
    assert "python -m benchmarks.run --quick" in text and "| lstm | jaxseq-packed |" in text
    assert "| vl_py | jaxseq-traced/in_loop |" in text
    assert "load average at end" in text and "torch / packed rows" in out
    # the regenerated report replaces the generated part and keeps the analyses after the marker
    assert text.endswith("\n" + kept) and "old figures" not in text


def test_quick_gpu_selection_emulated(tmp_path):
    rows_file = tmp_path / "bench.jsonl"
    # an LSTM through the emulated fused kernel, a GRU (no cuDNN path, no Flax twin), torch's
    # dense problem (random states, torch without packing, no packed rows)
    _run("--gpu", "--emulate", "--config", "lstm", "--config", "gru", "--config", "dense",
         "--json", str(rows_file))
    rows = {(r["config"], r["contender"]): r for r in _json_rows(rows_file)}
    assert {c for n, c in rows if n != "dense"} == GPU_CONTENDERS
    assert {c for n, c in rows if n == "dense"} == {"jaxseq-traced", "jaxseq-cudnn", "torch-dense",
                                                     "flax-nnx.RNN"}
    assert rows["lstm", "jaxseq-cudnn"]["status"] == "ok"
    assert "emulated" in rows["lstm", "jaxseq-cudnn"]["note"]
    assert all(r["loss_rel_diff"] < 1e-4 for r in rows.values() if r["status"] == "ok")
    assert rows["gru", "jaxseq-cudnn"]["status"] == "skipped"          # no cuDNN GRU
    assert rows["gru", "flax-nnx.RNN"]["status"] == "skipped"          # no torch-exact Flax GRU
    assert all(r["selection"] == "gpu" for r in rows.values())


def test_budget_starts_no_config(tmp_path):
    """In this process (no compilation but the small matmul): ``--budget 0`` skips every config."""
    from benchmarks import run
    from benchmarks.configs import GPU_CONFIGS

    rows_file = tmp_path / "bench.jsonl"
    assert run.main(["--gpu", "--quick", "--budget", "0", "--torch-threads", "1",
                     "--json", str(rows_file)]) == 0
    rows = _json_rows(rows_file)
    assert [r["config"] for r in rows] == list(GPU_CONFIGS)
    assert all(r["status"] == "skipped" and "budget" in r["note"] for r in rows)


def test_quick_long_sequences(tmp_path):
    """``python -m benchmarks.long_sequences --quick``: jaxseq with and without ``remat`` and torch
    packed, each in its own process; remat lowers the compiled temporary memory."""
    rows_file = tmp_path / "long.jsonl"
    done = subprocess.run([sys.executable, "-m", "benchmarks.long_sequences", "--quick",
                           "--rounds", "1", "--json", str(rows_file)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _json_rows(rows_file)
    assert [(r["contender"], r["remat"]) for r in rows] == [
        ("jaxseq", None), ("jaxseq", 7), ("torch-packed", None)]           # round(sqrt(48)) = 7
    assert all(math.isfinite(r["step_s"]) and r["step_s"] > 0 and r["rss_gib"] > 0 for r in rows)
    assert rows[1]["temp_mib"] < rows[0]["temp_mib"]
    assert "| 48 | jaxseq remat=7 |" in done.stdout and "load average at end" in done.stdout


def _benchmark_imports(path: Path) -> set[str]:
    """The ``benchmarks`` modules a file imports (``benchmarks.gpu.x`` counts as ``gpu``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                 else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
            names = [f"benchmarks.{a.name}" for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("benchmarks.")}
    return found


def test_benchmark_import_graph():
    """No circle: no module imports a script (``run``, ``compare_revisions``, ``gpu_check``), and
    the import graph among the modules is acyclic."""
    folder = Path(ROOT) / "benchmarks"
    graph = {p.stem: _benchmark_imports(p) - {p.stem} for p in folder.glob("*.py")}
    graph["gpu"] = set().union(*(_benchmark_imports(p) for p in (folder / "gpu").glob("*.py")))
    graph["gpu"] -= {"gpu"}
    scripts = {"run", "compare_revisions", "gpu_check"}
    assert not {m for deps in graph.values() for m in deps} & scripts, graph
    done: set[str] = set()
    while len(done) < len(graph):   # peel modules whose imports are all done: a circle never peels
        ready = {m for m, deps in graph.items() if m not in done and deps <= done}
        assert ready, {m: deps - done for m, deps in graph.items() if m not in done}
        done |= ready
