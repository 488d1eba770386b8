"""One training step (forward + backward) of the same recurrent layer in jaxseq, torch and Flax.

Every contender gets the same weights (torch's initialisation, copied), the same ragged batch and
the same loss: ``sum(output at valid positions) + sum(h_n) (+ sum(c_n))``, differentiated with
respect to every parameter and the input. Each ``*_step`` function returns a :class:`Contender`
whose ``step()`` runs one step and waits for the result; ``loss`` is the value of the first step,
so the runner can check that all contenders compute the same thing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from benchmarks.baseline import plain_masked_lstm
from jaxseq import functional
from jaxseq.data import pack_rows
from jaxseq.fused import use_reference_kernel
from torch_ref.packed import run_packed

TORCH_CLASSES = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
#: ``time_chunks`` of the staircase contender (the library default is 1, the plain masked scan).
STAIRCASE_CHUNKS = 6


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A benchmark problem: a torch-style recurrent stack and a ragged batch of lengths."""

    name: str
    mode: str            # "LSTM" or "GRU"
    batch: int
    time: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    seed: int = 0

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def describe(self) -> str:
        bi = " bi" if self.bidirectional else ""
        return (f"{self.mode} B={self.batch} T={self.time} I={self.input_size} H={self.hidden_size} "
                f"L={self.num_layers}{bi}")

    def lengths(self) -> np.ndarray:
        """``U[T/10, T]`` lengths, one row of length ``T``, in random order."""
        rng = np.random.default_rng(self.seed)
        lengths = rng.integers(max(1, self.time // 10), self.time + 1, size=self.batch)
        lengths[0] = self.time
        return rng.permutation(lengths)

    def inputs(self) -> np.ndarray:
        """``x [T, B, I]`` float32, zero at padded positions."""
        rng = np.random.default_rng(self.seed + 1)
        x = rng.standard_normal((self.time, self.batch, self.input_size)).astype(np.float32)
        x[np.arange(self.time)[:, None] >= self.lengths()[None, :]] = 0
        return x

    def valid_flops(self) -> float:
        """FLOPs of one training step counting valid tokens only (matmuls; backward = 2x forward)."""
        gates = {"LSTM": 4, "GRU": 3}[self.mode] * self.hidden_size
        tokens = int(self.lengths().sum())
        total = 0.0
        for layer in range(self.num_layers):
            fan_in = self.input_size if layer == 0 else self.directions * self.hidden_size
            total += self.directions * tokens * 2 * gates * (fan_in + self.hidden_size)
        return 3 * total

    def torch_module(self) -> torch.nn.RNNBase:
        torch.manual_seed(self.seed)
        return TORCH_CLASSES[self.mode](self.input_size, self.hidden_size, self.num_layers,
                                        bidirectional=self.bidirectional)


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
    step: Callable[[], None]
    loss: float
    compile: Optional[CompileTime] = None   # JAX contenders: jit tracing + lowering + compilation
    memory_mb: Optional[float] = None       # XLA temp + output buffers; torch: CUDA peak allocated
    note: str = ""
    exact: bool = True                      # float32 math: its loss must match torch's to ~1e-6
    kind: str = "step"                      # "step", or "floor" (benchmarks.floor: no loss)
    flops: Optional[float] = None           # matmul FLOPs of a step (None: the config's valid ones)


def _block(tree) -> None:
    jax.block_until_ready(tree)


def compile_step(fn: Callable, *args, context=None, compiler_options: Optional[dict] = None
                 ) -> tuple[Callable, CompileTime, Optional[float]]:
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


def torch_params(torch_model: torch.nn.RNNBase) -> dict[str, jax.Array]:
    """The torch module's parameters as torch-named JAX arrays."""
    return {k: jnp.asarray(v.detach().cpu().numpy()) for k, v in torch_model.state_dict().items()}


def _loss_of(mode: str, output: jax.Array, state) -> jax.Array:
    states = state if mode == "LSTM" else (state,)
    return jnp.sum(output) + sum(jnp.sum(s) for s in states)


def jax_step_fn(cfg: BenchConfig, torch_model: torch.nn.RNNBase, run: Callable,
                traced_lengths: bool) -> tuple[Callable, tuple]:
    """``(value_and_grad step, args)`` of ``run(params, x, lengths) -> (output, state)``
    (torch-named params); the lengths are a jit argument or closed-over host values."""
    params = torch_params(torch_model)
    x = jnp.asarray(cfg.inputs())
    host_lengths = cfg.lengths()

    def loss(p, xx, lengths):
        return _loss_of(cfg.mode, *run(p, xx, lengths))

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    if traced_lengths:
        return grad, (params, x, jnp.asarray(host_lengths, jnp.int32))
    return (lambda p, xx: grad(p, xx, host_lengths)), (params, x)


def _jax_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase, run: Callable, traced_lengths: bool,
              name: str, note: str, exact: bool = True, context=None) -> Contender:
    """A jitted training step of ``run`` (see :func:`jax_step_fn`) as a :class:`Contender`."""
    fn, args = jax_step_fn(cfg, torch_model, run, traced_lengths)
    compiled, seconds, mb = compile_step(fn, *args, context=context)
    value, _ = compiled(*args)
    return Contender(name, lambda: _block(compiled(*args)), float(value), seconds, mb, note, exact)


def jaxseq_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase, traced_lengths: bool,
                name: Optional[str] = None, emulate: bool = False, **options) -> Contender:
    """jaxseq under ``jit``. With ``traced_lengths`` the lengths are a jit argument (the plain
    masked scan); otherwise they are concrete (closed over) and, unless ``options`` say otherwise,
    the staircase runs (``time_chunks=STAIRCASE_CHUNKS``). ``options`` (``time_chunks``,
    ``unroll``, ``compute_dtype``, ``forward_mode``, ``input_projection``, ``impl``) go to
    :func:`jaxseq.functional.recurrent`; a ``name`` marks such a variant. ``emulate``: trace
    inside :func:`jaxseq.fused.use_reference_kernel` (``impl="cudnn"`` on a CPU)."""
    if traced_lengths:
        default, note = "jaxseq-traced", "lengths traced under jit: plain masked scan"
    else:
        default = "jaxseq-staircase"
        note = f"concrete lengths, time_chunks={options.setdefault('time_chunks', STAIRCASE_CHUNKS)}"
    run = partial(functional.recurrent, cfg.mode, **options)
    return _jax_step(cfg, torch_model, run, traced_lengths, name or default,
                     note if name is None else "", exact=options.get("compute_dtype") is None,
                     context=use_reference_kernel() if emulate else None)


