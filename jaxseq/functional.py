"""Pure, jit-able recurrent stacks: ``(params, x, lengths, hx) -> (output, state)``.

These are the functions the :mod:`jaxseq` NNX modules wrap; Linen, Equinox or plain-JAX users can
call them directly. ``params`` is a flat dict keyed by torch names (``weight_ih_l0``,
``bias_hh_l1_reverse``, ``weight_hr_l0``...; see :mod:`jaxseq.layout`), so a torch ``state_dict``
converted with ``{k: jnp.asarray(v.numpy())}`` can be used as is. The structure (layers,
directions, bias, projection) is read from the keys.

Semantics are those of torch's ``nn.LSTM/GRU/RNN`` on a ``PackedSequence`` built with
``pack_padded_sequence(x, lengths, enforce_sorted=False)`` and unpacked with
``pad_packed_sequence(total_length=T)``:

* ``output [T, B, D*H_out]`` (``[B, T, ·]`` with ``batch_first``) is exactly 0 at ``t >= lengths[b]``;
* ``h_n [D*L, B, H_out]`` (and ``c_n [D*L, B, H]``), index ``layer*D + direction``, hold each row's
  state after its own last valid step (forward) or after reading ``lengths[b]-1 .. 0`` (reverse);
* rows with ``lengths[b] == 0`` (which torch rejects) output only padding and return ``hx``;
* padded input content never matters: it is replaced by 0 with ``jnp.where`` before use, so NaN or
  inf there reaches no output and no gradient (the input gradient is exactly 0 there).

Cost of a call: every entry point validates its arguments in Python (concrete values are checked
on the host, before any computation) and then runs one compiled function, cached per shapes,
dtypes and static options. Called outside ``jit`` (eagerly), a layer therefore compiles once for a
given batch shape and never again for new lengths or new values; inside ``jit`` the cached
function is traced into the caller's program.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxseq import functional as F, init
  >>> params = init.torch_default(jax.random.key(0), "LSTM", input_size=3, hidden_size=5)
  >>> x = jnp.ones((4, 2, 3))                                # [T=4, B=2, I=3]
  >>> out, (h_n, c_n) = F.lstm(params, x, lengths=jnp.array([4, 2]))
  >>> out.shape, h_n.shape, bool((out[2:, 1] == 0).all())
  ((4, 2, 5), (1, 2, 5), True)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxseq.fused import KERNELS, fused_lstm, resolve_impl
from jaxseq.gates import CELLS
from jaxseq.layout import Structure, infer_cell, infer_structure
from jaxseq.scan import (
    ScanOptions,
    Staircase,
    layer_weights,
    run_layer,
    run_segment_layer,
    scan_options,
    staircase,
)
from jaxseq.segments import check_segment_ids, segment_layout
from jaxseq.validation import check_floating, check_lengths, is_concrete, rejects_torch

Params = Mapping[str, jax.Array]

#: Default ``time_chunks``: ``1``, the plain masked scan. A staircase schedule runs only when
#: asked for (``time_chunks > 1`` with concrete lengths, or a :class:`~jaxseq.scan.Staircase`).
DEFAULT_TIME_CHUNKS = 1


class Masks(NamedTuple):
    """The per-layer dropout multipliers of one call (``None``: that dropout is off).

    ``dropout``: ``L-1`` masks on the outputs of layers ``0..L-2``; ``state``: ``L`` masks on
    ``h_{t-1}`` where it enters ``W_hh``; ``weight_hh``: ``L`` masks on ``W_hh``. Entries of a list
    may be ``None`` too. Shapes: see :func:`recurrent`.
    """

    dropout: Optional[list] = None
    state: Optional[list] = None
    weight_hh: Optional[list] = None


class _Call(NamedTuple):
    """The static part of one :func:`recurrent` call: the jitted core's cache key."""

    mode: str
    batch_first: bool
    unbatched: bool
    max_segments: Optional[int]     # packed rows (segment_ids) when not None
    plan: Optional[Staircase]
    options: ScanOptions
    impl: str                       # "scan" or a fused kernel (jaxseq.fused.KERNELS)


