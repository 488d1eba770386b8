"""The report: markdown tables of measured rows, and the text of ``docs/benchmarks.md``.

Pure formatting of the rows that :mod:`benchmarks.run` measures (dicts, one per contender and
config); nothing here measures or imports another benchmark script.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Sequence
from typing import Optional

import jax

from benchmarks.configs import BenchConfig, FastRNNsConfig
from benchmarks.floor import PROJECTIONS
from jaxseq.scan import INPUT_PROJECTION_DEFAULTS


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


def default_projection() -> str:
    """The ``input_projection`` jaxseq picks on this backend by default."""
    return INPUT_PROJECTION_DEFAULTS.get(jax.default_backend(), "hoisted")


def other_projection() -> str:
    """The ``input_projection`` jaxseq does not pick on this backend by default."""
    return next(p for p in PROJECTIONS if p != default_projection())


def _ms(rows: Sequence[dict], config: str, key: str = "ms") -> dict[str, float]:
    """``contender -> value`` of a config's measured rows (torch's dense run answers for
    ``torch-packed`` too: it is the torch contender of a config without padding)."""
    found = {r["contender"]: r[key] for r in rows
             if r["config"] == config and r.get("status", "ok") == "ok" and key in r}
    if "torch-dense" in found:
        found.setdefault("torch-packed", found["torch-dense"])
    return found


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
    default, other = default_projection(), other_projection()
    lines = ["| config | path | in_loop ms | hoisted ms | hoisted / in_loop (CPU time) | faster |",
             "|---|---|---:|---:|---:|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        ms, cpu = _ms(rows, config), _ms(rows, config, "cpu_ms")
        pairs = [(f"{path} (default: {default})", {default: path, other: f"{path}/{other}"})
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


def fastrnns_table(rows: Sequence[dict]) -> list[str]:
    """torch's benchmark configs: every contender as a multiple of torch (on all its threads, and
    the faster of that and one thread), of Flax (``peer time / this time``: above 1, this is
    faster) and of its GEMM floor (packed rows: the packed floor; the faster projection); ratios
    of the medians, with the ratio of the fastest steps in brackets (the least disturbed by other
    processes on a shared machine)."""
    lines = ["| config | contender | median ms | min ms | torch / this | faster torch / this "
             "| Flax / this | this / GEMM floor | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        ms, best = _ms(rows, config), _ms(rows, config, "min_ms")
        floors = {layout: _floor(ms, layout)[0] for layout in ("padded", "packed")}
        torches = [n for n in ms if n.startswith(("torch-packed", "torch-dense"))]
        fastest = min(torches, key=ms.__getitem__) if torches else None

        def both(top: Optional[str], bottom: Optional[str], ms=ms, best=best) -> str:
            if top is None or bottom is None or top not in ms or bottom not in ms:
                return "-"
            return f"{_ratio(ms, top, bottom)} ({_ratio(best, top, bottom)})"

        for r in rows:
            if r["config"] != config:
                continue
            name = r["contender"]
            if r.get("status", "ok") != "ok":
                lines.append(f"| {config} | {name} | {r['status']} | | | | | | {r['note']} |")
                continue
            floor = None if r["kind"] == "floor" else floors[
                "packed" if name.startswith("jaxseq-packed") else "padded"]
            lines.append(f"| {config} | {name} | {r['ms']:.1f} | {r['min_ms']:.1f} | "
                         f"{both('torch-packed', name)} | {both(fastest, name)} | "
                         f"{both('flax-nnx.RNN', name)} | {both(name, floor)} | {r['note']} |")
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
    fastrnns_rows: list[dict] = dataclasses.field(default_factory=list)
    sections: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)


def describe_problem(cfg: BenchConfig) -> str:
    """One line of the "Problems" list: shape, lengths and valid tokens."""
    tokens, T = int(cfg.lengths().sum()), cfg.padded_time
    share = f"{tokens} valid tokens of {cfg.batch * T} ({100 * tokens / (cfg.batch * T):.0f}%)"
    if isinstance(cfg, FastRNNsConfig):
        padded = f", padded to max(lengths) = {T}" if cfg.varlen else ""
        return (f"- **{cfg.name}**: {cfg.describe()}{padded}: {share}; random h_0, c_0; "
                f"gradient of the parameters for a random output gradient")
    return f"- **{cfg.name}**: {cfg.describe()}; lengths U[T/10, T] with one row of length T: {share}"


KEPT_MARKER = ("<!-- Measured analyses (other scripts, several runs): `benchmarks.run --markdown` "
               "keeps everything from this line on. -->")


def kept_tail(existing: str) -> str:
    """The part of an earlier ``docs/benchmarks.md`` that a regeneration keeps: everything from
    :data:`KEPT_MARKER` on (the analyses of particular runs: the GEMM floor and packed rows of
    2026-12-02, the fastrnns configs, the long-sequence table), or ``""``."""
    start = existing.find(KEPT_MARKER)
    return existing[start:] if start >= 0 else ""


def markdown(report: Report) -> str:
    """The full report (``docs/benchmarks.md``): the main tables for the main configs, the
    fastrnns section for torch's own benchmark configs."""
    r = report
    lines = ["# Benchmarks: one training step, jaxseq vs torch packed vs Flax nnx.RNN", "",
             "Generated by `benchmarks/run.py`; regenerate with", "", "```", r.command, "```", "",
             f"Run on {datetime.date.today().isoformat()}. Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in r.info.items()]
    lines += [f"- large float32 matmul (2048^3): jax {r.matmul['jax']:.0f} GFLOP/s, torch "
              f"{r.matmul['torch']:.0f} GFLOP/s", "", "## Problems", ""]
    lines += [describe_problem(cfg) for cfg in r.configs]
    lines += ["", "Step = forward + backward (main configs: through every parameter and the input; "
              "loss = sum of valid outputs + sum of final states). Each contender: warm-up steps, "
              f"then {r.runs} rounds interleaved round-robin with the others in one process; median "
              "(and min) per step, wall clock; `CPU ms` is the median process CPU time of a step."]
    if r.fastrnns_rows:
        lines += ["", "## torch's own benchmark configs (`benchmarks/fastrnns`)", "",
                  FASTRNNS_TEXT, ""] + fastrnns_table(r.fastrnns_rows)
    if r.rows:
        lines += ["", "## Ratios (peer time / jaxseq time; above 1: jaxseq faster)", ""]
        lines += ratio_table(r.rows, GPU_VARIANTS if r.gpu else CPU_VARIANTS)
        if not r.gpu:
            lines += ["", "## The GEMM floor (step time / floor time; CPU-time ratio in brackets)",
                      "", FLOOR_TEXT, ""]
            lines += floor_table(r.rows, r.matmul)
    lines += ["", "## Compile time of the first jitted step", "", COMPILE_TEXT, ""]
    lines += compile_table(r.fastrnns_rows + r.rows + r.compile_rows)
    for title, body in r.sections:
        lines += ["", f"## {title}", ""] + body
    lines += ["", "## All measurements", ""]
    lines += results_table(r.fastrnns_rows + r.rows)
    if r.ablation_rows:
        lines += ["", f"## jaxseq options on `{r.ablation_rows[0]['config']}` (concrete lengths)",
                  ""]
        lines += results_table(r.ablation_rows)
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


FASTRNNS_TEXT = """PyTorch keeps its own RNN benchmark (`benchmarks/fastrnns` in the pytorch repository,
`factory.py`); these are its default problems as it defines them: `vl_py` (B 64, input = hidden
= 512, lengths `randint(30, 100)`, `pack_sequence(enforce_sorted=False)` -> `nn.LSTM` ->
`pad_packed_sequence`) and the dense `cudnn` problem (T 100, B 64, 512/512, no padding; on CPU
torch runs oneDNN's fused LSTM), both from random `h_0`/`c_0`, timed as a training step: the
forward pass and the backward pass of a random gradient of the padded output with respect to the
parameters (torch's inputs and states do not require grad). jaxseq runs the padded batch with
traced lengths (both `input_projection` choices), packed rows (`jaxseq.pack_rows`) and the
staircase (concrete lengths); Flax `nnx.RNN(OptimizedLSTMCell)` with `seq_lengths`; the GEMM
floor as below (no input gradient). Every contender computes the same objective `sum(g * output)`
with the same weights (`loss rel. diff` in the full table)."""


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
  sides (`torch.backends.*.allow_tf32 = False`, `jax_default_matmul_precision="highest"`), on
  torch's fastrnns problems (`vl_py`, `dense`), a long-sequence BiLSTM (2 layers, B 16, T 4000, I
  64, H 128) with and without `remat=64` (step time and compiled memory; the row is skipped where
  the installed jaxseq has no `remat=`), configs lstm, bilstm2, gru and a DeepSpeech-like BiLSTM
  (5 layers, H 1024, B 32, T 500, I 161), in that order. No GPU has been lent to this project
  yet: there are no GPU figures. The prepared check for a GPU machine (correctness of the fused
  path first, the failing probes in subprocesses, then `jaxseq-parity`, the GPU tests and this
  timing, each result appended to a JSON-lines file as it comes; one module per check in
  `benchmarks/gpu/`) is one command: `PYTHONPATH=. timeout 480 python -m benchmarks.gpu_check
  --budget 420 --out "$OUT/gpu"`; `--emulate` dry-runs it on a CPU with
  `jax.experimental.rnn.lstm_ref` in place of cuDNN (about 4 minutes here, every correctness
  check passing).
- torch on a CPU shared with other busy processes can be far slower than its quiet-machine time
  (its OpenMP threads wait for each other); compare ratios from quiet runs, or use
  `--torch-threads 1` on a loaded machine. The load average is recorded at the start and end of
  the run; on a loaded machine, prefer the ratios (every contender in the same rounds) and the CPU
  times over absolute wall-clock figures.
"""


PROJECTION_TEXT = """Where `x_t @ W_ih` is computed (`input_projection=`), timed in the same rounds
as the table above: jaxseq's training step (packed rows and traced lengths) and the floors with
either choice. `jaxseq.tuning.measure_input_projection(model, batch, time_steps)` measures the
same choice for a user's model on their machine."""