def packed_rows(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray, int, float]:
    """The config's sequences packed end to end into rows of ``T`` steps (best-fit decreasing).

    Returns ``(x [R, T, I], segment_ids [R, T], max_segments, density)``: the same valid tokens
    as the padded batch, in ``R ~ tokens / T`` rows.
    """
    lengths, x_tm = cfg.lengths(), cfg.inputs()
    packing = pack_rows(lengths, cfg.time)
    seqs = [x_tm[:n, b] for b, n in enumerate(lengths)]
    return (packing.pack(seqs), packing.segment_ids(), packing.max_segments, packing.density)


def packed_step_fn(cfg: BenchConfig, torch_model: torch.nn.RNNBase, **options
                   ) -> tuple[Callable, tuple, str]:
    """``(value_and_grad step, args, note)`` of jaxseq on the config's packed rows (traced
    ``segment_ids``); ``options`` go to :func:`jaxseq.functional.recurrent`."""
    params = torch_params(torch_model)
    x, ids, max_segments, density = packed_rows(cfg)

    def loss(p, xx, seg):
        output, state = functional.recurrent(cfg.mode, p, xx, segment_ids=seg,
                                             max_segments=max_segments, batch_first=True,
                                             **options)
        return _loss_of(cfg.mode, output, state)   # absent segments hold zero states

    note = f"{x.shape[0]} rows x {cfg.time}, density {100 * density:.1f}%, traced segment_ids"
    return (jax.value_and_grad(loss, argnums=(0, 1)), (params, jnp.asarray(x), jnp.asarray(ids)),
            note)


