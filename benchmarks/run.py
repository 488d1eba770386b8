"""Time one training step of jaxseq against torch packed sequences, Flax ``nnx.RNN`` and the GEMM floor.

    python -m benchmarks.run [--config NAME|GROUP ...] [--quick] [--runs N] [--ablations]
                             [--levers] [--eager] [--markdown docs/benchmarks.md] [--json FILE]
                             [--budget S]
    python -m benchmarks.run --config fastrnns           # torch's own benchmark configs
    python -m benchmarks.run --gpu [--emulate] [--quick] [--json FILE] [--budget S]

Every contender runs the same ragged batch with the same weights in this one process; steps are
interleaved round-robin (one step of each contender per round) so that load from other processes
hits all of them alike, and the median over rounds is reported (wall clock; the process CPU time
per step too). Ratios are ``peer time / jaxseq time`` (above 1: jaxseq is faster). GFLOP/s count
valid tokens only (what a packed implementation must compute) and are compared with a large
float32 matmul measured in the same run. The GEMM floor (:mod:`benchmarks.floor`) is the step's
matrix products alone, timed in the same rounds. Compile time is the first jitted step's tracing +
lowering and XLA compilation, wall clock and process CPU time.

``--config`` takes config names and the groups of :data:`benchmarks.configs.GROUPS`: ``main``
(the default on CPU), ``fastrnns`` (torch's ``benchmarks/fastrnns`` problems, :class:`~benchmarks.
configs.FastRNNsConfig`: their own table) and ``gpu``. ``--gpu`` selects the GPU table: the
``gpu`` group; contenders jaxseq's scan, jaxseq's cuDNN path (``impl="cudnn"``; without CUDA it
is skipped with a note, or run with ``jaxseq.fused.use_reference_kernel()`` under
``--emulate``), torch (cuDNN on CUDA), Flax ``nnx.RNN``, packed rows, and ``remat=k`` where a
config names one and the installed jaxseq takes it. On CUDA TF32 is off on both sides
(``jax_default_matmul_precision="highest"``, ``torch.backends.*.allow_tf32 = False``).
``--json FILE`` appends one JSON line per row as soon as its config is measured; ``--budget S``
starts no new config (or section) after ``S`` seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import compile_time, eager, pieces, xla_flags
from benchmarks.configs import (
    CONFIGS,
    CPU_CONFIGS,
    GPU_CONFIGS,
    GROUPS,
    QUICK_CONFIGS,
    BenchConfig,
    FastRNNsConfig,
    quick_config,
    select,
)
from benchmarks.contenders import (
    STAIRCASE_CHUNKS,
    baseline_step,
    flax_step,
    jaxseq_packed_step,
    jaxseq_step,
    mixed_precision_errors,
    packed_rows,
    supports_remat,
    torch_step,
)
from benchmarks.floor import PROJECTIONS, floor_step
from benchmarks.report import (
    CPU_VARIANTS,
    GPU_VARIANTS,
    PROJECTION_TEXT,
    Report,
    compile_table,
    fastrnns_table,
    floor_table,
    kept_tail,
    markdown,
    other_projection,
    projection_table,
    ratio_table,
    results_table,
)
from benchmarks.revision import load_revision
from benchmarks.timing import (
    Contender,
    JsonLines,
    load_average,
    machine,
    matmul_gflops,
    time_round_robin,
)
from jaxseq.fused import cuda_available


# ------------------------------------------------------------------------------------------
# What runs: contenders per selection, built one at a time (a failure becomes a row)
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Entry:
    """A contender to build, or the reason it does not run here."""

    name: str
    build: Optional[Callable[[], Contender]]
    skip: Optional[str] = None


#: ``time_chunks`` of the staircase under ``--quick`` (fewer loops to compile in the smoke test).
QUICK_STAIRCASE_CHUNKS = 2
FLAX_SKIP = "nnx.GRUCell has no b_hn (flax#5594)"


def _flax_entry(cfg: BenchConfig) -> Entry:
    return Entry("flax-nnx.RNN", lambda: flax_step(cfg, cfg.torch_module()),
                 None if cfg.mode == "LSTM" else FLAX_SKIP)


def _torch_entry(cfg: BenchConfig, device: str, threads: Optional[int] = None) -> Entry:
    """torch's step (``torch-dense`` for a dense problem); with ``threads``, run on that many
    threads (set around each step, then restored): ``torch-packed/1 thread``."""
    dense = isinstance(cfg, FastRNNsConfig) and not cfg.varlen
    name = ("torch-dense" if dense else "torch-packed") + (f"/{threads} thread" if threads else "")

    def build() -> Contender:
        contender = torch_step(cfg, cfg.torch_module(), device)
        contender.name = name
        if threads:
            step = contender.step

            def on_threads() -> object:
                before = torch.get_num_threads()
                torch.set_num_threads(threads)
                try:
                    return step()
                finally:
                    torch.set_num_threads(before)

            contender.step = on_threads
            contender.note = re.sub(r"\d+ threads$", f"{threads} thread", contender.note)
        return contender

    return Entry(name, build)


def _floor_entries(cfg: BenchConfig, layouts: Sequence[str]) -> list[Entry]:
    rows = {"padded": cfg.batch, "packed": packed_rows(cfg)[0].shape[0]}
    return [Entry(f"floor-{layout}/{p}", lambda c=rows[layout], p=p, n=f"floor-{layout}/{p}":
                  floor_step(cfg, c, p, n)) for layout in layouts for p in PROJECTIONS]


def cpu_entries(cfg: BenchConfig, device: str, levers: bool, quick: bool = False) -> list[Entry]:
    """The CPU table: jaxseq (packed rows, staircase, traced lengths), torch, Flax (LSTM only),
    the GEMM floors (padded and packed rows, both projections); ``levers``: jaxseq with the
    non-default ``input_projection`` and torch on one thread too; ``quick``: a staircase of
    :data:`QUICK_STAIRCASE_CHUNKS` chunks. torch's fastrnns problems: :func:`fastrnns_entries`."""
    if isinstance(cfg, FastRNNsConfig):
        return fastrnns_entries(cfg, device, quick)
    chunks = QUICK_STAIRCASE_CHUNKS if quick else STAIRCASE_CHUNKS
    entries = [Entry("jaxseq-packed", lambda: jaxseq_packed_step(cfg, cfg.torch_module())),
               Entry("jaxseq-staircase", lambda: jaxseq_step(cfg, cfg.torch_module(), False,
                                                             time_chunks=chunks)),
               Entry("jaxseq-traced", lambda: jaxseq_step(cfg, cfg.torch_module(), True)),
               _torch_entry(cfg, device), _flax_entry(cfg)]
    if levers:
        other = other_projection()
        if device == "cpu" and torch.get_num_threads() > 1:
            entries.append(_torch_entry(cfg, device, threads=1))
        entries += [Entry(f"jaxseq-packed/{other}", lambda: jaxseq_packed_step(
                        cfg, cfg.torch_module(), f"jaxseq-packed/{other}", input_projection=other)),
                    Entry(f"jaxseq-traced/{other}", lambda: jaxseq_step(
                        cfg, cfg.torch_module(), True, f"jaxseq-traced/{other}",
                        input_projection=other))]
    return entries + _floor_entries(cfg, ("padded", "packed"))


