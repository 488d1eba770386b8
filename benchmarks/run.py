"""Time one training step of jaxseq against torch packed sequences and Flax ``nnx.RNN``.

    python -m benchmarks.run [--config NAME ...] [--quick] [--runs N] [--ablations]
                             [--markdown docs/benchmarks.md]

Every contender runs the same ragged batch with the same weights in this one process; steps are
interleaved round-robin (one step of each contender per round) so that load from other processes
hits all of them alike, and the median over rounds is reported. Ratios are ``peer time / jaxseq
time`` (above 1: jaxseq is faster). GFLOP/s count valid tokens only (what a packed implementation
must compute) and are compared with a large float32 matmul measured in the same run. On CUDA,
torch uses cuDNN and TF32 is off on both sides (``jax_default_matmul_precision="highest"``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.contenders import (BenchConfig, Contender, baseline_step, build, jaxseq_step,
                                   matmul_gflops, mixed_precision_errors, torch_step)

CONFIGS = {c.name: c for c in [
    BenchConfig("lstm", "LSTM", batch=64, time=100, input_size=128, hidden_size=256),
    BenchConfig("bilstm2", "LSTM", batch=32, time=200, input_size=64, hidden_size=128,
                num_layers=2, bidirectional=True),
    BenchConfig("long", "LSTM", batch=16, time=1000, input_size=64, hidden_size=128),
    BenchConfig("small", "LSTM", batch=64, time=100, input_size=32, hidden_size=32),
    BenchConfig("gru", "GRU", batch=64, time=100, input_size=128, hidden_size=256),
]}
#: ``--quick`` default: every contender (jaxseq, jaxseq-traced, torch, Flax uni/bidirectional)
#: and every cell kind at least once, in well under a minute.
QUICK_CONFIGS = ("lstm", "bilstm2", "gru")


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """Tiny shapes of the same structure, for the smoke test."""
    return dataclasses.replace(cfg, batch=min(cfg.batch, 8), time=min(cfg.time, 24),
                               input_size=8, hidden_size=16)


def machine() -> dict[str, str]:
    """CPU model, core count, accelerator and library versions."""
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
            "jax devices": ", ".join(str(d) for d in jax.devices()),
            "python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()), "numpy": np.__version__}
    import flax
    info["flax"] = flax.__version__
    if torch.cuda.is_available():
        info["torch device"] = torch.cuda.get_device_name()
    return info


def time_round_robin(contenders: Sequence[Contender], runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each contender: ``warmup`` untimed steps, then ``runs`` interleaved rounds."""
    for c in contenders:
        for _ in range(warmup):
            c.step()
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for _ in range(runs):
        for c in contenders:
            start = time.perf_counter()
            c.step()
            times[c.name].append(time.perf_counter() - start)
    return times


def measure(cfg: BenchConfig, contenders: Sequence[Contender], runs: int, warmup: int,
            matmul: dict[str, float]) -> list[dict]:
    """One row per contender: timings, throughput, FLOP rate, compile time, memory, loss check."""
    times = time_round_robin(contenders, runs, warmup)
    tokens = int(cfg.lengths().sum())
    reference = next(c.loss for c in contenders if c.name == "torch-packed")
    rows = []
    for c in contenders:
        seconds = float(np.median(times[c.name]))
        gflops = cfg.valid_flops() / seconds / 1e9
        peak = matmul["torch" if c.name.startswith("torch") else "jax"]
        rows.append(dict(config=cfg.name, contender=c.name, ms=seconds * 1e3,
                         min_ms=min(times[c.name]) * 1e3, tokens_per_s=tokens / seconds,
                         gflops=gflops, matmul_pct=100 * gflops / peak, compile_s=c.compile_s,
                         memory_mb=c.memory_mb,
                         loss_rel_diff=abs(c.loss - reference) / max(abs(reference), 1e-30),
                         exact=c.exact, note=c.note))
    return rows


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_table(rows: Sequence[dict]) -> list[str]:
    """Markdown table of every measured row."""
    lines = ["| config | contender | median ms | min ms | valid tok/s | GFLOP/s | % of matmul "
             "| compile s | memory MB | loss rel. diff | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['contender']} | {r['ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['gflops']:.1f} | {r['matmul_pct']:.0f}% | "
                     f"{_fmt(r['compile_s'], '.1f')} | {_fmt(r['memory_mb'], '.1f')} | "
                     f"{r['loss_rel_diff']:.1e} | {r['note']} |")
    return lines


#: ``(label, contender)`` of the jaxseq variants in the ratio table, fastest design first.
JAXSEQ_VARIANTS = (("packed rows", "jaxseq-packed"), ("padded, staircase", "jaxseq"),
                   ("padded, traced lengths", "jaxseq-traced"))