def jaxseq_packed_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase,
                       name: str = "jaxseq-packed", **options) -> Contender:
    """jaxseq on packed rows: the same sequences as the padded batch, several per row, with traced
    ``segment_ids`` (one compilation for every batch of this shape). The loss is the padded
    contenders': valid outputs plus the final states of every sequence. ``options`` go to
    :func:`jaxseq.functional.recurrent` (e.g. ``input_projection``, ``forward_mode``)."""
    fn, args, note = packed_step_fn(cfg, torch_model, **options)
    compiled, seconds, mb = compile_step(fn, *args)
    value, _ = compiled(*args)
    return Contender(name, lambda: _block(compiled(*args)), float(value), seconds, mb, note)


def baseline_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase) -> Contender:
    """:func:`benchmarks.baseline.plain_masked_lstm` (single-layer unidirectional LSTM only)."""
    return _jax_step(cfg, torch_model, plain_masked_lstm, False, "plain masked scan",
                     "v0: autodiff of lax.scan, hoisted input GEMM")


def mixed_precision_errors(cfg: BenchConfig, compute_dtype=jnp.bfloat16) -> dict[str, float]:
    """Relative errors (``max |mixed - f32| / max |f32|``) of jaxseq with ``compute_dtype`` matmuls
    against float32, for the outputs, final states, the input gradient and the worst parameter
    gradient of this benchmark's training step."""
    params = torch_params(cfg.torch_module())
    x, lengths = jnp.asarray(cfg.inputs()), cfg.lengths()

    @partial(jax.jit, static_argnums=2)
    def outputs_and_grads(p, xx, dtype):
        def run(p, xx):
            return functional.recurrent(cfg.mode, p, xx, lengths, compute_dtype=dtype)
        result = run(p, xx)
        grads = jax.grad(lambda p, xx: _loss_of(cfg.mode, *run(p, xx)), argnums=(0, 1))(p, xx)
        return result, grads

    (out32, st32), (gp32, gx32) = outputs_and_grads(params, x, None)
    (out, st), (gp, gx) = outputs_and_grads(params, x, compute_dtype)
    rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))  # noqa: E731
    states = ("h_n", "c_n") if cfg.mode == "LSTM" else ("h_n",)
    errors = {"output": rel(out, out32)}
    errors.update({n: rel(a, b) for n, a, b in zip(states, jax.tree.leaves(st), jax.tree.leaves(st32))})
    errors["grad_x"] = rel(gx, gx32)
    errors["grad_params"] = max(rel(gp[k], gp32[k]) for k in gp32)
    return errors


def torch_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase, device: str) -> Contender:
    """torch ``pack_padded_sequence(enforce_sorted=False)`` -> ``nn.LSTM/GRU`` -> ``pad_packed``."""
    model = torch_model.to(device)
    x = torch.tensor(cfg.inputs(), device=device, requires_grad=True)
    lengths = torch.as_tensor(cfg.lengths(), dtype=torch.int64)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> float:
        for p in model.parameters():
            p.grad = None
        x.grad = None
        out, state = run_packed(model, x, lengths)
        states = state if cfg.mode == "LSTM" else (state,)
        total = out.sum() + sum(s.sum() for s in states)
        total.backward()
        sync()
        return float(total.detach())

    memory_mb = None
    if device == "cuda":
        step()
        torch.cuda.reset_peak_memory_stats()
    value = step()
    if device == "cuda":
        memory_mb = torch.cuda.max_memory_allocated() / 2**20
    note = "cuDNN" if device == "cuda" else f"{torch.get_num_threads()} threads"
    return Contender("torch-packed", step, value, memory_mb=memory_mb, note=note)


