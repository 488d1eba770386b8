"""One training step of the same recurrent layer in jaxseq, torch and Flax.

Every contender gets the same weights (torch's initialisation, copied), the same ragged batch and
the same objective, set by the config (:mod:`benchmarks.configs`):

* a :class:`~benchmarks.configs.BenchConfig`: ``sum(output at valid positions) + sum(h_n)
  (+ sum(c_n))`` from zero initial states, differentiated with respect to every parameter and the
  input;
* a :class:`~benchmarks.configs.FastRNNsConfig` (torch's ``benchmarks/fastrnns``): ``sum(g *
  output)`` for a fixed random ``g`` from random initial states, differentiated with respect to
  the parameters only (what torch's ``output.backward(g)`` computes there).

Each ``*_step`` function returns a :class:`~benchmarks.timing.Contender` whose ``step()`` runs one
step and waits for the result; ``loss`` is the value of the first step, so the runner can check
that all contenders compute the same thing.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from benchmarks.baseline import plain_masked_lstm
from benchmarks.configs import BenchConfig, FastRNNsConfig
from benchmarks.timing import Contender, block, compile_step
from jaxseq import functional
from jaxseq.data import RowPacking, pack_rows
from jaxseq.fused import use_reference_kernel
from torch_ref.packed import run_packed

#: ``time_chunks`` of the staircase contender (the library default is 1, the plain masked scan).
STAIRCASE_CHUNKS = 6


def supports_remat() -> bool:
    """Whether the installed jaxseq takes ``remat=`` (``jaxseq.functional.recurrent``)."""
    return "remat" in inspect.signature(functional.recurrent).parameters


def torch_params(torch_model: torch.nn.RNNBase) -> dict[str, jax.Array]:
    """The torch module's parameters as torch-named JAX arrays."""
    return {k: jnp.asarray(v.detach().cpu().numpy()) for k, v in torch_model.state_dict().items()}


# ------------------------------------------------------------------------------------------
# The objective of a step, per kind of config
# ------------------------------------------------------------------------------------------
def fastrnns(cfg: BenchConfig) -> bool:
    """Whether ``cfg`` is one of torch's fastrnns problems (random states and output gradient,
    parameter gradients only)."""
    return isinstance(cfg, FastRNNsConfig)


def initial_states(cfg: BenchConfig) -> Optional[tuple[jax.Array, ...]]:
    """``(h_0, c_0)`` ``[D*L, B, H]`` for a fastrnns problem, ``None`` (zeros) otherwise."""
    if not isinstance(cfg, FastRNNsConfig):
        return None
    states = cfg.states()
    return tuple(jnp.asarray(s) for s in (states if cfg.mode == "LSTM" else states[:1]))


def objective(cfg: BenchConfig, output: jax.Array, state: Any, output_grad: jax.Array
               ) -> jax.Array:
    """The scalar a step differentiates (``output`` time-major ``[T, B, ·]``, exactly zero at
    padding)."""
    if isinstance(cfg, FastRNNsConfig):
        return jnp.sum(output * output_grad)
    states = state if cfg.mode == "LSTM" else (state,)
    return jnp.sum(output) + sum(jnp.sum(s) for s in states)


def _output_grad(cfg: BenchConfig) -> jax.Array:
    return jnp.asarray(cfg.output_grad()) if isinstance(cfg, FastRNNsConfig) else jnp.zeros(())


def _argnums(cfg: BenchConfig) -> Any:
    """Differentiate the parameters (and the input where the config says so)."""
    return (0, 1) if cfg.input_grad else 0