def ratio_table(rows: Sequence[dict]) -> list[str]:
    """Per config: every time, and ``peer / jaxseq`` for each jaxseq variant (above 1: faster)."""
    names = [name for _, name in JAXSEQ_VARIANTS]
    head = " | ".join(f"{label} ms" for label, _ in JAXSEQ_VARIANTS)
    ratios = " | ".join(f"{peer} / {label}" for label, _ in JAXSEQ_VARIANTS
                        for peer in ("torch", "flax"))
    lines = [f"| config | {head} | torch ms | flax ms | {ratios} |",
             "|---|" + "---:|" * (len(names) * 3 + 2)]
    for config in dict.fromkeys(r["config"] for r in rows):
        ms = {r["contender"]: r["ms"] for r in rows if r["config"] == config}
        if not set(names) & ms.keys():
            continue

        def ratio(peer: str, base: str) -> str:
            return f"{ms[peer] / ms[base]:.2f}x" if peer in ms and base in ms else "-"

        cells = [_fmt(ms.get(n), ".1f") for n in names]
        cells += [_fmt(ms.get("torch-packed"), ".1f"), _fmt(ms.get("flax-nnx.RNN"), ".1f")]
        cells += [ratio(peer, n) for n in names for peer in ("torch-packed", "flax-nnx.RNN")]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return lines


#: jaxseq options timed by ``--ablations`` (default: time_chunks=6, unroll=1, float32 matmuls).
ABLATIONS = [dict(time_chunks=1), dict(time_chunks=2), dict(time_chunks=4), {}, dict(time_chunks=8),
             dict(unroll=2), dict(compute_dtype=jnp.bfloat16), dict(forward_mode=True),
             dict(time_chunks=1, forward_mode=True)]


def _option_name(options: dict) -> str:
    return ", ".join(f"{k}={getattr(v, '__name__', v)}" for k, v in options.items()) or "defaults"


def ablations(cfg: BenchConfig, device: str, runs: int, warmup: int,
              matmul: dict[str, float]) -> list[dict]:
    """jaxseq alone on ``cfg`` with each option set of :data:`ABLATIONS`, and the plain masked scan
    it started from (:mod:`benchmarks.baseline`) where that applies."""
    variants = [jaxseq_step(cfg, cfg.torch_module(), traced_lengths=False,
                            name=_option_name(options), **options) for options in ABLATIONS]
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