def fastrnns_entries(cfg: FastRNNsConfig, device: str, quick: bool = False) -> list[Entry]:
    """torch's fastrnns problems on CPU: jaxseq with traced lengths (both ``input_projection``
    choices), and for varlen packed rows (both choices) and the staircase; torch (packed or
    dense; on all its threads and on one), Flax, the padded (and packed) GEMM floors."""
    def traced(p: str) -> Entry:
        return Entry(f"jaxseq-traced/{p}", lambda: jaxseq_step(
            cfg, cfg.torch_module(), True, f"jaxseq-traced/{p}", input_projection=p))

    def packed(p: str) -> Entry:
        return Entry(f"jaxseq-packed/{p}", lambda: jaxseq_packed_step(
            cfg, cfg.torch_module(), f"jaxseq-packed/{p}", input_projection=p))

    entries = [traced(p) for p in PROJECTIONS]
    if cfg.varlen:
        chunks = QUICK_STAIRCASE_CHUNKS if quick else STAIRCASE_CHUNKS
        entries += [packed(p) for p in PROJECTIONS]
        entries.append(Entry("jaxseq-staircase", lambda: jaxseq_step(
            cfg, cfg.torch_module(), False, time_chunks=chunks)))
    entries.append(_torch_entry(cfg, device))
    if device == "cpu" and torch.get_num_threads() > 1:   # on a shared machine 1 thread can win
        entries.append(_torch_entry(cfg, device, threads=1))
    entries.append(_flax_entry(cfg))
    return entries + _floor_entries(cfg, ("padded", "packed") if cfg.varlen else ("padded",))