def _state_shapes(s: Structure, batch: int, segments: Optional[int] = None) -> list[tuple[int, ...]]:
    """``h`` (and ``c``) shapes: ``[D*L, B, ·]``, or ``[D*L, B, S, ·]`` for packed rows."""
    lead = (s.num_directions * s.num_layers, batch) + (() if segments is None else (segments,))
    shapes = [lead + (s.output_size,)]
    if s.mode == "LSTM":
        shapes.append(lead + (s.hidden_size,))
    return shapes


def _describe(value: Any) -> str:
    """Short description of a user value for error messages."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    if hasattr(value, "shape"):
        return f"a single array of shape {tuple(value.shape)}"
    return type(value).__name__


def _check_input(s: Structure, x: Any, batch_first: bool = False) -> None:
    if not hasattr(x, "ndim") or x.ndim not in (2, 3):
        got = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"Expected input of shape [T, B, input_size] (or [B, T, input_size] with "
                         f"batch_first, or unbatched [T, input_size]), got {got}")
    if x.shape[-1] != s.input_size:
        raise ValueError(f"input.size(-1) must be equal to input_size. Expected {s.input_size}, "
                         f"got {x.shape[-1]}")
    check_floating(x.dtype, "input")
    if x.shape[1 if batch_first and x.ndim == 3 else 0] == 0:   # torch raises too; B = 0 is fine
        raise ValueError(f"Expected sequence length to be larger than 0 in RNN, got input of shape "
                         f"{tuple(x.shape)}")


def _check_state(s: Structure, hx: Any, batch: int, unbatched: bool,
                 segments: Optional[int] = None) -> list[Any]:
    """Validate ``hx`` and return it as a list ``[h0]`` or ``[h0, c0]`` (in the caller's layout)."""
    names = ["h_0", "c_0"] if s.mode == "LSTM" else ["h_0"]
    if s.mode == "LSTM":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"LSTM expects hx=(h_0, c_0), got {_describe(hx)}")
        parts = list(hx)
    else:
        if isinstance(hx, (tuple, list)):
            raise TypeError(f"{s.mode} expects hx=h_0 (a single array), got {_describe(hx)}")
        parts = [hx]
    for name, part, want in zip(names, parts, _state_shapes(s, batch, segments)):
        want = want[:1] + want[2:] if unbatched else want
        got = tuple(getattr(part, "shape", ()))
        if got != want:
            raise ValueError(f"Expected hidden size {want} for {name}, got {got}")
        check_floating(part.dtype, name)
    return parts


def _per_layer(masks: Optional[Sequence[Any]], count: int, what: str) -> Optional[list[Any]]:
    if masks is None:
        return None
    masks = list(masks)
    if len(masks) != count:
        per = "one per layer boundary" if what == "dropout_masks" else "one per layer"
        raise ValueError(f"{what}: expected {count} masks ({per}), "
                         f"got {len(masks)}")
    return masks


def _check_broadcast(masks: Optional[Sequence[Any]], target: tuple[int, ...], what: str,
                     layout: str, reshape: Any = None) -> None:
    """Raise ``ValueError`` unless every non-``None`` mask broadcasts to ``target`` (no growth).

    ``reshape`` maps a mask's shape to the layout of ``target`` first (no array is touched).
    """
    for i, mask in enumerate(masks or ()):
        if mask is None:
            continue
        shape = tuple(jnp.shape(mask))
        shape = shape if reshape is None else reshape(shape)
        try:
            fits = np.broadcast_shapes(shape, target) == target
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{what}[{i}] has shape {shape}, which does not broadcast to {target} "
                             f"({layout})")


def _time_major_shape(shape: tuple[int, ...], unbatched: bool, batch_first: bool) -> tuple[int, ...]:
    """The shape :func:`_time_major_mask` gives a mask of ``shape``."""
    if unbatched:
        return shape[:1] + (1,) + shape[1:] if len(shape) == 2 else shape
    if batch_first and len(shape) == 3:
        return (shape[1], shape[0], shape[2])
    return shape


def _time_major_mask(mask: Any, unbatched: bool, batch_first: bool) -> Any:
    """An inter-layer dropout mask in the layout of the internal ``[T, B, F]`` layer output."""
    if mask is None:
        return None
    if unbatched:  # a mask for the unbatched output [T, F] gets the batch axis x got
        return jnp.expand_dims(mask, -2) if jnp.ndim(mask) == 2 else mask
    if batch_first and jnp.ndim(mask) == 3:
        return jnp.swapaxes(mask, 0, 1)
    return mask


