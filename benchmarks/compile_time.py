"""Where the compile time of a jitted training step goes, per path and option.

A section of ``python -m benchmarks.run --levers``. For one config, each variant's first jitted
training step is built from cold caches (``jax.clear_caches()``, so jaxseq's cached core is traced
again) and split into tracing + lowering and XLA compilation (wall clock and process CPU time); the
compiled program's size (HLO instructions, while loops) says what XLA had to compile, and a few
interleaved rounds give its step time, so each compile-time saving is shown with its run-time
price. Variants: traced lengths, packed rows, the staircase with 2 to 8 chunks, the staircase
without the ``optimization_barrier`` on host lengths (``jaxseq/scan.py``; a local patch of this
process), and XLA compiler options that trade code quality for compile time, passed to this one
compilation (``Lowered.compile(compiler_options)``, no global flags).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Optional

import jax
import numpy as np

import jaxseq.scan
from benchmarks.configs import CONFIGS, BenchConfig, quick_config
from benchmarks.contenders import jax_step_fn, packed_step_fn
from benchmarks.floor import gemm_floor
from benchmarks.timing import Contender, compile_step, time_round_robin
from jaxseq import functional

BREAKDOWN_TEXT = """`benchmarks/compile_time.py` (config `lstm`, cold caches for every variant): the
first jitted training step split into tracing + lowering and XLA compilation, the compiled
program's size (HLO instructions; while loops and the kernels each loop body launches per
time step: fusions, copies, in-place updates), and its step time (median of interleaved
rounds in the same process). Compiler options are passed to that one compilation
(`Lowered.compile(compiler_options)`); `no barrier` is the staircase with the
`optimization_barrier` on host lengths in `jaxseq.scan.run_layer` replaced by the identity
(a local patch in the benchmark process, not a library change)."""

LOW_OPT = {"xla_backend_optimization_level": 0}
NO_EXPENSIVE = {"xla_llvm_disable_expensive_passes": True}


class _NoBarrier:
    """``jax.lax`` with ``optimization_barrier`` as the identity."""

    def __getattr__(self, name: str) -> Any:
        return (lambda x: x) if name == "optimization_barrier" else getattr(jax.lax, name)


@contextlib.contextmanager
def without_barrier() -> Iterator[None]:
    """Trace jaxseq's staircase without its ``optimization_barrier`` (this process only)."""
    real = jaxseq.scan.lax
    jaxseq.scan.lax = _NoBarrier()   # type: ignore[assignment]
    try:
        yield
    finally:
        jaxseq.scan.lax = real


def _variants(cfg: BenchConfig, quick: bool) -> list[tuple[str, Callable, dict]]:
    """``(name, () -> (fn, args), compile kwargs)`` per variant."""
    model = cfg.torch_module

    def padded(traced: bool, **options) -> Callable:
        run = partial(functional.recurrent, cfg.mode, **options)
        return lambda: jax_step_fn(cfg, model(), run, traced)

    def packed(**options) -> Callable:
        return lambda: packed_step_fn(cfg, model(), **options)[:2]

    chunks = (2, 6) if quick else (2, 3, 4, 6, 8)
    out = [("traced lengths", padded(True), {}), ("packed rows", packed(), {}),
           ("GEMM floor, padded, in_loop", lambda: gemm_floor(cfg, cfg.batch, "in_loop"), {})]
    out += [(f"staircase, time_chunks={k}", padded(False, time_chunks=k), {}) for k in chunks]
    out += [("staircase, time_chunks=6, no barrier", padded(False, time_chunks=6),
             dict(context=without_barrier()))]
    if not quick:
        out += [("forward_mode, traced lengths", padded(True, forward_mode=True), {}),
                ("traced lengths, LLVM opt level 0", padded(True), dict(compiler_options=LOW_OPT)),
                ("packed rows, LLVM opt level 0", packed(), dict(compiler_options=LOW_OPT)),
                ("staircase, time_chunks=6, LLVM opt level 0", padded(False, time_chunks=6),
                 dict(compiler_options=LOW_OPT)),
                ("staircase, time_chunks=6, no expensive LLVM passes", padded(False, time_chunks=6),
                 dict(compiler_options=NO_EXPENSIVE))]
    return out


def _program_size(compiled: Any) -> tuple[int, int, str]:
    """``(HLO instructions, while loops, kernels per step of each loop)`` of a compiled
    executable; a loop's kernels are the fusions, copies and in-place updates its body runs at
    every step (what the CPU runtime launches one by one)."""
    text = compiled.as_text()
    bodies: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            name = head.group(1)
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)
    loops = re.findall(r"\bwhile\(.*?body=%?([\w.\-]+)", text)
    kernels = [sum(bool(re.search(r"= \S+ (?:fusion|copy|dynamic-update-slice)\(", line))
                   for line in bodies.get(body, [])) for body in loops]
    return (len(re.findall(r"^\s*(?:ROOT )?%\S+ = ", text, flags=re.M)), len(loops),
            " + ".join(map(str, kernels)) if len(kernels) <= 4 else f"{sum(kernels)} in all")


def breakdown_rows(config: str = "lstm", runs: Optional[int] = None,
                   quick: bool = False) -> list[dict]:
    """One row per variant: compile split, program size, step time."""
    jax.config.update("jax_default_matmul_precision", "highest")
    cfg = quick_config(CONFIGS[config]) if quick else CONFIGS[config]
    rows, contenders = [], []
    for name, make, kwargs in _variants(cfg, quick):
        jax.clear_caches()
        fn, args = make()
        compiled, seconds, _ = compile_step(fn, *args, **kwargs)
        value = float(jax.tree.leaves(compiled(*args))[0].ravel()[0])
        instructions, loops, kernels = _program_size(compiled)
        rows.append(dict(config=cfg.name, variant=name, lower_s=seconds.lower_s,
                         compile_s=seconds.compile_s, cpu_s=seconds.cpu_s,
                         instructions=instructions, while_loops=loops, loop_kernels=kernels,
                         loss=value))
        contenders.append(Contender(name, lambda c=compiled, a=args: jax.block_until_ready(c(*a)),
                                    value, seconds))
    wall, _ = time_round_robin(contenders, runs or (2 if quick else 5), warmup=1)
    for row in rows:
        row["ms"] = 1e3 * float(np.median(wall[row["variant"]]))
    return rows


def breakdown_table(rows: list[dict]) -> list[str]:
    lines = ["| variant | trace + lower s | XLA compile s | CPU s | HLO instructions | while loops "
             "| kernels per step | step ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | "
                     f"{r['cpu_s']:.2f} | {r['instructions']} | {r['while_loops']} | "
                     f"{r['loop_kernels']} | {r['ms']:.1f} |")
    return lines