def markdown(info: dict[str, str], command: str, matmul: dict[str, float], rows: Sequence[dict],
             ablation_rows: Sequence[dict], precision: Sequence[str],
             configs: Sequence[BenchConfig], runs: int) -> str:
    """The full report (``docs/benchmarks.md``)."""
    lines = ["# Benchmarks: one training step, jaxseq vs torch packed vs Flax nnx.RNN", "",
             "Generated by `benchmarks/run.py`; regenerate with", "", "```", command, "```", "",
             f"Run on {datetime.date.today().isoformat()}. Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- large float32 matmul: jax {matmul['jax']:.0f} GFLOP/s, torch {matmul['torch']:.0f} "
              "GFLOP/s", "", "## Problems", ""]
    for cfg in configs:
        tokens = int(cfg.lengths().sum())
        lines.append(f"- **{cfg.name}**: {cfg.describe()}; lengths U[T/10, T] with one row of "
                     f"length T: {tokens} valid tokens of {cfg.batch * cfg.time} "
                     f"({100 * tokens / (cfg.batch * cfg.time):.0f}%)")
    lines += ["", "Step = forward + backward through every parameter and the input; loss = sum of "
              "valid outputs + sum of final states. Each contender: warm-up steps, then "
              f"{runs} rounds interleaved round-robin with the others in one process; median (and "
              "min) per step.", "", "## Ratios (peer time / jaxseq time; above 1: jaxseq faster)",
              ""]
    lines += ratio_table(rows)
    lines += ["", "## All measurements", ""]
    lines += results_table(rows)
    if ablation_rows:
        lines += ["", f"## jaxseq options on `{ablation_rows[0]['config']}`", ""]
        lines += results_table(ablation_rows)
    if precision:
        lines += ["", "## Mixed precision: `compute_dtype=jnp.bfloat16` vs float32", "",
                  "Max relative error (max |bf16 - f32| / max |f32|) of the same training step; "
                  "matmul operands in bfloat16, accumulation, cell math, states and gradients in "
                  "float32.", ""]
        lines += precision
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """## Reading the numbers

- `jaxseq-packed`: the batch's sequences packed end to end into rows of `T` steps
  (`jaxseq.data.pack_rows`, best-fit decreasing; density in the note), run with traced
  `segment_ids`: one compilation serves every batch of that shape, and nearly every step is a
  real token. Same valid tokens, same weights and the same loss as the padded contenders.
- `jaxseq`: lengths are concrete (host values closed over by the jitted step), so the default
  staircase schedule runs: rows sorted by length, time cut into at most `time_chunks=6` chunks,
  each scanned over only the rows still active (counts rounded up to a multiple of `ceil(B/8)`).
  Compute follows the number of valid tokens, as torch's packed kernels do. Concrete lengths mean
  one compilation per distinct schedule: in a training loop pass
  `time_chunks=jaxseq.scan.staircase(lengths, T, time_multiple=...)` as a static argument (the
  lengths may then be traced), or bucket batches by length (`jaxseq.data.bucket_by_length`).
- `jaxseq-traced`: the lengths are a traced jit argument (the usual training-loop setting without
  bucketing): the plain masked scan over all `B * T` steps.
- `GFLOP/s` count matmul FLOPs of valid tokens only (forward + 2x for backward); `% of matmul` is
  relative to the large matmul of the same framework measured in the same run.
- `compile s`: `jax.jit(...).lower(...).compile()`; `memory MB`: temp + output buffers from
  `compiled.memory_analysis()` for JAX, `torch.cuda.max_memory_allocated()` for torch on CUDA (not
  measured for torch on CPU).
- `loss rel. diff`: relative difference of the loss to torch's, with identical weights: every
  float32 contender computes the same function (the bfloat16 ablation is not expected to match;
  its accuracy is in the mixed-precision table).
- Flax `nnx.RNN` has no torch-exact GRU cell (`nnx.GRUCell` lacks `b_hn`, flax#5594), so the GRU
  config has no Flax contender.
- With a CUDA GPU visible to both torch and JAX the same command times torch with cuDNN and JAX on
  the GPU, TF32 off on both sides (`torch.backends.*.allow_tf32 = False`,
  `jax_default_matmul_precision="highest"`); jaxseq has no cuDNN path (XLA's scan on GPU).
- torch on a CPU shared with other busy processes can be far slower than its quiet-machine time
  (its OpenMP threads wait for each other); compare ratios from quiet runs, or use
  `--torch-threads 1` on a loaded machine.

## Packed rows: what limits them here

- Density is bounded by the batch itself: config `lstm` has 39 sequences longer than `T/2 = 50`,
  so no packing of its 64 sequences into rows of 100 uses fewer than 39 rows (92% at best;
  `pack_rows` finds 40, 89.8%); config `bilstm2` has 21 sequences longer than 100, so at least 21
  rows of 200 (88% at best; `pack_rows` finds 22, 84%). Packing a whole data set instead of one
  batch reaches 99.9% (the character LM example: 32000 words in rows of 64).
- On this CPU a training step costs about `T x (0.6 ms + rows x 0.024 ms)` (fit over the padded and
  packed runs of config `lstm`): the fixed per-step cost of the forward and backward loops
  dominates, so going from 64 padded rows to 40 packed rows saves less than the 38% of row-steps.
  The staircase (concrete lengths) reaches a similar time by running short chunks over few rows;
  packed rows get there with traced `segment_ids` and one compilation for every batch.
- Measured and dropped (not in the library): a staircase over *traced* lengths (rows sorted on
  device, 4 time chunks, `lax.switch` among 4 static active-row counts per chunk) on config `lstm`:
  227.8 ms against 222.4 ms for the plain traced masked scan, same loss, compile 9.9 s against
  1.7 s. Reverse-mode AD of `lax.switch` keeps every branch's residuals and the branches' small
  matmuls cost as much as the skipped padding.

## Where jaxseq's speed comes from (see `jaxseq/scan.py`)

- Compute on valid tokens only (the staircase): the `time_chunks` rows above; `time_chunks=1` is
  the plain masked scan over `B * T` steps.
- A hand-written VJP for the scan: the backward loop does one `dgates @ W_hh` per step; every
  weight gradient and the input gradient are large GEMMs after the loop (autodiff of `lax.scan`
  accumulates `[F, G]` and `[H, G]` weight gradients at every step). The gate gradients overwrite
  the saved pre-activations in place, so no extra `[T, B, G]` buffer is allocated (on this kind of
  VM, freshly allocated buffers cost page faults at every step: ~25% less XLA memory, ~5-10%
  faster).
- The input projection `x_t @ W_ih` inside the loop rather than one hoisted GEMM: on CPU the
  loop streaming a hoisted `[T, B, G]` array back from memory was ~1.8x slower than projecting
  `[B, I]` rows in the loop (forward-only microbenchmark, config `lstm`).
- `forward_mode=True` in the options table: the masked scan with a custom JVP (forward mode,
  Hessians) instead of the hand-written VJP; its reverse mode is JAX's transpose of the JVP. It
  computes the same loss; the difference to `defaults` is what forward-mode support costs in a
  training step (a fresh gate-gradient buffer of `[T, B, G]` and its zero-fill, where the
  hand-written backward pass reuses the saved pre-activations).
- Against the previous release's code (`python -m benchmarks.compare_revisions a0aadb9`, same
  process, 11 interleaved rounds, 2026-12-02), median ms current / a0aadb9: lstm staircase 168.2 /
  155.8 (0.93x), traced 223.1 / 215.7 (0.97x); bilstm2 staircase 365.4 / 344.0 (0.94x), traced
  468.1 / 501.2 (1.07x); gru staircase 131.9 / 124.8 (0.95x), traced 199.4 / 196.6 (0.99x).
  Traced lengths: unchanged within noise. Staircase: 5-7% slower and 1-2 s longer to compile.
  Suspected cause: the `optimization_barrier` on host lengths, which keeps XLA from constant-folding
  the row permutations, so they run as gathers. It was tested directly, current code against the
  same code without the barrier, in two runs of 15 rounds each:
  - lstm staircase 1.04x (the barrier faster);
  - gru staircase 0.87x and 0.92x (the barrier slower);
  - compile 6-8 s with the barrier against 13.5-16.6 s without. Without it, XLA also warns that
    constant folding is slow.
  The barrier stays: it halves the compile time, and its run-time effect is within the ±5-10%
  run-to-run noise of this machine.
- Measured and dropped: `unroll > 1` (slower and slower to compile), separate scans per direction
  (no gain), one fused sigmoid for all gates (a few %, within noise, changes rounding), a
  concatenated `[x, h] @ [W_ih; W_hh]` matmul (no gain). `plain masked scan` in the options table
  is jaxseq's first implementation (hoisted GEMM, autodiff of the scan) on the same batch.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS),
                        help="config(s) to run (repeatable; default: all)")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny shapes, 2 rounds, configs {', '.join(QUICK_CONFIGS)} unless "
                             "--config is given: a smoke test")
    parser.add_argument("--runs", type=int, help="timed rounds per config (default 15; quick: 2)")
    parser.add_argument("--ablations", action="store_true",
                        help="also time jaxseq's options (time_chunks, unroll, bfloat16 matmuls) on "
                             "the first config and measure bfloat16 accuracy on every config")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads on CPU (default: the core count)")
    parser.add_argument("--markdown", help="write the report to this file")
    args = parser.parse_args(argv)

    # The same device for everyone: CUDA only when both torch and JAX see a GPU.
    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device == "cpu":
        torch.set_num_threads(args.torch_threads)
    names = args.config or (QUICK_CONFIGS if args.quick else CONFIGS)
    configs = [quick_config(CONFIGS[n]) if args.quick else CONFIGS[n] for n in names]
    runs = args.runs or (2 if args.quick else 15)
    warmup = 1 if args.quick else 3

    info = machine()
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    matmul = dict(zip(("jax", "torch"), matmul_gflops(256 if args.quick else 2048, device)))
    print(f"large matmul: jax {matmul['jax']:.0f} GFLOP/s, torch {matmul['torch']:.0f} GFLOP/s")
    rows = []
    for cfg in configs:
        print(f"\n== {cfg.name}: {cfg.describe()}", flush=True)
        cfg_rows = measure(cfg, build(cfg, device), runs, warmup, matmul)
        print("\n".join(results_table(cfg_rows)), flush=True)
        rows += cfg_rows
    ablation_rows = ablations(configs[0], device, runs, warmup, matmul) if args.ablations else []
    precision = precision_table(configs) if args.ablations else []
    if ablation_rows:
        print(f"\n== jaxseq options on {configs[0].name}")
        print("\n".join(results_table(ablation_rows)))
        print("\n== bfloat16 matmuls vs float32 (relative error)")
        print("\n".join(precision))
    print("\n== ratios (peer / jaxseq)")
    print("\n".join(ratio_table(rows)))
    bad = [r for r in rows + ablation_rows if r["exact"] and not r["loss_rel_diff"] < 1e-4]
    for r in bad:
        print(f"WARNING: {r['config']} {r['contender']}: loss differs from torch by "
              f"{r['loss_rel_diff']:.1e}", file=sys.stderr)
    if args.markdown:
        command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in
                                                         (argv if argv is not None else sys.argv[1:]))
        with open(args.markdown, "w") as f:
            f.write(markdown(info, command.strip(), matmul, rows, ablation_rows, precision, configs,
                             runs))
        print(f"\nwrote {args.markdown}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