def gpu_entries(cfg: BenchConfig, device: str, emulate: bool) -> list[Entry]:
    """The GPU table: jaxseq's scan (traced lengths), jaxseq's cuDNN path, torch (cuDNN), Flax
    (LSTM only) and jaxseq on packed rows (not for a dense problem); where the config names
    ``remat``, the scan with ``remat=k`` (when the installed jaxseq takes it) in place of Flax and
    packed rows."""
    cudnn_skip = None
    if cfg.mode != "LSTM":
        cudnn_skip = f"{cfg.mode} has no cuDNN path"
    elif not cuda_available() and not emulate:
        cudnn_skip = ("no CUDA backend (--emulate runs jax.experimental.rnn.lstm_ref in its place "
                      "for a dry run)")
    entries = [Entry("jaxseq-traced", lambda: jaxseq_step(cfg, cfg.torch_module(), True)),
               Entry("jaxseq-cudnn", lambda: _cudnn_step(cfg, emulate and not cuda_available()),
                     cudnn_skip),
               _torch_entry(cfg, device)]
    if not cfg.remat:       # the long-sequence row is about memory: scan, remat, cuDNN, torch
        entries.append(_flax_entry(cfg))
    if not (isinstance(cfg, FastRNNsConfig) and not cfg.varlen) and not cfg.remat:
        entries.append(Entry("jaxseq-packed", lambda: jaxseq_packed_step(cfg, cfg.torch_module())))
    if cfg.remat:
        name = f"jaxseq-traced, remat={cfg.remat}"
        entries.append(Entry(name, lambda: jaxseq_step(cfg, cfg.torch_module(), True, name,
                                                       remat=cfg.remat),
                             None if supports_remat() else "this jaxseq has no remat="))
    return entries


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
    torch_loss = [v for k, v in losses.items() if k.startswith("torch")]
    reference = torch_loss[0] if torch_loss else next(iter(losses.values()), math.nan)
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
        lines.append(f"| {config} | " + " | ".join(f"{e[n]:.1e}" if n in e else "-" for n in names)
                     + " |")
    return lines


