"""Eager (un-jitted) calls, notebook style: one layer call per cell, new lengths every call.

A section of ``python -m benchmarks.run --eager [--eager-rev REV]``. B8 T30 I16 H32, float32: a
1-layer jaxseq LSTM and a 2-layer bidirectional one, called outside ``jit`` with fresh host
lengths each call, against Flax ``nnx.RNN`` (``OptimizedLSTMCell``, the same shapes,
``seq_lengths``) called the same way, and against the same jaxseq call under ``jax.jit`` (lengths
traced). One row per contender: the first call (compilation included), the median of ``calls``
later calls (interleaved round-robin with the other contenders), the XLA compilations per later
call, and the median's ratio to Flax and to the jitted call. ``old``: an earlier jaxseq
(:func:`benchmarks.revision.load_revision`) timed the same way.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import monitoring

import jaxseq
from jaxseq import functional

BATCH, TIME, INPUT, HIDDEN = 8, 30, 16, 32
#: Recorded by JAX once per XLA compilation (cache hits are not compilations).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

EAGER_TEXT = f"""`benchmarks/eager.py`: B{BATCH} T{TIME} I{INPUT} H{HIDDEN}, float32, forward calls
outside `jit` with new host lengths (U[1, T]) at every call, interleaved round-robin. `first call`
includes compilation; `ms per call` is the median of the later calls; `compiles per call`
counts XLA compilations in the later calls; the ratios compare that median with Flax `nnx.RNN`
called the same way and with the same jaxseq call under `jax.jit` (lengths traced)."""


@contextlib.contextmanager
def _compile_counter() -> Iterator[list[int]]:
    count = [0]

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE_EVENT:
            count[0] += 1

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        monitoring.unregister_event_duration_listener(listener)


def _flax_stack(num_layers: int, bidirectional: bool) -> Callable:
    """``(x [T, B, I], lengths) -> output`` of Flax ``nnx.RNN`` layers, called eagerly."""
    rngs = nnx.Rngs(0)
    layers = []
    for layer in range(num_layers):
        fan_in = INPUT if layer == 0 else (2 if bidirectional else 1) * HIDDEN
        rnns = [nnx.RNN(nnx.OptimizedLSTMCell(fan_in, HIDDEN, rngs=rngs), time_major=True,
                        rngs=False) for _ in range(2 if bidirectional else 1)]
        layers.append(nnx.Bidirectional(*rnns, time_major=True, rngs=False) if bidirectional
                      else rnns[0])

    def call(x, lengths):
        lengths = jnp.asarray(lengths)
        zero = jnp.zeros((x.shape[1], HIDDEN), x.dtype)
        carry = ((zero, zero), (zero, zero)) if bidirectional else (zero, zero)
        for layer in layers:
            x = layer(x, seq_lengths=lengths, initial_carry=carry)
        return x

    return call


def _jaxseq_stack(lib: Any, num_layers: int, bidirectional: bool) -> Callable:
    model = lib.LSTM(INPUT, HIDDEN, num_layers=num_layers, bidirectional=bidirectional,
                     rngs=nnx.Rngs(0))
    return lambda x, lengths: model(x, lengths)[0]


def _jitted(num_layers: int, bidirectional: bool) -> Callable:
    model = jaxseq.LSTM(INPUT, HIDDEN, num_layers=num_layers, bidirectional=bidirectional,
                        rngs=nnx.Rngs(0))
    params = model.param_dict()
    step = jax.jit(lambda p, x, lengths: functional.lstm(p, x, lengths)[0])
    return lambda x, lengths: step(params, x, jnp.asarray(lengths, jnp.int32))


def contenders(old: Optional[Any] = None) -> dict[str, Callable]:
    """Name -> ``call(x, lengths)``; ``old``: a previous jaxseq (``jaxseq_rev``) too."""
    calls = {}
    for layers, bi, label in ((1, False, "LSTM"), (2, True, "BiLSTM L2")):
        calls[f"jaxseq {label}"] = _jaxseq_stack(jaxseq, layers, bi)
        calls[f"flax nnx.RNN {label}"] = _flax_stack(layers, bi)
        calls[f"jaxseq {label}, jitted"] = _jitted(layers, bi)
        if old is not None:
            calls[f"jaxseq {label} (rev)"] = _jaxseq_stack(old, layers, bi)
    return calls


def eager_rows(quick: bool = False, calls: Optional[int] = None, old: Optional[Any] = None,
               rev: str = "") -> list[dict]:
    """Time every contender: the first call, then ``calls`` interleaved rounds."""
    calls = calls or (2 if quick else 7)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((TIME, BATCH, INPUT)), jnp.float32)
    fns = contenders(old)
    first, times, compiles = {}, {n: [] for n in fns}, dict.fromkeys(fns, 0)
    for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x, rng.integers(1, TIME + 1, BATCH)))
        first[name] = time.perf_counter() - start
    for _ in range(calls):
        for name, fn in fns.items():
            lengths = rng.integers(1, TIME + 1, BATCH)       # new lengths every call
            with _compile_counter() as count:
                start = time.perf_counter()
                jax.block_until_ready(fn(x, lengths))
                times[name].append(time.perf_counter() - start)
            compiles[name] += count[0]
    rows = []
    for name in fns:
        label = name.replace(", jitted", "").replace(" (rev)", "")
        row = dict(config="eager", contender=name + (f" {rev}" if name.endswith("(rev)") else ""),
                   first_s=first[name], ms=1e3 * float(np.median(times[name])),
                   compiles_per_call=compiles[name] / calls)
        row["label"] = label.replace("jaxseq ", "").replace("flax nnx.RNN ", "")
        rows.append(row)
    ms = {r["contender"]: r["ms"] for r in rows}
    for r in rows:
        r["vs_flax"] = r["ms"] / ms[f"flax nnx.RNN {r['label']}"]
        r["vs_jitted"] = r["ms"] / ms[f"jaxseq {r['label']}, jitted"]
    return rows


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.4f}x"


def eager_table(rows: list[dict]) -> list[str]:
    lines = ["| call | first call s | ms per call | compiles per call | / Flax eager | / jitted |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['contender']} | {r['first_s']:.2f} | {r['ms']:.1f} | "
                     f"{r['compiles_per_call']:.1f} | {_times(r['vs_flax'])} | "
                     f"{_times(r['vs_jitted'])} |")
    return lines