def _schedule(time_chunks: Union[int, Staircase], host_lengths: Optional[np.ndarray], T: int,
              B: int) -> Optional[Staircase]:
    """The staircase to run (``None``: plain masked scan over all rows and steps).

    ``host_lengths`` are the validated lengths when concrete, ``None`` when traced or absent.
    """
    if isinstance(time_chunks, Staircase):
        if host_lengths is not None and not time_chunks.covers(host_lengths):
            raise ValueError(f"time_chunks {time_chunks} does not cover the given lengths (every row "
                             "active at a chunk's start must be among its rows)")
        return time_chunks
    if isinstance(time_chunks, bool) or not isinstance(time_chunks, int) or time_chunks < 1:
        raise ValueError(f"time_chunks must be an integer >= 1 or a Staircase, got {time_chunks!r}")
    if time_chunks == 1 or host_lengths is None:
        return None
    plan = staircase(host_lengths, T, time_chunks)
    return None if plan.padded_steps() == B * T else plan


@rejects_torch
def recurrent(mode: str, params: Params, x: jax.Array, lengths: Optional[ArrayLike] = None,
              hx: Any = None, *, segment_ids: Optional[ArrayLike] = None,
              max_segments: Optional[int] = None, batch_first: bool = False,
              dropout_masks: Optional[Sequence[Optional[jax.Array]]] = None,
              state_masks: Optional[Sequence[Optional[jax.Array]]] = None,
              weight_hh_masks: Optional[Sequence[Optional[jax.Array]]] = None,
              unroll: int = 1, time_chunks: Union[int, Staircase] = DEFAULT_TIME_CHUNKS,
              compute_dtype: Optional[Any] = None, forward_mode: bool = False,
              input_projection: Optional[str] = None, impl: str = "scan",
              remat: Optional[int] = None) -> tuple[jax.Array, Any]:
    """Run a torch-compatible recurrent stack over a padded batch, or over packed rows.

    Args:
      mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"`` (torch's names).
      params: torch-named parameters (see :mod:`jaxseq.layout`); their dtype is the compute dtype.
      x: ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), or unbatched ``[T, I]``.
      lengths: integer ``[B]`` with ``0 <= lengths[b] <= T``; ``None`` means all ``T``.
      hx: ``(h_0 [D*L, B, H_out], c_0 [D*L, B, H])`` for LSTM, ``h_0`` otherwise; zeros if ``None``.
        With ``segment_ids``: one state per segment, ``[D*L, B, S, ·]``.
      segment_ids: packed rows (see :mod:`jaxseq.segments`): integer ``[T, B]`` (``[B, T]`` with
        ``batch_first``; ``[T]`` for unbatched ``x``) holding segments ``1..k`` as contiguous runs
        from ``t = 0``, then ``0`` (padding). Every segment is an independent sequence: it starts
        from its own initial state and the reverse direction reads it backwards within itself.
        Mutually exclusive with ``lengths``.
      max_segments: ``S`` (a static int) with ``segment_ids``: ``h_n`` is ``[D*L, B, S, H_out]``
        (``c_n`` ``[D*L, B, S, H]``), entry ``[:, b, s-1]`` the state of segment ``s`` of row ``b``
        after its own last step (reverse direction: after its first). Segment numbers a row does
        not hold keep their initial state. Default: the largest id (concrete ids only).
      batch_first: layout of ``x``, ``output`` (and ``segment_ids``).
      dropout_masks: ``L-1`` multipliers (already scaled by ``1/(1-p)``), each broadcastable to the
        output of layers ``0..L-2`` (``[T, B, D*H_out]``, or ``[B, T, ·]`` with ``batch_first``):
        torch's inter-layer ``dropout`` when drawn element-wise, locked dropout when constant in time.
      state_masks: ``L`` multipliers broadcastable to ``[D, B, H_out]`` (``[D, B, S, H_out]`` with
        ``segment_ids``: one per segment) applied to ``h_{t-1}`` where it enters ``W_hh`` at every
        step (variational recurrent dropout; the carried state is not masked).
      weight_hh_masks: ``L`` multipliers broadcastable to ``[D, G, H_out]`` applied to ``W_hh`` for the
        whole call (weight drop / DropConnect).
      unroll: ``lax.scan`` unroll factor.
      time_chunks: ``1`` (default) runs the plain masked scan over all ``B * T`` row-steps. An
        integer ``k > 1`` asks for a staircase when ``lengths`` are concrete (host values, not
        traced): rows are sorted by length and time is cut into at most ``k`` chunks, each scanned
        over only the rows still active (:func:`jaxseq.scan.staircase`), so compute follows the
        number of valid tokens, at the price of one compilation per distinct schedule (bucket
        batches by length, :func:`jaxseq.data.bucket_by_length`). A
        :class:`jaxseq.scan.Staircase` built on the host from the batch's lengths may be passed
        instead (a static argument), which also works with traced ``lengths``; it must cover them
        (checked when they are concrete). Results are the same either way. Packed rows are dense
        already: there the setting is ignored.
      compute_dtype: ``None`` (default: matmuls in the parameter dtype, torch's numerics) or a dtype
        for the operands of every matmul, e.g. ``jnp.bfloat16`` (mixed precision: products are
        accumulated in, and the cell math, states, outputs and gradients stay in, the parameter
        dtype). Accuracy against float32 is measured in ``docs/benchmarks.md``.
      forward_mode: ``False`` (default): the backward pass is hand-written, the fastest reverse
        mode (``jax.grad``, ``vjp``, grad of grad, ``vmap``, remat...), but forward-mode AD raises
        JAX's "can't apply forward-mode autodiff (jvp) to a custom_vjp function". ``True``: a
        custom JVP instead, so ``jax.jvp``, ``jacfwd``, ``linearize``, ``hessian`` and
        forward-over-reverse work too; reverse mode is then JAX's transpose of that JVP, which
        costs more (measured in ``docs/benchmarks.md``). Results are the same either way.
      input_projection: where ``x_t @ W_ih`` is computed: ``"in_loop"`` (next to ``h @ W_hh``, at
        every step) or ``"hoisted"`` (one GEMM over all steps before the loop); ``None`` (default):
        the backend's default (:data:`jaxseq.scan.INPUT_PROJECTION_DEFAULTS`). Which is faster
        depends on the machine: :func:`jaxseq.tuning.measure_input_projection` measures it once.
        Results are the same either way (up to float rounding).
      impl: ``"scan"`` (default): the masked scan; ``"cudnn"``: the fused cuDNN LSTM
        (``jax.experimental.rnn.lstm``), raising a ``ValueError`` naming the first condition it
        cannot serve (no CUDA backend, GRU/RNN, ``proj_size``, a dtype other than float32,
        ``compute_dtype``, ``segment_ids``, ``state_masks``, ``forward_mode``, ``remat``) before
        any computation; ``"auto"``: the fused kernel where it applies, the scan elsewhere (always
        the scan on CPU). Same results within float32 tolerance; see :mod:`jaxseq.fused`. Not yet
        verified on GPU hardware (``docs/benchmarks.md``).
      remat: ``None`` (default): the backward pass keeps every step's activations (memory
        ``O(T)`` per layer). An int ``k``: it keeps only the recurrent state before every chunk of
        ``k`` steps and recomputes a chunk's activations just before its gradient, so the saved
        activations grow as ``T/k + k`` instead of ``T``, for one more forward loop of compute.
        ``k`` near ``sqrt(T)`` saves the most, and the saving is flat over a wide range: a
        2-layer BiLSTM (B16, H128) at ``T = 4000`` keeps 0.21x of the default's temporary memory
        for 1.06-1.11x its CPU time with ``k`` 50 to 200 (``docs/benchmarks.md``).
        Results are the same, gradients equal up to float rounding (weight gradients are summed
        chunk by chunk). ``T`` need not be a multiple of ``k``; ``k >= T`` is the default.
        Works with lengths, packed rows, every mask, ``forward_mode`` (each chunk under
        ``jax.checkpoint``), ``vmap`` and ``jit``; calls without a gradient are unaffected.

    Returns:
      ``(output, (h_n, c_n))`` for LSTM, ``(output, h_n)`` otherwise; shapes as in the module docs.

    Raises:
      ValueError: bad shapes, (concrete) lengths or segment ids, or a ``remat`` that is not
        ``None`` or an int ``>= 1``, before any computation.
      TypeError: a bad dtype, before any computation.
    """
    s = infer_structure(mode, params)
    _check_input(s, x, batch_first)
    unbatched = x.ndim == 2
    options = scan_options(unroll=unroll, compute_dtype=compute_dtype, forward_mode=forward_mode,
                           input_projection=input_projection, remat=remat)
    packed = segment_ids is not None
    if packed and lengths is not None:
        raise ValueError("`lengths` and `segment_ids` are mutually exclusive: packed rows take their "
                         "sequence boundaries from `segment_ids`")
    if not packed and max_segments is not None:
        raise ValueError("`max_segments` only applies together with `segment_ids`")
    if unbatched and lengths is not None:
        raise ValueError("`lengths` must be None for unbatched input [T, input_size]")
    T = x.shape[1] if batch_first and not unbatched else x.shape[0]
    B = 1 if unbatched else x.shape[0 if batch_first else 1]
    plan: Optional[Staircase] = None
    if packed:
        if unbatched:
            ids_1d: Any = segment_ids
            if jnp.ndim(ids_1d) != 1:
                raise ValueError(f"`segment_ids` must have shape [T] for unbatched input [T, "
                                 f"input_size], got {jnp.shape(ids_1d)}")
            segment_ids = ids_1d[:, None] if isinstance(ids_1d, jax.Array) else np.asarray(
                ids_1d)[:, None]
        segment_ids, max_segments = check_segment_ids(segment_ids, T, B, max_segments,
                                                      batch_first=batch_first and not unbatched)
        if isinstance(time_chunks, Staircase):
            raise ValueError("a Staircase schedule does not apply to packed rows (`segment_ids`)")
    else:
        host_lengths = None if lengths is None or not is_concrete(lengths) else np.asarray(lengths)
        if lengths is not None:
            lengths = check_lengths(lengths, T, B, batch_first=batch_first)
        plan = _schedule(time_chunks, host_lengths, T, B)
    for name, value in params.items():
        check_floating(value.dtype, f"params[{name!r}]")
    state = None if hx is None else _check_state(s, hx, B, unbatched, max_segments)
    L, D, H_out = s.num_layers, s.num_directions, s.output_size
    masks = Masks(_per_layer(dropout_masks, L - 1, "dropout_masks"),
                  _per_layer(state_masks, L, "state_masks"),
                  _per_layer(weight_hh_masks, L, "weight_hh_masks"))
    _check_broadcast(masks.dropout, (T, B, D * H_out), "dropout_masks",
                     "[T, B, D*H_out], time-major",
                     reshape=partial(_time_major_shape, unbatched=unbatched, batch_first=batch_first))
    if packed:
        _check_broadcast(masks.state, (D, B, max_segments or 0, H_out), "state_masks",
                         "[D, B, S, H_out]")
    else:
        _check_broadcast(masks.state, (D, B, H_out), "state_masks", "[D, B, H_out]")
    _check_broadcast(masks.weight_hh, (D, s.gates * s.hidden_size, H_out), "weight_hh_masks",
                     "[D, G, H_out]")
    kernel = resolve_impl(impl, s, params["weight_ih_l0"].dtype, options, packed=packed,
                          state_masks=any(m is not None for m in masks.state or ()))
    call = _Call(mode, bool(batch_first), unbatched, max_segments if packed else None,
                 plan if kernel == "scan" else None, options, kernel)
    return _recurrent_core(dict(params), x, lengths, state, segment_ids, masks, call=call)