# ------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS) + sorted(GROUPS),
                        help="config(s) or group(s) to run (repeatable; default: the selection's "
                             f"group; groups: {', '.join(f'{k} = {v}' for k, v in GROUPS.items())})")
    parser.add_argument("--gpu", action="store_true",
                        help=f"the GPU table: configs {', '.join(GPU_CONFIGS)}; jaxseq scan, "
                             "jaxseq cuDNN, torch, Flax, packed rows, remat")
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
    parser.add_argument("--pieces", action="store_true",
                        help="also time the step's parts alone, JAX against torch (torch's fastrnns "
                             "problems with one unidirectional LSTM layer: benchmarks/pieces.py)")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads on CPU (default: the core count)")
    parser.add_argument("--markdown", help="write the report to this file")
    parser.add_argument("--json", help="append one JSON line per row to this file, as measured")
    parser.add_argument("--budget", type=float,
                        help="seconds after which no new config or section is started")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    started = time.monotonic()
    args = _parser().parse_args(argv)

    # The same device for everyone: CUDA only when both torch and JAX see a GPU.
    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device == "cpu":
        torch.set_num_threads(args.torch_threads)
    names = select(args.config, QUICK_CONFIGS if args.quick and not args.gpu
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
        rows_of = (report.fastrnns_rows if isinstance(cfg, FastRNNsConfig) and not args.gpu
                   else report.rows)
        if over_budget():
            print(f"\n== {cfg.name}: skipped (budget of {args.budget:.0f} s reached)", flush=True)
            skipped = [_status_row(cfg, "*", "skipped", f"budget of {args.budget:.0f} s reached")]
            sink.write(skipped)
            rows_of += skipped
            continue
        print(f"\n== {cfg.name}: {cfg.describe()} (load {load_average()})", flush=True)
        entries = (gpu_entries(cfg, device, args.emulate) if args.gpu
                   else cpu_entries(cfg, device, args.levers, args.quick))
        contenders, problems = build_all(cfg, entries)
        cfg_rows = (measure(cfg, contenders, runs, warmup, matmul) if contenders else []) + problems
        sink.write(cfg_rows)
        print("\n".join(results_table(cfg_rows)), flush=True)
        rows_of += cfg_rows
        if not args.gpu and not args.quick and not isinstance(cfg, FastRNNsConfig):
            compile_rows = compile_only_rows(cfg)
            sink.write(compile_rows)
            report.compile_rows += compile_rows
    print("\n== compile time of the first jitted step")
    print("\n".join(compile_table(report.fastrnns_rows + report.rows + report.compile_rows)))
    main_configs = [c for c in configs if not isinstance(c, FastRNNsConfig)]
    if args.ablations and main_configs and not over_budget():
        report.ablation_rows = ablations(main_configs[0], device, runs, warmup, matmul)
        sink.write(report.ablation_rows)
        print(f"\n== jaxseq options on {main_configs[0].name}")
        print("\n".join(results_table(report.ablation_rows)))
        precision = precision_table(main_configs)
        print("\n== bfloat16 matmuls vs float32 (relative error)")
        print("\n".join(precision))
        report.sections.append(("Mixed precision: `compute_dtype=jnp.bfloat16` vs float32", [
            "Max relative error (max |bf16 - f32| / max |f32|) of the same training step; matmul "
            "operands in bfloat16, accumulation, cell math, states and gradients in float32.", ""]
            + precision))
    if args.levers and not args.gpu:
        report.sections += lever_sections(report, args, over_budget)
    if args.pieces and not args.gpu:
        rows = [r for cfg in configs if pieces.supports(cfg) and not over_budget()
                for r in pieces.piece_rows(cfg, runs, warmup)]
        sink.write(rows)
        report.sections.append(("Where the time goes: the step's parts alone",
                                [pieces.PIECES_TEXT, ""] + pieces.pieces_table(rows)))
        print("\n== the step's parts alone\n" + "\n".join(pieces.pieces_table(rows)), flush=True)
    if args.eager and not over_budget():
        rows = _eager(args)
        sink.write(rows)
        report.sections.append(("Eager calls (no jit)", [eager.EAGER_TEXT, ""]
                                + eager.eager_table(rows)))
        print("\n== eager calls\n" + "\n".join(eager.eager_table(rows)))
    if report.fastrnns_rows:
        print("\n== torch's fastrnns configs (peer / this, this / floor)")
        print("\n".join(fastrnns_table(report.fastrnns_rows)))
    if report.rows:
        if not args.gpu:
            print("\n== GEMM floor (step / floor)")
            print("\n".join(floor_table(report.rows, matmul)))
        print("\n== ratios (peer / jaxseq)")
        print("\n".join(ratio_table(report.rows, GPU_VARIANTS if args.gpu else CPU_VARIANTS)))
    report.info["load average at end (1/5/15 min)"] = load_average()
    print(f"load average at end: {report.info['load average at end (1/5/15 min)']}")
    measured = report.fastrnns_rows + report.rows + report.ablation_rows
    bad = [r for r in measured if r.get("exact") and not r["loss_rel_diff"] < 1e-4]
    for r in bad:
        print(f"WARNING: {r['config']} {r['contender']}: loss differs from torch by "
              f"{r['loss_rel_diff']:.1e}", file=sys.stderr)
    errors = [r for r in measured + report.compile_rows if r.get("status") == "error"]
    if args.markdown:
        kept = kept_tail(open(args.markdown).read()) if os.path.exists(args.markdown) else ""
        with open(args.markdown, "w") as f:
            f.write(markdown(report) + ("\n" + kept if kept else ""))
        print(f"\nwrote {args.markdown}")
    return 1 if bad or errors else 0


def _eager(args: argparse.Namespace) -> list[dict]:
    """``--eager``: :func:`benchmarks.eager.eager_rows`, with ``--eager-rev``'s jaxseq too."""
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.eager_rev, Path(tmp)) if args.eager_rev else None
        return eager.eager_rows(quick=args.quick, old=old, rev=args.eager_rev or "")


def lever_sections(report: Report, args: argparse.Namespace,
                   over_budget: Callable[[], bool]) -> list[tuple[str, list[str]]]:
    """``--levers``: the input-projection table (from the rounds), the XLA flags table and the
    compile-time breakdown (each in its own processes / caches)."""
    sections = [("`input_projection`: in the loop or hoisted", [PROJECTION_TEXT, ""]
                 + projection_table(report.rows))]
    print("\n== input_projection\n" + "\n".join(sections[0][1][2:]))
    if not over_budget():
        rows = compile_time.breakdown_rows(quick=args.quick)
        sections.append(("Where the compile time goes", [compile_time.BREAKDOWN_TEXT, ""]
                         + compile_time.breakdown_table(rows)))
        print("\n== compile breakdown\n" + "\n".join(compile_time.breakdown_table(rows)), flush=True)
    if not over_budget():
        rows = xla_flags.flag_rows(quick=args.quick)
        sections.append(("XLA CPU flags (documentation for users; jaxseq sets none)",
                         [xla_flags.FLAGS_TEXT, ""] + xla_flags.flag_table(rows)))
        print("\n== XLA flags\n" + "\n".join(xla_flags.flag_table(rows)), flush=True)
    return sections


if __name__ == "__main__":
    sys.exit(main())
