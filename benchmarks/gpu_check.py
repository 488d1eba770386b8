"""One prepared device check of jaxseq's fused cuDNN LSTM (``impl="cudnn"``): correctness first,
timing last, everything recorded as it comes.

On the GPU machine (CUDA jax and torch installed, no install step, no network), from the root of
the checkout, with the results copied back from ``$OUT``::

    PYTHONPATH=. timeout 480 python -m benchmarks.gpu_check --budget 420 --out "$OUT/gpu"

Dry run on a CPU (jax's pure-JAX reference kernel in place of cuDNN, smaller shapes where the GPU
shapes would take too long; a few minutes on 2 cores)::

    python -m benchmarks.gpu_check --emulate --budget 240 --out /tmp/gpu_dry

Checks, in this order (cheapest first; each prints one ``PASS|FAIL|INFO|SKIP|ERROR name: ...``
line and appends one JSON line to ``OUT/gpu_check.jsonl``, flushed at once, so a run cut short
still reports); checks 1-10 are one module each in :mod:`benchmarks.gpu` (``check(kernel) ->
Result``), the probes :mod:`benchmarks.gpu.probes`, the timing :mod:`benchmarks.gpu.benchmark`:

1. ``environment``: backend, devices, jax/jaxlib/torch/flax versions, CUDA and cuDNN versions
   (at least 8.8), matmul precision settings.
2. ``layout``: the raw kernel on jaxseq's flat weights (1 layer uni, 2 layers bi, full lengths)
   against jaxseq's scan in float64: outputs, states, every gradient <= 1e-5 (relative to max).
3. ``raw_ragged``: the raw kernel, ragged lengths >= 1, 2 layers bi, random ``hx``; ``y`` exactly 0
   at padding.
4. ``fast_path``: ``impl="cudnn"`` with zero-length rows and NaN padding: <= 1e-5, ``h_n``/``c_n``
   equal to ``hx`` bitwise on empty rows, ``y`` and ``dx`` exactly 0 at padding, all finite.
5. ``weight_drop_and_split``: weight drop and dropout masks against the scan given the same masks;
   the per-layer split (all-ones masks) against one fused call.
6. ``jit_compiles``: a jitted training step, two length patterns: one compilation; eager calls do
   not recompile.
7. ``precision``: FP32 (``"highest"``) <= 1e-5; TF32, unset and ``"bfloat16"`` settings and the
   scan's default precision reported.
8. ``determinism``: 4 runs bitwise equal (otherwise again in a subprocess with
   ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).
9. ``refusals``: float16/bfloat16/float64 refused with a clear error (call and construction);
   ``export_model`` of an ``impl="cudnn"`` model routed to the scan. Then the deliberately failing
   probes, each in its own subprocess (a failed cuDNN call can poison the CUDA context): raw zero
   lengths (forward with one empty row, backward with one, forward with all) and raw float64.
10. ``torch_cudnn``: torch's cuDNN LSTM on a packed batch, TF32 off on both sides: <= 1e-5.
11. ``large_shape``: B256 T500 I512 H256, 2 layers bi, forward and backward (subprocess): finite.
12. ``parity`` (``python -m jaxseq.parity``), ``pytest_fused`` (``parity_tests/test_fused.py``)
    and ``pytest_parity`` (a few parity tests), each a subprocess with a timeout from the budget.
    They and the probes run beside checks 2-11 (the GPU machine has 16 cores); all of them end
    before the timing.
13. ``timing``, alone and last: ``python -m benchmarks.run --gpu --json OUT/bench.jsonl --budget S``
    (its rows are appended to ``OUT/bench.jsonl`` as they come): torch's fastrnns problems
    (torch cuDNN vs jaxseq's scan vs ``impl="cudnn"``), the long-sequence problem with and without
    ``remat=k``, then the other GPU configs.

Subprocess logs go to ``OUT/logs/``. TF32 is off on both sides in this process
(``jax_default_matmul_precision="highest"``, torch's ``allow_tf32`` flags) except where check 7
measures it, and in every subprocess (plus ``NVIDIA_TF32_OVERRIDE=0``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

# Before jax is imported: several processes share the GPU (no 75% preallocation each).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if "--emulate" in sys.argv:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

from benchmarks.gpu import (
    determinism,
    environment,
    fast_path,
    jit_compiles,
    layout,
    precision,
    raw_ragged,
    refusals,
    torch_cudnn,
    weight_drop_and_split,
)
from benchmarks.gpu.benchmark import run_timing
from benchmarks.gpu.cases import Kernel
from benchmarks.gpu.jobs import Jobs, child_env, probe_result, record_job
from benchmarks.gpu.probes import PROBES, run_probe
from benchmarks.gpu.record import Recorder, jsonable

#: Checks 2-8, run in this order inside the kernel's context.
KERNEL_CHECKS = {"layout": layout.check, "raw_ragged": raw_ragged.check,
                 "fast_path": fast_path.check, "weight_drop_and_split": weight_drop_and_split.check,
                 "jit_compiles": jit_compiles.check, "precision": precision.check,
                 "determinism": determinism.check}
#: Share of the budget kept for the timing, which runs alone at the end.
TIMING_SHARE = {False: 0.5, True: 0.25}


def configure() -> None:
    """float64 for the reference scan; TF32 off on both sides (check 7 turns it on locally)."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def plan_jobs(jobs: Jobs, args: argparse.Namespace, budget_for_jobs: float) -> None:
    """Queue the probes (short, needed by checks 9 and 11) first, then the test stages."""
    py, emu = sys.executable, ["--emulate"] if args.emulate else []
    env = child_env(args.emulate)
    me = [py, "-m", "benchmarks.gpu_check", "--out", str(args.out)] + emu
    for name in PROBES:
        jobs.add(name, me + ["--probe", name], 90, env)
    jobs.add("large_shape", me + ["--probe", "large"], 180, env)
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    jobs.add("pytest_fused", pytest + ["parity_tests/test_fused.py"], 0.5 * budget_for_jobs, env)
    jobs.add("parity", [py, "-m", "jaxseq.parity"] + (["--dtype", "float32"] if args.emulate
                                                      else []), 0.5 * budget_for_jobs, env)
    jobs.add("pytest_parity", pytest + ["parity_tests/test_recurrent_parity.py", "-k",
                                        "zero_length_rows or edge_shapes or forward_mode_path"],
             0.4 * budget_for_jobs, env)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for gpu_check.jsonl, bench.jsonl and logs/ (e.g. $OUT/gpu)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for the whole run (default 420: under 8 minutes in all)")
    parser.add_argument("--emulate", action="store_true",
                        help="CPU dry run: jax's reference kernel in place of cuDNN, small shapes")
    parser.add_argument("--parallel", type=int, default=None,
                        help="subprocesses beside the checks (default: 4 on a GPU, 1 emulated)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)   # internal: one probe, one JSON line
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    configure()
    if args.probe:
        print(json.dumps(jsonable(run_probe(args.probe, args.emulate))), flush=True)
        return 0

    rec = Recorder(args.out, args.budget, args.emulate)
    # The timing runs alone at the end: the subprocesses beside the checks end before it.
    timing_reserve = TIMING_SHARE[args.emulate] * args.budget
    jobs_deadline = rec.t0 + args.budget - timing_reserve
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # `timeout`: still end the jobs
    jobs: Optional[Jobs] = None
    try:
        kernel = Kernel(args.emulate)
        env = rec.check("environment", lambda: environment.check(kernel),
                        min_left=-math.inf)   # always
        from jaxseq import fused

        if not args.emulate and env is not None and jax.default_backend() == "gpu" \
                and not fused.cuda_available():   # keep testing the kernel; the line says why
            rec.write("cuda_available_forced", "fail", "fused.cuda_available() is False on a GPU "
                      "backend; forced True for the rest of the run")
            fused.cuda_available = lambda: True
        jobs = Jobs(args.out, args.parallel or (1 if args.emulate else 4), jobs_deadline)
        plan_jobs(jobs, args, jobs_deadline - time.monotonic())
        with kernel.context():
            for name, check in KERNEL_CHECKS.items():
                result = rec.check(name, lambda check=check: check(kernel))
                if name == "determinism" and result is not None and result.status == "fail":
                    redo = jobs.add("determinism_cublas", [sys.executable, "-m",
                                    "benchmarks.gpu_check", "--out", str(args.out), "--probe",
                                    "determinism"], 120,
                                    child_env(args.emulate, CUBLAS_WORKSPACE_CONFIG=":4096:8"))
                    rec.write(redo.name, "info", json.dumps(probe_result(jobs.wait(redo.name))))
        rec.check("refusals", lambda: refusals.check(kernel))
        for name in PROBES:
            job = jobs.wait(name)
            if job.skipped:
                rec.write(name, "skip", job.skipped)
                continue
            outcome = probe_result(job)
            rec.write(name, "info", json.dumps(outcome)[:400], outcome, job.seconds)
        with kernel.context():
            rec.check("torch_cudnn", lambda: torch_cudnn.check(kernel))
        job = jobs.wait("large_shape")
        if job.skipped:
            rec.write(job.name, "skip", job.skipped)
        else:
            outcome = probe_result(job)
            ok = outcome.get("raised") is None and outcome.get("finite") is True
            rec.write(job.name, "pass" if ok else "fail", json.dumps(outcome)[:400], outcome,
                      job.seconds)
        for name, keep in [("pytest_fused", r"passed|failed|error"),
                           ("parity", r"worst relative error|passed, \d+ failed"),
                           ("pytest_parity", r"passed|failed|error")]:
            record_job(rec, jobs.wait(name), keep)
        jobs.stop()
        run_timing(rec, args)
    finally:
        if jobs is not None:
            jobs.stop()
        counts = ", ".join(f"{v} {k}" for k, v in sorted(rec.counts.items()))
        rec.write("summary", "info", f"{counts} in {rec.elapsed():.0f}s (budget "
                  f"{args.budget:.0f}s); lines in {rec.path}", dict(rec.counts))
        rec.close()
    return 0 if not (rec.counts.get("fail") or rec.counts.get("error")) else 1


if __name__ == "__main__":
    sys.exit(main())