@partial(jax.jit, static_argnames=("call",))
def _recurrent_core(params: Params, x: jax.Array, lengths: Optional[jax.Array],
                    state: Optional[list[jax.Array]], segment_ids: Optional[jax.Array],
                    masks: Masks, *, call: _Call) -> tuple[jax.Array, Any]:
    """The compiled body of :func:`recurrent` (arguments validated there; ``segment_ids`` already
    time-major ``[T, B]``)."""
    s = infer_structure(call.mode, params)
    if call.unbatched:
        x = x[:, None]
        state = None if state is None else [h[:, None] for h in state]
    elif call.batch_first:
        x = jnp.swapaxes(x, 0, 1)
    T, B = x.shape[0], x.shape[1]
    L, D, H_out = s.num_layers, s.num_directions, s.output_size
    dtype = params["weight_ih_l0"].dtype
    zero_init = state is None
    if state is None:   # zeros_like(x): under shard_map the state varies along x's mesh axes too
        state = [jnp.zeros_like(x, dtype, shape=shape)
                 for shape in _state_shapes(s, B, call.max_segments)]
    else:
        state = [h.astype(dtype) for h in state]
    if B == 0:   # an empty batch (an empty shard, a filtered-out batch): torch's empty results
        return _finish(call, jnp.zeros((T, 0, D * H_out), dtype), state)
    segments = None
    if call.max_segments is not None:
        assert segment_ids is not None
        segments = segment_layout(segment_ids, call.max_segments)
        lengths = segments.row_lengths
    elif lengths is None:
        lengths = jnp.full((B,), T, jnp.int32)
    def cast(m: Any) -> Any:       # a mask never changes the compute dtype (nor the kernel's)
        return None if m is None else jnp.asarray(m).astype(dtype)

    drop = [cast(_time_major_mask(m, call.unbatched, call.batch_first))
            for m in masks.dropout or [None] * (L - 1)]
    smasks = [cast(m) for m in masks.state or [None] * L]
    wmasks = [cast(m) for m in masks.weight_hh or [None] * L]
    valid = jnp.arange(T)[:, None] < lengths[None, :]                       # [T, B]
    layer_in = jnp.where(valid[..., None], x.astype(dtype), jnp.zeros((), dtype))
    if call.impl != "scan":
        output, h_n = fused_lstm(params, s, layer_in, lengths, state, drop, wmasks,
                                 KERNELS[call.impl])
        return _finish(call, output, h_n)
    finals = []
    for layer in range(L):
        carry0 = tuple(h[layer * D:(layer + 1) * D] for h in state)
        if segments is not None:
            layer_in, carry = run_segment_layer(call.mode, params, layer, D, layer_in, segments,
                                                carry0, call.options, zero_init=zero_init,
                                                state_mask=smasks[layer],
                                                weight_hh_mask=wmasks[layer])
        else:
            layer_in, carry = run_layer(call.mode, params, layer, D, layer_in, lengths, carry0,
                                        call.options, plan=call.plan, state_mask=smasks[layer],
                                        weight_hh_mask=wmasks[layer])
        finals.append(carry)
        if layer < L - 1 and drop[layer] is not None:
            layer_in = layer_in * drop[layer]
    h_n = [jnp.concatenate([c[i] for c in finals], axis=0) for i in range(len(state))]
    return _finish(call, layer_in, h_n)


