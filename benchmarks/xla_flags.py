"""XLA CPU flags against no flags: jaxseq's training step, each setting in its own process.

A section of ``python -m benchmarks.run --levers``. ``XLA_FLAGS`` is read once, when the XLA client
starts, so every setting runs in a fresh subprocess (:func:`child`), which times jaxseq's training
step on packed rows and with traced lengths (interleaved rounds, medians) and reports the compile
time of each. The parent runs every setting, no flags included, once per pass (in an order rotated
from pass to pass, so that drifting load from other processes does not favour one setting) and
reports each setting's times as ratios to the no-flags run of the same pass (median over passes).
jaxseq sets no global flags: this is documentation for users, who may set ``XLA_FLAGS`` for their
process, or pass the same options to one function with ``jax.jit(fn,
compiler_options={"xla_cpu_...": value})``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: ``(label, XLA_FLAGS)``: the settings compared (the first is the reference).
SETTINGS = (
    ("no flags", ""),
    ("XNNPACK", "--xla_cpu_use_xnnpack=true"),
    ("oneDNN", "--xla_cpu_use_onednn=true"),
    ("no thunk runtime", "--xla_cpu_use_thunk_runtime=false"),
    ("single-threaded Eigen", "--xla_cpu_multi_thread_eigen=false"),
    ("YNNPACK dots off", "--xla_cpu_experimental_ynn_fusion_type="),
    ("YNNPACK off, XNNPACK on", "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=true"),
    ("fast math", "--xla_cpu_enable_fast_math=true"),
    ("LLVM opt level 0", "--xla_backend_optimization_level=0"),
    ("no expensive LLVM passes", "--xla_llvm_disable_expensive_passes=true"),
)
QUICK_SETTINGS = SETTINGS[:2]
PATHS = ("jaxseq-packed", "jaxseq-traced")

FLAGS_TEXT = """`benchmarks/xla_flags.py`: each setting of `XLA_FLAGS` in its own process (the flags are
read at start-up), timing jaxseq's training step (packed rows and traced lengths,
interleaved rounds, medians) and its compile time; every setting, no flags included, once
per pass in a rotated order (no setting always first); ratios to the no-flags process of the
same pass (median over passes; below 1: the flag is faster). `fast math` changes results (it
lets LLVM reassociate float arithmetic). jaxseq sets no global flags; a user can set
`XLA_FLAGS` for a process or pass the same option to one function: `jax.jit(step,
compiler_options={"xla_cpu_use_xnnpack": True})`."""


def child(configs: list[str], runs: int, quick: bool) -> None:
    """Time jaxseq's paths in this process (under the inherited ``XLA_FLAGS``); print JSON lines."""
    import jax

    from benchmarks.configs import CONFIGS, quick_config
    from benchmarks.contenders import jaxseq_packed_step, jaxseq_step
    from benchmarks.timing import time_round_robin

    jax.config.update("jax_default_matmul_precision", "highest")
    for name in configs:
        cfg = quick_config(CONFIGS[name]) if quick else CONFIGS[name]
        contenders = [jaxseq_packed_step(cfg, cfg.torch_module()),
                      jaxseq_step(cfg, cfg.torch_module(), True)]
        wall, cpu = time_round_robin(contenders, runs, warmup=1)
        for c in contenders:
            print(json.dumps(dict(config=name, path=c.name, ms=1e3 * float(np.median(wall[c.name])),
                                  cpu_ms=1e3 * float(np.median(cpu[c.name])),
                                  compile_s=c.compile.total_s, compile_cpu_s=c.compile.cpu_s,
                                  loss=c.loss)), flush=True)


def _run_setting(flags: str, configs: list[str], runs: int, quick: bool) -> list[dict]:
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    argv = [sys.executable, "-c", "import json, sys; from benchmarks.xla_flags import child; "
            "child(*json.loads(sys.argv[1]))", json.dumps([configs, runs, quick])]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return [dict(error=f"exit {done.returncode}: {tail[0][:200]}")]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def flag_rows(quick: bool = False, configs: Optional[list[str]] = None, passes: Optional[int] = None,
              runs: Optional[int] = None, settings=None) -> list[dict]:
    """One row per (setting, config, path): median times, and ratios to no flags of the same pass."""
    settings = settings or (QUICK_SETTINGS if quick else SETTINGS)
    configs = configs or (["lstm"] if quick else ["lstm", "bilstm2"])
    passes = passes or (1 if quick else 2)
    runs = runs or (2 if quick else 9)
    results: dict[str, list[list[dict]]] = {label: [] for label, _ in settings}
    for p in range(passes):   # rotated, the reference too: no setting always runs first
        shift = p * len(settings) // passes
        for label, flags in list(settings[shift:]) + list(settings[:shift]):
            start = time.perf_counter()
            results[label].append(_run_setting(flags, configs, runs, quick))
            print(f"  pass {p + 1}: {label or 'no flags'} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    rows = []
    reference = settings[0][0]
    for label, flags in settings:
        errors = [r["error"] for run in results[label] for r in run if "error" in r]
        if errors:
            rows.append(dict(config="xla-flags", setting=label, flags=flags, error=errors[0]))
            continue
        for config in configs:
            for path in PATHS:
                def pick(run, key, config=config, path=path):
                    return next(r[key] for r in run if r["config"] == config and r["path"] == path)

                ratio = [pick(run, "ms") / pick(base, "ms")
                         for run, base in zip(results[label], results[reference])]
                cpu_ratio = [pick(run, "cpu_ms") / pick(base, "cpu_ms")
                             for run, base in zip(results[label], results[reference])]
                loss = [pick(run, "loss") for run in results[label]]
                base_loss = pick(results[reference][0], "loss")
                rows.append(dict(
                    config="xla-flags", setting=label, flags=flags, bench_config=config, path=path,
                    ms=float(np.median([pick(run, "ms") for run in results[label]])),
                    ratio=float(np.median(ratio)), cpu_ratio=float(np.median(cpu_ratio)),
                    compile_s=float(np.median([pick(run, "compile_s") for run in results[label]])),
                    compile_cpu_s=float(np.median([pick(run, "compile_cpu_s")
                                                   for run in results[label]])),
                    loss_rel_diff=abs(loss[0] - base_loss) / max(abs(base_loss), 1e-30)))
    return rows


def flag_table(rows: list[dict]) -> list[str]:
    lines = ["| setting | `XLA_FLAGS` | config | path | ms | / no flags (CPU time) | compile s "
             "(CPU s) | loss rel. diff |", "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        flags = f"`{r['flags']}`" if r["flags"] else "-"
        if "error" in r:
            lines.append(f"| {r['setting']} | {flags} | | | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['setting']} | {flags} | {r['bench_config']} | {r['path']} | "
                     f"{r['ms']:.1f} | {r['ratio']:.2f}x ({r['cpu_ratio']:.2f}x) | "
                     f"{r['compile_s']:.1f} ({r['compile_cpu_s']:.1f}) | {r['loss_rel_diff']:.1e} |")
    return lines

