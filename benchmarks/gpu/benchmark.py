"""The device check's last stage, alone on the machine: the benchmark harness on the GPU.

``python -m benchmarks.run --gpu`` in a subprocess, its rows appended to ``OUT/bench.jsonl`` as
they come: torch's fastrnns problems (``vl_py``, ``dense``: torch cuDNN against jaxseq's scan,
``impl="cudnn"``, packed rows and Flax), the long-sequence problem with ``remat=k`` (when the
installed jaxseq takes it; memory from ``compiled.memory_analysis()`` and torch's CUDA peak), then
the main configs, in that order; no config starts once too little of the budget is left.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from benchmarks.gpu.jobs import Job, child_env, run_now
from benchmarks.gpu.record import Recorder

#: Timed rounds per contender on the device (a config's compilation costs more than its rounds).
RUNS = 5


def _ms(value: Any) -> str:
    return f"{value:.1f}ms" if isinstance(value, (int, float)) else str(value)


def run_timing(rec: Recorder, args: argparse.Namespace) -> None:
    """Run the GPU table in what is left of the budget; one line with every row it produced."""
    timeout = rec.left() - 5
    if timeout < 20:
        rec.write("timing", "skip", f"budget: {rec.left():.0f}s left")
        return
    bench = args.out / "bench.jsonl"
    before = len(bench.read_text().splitlines()) if bench.exists() else 0
    # Start no new config once less than a config's worth of time is left.
    start_new = max(0.0, timeout - (30 if args.emulate else 90))
    argv = [sys.executable, "-m", "benchmarks.run", "--gpu", "--json", str(bench),
            "--budget", f"{start_new:.0f}", "--runs", str(RUNS)]
    argv += ["--quick", "--emulate"] if args.emulate else []
    job = run_now(Job("timing", argv, timeout, child_env(args.emulate),
                      args.out / "logs" / "timing.log"))
    rows = []
    if bench.exists():
        for line in bench.read_text().splitlines()[before:]:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    status = "error" if job.timed_out and not rows else "pass" if job.rc == 0 or rows else "fail"
    lines = [ln for ln in job.output().splitlines() if ln.strip()]
    short = [f"{r.get('config')}/{r.get('contender')} {_ms(r.get('ms'))}" for r in rows
             if isinstance(r, dict)]
    rec.write("timing", status, f"rc {job.rc}{' (timed out)' if job.timed_out else ''}; "
              f"{len(rows)} rows: " + ", ".join(short)[:300] + ("" if rows else
                                                                " | " + " | ".join(lines[-2:])),
              {"argv": argv[1:], "rc": job.rc, "rows": rows, "tail": lines[-40:]}, job.seconds)