def _finish(call: _Call, output: jax.Array, h_n: list[jax.Array]) -> tuple[jax.Array, Any]:
    """Time-major ``output [T, B, ·]`` and states ``[D*L, B, ·]`` in the caller's layout."""
    if call.unbatched:
        output, h_n = output[:, 0], [h[:, 0] for h in h_n]
    elif call.batch_first:
        output = jnp.swapaxes(output, 0, 1)
    return output, (tuple(h_n) if call.mode == "LSTM" else h_n[0])


lstm = partial(recurrent, "LSTM")
lstm.__doc__ = "``recurrent('LSTM', ...)``: returns ``(output, (h_n, c_n))``."
gru = partial(recurrent, "GRU")
gru.__doc__ = "``recurrent('GRU', ...)``: returns ``(output, h_n)``."
rnn_tanh = partial(recurrent, "RNN_TANH")
rnn_tanh.__doc__ = "``recurrent('RNN_TANH', ...)``: returns ``(output, h_n)``."
rnn_relu = partial(recurrent, "RNN_RELU")
rnn_relu.__doc__ = "``recurrent('RNN_RELU', ...)``: returns ``(output, h_n)``."


# --------------------------------------------------------------------------------------------
# One time step: twins of torch.nn.LSTMCell / GRUCell / RNNCell
# --------------------------------------------------------------------------------------------
@rejects_torch
def cell_step(mode: str, params: Params, x: jax.Array, hx: Any = None) -> Any:
    """One step of torch's ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``: ``(x, hx) -> state``.

    The same gate equations and bias folding as the layers (:mod:`jaxseq.gates`,
    :func:`jaxseq.scan.layer_weights`); differentiable in every argument (plain autodiff, so
    forward mode and higher orders work), jit-able, usable inside ``lax.scan``.

    Args:
      mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
      params: torch cell names ``weight_ih [G, I]``, ``weight_hh [G, H]`` and (unless
        ``bias=False``) ``bias_ih [G]``, ``bias_hh [G]``; their dtype is the compute dtype.
      x: ``[B, I]``, or unbatched ``[I]``.
      hx: LSTM ``(h_0, c_0)``, each ``[B, H]`` (``[H]``); GRU/RNN ``h_0``; zeros when ``None``.

    Returns:
      LSTM ``(h_1, c_1)``, GRU/RNN ``h_1``, in the layout of ``x``.

    Raises:
      ValueError / TypeError: bad shapes, dtypes or parameter names, before any computation.

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq import functional as F, init
    >>> p = {k[:-3]: v for k, v in init.torch_default(jax.random.key(0), "GRU", 3, 4).items()}
    >>> F.cell_step("GRU", p, jnp.ones((2, 3))).shape
    (2, 4)
    """
    input_size, hidden_size, _ = infer_cell(mode, params)
    if not hasattr(x, "ndim") or x.ndim not in (1, 2):
        raise ValueError(f"Expected input of shape [B, input_size] (or unbatched [input_size]), "
                         f"got {getattr(x, 'shape', type(x).__name__)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"input.size(-1) must be equal to input_size. Expected {input_size}, "
                         f"got {x.shape[-1]}")
    check_floating(x.dtype, "input")
    for name, value in params.items():
        check_floating(value.dtype, f"params[{name!r}]")
    unbatched = x.ndim == 1
    lstm = mode == "LSTM"
    want = (hidden_size,) if unbatched else (x.shape[0], hidden_size)
    state = None
    if hx is not None:
        if lstm and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"LSTMCell expects hx=(h_0, c_0), got {_describe(hx)}")
        if not lstm and isinstance(hx, (tuple, list)):
            raise TypeError(f"{mode} cell expects hx=h_0 (a single array), got {_describe(hx)}")
        state = list(hx) if lstm else [hx]
        for name, part in zip(["h_0", "c_0"], state):
            if tuple(getattr(part, "shape", ())) != want:
                raise ValueError(f"Expected hidden size {want} for {name}, got "
                                 f"{tuple(getattr(part, 'shape', ()))}")
            check_floating(part.dtype, name)
    return _cell_core(dict(params), x, state, mode=mode)