class _FlaxStack(nnx.Module):
    """``nnx.RNN(nnx.OptimizedLSTMCell)`` layers (``nnx.Bidirectional`` pairs when bidirectional)."""

    def __init__(self, cfg: BenchConfig):
        rngs = nnx.Rngs(cfg.seed)
        layers = []
        for layer in range(cfg.num_layers):
            fan_in = cfg.input_size if layer == 0 else cfg.directions * cfg.hidden_size
            rnns = [nnx.RNN(nnx.OptimizedLSTMCell(fan_in, cfg.hidden_size, rngs=rngs),
                            time_major=True, return_carry=True, rngs=False)
                    for _ in range(cfg.directions)]
            layers.append(nnx.Bidirectional(*rnns, time_major=True, return_carry=True, rngs=False)
                          if cfg.bidirectional else rnns[0])
        self.layers = nnx.List(layers)
        self.hidden_size = cfg.hidden_size
        self.bidirectional = cfg.bidirectional

    def cells(self) -> list[nnx.OptimizedLSTMCell]:
        """Cells in torch's order (``layer * D + direction``)."""
        if not self.bidirectional:
            return [rnn.cell for rnn in self.layers]
        return [rnn.cell for pair in self.layers for rnn in (pair.forward_rnn, pair.backward_rnn)]

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, list]:
        """``x [T, B, I] -> (output [T, B, D*H] (padding not zeroed), final carries)``."""
        zero = jnp.zeros((x.shape[1], self.hidden_size), x.dtype)
        carry0 = ((zero, zero), (zero, zero)) if self.bidirectional else (zero, zero)
        finals = []
        for layer in self.layers:
            carry, x = layer(x, seq_lengths=lengths, initial_carry=carry0)
            finals.append(carry)
        return x, finals


def flax_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase) -> Contender:
    """Flax ``nnx.RNN(nnx.OptimizedLSTMCell)`` with ``seq_lengths`` (LSTM only), under ``jit``.

    Weights map from torch as ``dense_i.kernel = W_ih.T``, ``dense_h.kernel = W_hh.T``,
    ``dense_h.bias = b_ih + b_hh``. Flax does not zero padded outputs, so the loss masks them.
    """
    model = _FlaxStack(cfg)
    sd = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    suffixes = [f"_l{layer}{rev}" for layer in range(cfg.num_layers)
                for rev in ["", "_reverse"][:cfg.directions]]
    for cell, sfx in zip(model.cells(), suffixes):
        cell.dense_i.kernel[...] = jnp.asarray(sd["weight_ih" + sfx].T)
        cell.dense_h.kernel[...] = jnp.asarray(sd["weight_hh" + sfx].T)
        cell.dense_h.bias[...] = jnp.asarray(sd["bias_ih" + sfx] + sd["bias_hh" + sfx])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.asarray(cfg.inputs())
    lengths = jnp.asarray(cfg.lengths(), jnp.int32)
    valid = (jnp.arange(cfg.time)[:, None] < lengths[None, :])[..., None]

    def loss(p, xx, other):
        output, finals = nnx.merge(graphdef, p, other)(xx, lengths)
        return jnp.sum(jnp.where(valid, output, 0)) + sum(jnp.sum(c) for c in jax.tree.leaves(finals))

    args = (params, x, rest)
    compiled, seconds, mb = compile_step(jax.value_and_grad(loss, argnums=(0, 1)), *args)
    value, _ = compiled(*args)
    return Contender("flax-nnx.RNN", lambda: _block(compiled(*args)), float(value), seconds, mb,
                     "OptimizedLSTMCell, seq_lengths")


def matmul_gflops(n: int, device: str, repeats: int = 5) -> tuple[float, float]:
    """Large square float32 matmul throughput ``(jax, torch)`` in GFLOP/s (median of ``repeats``)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ja = jnp.asarray(a)
    mm = jax.jit(jnp.matmul)
    ta = torch.tensor(a, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runs = {"jax": lambda: _block(mm(ja, ja)), "torch": lambda: (torch.mm(ta, ta), sync())}
    times = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return tuple(2 * n**3 / np.median(times[k]) / 1e9 for k in ("jax", "torch"))