# ------------------------------------------------------------------------------------------
# jaxseq: padded (traced lengths or the staircase) and packed rows
# ------------------------------------------------------------------------------------------
def jax_step_fn(cfg: BenchConfig, torch_model: torch.nn.RNNBase, run: Callable,
                traced_lengths: bool) -> tuple[Callable, tuple]:
    """``(value_and_grad step, args)`` of ``run(params, x, lengths, hx) -> (output, state)``
    (torch-named params); the lengths are a jit argument or closed-over host values."""
    params = torch_params(torch_model)
    x = jnp.asarray(cfg.inputs())
    host_lengths = cfg.lengths()
    hx, g = initial_states(cfg), _output_grad(cfg)

    def loss(p, xx, lengths, h, gg):
        return objective(cfg, *run(p, xx, lengths, h), gg)

    grad = jax.value_and_grad(loss, argnums=_argnums(cfg))
    if traced_lengths:
        return grad, (params, x, jnp.asarray(host_lengths, jnp.int32), hx, g)
    return (lambda p, xx, h, gg: grad(p, xx, host_lengths, h, gg)), (params, x, hx, g)


def _jax_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase, run: Callable, traced_lengths: bool,
              name: str, note: str, exact: bool = True, context: Any = None) -> Contender:
    """A jitted training step of ``run`` (see :func:`jax_step_fn`) as a :class:`Contender`."""
    fn, args = jax_step_fn(cfg, torch_model, run, traced_lengths)
    compiled, seconds, mb = compile_step(fn, *args, context=context)
    value, _ = compiled(*args)
    return Contender(name, lambda: block(compiled(*args)), float(value), seconds, mb, note, exact)


def jaxseq_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase, traced_lengths: bool,
                name: Optional[str] = None, emulate: bool = False, **options: Any) -> Contender:
    """jaxseq under ``jit``. With ``traced_lengths`` the lengths are a jit argument (the plain
    masked scan); otherwise they are concrete (closed over) and, unless ``options`` say otherwise,
    the staircase runs (``time_chunks=STAIRCASE_CHUNKS``). ``options`` (``time_chunks``,
    ``unroll``, ``compute_dtype``, ``forward_mode``, ``input_projection``, ``impl``, ``remat``) go
    to :func:`jaxseq.functional.recurrent`; a ``name`` marks such a variant. ``emulate``: trace
    inside :func:`jaxseq.fused.use_reference_kernel` (``impl="cudnn"`` on a CPU)."""
    if traced_lengths:
        default, note = "jaxseq-traced", "lengths traced under jit: plain masked scan"
    else:
        default = "jaxseq-staircase"
        note = f"concrete lengths, time_chunks={options.setdefault('time_chunks', STAIRCASE_CHUNKS)}"

    def run(p, xx, lengths, hx):
        return functional.recurrent(cfg.mode, p, xx, lengths, hx, **options)

    return _jax_step(cfg, torch_model, run, traced_lengths, name or default,
                     note if name is None else "", exact=options.get("compute_dtype") is None,
                     context=use_reference_kernel() if emulate else None)


def packing(cfg: BenchConfig) -> RowPacking:
    """The config's sequences packed end to end into rows of ``T`` steps (best-fit decreasing)."""
    return pack_rows(cfg.lengths(), cfg.padded_time)


def packed_rows(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray, int, float]:
    """``(x [R, T, I], segment_ids [R, T], max_segments, density)``: the same valid tokens as the
    padded batch, in ``R ~ tokens / T`` rows."""
    lengths, x_tm, pack = cfg.lengths(), cfg.inputs(), packing(cfg)
    seqs = [x_tm[:n, b] for b, n in enumerate(lengths)]
    return pack.pack(seqs), pack.segment_ids(), pack.max_segments, pack.density


def _packed_extras(cfg: BenchConfig) -> tuple[Any, jax.Array]:
    """Per-segment initial states ``[D*L, R, S, H]`` and the output gradient in packed rows
    ``[R, T, ·]`` (fastrnns problems; ``(None, 0)`` otherwise)."""
    if not isinstance(cfg, FastRNNsConfig):
        return None, jnp.zeros(())
    pack, lengths = packing(cfg), cfg.lengths()
    states = tuple(jnp.asarray(np.moveaxis(pack.pack_per_sequence(np.moveaxis(s, 1, 0)), 2, 0))
                   for s in cfg.states())
    g = cfg.output_grad()
    return states, jnp.asarray(pack.pack([g[:n, b] for b, n in enumerate(lengths)]))


