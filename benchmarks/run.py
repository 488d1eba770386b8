"""Time one training step of jaxseq against torch packed sequences, Flax ``nnx.RNN`` and the GEMM floor.

    python -m benchmarks.run [--config NAME ...] [--quick] [--runs N] [--ablations] [--levers]
                             [--eager] [--markdown docs/benchmarks.md] [--json FILE] [--budget S]
    python -m benchmarks.run --gpu [--emulate] [--quick] [--json FILE] [--budget S]

Every contender runs the same ragged batch with the same weights in this one process; steps are
interleaved round-robin (one step of each contender per round) so that load from other processes
hits all of them alike, and the median over rounds is reported (wall clock; the process CPU time
per step too). Ratios are ``peer time / jaxseq time`` (above 1: jaxseq is faster). GFLOP/s count
valid tokens only (what a packed implementation must compute) and are compared with a large
float32 matmul measured in the same run. The GEMM floor (:mod:`benchmarks.floor`) is the step's
matrix products alone, timed in the same rounds. Compile time is the first jitted step's tracing +
lowering and XLA compilation, wall clock and process CPU time.

``--gpu`` selects the GPU table: configs lstm, bilstm2, deepspeech and gru; contenders jaxseq's
scan, jaxseq's cuDNN path (``impl="cudnn"``; without CUDA it is skipped with a note, or run with
``jaxseq.fused.use_reference_kernel()`` under ``--emulate``), torch packed (cuDNN on CUDA), Flax
``nnx.RNN`` and packed rows. On CUDA TF32 is off on both sides (``jax_default_matmul_precision=
"highest"``, ``torch.backends.*.allow_tf32 = False``). ``--json FILE`` appends one JSON line per
row as soon as its config is measured; ``--budget S`` starts no new config (or section) after
``S`` seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.contenders import (
    STAIRCASE_CHUNKS,
    BenchConfig,
    Contender,
    baseline_step,
    flax_step,
    jaxseq_packed_step,
    jaxseq_step,
    matmul_gflops,
    mixed_precision_errors,
    packed_rows,
    torch_step,
)
from benchmarks.floor import PROJECTIONS, floor_step
from jaxseq.fused import cuda_available
from jaxseq.scan import INPUT_PROJECTION_DEFAULTS

CONFIGS = {c.name: c for c in [
    BenchConfig("lstm", "LSTM", batch=64, time=100, input_size=128, hidden_size=256),
    BenchConfig("bilstm2", "LSTM", batch=32, time=200, input_size=64, hidden_size=128,
                num_layers=2, bidirectional=True),
    BenchConfig("long", "LSTM", batch=16, time=1000, input_size=64, hidden_size=128),
    BenchConfig("small", "LSTM", batch=64, time=100, input_size=32, hidden_size=32),
    BenchConfig("gru", "GRU", batch=64, time=100, input_size=128, hidden_size=256),
    BenchConfig("deepspeech", "LSTM", batch=32, time=500, input_size=161, hidden_size=1024,
                num_layers=5, bidirectional=True),
]}
#: Default selections: the CPU table and the GPU table (``--gpu``).
CPU_CONFIGS = ("lstm", "bilstm2", "long", "small", "gru")
GPU_CONFIGS = ("lstm", "bilstm2", "deepspeech", "gru")
#: ``--quick`` default: every contender and every cell kind at least once, in well under a minute.
QUICK_CONFIGS = ("lstm", "bilstm2", "gru")


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """Tiny shapes of the same structure, for the smoke test."""
    return dataclasses.replace(cfg, batch=min(cfg.batch, 8), time=min(cfg.time, 24),
                               input_size=8, hidden_size=16)


def load_average() -> str:
    """``uptime``'s 1, 5 and 15 minute load averages (other processes share the cores)."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "-"


def machine() -> dict[str, str]:
    """CPU model, core count, accelerator, library versions and the load average."""
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
            "torch threads": str(torch.get_num_threads()), "numpy": np.__version__}
    import flax
    info["flax"] = flax.__version__
    if torch.cuda.is_available():
        info["torch device"] = torch.cuda.get_device_name()
    info["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") or "-"
    info["load average at start (1/5/15 min)"] = load_average()
    return info


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


# ------------------------------------------------------------------------------------------
# What runs: contenders per selection, built one at a time (a failure becomes a row)
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Entry:
    """A contender to build, or the reason it does not run here."""

    name: str
    build: Optional[Callable[[], Contender]]
    skip: Optional[str] = None


def _other_projection() -> str:
    default = INPUT_PROJECTION_DEFAULTS.get(jax.default_backend(), "hoisted")
    return next(p for p in PROJECTIONS if p != default)


#: ``time_chunks`` of the staircase under ``--quick`` (fewer loops to compile in the smoke test).
QUICK_STAIRCASE_CHUNKS = 2


