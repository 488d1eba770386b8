"""How every benchmark measures: compiled steps, interleaved rounds, the machine, JSON lines.

A :class:`Contender` is a ready-to-time step (``step()`` runs one and waits for its result);
:func:`time_round_robin` times several of them in interleaved rounds in one process, so that load
from other processes hits all of them alike; :func:`compile_step` builds a jitted step ahead of
time and reports its compile time and XLA buffer memory. Nothing here imports another benchmark
module.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class CompileTime:
    """Seconds to build the first jitted step: tracing + lowering to StableHLO, XLA compilation
    (wall clock), and the process CPU time of both (less sensitive to other processes' load)."""

    lower_s: float
    compile_s: float
    cpu_s: float

    @property
    def total_s(self) -> float:
        return self.lower_s + self.compile_s


@dataclasses.dataclass
class Contender:
    """A ready-to-time training step."""

    name: str
    step: Callable[[], Any]
    loss: float
    compile: Optional[CompileTime] = None   # JAX contenders: jit tracing + lowering + compilation
    memory_mb: Optional[float] = None       # XLA temp + output buffers; torch: CUDA peak allocated
    note: str = ""
    exact: bool = True                      # float32 math: its loss must match torch's to ~1e-6
    kind: str = "step"                      # "step", or "floor" (benchmarks.floor: no loss)
    flops: Optional[float] = None           # matmul FLOPs of a step (None: the config's valid ones)


def block(tree: Any) -> None:
    """Wait for every array of ``tree``."""
    jax.block_until_ready(tree)


def compile_step(fn: Callable, *args: Any, context: Any = None,
                 compiler_options: Optional[dict] = None
                 ) -> tuple[Any, CompileTime, Optional[float]]:
    """AOT-compile ``jax.jit(fn)`` for ``args`` (tracing inside ``context``, e.g.
    :func:`jaxseq.fused.use_reference_kernel`; XLA ``compiler_options`` for this compilation
    only); return it, its :class:`CompileTime` and the XLA buffer MB."""
    start, cpu = time.perf_counter(), time.process_time()
    with context or contextlib.nullcontext():
        lowered = jax.jit(fn).trace(*args).lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile(compiler_options)
    end = time.perf_counter()
    seconds = CompileTime(lowered_at - start, end - lowered_at, time.process_time() - cpu)
    try:
        mem = compiled.memory_analysis()
        mb = (mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20
    except Exception:  # memory_analysis is not implemented on every backend
        mb = None
    return compiled, seconds, mb


def time_round_robin(contenders: Sequence[Contender], runs: int, warmup: int
                     ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds per step of each contender: ``warmup`` untimed steps, then
    ``runs`` interleaved rounds."""
    for c in contenders:
        for _ in range(warmup):
            c.step()
    wall: dict[str, list[float]] = {c.name: [] for c in contenders}
    cpu: dict[str, list[float]] = {c.name: [] for c in contenders}
    for _ in range(runs):
        for c in contenders:
            start, cpu_start = time.perf_counter(), time.process_time()
            c.step()
            wall[c.name].append(time.perf_counter() - start)
            cpu[c.name].append(time.process_time() - cpu_start)
    return wall, cpu


def matmul_gflops(n: int, device: str, repeats: int = 5) -> tuple[float, float]:
    """Large square float32 matmul throughput ``(jax, torch)`` in GFLOP/s (median of ``repeats``)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ja = jnp.asarray(a)
    mm = jax.jit(jnp.matmul)
    ta = torch.tensor(a, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runs = {"jax": lambda: block(mm(ja, ja)), "torch": lambda: (torch.mm(ta, ta), sync())}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    jax_rate, torch_rate = (2 * n**3 / float(np.median(times[k])) / 1e9 for k in ("jax", "torch"))
    return jax_rate, torch_rate


def load_average() -> str:
    """``uptime``'s 1, 5 and 15 minute load averages (other processes share the cores)."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "-"


def machine() -> dict[str, str]:
    """CPU model, core count, accelerator, library versions and the load average."""
    import flax

    cpu, flags = platform.processor() or "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            fields = {k.strip(): v.strip() for k, v in (
                line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)}
        cpu = (f"{fields['model name']} (family {fields.get('cpu family')}, model "
               f"{fields.get('model')}, {fields.get('cpu MHz')} MHz)")
        flags = " ".join(flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                         if flag in fields.get("flags", "").split())
    except (OSError, KeyError):
        pass
    info = {"cpu": cpu, "cpu flags": flags or "-", "cores": str(os.cpu_count()),
            "jax backend": jax.default_backend(),
            "jax devices": ", ".join(f"{d} ({d.device_kind})" for d in jax.devices()),
            "python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()), "numpy": np.__version__,
            "flax": flax.__version__}
    if torch.cuda.is_available():
        info["torch device"] = torch.cuda.get_device_name()
    info["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") or "-"
    info["load average at start (1/5/15 min)"] = load_average()
    return info


class JsonLines:
    """``--json``: one JSON object per row, appended and flushed as soon as it is known."""

    def __init__(self, path: Optional[str], common: dict):
        self.path, self.common = path, common

    def write(self, rows: Sequence[dict]) -> None:
        if not self.path:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({**self.common, **row, "load_average": load_average()},
                                   default=str) + "\n")
            f.flush()