def packed_step_fn(cfg: BenchConfig, torch_model: torch.nn.RNNBase, **options: Any
                   ) -> tuple[Callable, tuple, str]:
    """``(value_and_grad step, args, note)`` of jaxseq on the config's packed rows (traced
    ``segment_ids``); ``options`` go to :func:`jaxseq.functional.recurrent`."""
    params = torch_params(torch_model)
    x, ids, max_segments, density = packed_rows(cfg)
    hx, g = _packed_extras(cfg)

    def loss(p, xx, seg, h, gg):
        output, state = functional.recurrent(cfg.mode, p, xx, hx=h, segment_ids=seg,
                                             max_segments=max_segments, batch_first=True,
                                             **options)
        # the padded contenders' objective: absent segments hold zero (or unused) states
        return objective(cfg, jnp.swapaxes(output, 0, 1), state,
                          gg if g.ndim == 0 else jnp.swapaxes(gg, 0, 1))

    note = f"{x.shape[0]} rows x {x.shape[1]}, density {100 * density:.1f}%, traced segment_ids"
    return (jax.value_and_grad(loss, argnums=_argnums(cfg)),
            (params, jnp.asarray(x), jnp.asarray(ids), hx, g), note)


def jaxseq_packed_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase,
                       name: str = "jaxseq-packed", **options: Any) -> Contender:
    """jaxseq on packed rows: the same sequences as the padded batch, several per row, with traced
    ``segment_ids`` (one compilation for every batch of this shape) and the padded contenders'
    objective. ``options`` go to :func:`jaxseq.functional.recurrent` (e.g.
    ``input_projection``, ``forward_mode``)."""
    fn, args, note = packed_step_fn(cfg, torch_model, **options)
    compiled, seconds, mb = compile_step(fn, *args)
    value, _ = compiled(*args)
    return Contender(name, lambda: block(compiled(*args)), float(value), seconds, mb, note)


def baseline_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase) -> Contender:
    """:func:`benchmarks.baseline.plain_masked_lstm` (single-layer unidirectional LSTM only)."""
    def run(p, xx, lengths, hx):
        return plain_masked_lstm(p, xx, lengths)

    return _jax_step(cfg, torch_model, run, False, "plain masked scan",
                     "v0: autodiff of lax.scan, hoisted input GEMM")


def mixed_precision_errors(cfg: BenchConfig, compute_dtype: Any = jnp.bfloat16) -> dict[str, float]:
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
        grads = jax.grad(lambda p, xx: objective(cfg, *run(p, xx), jnp.zeros(())),
                         argnums=(0, 1))(p, xx)
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


# ------------------------------------------------------------------------------------------
# torch
# ------------------------------------------------------------------------------------------
def torch_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase, device: str) -> Contender:
    """torch as the config's problem runs it: ``pack_padded_sequence(enforce_sorted=False)`` ->
    ``nn.LSTM/GRU`` -> ``pad_packed_sequence`` (main configs); fastrnns ``vl_py``:
    ``pack_sequence`` of the list of sequences, dense: the module on ``[T, B, I]`` directly
    (oneDNN's fused LSTM on CPU, cuDNN on CUDA)."""
    if isinstance(cfg, FastRNNsConfig):
        return _torch_fastrnns_step(cfg, torch_model, device)
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

    return _torch_contender(step, device, "")