def cpu_entries(cfg: BenchConfig, device: str, levers: bool, quick: bool = False) -> list[Entry]:
    """The CPU table: jaxseq (packed rows, staircase, traced lengths), torch, Flax (LSTM only),
    the GEMM floors (padded and packed rows, both projections); ``levers``: jaxseq with the
    non-default ``input_projection`` too; ``quick``: a staircase of
    :data:`QUICK_STAIRCASE_CHUNKS` chunks."""
    rows = packed_rows(cfg)[0].shape[0]
    chunks = QUICK_STAIRCASE_CHUNKS if quick else STAIRCASE_CHUNKS
    entries = [Entry("jaxseq-packed", lambda: jaxseq_packed_step(cfg, cfg.torch_module())),
               Entry("jaxseq-staircase", lambda: jaxseq_step(cfg, cfg.torch_module(), False,
                                                             time_chunks=chunks)),
               Entry("jaxseq-traced", lambda: jaxseq_step(cfg, cfg.torch_module(), True)),
               Entry("torch-packed", lambda: torch_step(cfg, cfg.torch_module(), device)),
               Entry("flax-nnx.RNN", lambda: flax_step(cfg, cfg.torch_module()),
                     None if cfg.mode == "LSTM" else "nnx.GRUCell has no b_hn (flax#5594)")]
    if levers:
        other = _other_projection()
        entries += [Entry(f"jaxseq-packed/{other}", lambda: jaxseq_packed_step(
                        cfg, cfg.torch_module(), f"jaxseq-packed/{other}", input_projection=other)),
                    Entry(f"jaxseq-traced/{other}", lambda: jaxseq_step(
                        cfg, cfg.torch_module(), True, f"jaxseq-traced/{other}",
                        input_projection=other))]
    for layout, count in (("padded", cfg.batch), ("packed", rows)):
        for projection in PROJECTIONS:
            name = f"floor-{layout}/{projection}"
            entries.append(Entry(name, lambda c=count, p=projection, n=name: floor_step(cfg, c, p, n)))
    return entries


def gpu_entries(cfg: BenchConfig, device: str, emulate: bool) -> list[Entry]:
    """The GPU table: jaxseq's scan (traced lengths), jaxseq's cuDNN path, torch packed, Flax
    (LSTM only) and jaxseq on packed rows."""
    cudnn_skip = None
    if cfg.mode != "LSTM":
        cudnn_skip = f"{cfg.mode} has no cuDNN path"
    elif not cuda_available() and not emulate:
        cudnn_skip = ("no CUDA backend (--emulate runs jax.experimental.rnn.lstm_ref in its place "
                      "for a dry run)")
    return [Entry("jaxseq-traced", lambda: jaxseq_step(cfg, cfg.torch_module(), True)),
            Entry("jaxseq-cudnn", lambda: _cudnn_step(cfg, emulate and not cuda_available()),
                  cudnn_skip),
            Entry("torch-packed", lambda: torch_step(cfg, cfg.torch_module(), device)),
            Entry("flax-nnx.RNN", lambda: flax_step(cfg, cfg.torch_module()),
                  None if cfg.mode == "LSTM" else "nnx.GRUCell has no b_hn (flax#5594)"),
            Entry("jaxseq-packed", lambda: jaxseq_packed_step(cfg, cfg.torch_module()))]


def _cudnn_step(cfg: BenchConfig, emulate: bool) -> Contender:
    c = jaxseq_step(cfg, cfg.torch_module(), True, "jaxseq-cudnn", emulate=emulate, impl="cudnn")
    c.note = ("emulated: jax.experimental.rnn.lstm_ref in place of cuDNN" if emulate
              else "impl='cudnn' (jax.experimental.rnn.lstm), traced lengths")
    return c


def _status_row(cfg: BenchConfig, name: str, status: str, note: str) -> dict:
    return dict(config=cfg.name, contender=name, status=status, kind="step", note=note)


def build_all(cfg: BenchConfig, entries: Sequence[Entry]) -> tuple[list[Contender], list[dict]]:
    """Build every entry; skipped entries and failed builds come back as rows (``status``)."""
    built, problems = [], []
    for entry in entries:
        if entry.skip is not None or entry.build is None:
            problems.append(_status_row(cfg, entry.name, "skipped", entry.skip or ""))
            continue
        try:
            built.append(entry.build())
        except Exception as error:   # one failing contender must not cost the others' rows
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            print(f"ERROR: {cfg.name} {entry.name}: {message}", file=sys.stderr, flush=True)
            problems.append(_status_row(cfg, entry.name, "error", message))
    return built, problems


def measure(cfg: BenchConfig, contenders: Sequence[Contender], runs: int, warmup: int,
            matmul: dict[str, float]) -> list[dict]:
    """One row per contender: timings, throughput, FLOP rate, compile time, memory, loss check."""
    wall, cpu = time_round_robin(contenders, runs, warmup)
    tokens = int(cfg.lengths().sum())
    losses = {c.name: c.loss for c in contenders if c.kind == "step" and c.exact}
    reference = losses.get("torch-packed", next(iter(losses.values()), math.nan))
    rows = []
    for c in contenders:
        seconds = float(np.median(wall[c.name]))
        gflops = (c.flops or cfg.valid_flops()) / seconds / 1e9
        peak = matmul["torch" if c.name.startswith("torch") else "jax"]
        compiled = c.compile
        rows.append(dict(
            config=cfg.name, contender=c.name, status="ok", kind=c.kind, ms=seconds * 1e3,
            min_ms=min(wall[c.name]) * 1e3, cpu_ms=float(np.median(cpu[c.name])) * 1e3,
            tokens_per_s=tokens / seconds, gflops=gflops, matmul_pct=100 * gflops / peak,
            lower_s=None if compiled is None else compiled.lower_s,
            compile_s=None if compiled is None else compiled.compile_s,
            compile_cpu_s=None if compiled is None else compiled.cpu_s, memory_mb=c.memory_mb,
            loss_rel_diff=None if c.kind == "floor" else
            abs(c.loss - reference) / max(abs(reference), 1e-30),
            exact=c.exact and c.kind == "step", note=c.note))
    return rows