@partial(jax.jit, static_argnames=("mode",))
def _cell_core(params: Params, x: jax.Array, state: Optional[list[jax.Array]], *, mode: str) -> Any:
    """The compiled body of :func:`cell_step` (arguments validated there)."""
    unbatched = x.ndim == 1
    dtype = params["weight_ih"].dtype
    hidden = params["weight_hh"].shape[1]
    if state is None:
        shape = (hidden,) if unbatched else (x.shape[0], hidden)
        state = [jnp.zeros(shape, dtype)] * (2 if mode == "LSTM" else 1)
    w, p = layer_weights(mode, {f"{k}_l0": v for k, v in params.items()}, 0, 1)
    rows = (lambda a: a.astype(dtype)[None, None]) if unbatched else (lambda a: a.astype(dtype)[None])
    carry = tuple(rows(s) for s in state)                                   # [1, B, H]
    xp = jnp.matmul(rows(x), w.w_ih_t)                                      # [1, B, G]
    if w.bias is not None:
        xp = xp + w.bias
    new = CELLS[mode](xp, jnp.matmul(carry[0], w.w_hh_t), carry, p)
    new = tuple(n[0, 0] if unbatched else n[0] for n in new)
    return new if mode == "LSTM" else new[0]


lstm_cell = partial(cell_step, "LSTM")
lstm_cell.__doc__ = "``cell_step('LSTM', ...)``: returns ``(h_1, c_1)``."
gru_cell = partial(cell_step, "GRU")
gru_cell.__doc__ = "``cell_step('GRU', ...)``: returns ``h_1``."
rnn_tanh_cell = partial(cell_step, "RNN_TANH")
rnn_tanh_cell.__doc__ = "``cell_step('RNN_TANH', ...)``: returns ``h_1``."
rnn_relu_cell = partial(cell_step, "RNN_RELU")
rnn_relu_cell.__doc__ = "``cell_step('RNN_RELU', ...)``: returns ``h_1``."