def _torch_fastrnns_step(cfg: FastRNNsConfig, torch_model: torch.nn.RNNBase,
                         device: str) -> Contender:
    """torch's ``vl_py`` / ``cudnn`` (dense) model of ``benchmarks/fastrnns/factory.py``."""
    rnn_utils = torch.nn.utils.rnn
    model = torch_model.to(device)
    tensor = partial(torch.tensor, device=device)
    x, g = tensor(cfg.inputs()), tensor(cfg.output_grad())
    hx = tuple(tensor(s) for s in (cfg.states() if cfg.mode == "LSTM" else cfg.states()[:1]))
    hidden = hx if cfg.mode == "LSTM" else hx[0]
    sequences = [x[:n, b] for b, n in enumerate(cfg.lengths().tolist())]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward() -> torch.Tensor:
        if not cfg.varlen:
            return model(x, hidden)[0]
        packed = rnn_utils.pack_sequence(sequences, enforce_sorted=False)
        return rnn_utils.pad_packed_sequence(model(packed, hidden)[0])[0]

    def step() -> float:
        for p in model.parameters():
            p.grad = None
        out = forward()
        out.backward(g)
        sync()
        return float((out.detach() * g).sum())

    kind = "pack_sequence -> nn.LSTM -> pad_packed_sequence" if cfg.varlen else "dense nn.LSTM"
    return _torch_contender(step, device, kind)


def _torch_contender(step: Callable[[], float], device: str, note: str) -> Contender:
    memory_mb = None
    if device == "cuda":
        step()
        torch.cuda.reset_peak_memory_stats()
    value = step()
    if device == "cuda":
        memory_mb = torch.cuda.max_memory_allocated() / 2**20
    where = "cuDNN" if device == "cuda" else f"{torch.get_num_threads()} threads"
    return Contender("torch-packed", step, value, memory_mb=memory_mb,
                     note=f"{note}, {where}" if note else where)


# ------------------------------------------------------------------------------------------
# Flax
# ------------------------------------------------------------------------------------------
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

    def __call__(self, x: jax.Array, lengths: jax.Array, hx: Optional[tuple] = None
                 ) -> tuple[jax.Array, list]:
        """``x [T, B, I]``, torch's ``hx = (h_0, c_0)`` or zeros -> ``(output [T, B, D*H]``
        (padding not zeroed), final carries)."""
        D = 2 if self.bidirectional else 1
        finals = []
        for layer, rnn in enumerate(self.layers):
            if hx is None:
                zero = jnp.zeros((x.shape[1], self.hidden_size), x.dtype)
                carries = [(zero, zero)] * D
            else:      # Flax's carry is (c, h)
                carries = [(hx[1][layer * D + d], hx[0][layer * D + d]) for d in range(D)]
            carry0 = tuple(carries) if self.bidirectional else carries[0]
            carry, x = rnn(x, seq_lengths=lengths, initial_carry=carry0)
            finals.append(carry)
        return x, finals


def flax_step(cfg: BenchConfig, torch_model: torch.nn.RNNBase) -> Contender:
    """Flax ``nnx.RNN(nnx.OptimizedLSTMCell)`` with ``seq_lengths`` (LSTM only), under ``jit``.

    Weights map from torch as ``dense_i.kernel = W_ih.T``, ``dense_h.kernel = W_hh.T``,
    ``dense_h.bias = b_ih + b_hh``. Flax does not zero padded outputs, so the objective masks them.
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
    valid = (jnp.arange(x.shape[0])[:, None] < lengths[None, :])[..., None]
    hx, g = initial_states(cfg), _output_grad(cfg)

    def loss(p, xx, other, h, gg):
        output, finals = nnx.merge(graphdef, p, other)(xx, lengths, h)
        output = jnp.where(valid, output, 0)
        if fastrnns(cfg):
            return jnp.sum(output * gg)
        return jnp.sum(output) + sum(jnp.sum(c) for c in jax.tree.leaves(finals))

    args = (params, x, rest, hx, g)
    compiled, seconds, mb = compile_step(jax.value_and_grad(loss, argnums=_argnums(cfg)), *args)
    value, _ = compiled(*args)
    return Contender("flax-nnx.RNN", lambda: block(compiled(*args)), float(value), seconds, mb,
                     "OptimizedLSTMCell, seq_lengths")