def compile_only_rows(cfg: BenchConfig) -> list[dict]:
    """Compile times of the paths not timed in the rounds: ``forward_mode=True`` (traced lengths
    and packed rows)."""
    entries = [Entry("jaxseq-traced, forward_mode", lambda: jaxseq_step(
                   cfg, cfg.torch_module(), True, "jaxseq-traced, forward_mode", forward_mode=True)),
               Entry("jaxseq-packed, forward_mode", lambda: jaxseq_packed_step(
                   cfg, cfg.torch_module(), "jaxseq-packed, forward_mode", forward_mode=True))]
    built, problems = build_all(cfg, entries)
    return problems + [dict(config=cfg.name, contender=c.name, status="ok", kind="compile",
                            lower_s=c.compile.lower_s, compile_s=c.compile.compile_s,
                            compile_cpu_s=c.compile.cpu_s, memory_mb=c.memory_mb, note=c.note)
                       for c in built if c.compile is not None]


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


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def _total(r: dict) -> Optional[float]:
    return None if r.get("lower_s") is None else r["lower_s"] + r["compile_s"]


def results_table(rows: Sequence[dict]) -> list[str]:
    """Markdown table of every row (skipped and failed contenders with their reason)."""
    lines = ["| config | contender | median ms | min ms | CPU ms | valid tok/s | GFLOP/s "
             "| % of matmul | compile s | memory MB | loss rel. diff | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("status", "ok") != "ok":
            lines.append(f"| {r['config']} | {r['contender']} | {r['status']} | | | | | | | | | "
                         f"{r['note']} |")
            continue
        lines.append(f"| {r['config']} | {r['contender']} | {r['ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{r['cpu_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['gflops']:.1f} | "
                     f"{r['matmul_pct']:.0f}% | {_fmt(_total(r), '.1f')} | "
                     f"{_fmt(r['memory_mb'], '.1f')} | {_fmt(r['loss_rel_diff'], '.1e')} | "
                     f"{r['note']} |")
    return lines


#: ``(label, contender)`` of the jaxseq variants in the ratio tables, fastest design first.
CPU_VARIANTS = (("packed rows", "jaxseq-packed"), ("padded, staircase", "jaxseq-staircase"),
                ("padded, traced lengths", "jaxseq-traced"))
GPU_VARIANTS = (("scan, traced lengths", "jaxseq-traced"), ("cuDNN", "jaxseq-cudnn"),
                ("packed rows", "jaxseq-packed"))
PEERS = (("torch", "torch-packed"), ("flax", "flax-nnx.RNN"))


def _ms(rows: Sequence[dict], config: str, key: str = "ms") -> dict[str, float]:
    return {r["contender"]: r[key] for r in rows
            if r["config"] == config and r.get("status", "ok") == "ok" and key in r}


def _ratio(ms: dict[str, float], top: str, bottom: str) -> str:
    return f"{ms[top] / ms[bottom]:.2f}x" if top in ms and bottom in ms else "-"


def ratio_table(rows: Sequence[dict], variants=CPU_VARIANTS) -> list[str]:
    """Per config: every time, and ``peer / jaxseq`` for each jaxseq variant (above 1: faster)."""
    names = [name for _, name in variants]
    head = " | ".join(f"{label} ms" for label, _ in variants)
    ratios = " | ".join(f"{peer} / {label}" for label, _ in variants for peer, _ in PEERS)
    lines = [f"| config | {head} | torch ms | flax ms | {ratios} |",
             "|---|" + "---:|" * (len(names) * 3 + 2)]
    for config in dict.fromkeys(r["config"] for r in rows):
        ms = _ms(rows, config)
        if not set(names) & ms.keys():
            continue
        cells = [_fmt(ms.get(n), ".1f") for n in names]
        cells += [_fmt(ms.get(peer), ".1f") for _, peer in PEERS]
        cells += [_ratio(ms, peer, n) for n in names for _, peer in PEERS]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return lines


def _floor(ms: dict[str, float], layout: str) -> tuple[Optional[str], Optional[float]]:
    """The faster floor of ``layout`` (``padded`` / ``packed``): ``(contender, ms)``."""
    found = {n: v for n, v in ms.items() if n.startswith(f"floor-{layout}/")}
    if not found:
        return None, None
    name = min(found, key=found.__getitem__)
    return name, found[name]


def floor_table(rows: Sequence[dict], matmul: dict[str, float]) -> list[str]:
    """Per config: the GEMM floors and every step as a multiple of its floor (wall clock; process
    CPU time in brackets)."""
    lines = ["| config | floor padded ms | floor GFLOP/s (% of large matmul) | floor packed ms "
             "| jaxseq packed / floor packed | jaxseq traced / floor padded | jaxseq staircase / "
             "floor padded | torch / floor padded | flax / floor padded |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        ms, cpu = _ms(rows, config), _ms(rows, config, "cpu_ms")
        padded, padded_ms = _floor(ms, "padded")
        packed, packed_ms = _floor(ms, "packed")
        if padded is None:
            continue
        rate = next(r["gflops"] for r in rows if r["config"] == config and r["contender"] == padded)

        def both(top: str, bottom: Optional[str], ms=ms, cpu=cpu) -> str:
            if bottom is None or top not in ms:
                return "-"
            return f"{_ratio(ms, top, bottom)} ({_ratio(cpu, top, bottom)})"

        lines.append(
            f"| {config} | {padded_ms:.1f} ({padded.split('/')[1]}) | {rate:.0f} "
            f"({100 * rate / matmul['jax']:.0f}%) | "
            f"{_fmt(packed_ms, '.1f')} ({packed.split('/')[1] if packed else '-'}) | "
            f"{both('jaxseq-packed', packed)} | {both('jaxseq-traced', padded)} | "
            f"{both('jaxseq-staircase', padded)} | {both('torch-packed', padded)} | "
            f"{both('flax-nnx.RNN', padded)} |")
    return lines


def compile_table(rows: Sequence[dict]) -> list[str]:
    """Compile time of the first jitted step of every JAX path: tracing + lowering, XLA
    compilation, their sum (wall clock) and the process CPU time."""
    lines = ["| config | path | trace + lower s | XLA compile s | total s | CPU s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("status", "ok") == "ok" and r.get("lower_s") is not None \
                and r.get("kind") != "floor":
            lines.append(f"| {r['config']} | {r['contender']} | {r['lower_s']:.2f} | "
                         f"{r['compile_s']:.2f} | {_total(r):.2f} | {r['compile_cpu_s']:.2f} |")
    return lines


def projection_table(rows: Sequence[dict]) -> list[str]:
    """``input_projection`` "in_loop" vs "hoisted": jaxseq's paths and the floors, per config."""
    default = INPUT_PROJECTION_DEFAULTS.get(jax.default_backend(), "hoisted")
    lines = ["| config | path | in_loop ms | hoisted ms | hoisted / in_loop (CPU time) | faster |",
             "|---|---|---:|---:|---:|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        ms, cpu = _ms(rows, config), _ms(rows, config, "cpu_ms")
        pairs = [(f"{path} (default: {default})", {default: path, _other_projection():
                                                   f"{path}/{_other_projection()}"})
                 for path in ("jaxseq-packed", "jaxseq-traced")]
        pairs += [(f"floor-{layout}", {p: f"floor-{layout}/{p}" for p in PROJECTIONS})
                  for layout in ("padded", "packed")]
        for label, names in pairs:
            if not all(n in ms for n in names.values()):
                continue
            in_loop, hoisted = names["in_loop"], names["hoisted"]
            lines.append(f"| {config} | {label} | {ms[in_loop]:.1f} | {ms[hoisted]:.1f} | "
                         f"{_ratio(ms, hoisted, in_loop)} ({_ratio(cpu, hoisted, in_loop)}) | "
                         f"{'hoisted' if ms[hoisted] < ms[in_loop] else 'in_loop'} |")
    return lines


#: jaxseq options timed by ``--ablations`` (concrete lengths; library defaults: time_chunks=1,
#: unroll=1, float32 matmuls, the backend's input_projection, the hand-written VJP).
ABLATIONS = [{}, dict(time_chunks=2), dict(time_chunks=4), dict(time_chunks=6),
             dict(time_chunks=8), dict(unroll=2), dict(compute_dtype=jnp.bfloat16),
             dict(forward_mode=True), dict(time_chunks=6, forward_mode=True),
             dict(input_projection="hoisted"), dict(time_chunks=6, input_projection="hoisted")]


def _option_name(options: dict) -> str:
    return ", ".join(f"{k}={getattr(v, '__name__', v)}" for k, v in options.items()) or "defaults"


def ablations(cfg: BenchConfig, device: str, runs: int, warmup: int,
              matmul: dict[str, float]) -> list[dict]:
    """jaxseq alone on ``cfg`` with each option set of :data:`ABLATIONS`, and the plain masked scan
    it started from (:mod:`benchmarks.baseline`) where that applies."""
    variants = [jaxseq_step(cfg, cfg.torch_module(), False, _option_name(options),
                            **dict(dict(time_chunks=1), **options)) for options in ABLATIONS]
    if (cfg.mode, cfg.num_layers, cfg.bidirectional) == ("LSTM", 1, False):
        variants.append(baseline_step(cfg, cfg.torch_module()))
    reference = torch_step(cfg, cfg.torch_module(), device)   # for the loss check only
    return measure(cfg, variants + [reference], runs, warmup, matmul)[:-1]


def precision_table(configs: Sequence[BenchConfig]) -> list[str]:
    """Relative error of ``compute_dtype=bfloat16`` against float32 jaxseq, per config."""
    errors = {cfg.name: mixed_precision_errors(cfg) for cfg in configs}
    names = list(dict.fromkeys(k for e in errors.values() for k in e))
    lines = ["| config | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for config, e in errors.items():
        lines.append(f"| {config} | " + " | ".join(_fmt(e.get(n), ".1e") for n in names) + " |")
    return lines


@dataclasses.dataclass
class Report:
    """Everything one run measured (the sections of ``docs/benchmarks.md``)."""

    info: dict[str, str]
    command: str
    matmul: dict[str, float]
    configs: Sequence[BenchConfig]
    runs: int
    gpu: bool = False
    rows: list[dict] = dataclasses.field(default_factory=list)
    compile_rows: list[dict] = dataclasses.field(default_factory=list)
    ablation_rows: list[dict] = dataclasses.field(default_factory=list)
    sections: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)


def markdown(report: Report) -> str:
    """The full report (``docs/benchmarks.md``)."""
    r = report
    lines = ["# Benchmarks: one training step, jaxseq vs torch packed vs Flax nnx.RNN", "",
             "Generated by `benchmarks/run.py`; regenerate with", "", "```", r.command, "```", "",
             f"Run on {datetime.date.today().isoformat()}. Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in r.info.items()]
    lines += [f"- large float32 matmul (2048^3): jax {r.matmul['jax']:.0f} GFLOP/s, torch "
              f"{r.matmul['torch']:.0f} GFLOP/s", "", "## Problems", ""]
    for cfg in r.configs:
        tokens = int(cfg.lengths().sum())
        lines.append(f"- **{cfg.name}**: {cfg.describe()}; lengths U[T/10, T] with one row of "
                     f"length T: {tokens} valid tokens of {cfg.batch * cfg.time} "
                     f"({100 * tokens / (cfg.batch * cfg.time):.0f}%)")
    lines += ["", "Step = forward + backward through every parameter and the input; loss = sum of "
              "valid outputs + sum of final states. Each contender: warm-up steps, then "
              f"{r.runs} rounds interleaved round-robin with the others in one process; median (and "
              "min) per step, wall clock; `CPU ms` is the median process CPU time of a step.", "",
              "## Ratios (peer time / jaxseq time; above 1: jaxseq faster)", ""]
    lines += ratio_table(r.rows, GPU_VARIANTS if r.gpu else CPU_VARIANTS)
    if not r.gpu:
        lines += ["", "## The GEMM floor (step time / floor time; CPU-time ratio in brackets)", "",
                  FLOOR_TEXT, ""]
        lines += floor_table(r.rows, r.matmul)
    lines += ["", "## Compile time of the first jitted step", "", COMPILE_TEXT, ""]
    lines += compile_table(r.rows + r.compile_rows)
    for title, body in r.sections:
        lines += ["", f"## {title}", ""] + body
    lines += ["", "## All measurements", ""]
    lines += results_table(r.rows)
    if r.ablation_rows:
        lines += ["", f"## jaxseq options on `{r.ablation_rows[0]['config']}` (concrete lengths)",
                  ""]
        lines += results_table(r.ablation_rows)
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


FLOOR_TEXT = """The floor of a step is its matrix products alone, in bare scans of the same shapes
(`benchmarks/floor.py`): forward the input projection (hoisted into one GEMM, or in the loop) and a
scan of `h @ W_hh` saving the pre-activations; backward a reverse scan of `dgates @ W_hh^T` and
the three gradient GEMMs (`dW_ih`, `dW_hh`, `dx`), per layer, both directions stacked; `padded`
over `B x T`, `packed` over the packed rows `R x T`. The faster projection is the floor (which one
is named). Timed in the same interleaved rounds as the contenders."""

COMPILE_TEXT = """`trace + lower`: `jax.jit(step).trace(...).lower()` (Python tracing of the step
and StableHLO emission); `XLA compile`: `.compile()`; wall clock and the process CPU time of both
(CPU time is much less affected by other processes' load). The `forward_mode` rows are compiled
only (not timed). Each row is one cold compilation, but jaxseq's cached core may already have
been traced for an earlier row of the same config (`benchmarks/compile_time.py` clears the caches
before each of its rows)."""


NOTES = """## Reading the numbers

- `jaxseq-packed`: the batch's sequences packed end to end into rows of `T` steps
  (`jaxseq.data.pack_rows`, best-fit decreasing; density in the note), run with traced
  `segment_ids`: one compilation serves every batch of that shape, and nearly every step is a
  real token. Same valid tokens, same weights and the same loss as the padded contenders.
- `jaxseq-traced`: the lengths are a traced jit argument (the usual training-loop setting without
  bucketing): the plain masked scan over all `B * T` steps. This is also what the library does
  by default with concrete lengths (`time_chunks=1`).
- `jaxseq-staircase`: concrete lengths (host values closed over by the jitted step) with
  `time_chunks=6`, which asks for the staircase schedule: rows sorted by length, time cut into at
  most 6 chunks, each scanned over only the rows still active (counts rounded up to a multiple of
  `ceil(B/8)`). Compute follows the number of valid tokens, as torch's packed kernels do, at the
  price of one compilation per distinct schedule: in a training loop pass
  `time_chunks=jaxseq.scan.staircase(lengths, T, time_multiple=...)` as a static argument (the
  lengths may then be traced), or bucket batches by length (`jaxseq.data.bucket_by_length`).
- `floor-*`: the GEMM floor (above); not a model, no loss.
- `GFLOP/s` count matmul FLOPs of valid tokens only (forward + 2x for backward) for the models,
  and every row-step for the floors; `% of matmul` is relative to the large matmul of the same
  framework measured in the same run.
- `compile s`: trace + lower + XLA compile of the first step (see the compile table); `memory MB`:
  temp + output buffers from `compiled.memory_analysis()` for JAX,
  `torch.cuda.max_memory_allocated()` for torch on CUDA (not measured for torch on CPU).
- `loss rel. diff`: relative difference of the loss to torch's, with identical weights: every
  float32 contender computes the same function (the bfloat16 ablation is not expected to match;
  its accuracy is in the mixed-precision table).
- Flax `nnx.RNN` has no torch-exact GRU cell (`nnx.GRUCell` lacks `b_hn`, flax#5594), so the GRU
  config has no Flax contender.
- With a CUDA GPU visible to both torch and JAX, `python -m benchmarks.run --gpu` times torch with
  cuDNN, jaxseq's scan and jaxseq's cuDNN path (`impl="cudnn"`) on the GPU, TF32 off on both
  sides (`torch.backends.*.allow_tf32 = False`, `jax_default_matmul_precision="highest"`).
- torch on a CPU shared with other busy processes can be far slower than its quiet-machine time
  (its OpenMP threads wait for each other); compare ratios from quiet runs, or use
  `--torch-threads 1` on a loaded machine. The load average is recorded at the start and end of
  the run; on a loaded machine, prefer the ratios (every contender in the same rounds) and the CPU
  times over absolute wall-clock figures.

## What the 2026-12-02 run on the 2-core AMD EPYC says

- GEMM floor: jaxseq on packed rows is 1.07x (bilstm2) to 1.24x (long, gru) its floor, 1.66x on
  `small` (H 32); with traced lengths it is 0.93-1.03x its padded floor for the LSTM configs (the
  floor is the products in bare loops, not a proven bound), 1.30x for GRU, 1.40x on `small`. What
  separates jaxseq from the floor is a fixed cost per time step: its forward and backward loop
  bodies launch 16 and 19 kernels per step with traced lengths, 17 and 18 on packed rows
  (fusions, copies, in-place updates; `kernels per step` in the compile breakdown), the floor's 8
  and 6, and the CPU runtime runs them one after the other. The fewer the rows (packed rows,
  `small`), the larger that share. Measured and dropped: writing the LSTM gate math as one
  sigmoid over `i, f, o`, or as a sigmoid through `tanh` over all 4H: XLA still emits 13-15
  kernels per step, same time (a bare forward loop, B64, H 32 and 256).
- `input_projection`: `"in_loop"` is faster on every config here (hoisted 1.06-1.33x slower for
  jaxseq, 1.08-1.28x for the floors; only the `small` packed floor ties), so the CPU default
  `"in_loop"` is right on this AMD EPYC. The 2-core Intel Xeon of the project notes preferred
  `"hoisted"`: `jaxseq.tuning.measure_input_projection` decides it per machine.
- XLA CPU flags: none pays here. Over this run and an earlier one, CPU-time ratios to no flags
  were 0.92-1.21x for XNNPACK, oneDNN, the legacy (non-thunk) runtime, single-threaded Eigen,
  fast math and `xla_llvm_disable_expensive_passes`; turning the default YNNPACK dots off costs
  1.15-1.37x, LLVM opt level 0 2.2-2.5x. Wall-clock ratios between processes swing by +-40% on
  this shared machine, so the CPU-time ratios are the ones to read. The Intel Xeon lead (XNNPACK:
  packed-row step 124 -> 107 ms) does not reproduce here. jaxseq sets no flags.
- Compile time (2 cores; CPU seconds are about twice the wall seconds on an idle machine, as XLA
  compiles on both cores): traced lengths about 1.6 CPU s (1.0 s wall when the machine was
  quiet), packed rows 2.0-2.2 CPU s (1.3 s), forward mode 1.4-1.6 CPU s, the staircase with 6
  chunks 7.4-8.0 CPU s (4.3 s). Tracing and lowering are 0.1-0.3 s (staircase 0.5-1 s); the rest
  is XLA. The staircase's time grows by about 1 CPU s per chunk, each chunk being a forward and a
  backward loop with their own kernels: 2.7 CPU s with 2 chunks, 4.2 with 3, 5.2 with 4, 7.4
  with 6, 9.6 with 8. The `optimization_barrier` on host lengths stays: without it XLA
  constant-folds the row permutations (and warns that folding a scatter takes over 1 s), and the
  compile takes 11.6 CPU s instead of 7.4 for the same step time. Proposals, measured:
  - ask for `time_chunks=4` rather than 6: the same step time (options table: 71.8 vs 73.1 ms;
    breakdown: 60.7 vs 64.0 ms) for 5.2 instead of 7.4 CPU s (about 3 s wall); 2 chunks compile
    under 3 s wall (2.7 CPU s) and keep about half of the staircase's gain (80.9 ms against 92.9
    for the plain scan and 73.1 for 6 chunks);
  - a persistent compilation cache for repeated runs (`jax.config.update(
    "jax_compilation_cache_dir", path)` with `jax_persistent_cache_min_compile_time_secs = 0`):
    in a second process the config-`lstm` step compiled in 0.06 s (traced lengths), 0.08 s
    (packed rows) and 0.47 s (staircase, 6 chunks), against 1.4, 2.1 and 8 CPU s cold; the
    staircase's tracing (about 1 s) remains (two processes sharing a cache directory,
    2026-12-02, not part of this script);
  - not LLVM opt level 0 (`compiler_options={"xla_backend_optimization_level": 0}`): 35-45% less
    compile time for 2.4-2.8x slower steps; `xla_llvm_disable_expensive_passes` saves nothing.

## Packed rows: what limits them here

- Density is bounded by the batch itself: config `lstm` has 39 sequences longer than `T/2 = 50`,
  so no packing of its 64 sequences into rows of 100 uses fewer than 39 rows (92% at best;
  `pack_rows` finds 40, 89.8%); config `bilstm2` has 21 sequences longer than 100, so at least 21
  rows of 200 (88% at best; `pack_rows` finds 22, 84%). Packing a whole data set instead of one
  batch reaches 99.9% (the character LM example: 32000 words in rows of 64).
- The fixed per-step cost of the loops (above) dominates, so going from 64 padded rows to 40
  packed rows saves less than the 38% of row-steps. Resets at segment starts and per-segment
  final states cost 4-7% (config `lstm`: the packed step against a traced-length step over the
  same 40 rows, same process).
- Measured and dropped (not in the library): a staircase over *traced* lengths (rows sorted on
  device, 4 time chunks, `lax.switch` among 4 static active-row counts per chunk) on config `lstm`:
  227.8 ms against 222.4 ms for the plain traced masked scan, same loss, compile 9.9 s against
  1.7 s. Reverse-mode AD of `lax.switch` keeps every branch's residuals and the branches' small
  matmuls cost as much as the skipped padding.

## Where jaxseq's speed comes from (see `jaxseq/scan.py`)

- Compute on valid tokens only, when asked for (the staircase, `time_chunks > 1` with concrete
  lengths): the `time_chunks` rows of the options table; `time_chunks=1` (the default) is the
  plain masked scan over `B * T` steps.
- A hand-written VJP for the scan: the backward loop does one `dgates @ W_hh` per step; every
  weight gradient and the input gradient are large GEMMs after the loop (autodiff of `lax.scan`
  accumulates `[F, G]` and `[H, G]` weight gradients at every step: `plain masked scan` in the
  options table). The gate gradients overwrite the saved pre-activations in place, so no extra
  `[T, B, G]` buffer is allocated.
- The input projection where this machine prefers it (the `input_projection` table).
- `forward_mode=True` in the options table: the masked scan with a custom JVP (forward mode,
  Hessians) instead of the hand-written VJP; its reverse mode is JAX's transpose of the JVP, which
  costs a fresh gate-gradient buffer of `[T, B, G]` and its zero-fill.
- Measured and dropped earlier: `unroll > 1` (slower and slower to compile), separate scans per
  direction (no gain), a concatenated `[x, h] @ [W_ih; W_hh]` matmul (no gain).
"""


# ------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS),
                        help="config(s) to run (repeatable; default: the selection's)")
    parser.add_argument("--gpu", action="store_true",
                        help=f"the GPU table: configs {', '.join(GPU_CONFIGS)}; jaxseq scan, "
                             "jaxseq cuDNN, torch packed, Flax, packed rows")
    parser.add_argument("--emulate", action="store_true",
                        help="with --gpu and no CUDA: run impl='cudnn' with "
                             "jaxseq.fused.use_reference_kernel() (a dry run)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, 2 rounds, configs "
                             f"{', '.join(QUICK_CONFIGS)} unless --config is given, a staircase of "
                             f"{QUICK_STAIRCASE_CHUNKS} chunks, no compile-only rows: a smoke test")
    parser.add_argument("--runs", type=int, help="timed rounds per config (default 15; quick: 2)")
    parser.add_argument("--ablations", action="store_true",
                        help="also time jaxseq's options (time_chunks, unroll, bfloat16 matmuls, "
                             "forward_mode, input_projection) on the first config and measure "
                             "bfloat16 accuracy on every config")
    parser.add_argument("--levers", action="store_true",
                        help="also time the non-default input_projection on every config, the "
                             "XLA CPU flags (subprocesses) and where the compile time goes")
    parser.add_argument("--eager", action="store_true",
                        help="also time eager (un-jitted) calls (benchmarks/eager.py)")
    parser.add_argument("--eager-rev", metavar="REV",
                        help="with --eager: also time jaxseq as it was at git revision REV")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads on CPU (default: the core count)")
    parser.add_argument("--markdown", help="write the report to this file")
    parser.add_argument("--json", help="append one JSON line per row to this file, as measured")
    parser.add_argument("--budget", type=float,
                        help="seconds after which no new config or section is started")
    args = parser.parse_args(argv)

    # The same device for everyone: CUDA only when both torch and JAX see a GPU.
    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device == "cpu":
        torch.set_num_threads(args.torch_threads)
    names = args.config or (QUICK_CONFIGS if args.quick and not args.gpu
                            else GPU_CONFIGS if args.gpu else CPU_CONFIGS)
    configs = [quick_config(CONFIGS[n]) if args.quick else CONFIGS[n] for n in names]
    runs = args.runs or (2 if args.quick else 15)
    warmup = 1 if args.quick else 3

    def over_budget() -> bool:
        return args.budget is not None and time.monotonic() - started > args.budget

    info = machine()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    matmul = dict(zip(("jax", "torch"), matmul_gflops(256 if args.quick else 2048, device)))
    print(f"large matmul: jax {matmul['jax']:.0f} GFLOP/s, torch {matmul['torch']:.0f} GFLOP/s")
    command = "python -m benchmarks.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = Report(info, command.strip(), matmul, configs, runs, gpu=args.gpu)
    sink = JsonLines(args.json, dict(selection="gpu" if args.gpu else "cpu", device=device,
                                     backend=jax.default_backend(), quick=args.quick))
    for cfg in configs:
        if over_budget():
            print(f"\n== {cfg.name}: skipped (budget of {args.budget:.0f} s reached)", flush=True)
            skipped = [_status_row(cfg, "*", "skipped", f"budget of {args.budget:.0f} s reached")]
            sink.write(skipped)
            report.rows += skipped
            continue
        print(f"\n== {cfg.name}: {cfg.describe()} (load {load_average()})", flush=True)
        entries = (gpu_entries(cfg, device, args.emulate) if args.gpu
                   else cpu_entries(cfg, device, args.levers, args.quick))
        contenders, problems = build_all(cfg, entries)
        cfg_rows = (measure(cfg, contenders, runs, warmup, matmul) if contenders else []) + problems
        sink.write(cfg_rows)
        print("\n".join(results_table(cfg_rows)), flush=True)
        report.rows += cfg_rows
        if not args.gpu and not args.quick:
            compile_rows = compile_only_rows(cfg)
            sink.write(compile_rows)
            report.compile_rows += compile_rows
    print("\n== compile time of the first jitted step")
    print("\n".join(compile_table(report.rows + report.compile_rows)))
    if args.ablations and not over_budget():
        report.ablation_rows = ablations(configs[0], device, runs, warmup, matmul)
        sink.write(report.ablation_rows)
        print(f"\n== jaxseq options on {configs[0].name}")
        print("\n".join(results_table(report.ablation_rows)))
        precision = precision_table(configs)
        print("\n== bfloat16 matmuls vs float32 (relative error)")
        print("\n".join(precision))
        report.sections.append(("Mixed precision: `compute_dtype=jnp.bfloat16` vs float32", [
            "Max relative error (max |bf16 - f32| / max |f32|) of the same training step; matmul "
            "operands in bfloat16, accumulation, cell math, states and gradients in float32.", ""]
            + precision))
    if args.levers and not args.gpu:
        report.sections += lever_sections(report, args, over_budget)
    if args.eager and not over_budget():
        rows = _eager(args)
        sink.write(rows)
        from benchmarks.eager import EAGER_TEXT, eager_table
        report.sections.append(("Eager calls (no jit)", [EAGER_TEXT, ""] + eager_table(rows)))
        print("\n== eager calls\n" + "\n".join(eager_table(rows)))
    if not args.gpu:
        print("\n== GEMM floor (step / floor)")
        print("\n".join(floor_table(report.rows, matmul)))
    print("\n== ratios (peer / jaxseq)")
    print("\n".join(ratio_table(report.rows, GPU_VARIANTS if args.gpu else CPU_VARIANTS)))
    report.info["load average at end (1/5/15 min)"] = load_average()
    print(f"load average at end: {report.info['load average at end (1/5/15 min)']}")
    bad = [r for r in report.rows + report.ablation_rows
           if r.get("exact") and not r["loss_rel_diff"] < 1e-4]
    for r in bad:
        print(f"WARNING: {r['config']} {r['contender']}: loss differs from torch by "
              f"{r['loss_rel_diff']:.1e}", file=sys.stderr)
    errors = [r for r in report.rows + report.compile_rows if r.get("status") == "error"]
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(report))
        print(f"\nwrote {args.markdown}")
    return 1 if bad or errors else 0


def _eager(args: argparse.Namespace) -> list[dict]:
    """``--eager``: :func:`benchmarks.eager.eager_rows`, with ``--eager-rev``'s jaxseq too."""
    import tempfile
    from pathlib import Path

    from benchmarks.eager import eager_rows

    with tempfile.TemporaryDirectory() as tmp:
        old = None
        if args.eager_rev:
            from benchmarks.compare_revisions import load_revision
            old = load_revision(args.eager_rev, Path(tmp))
        return eager_rows(quick=args.quick, old=old, rev=args.eager_rev or "")


def lever_sections(report: Report, args: argparse.Namespace,
                   over_budget: Callable[[], bool]) -> list[tuple[str, list[str]]]:
    """``--levers``: the input-projection table (from the rounds), the XLA flags table and the
    compile-time breakdown (each in its own processes / caches)."""
    from benchmarks.compile_time import BREAKDOWN_TEXT, breakdown_rows, breakdown_table
    from benchmarks.xla_flags import FLAGS_TEXT, flag_rows, flag_table

    sections = [("`input_projection`: in the loop or hoisted", [PROJECTION_TEXT, ""]
                 + projection_table(report.rows))]
    print("\n== input_projection\n" + "\n".join(sections[0][1][2:]))
    if not over_budget():
        rows = breakdown_rows(quick=args.quick)
        sections.append(("Where the compile time goes", [BREAKDOWN_TEXT, ""] + breakdown_table(rows)))
        print("\n== compile breakdown\n" + "\n".join(breakdown_table(rows)), flush=True)
    if not over_budget():
        rows = flag_rows(quick=args.quick)
        sections.append(("XLA CPU flags (documentation for users; jaxseq sets none)",
                         [FLAGS_TEXT, ""] + flag_table(rows)))
        print("\n== XLA flags\n" + "\n".join(flag_table(rows)), flush=True)
    return sections


PROJECTION_TEXT = """Where `x_t @ W_ih` is computed (`input_projection=`), timed in the same rounds
as the table above: jaxseq's training step (packed rows and traced lengths) and the floors with
either choice. `jaxseq.tuning.measure_input_projection(model, batch, time_steps)` measures the
same choice for a user's model on their machine."""


if __name__ == "__main__":
    sys.exit(main())
