"""The one masked scan that runs a recurrent layer (both directions at once) over a padded batch.

Shared by LSTM, GRU and RNN, by layers, packed rows and the staircase: only the element-wise cell
differs (:mod:`jaxseq.gates`). Instead of packing, each step carries a validity mask: a row's
state is frozen outside its valid steps and its output is exactly zero there, so the final carry
of row ``b`` is its state after its own last valid step. The reverse direction reads the
time-flipped input (valid on a suffix of steps, before which its state stays at ``h_0``) or, in a
staircase, each row reversed within its own length; either way it reads ``lengths[b]-1`` down to
``0``, as torch does on a ``PackedSequence``. Packed rows add a state reset at every sequence start.

Performance structure (measurements in ``docs/benchmarks.md``):

* one ``lax.scan`` runs every direction (a ``[D, B, ·]`` carry); the input projection ``x_t @ W_ih``
  is done inside the loop, next to ``h @ W_hh`` (on CPU this beats one hoisted GEMM whose
  ``[T, D, B, G]`` result the loop must stream back from memory);
* :data:`masked_scan` (the default) has a hand-written VJP: the backward loop does one
  ``dgates @ W_hh`` per step and writes the gate gradients over the saved pre-activations; every
  weight gradient and the input gradient are then large GEMMs after the loop (autodiff of the plain
  scan would accumulate ``[F, G]`` and ``[H, G]`` weight gradients at every step);
* :data:`masked_scan_jvp` (``forward_mode=True``) computes the same function with a custom JVP
  instead, whose tangent map hoists every term that does not depend on the previous step
  (``dx @ W_ih``, ``x @ dW_ih``, ``h @ dW_hh``...) out of the loop as GEMMs; JAX transposes it for
  reverse mode, and forward mode, ``jax.hessian`` and forward-over-reverse work. Its reverse mode
  runs the same loops and GEMMs as the hand-written one, plus one fresh ``[S, B, G]`` gate-gradient
  buffer per direction (two for GRU): a transposed scan cannot write over the saved
  pre-activations, and the new buffer is zero-filled and, with glibc's default ``malloc``,
  page-faulted at every call (measured in the benchmarks);
* with a :class:`Staircase` schedule (asked for with ``time_chunks > 1`` and concrete ``lengths``,
  or passed explicitly), rows are
  sorted by length and time is cut into a few chunks, each scanned over only the rows still active,
  so compute follows the number of valid tokens rather than ``B * T``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxseq.gates import CELLS, Carry, CellParams, gru_cell
from jaxseq.layout import param_name
from jaxseq.masking import reverse_within_length
from jaxseq.segments import SegmentLayout, per_step, sequence_starts, take_steps
from jaxseq.validation import check_floating, check_size, host_array


def _permute_rows(a: jax.Array, perm: jax.Array, axis: int = 1) -> jax.Array:
    shape = [1] * a.ndim
    shape[axis] = perm.shape[0]
    return jnp.take_along_axis(a, perm.reshape(shape), axis=axis)


# --------------------------------------------------------------------------------------------
# The masked scan, with a VJP that takes every weight gradient out of the loop
# --------------------------------------------------------------------------------------------
class LayerWeights(NamedTuple):
    """A layer's projections, stacked over directions ``D`` and transposed for ``x @ w``."""

    w_ih_t: jax.Array            # [D, F, G]
    w_hh_t: jax.Array            # [D, H_out, G]
    bias: Optional[jax.Array]    # [D, 1, G]: b_ih plus the part of b_hh outside gate products


#: Where ``x_t @ W_ih`` is computed when ``input_projection=None``, per JAX backend (others:
#: ``"hoisted"``). On the 2-core AMD EPYC of ``docs/benchmarks.md`` the in-loop projection was faster;
#: on a 2-core Intel Xeon the hoisted GEMM was (``jaxseq.tuning.measure_input_projection``
#: measures it on your machine).
INPUT_PROJECTION_DEFAULTS = {"cpu": "in_loop", "gpu": "hoisted", "tpu": "hoisted"}
INPUT_PROJECTIONS = ("in_loop", "hoisted")


class ScanOptions(NamedTuple):
    """Static options of the masked scan that travel together from the API down to the loop.

    Hashable (a ``jit`` static argument). Build it with :func:`scan_options`, which validates.
    """

    unroll: int = 1                           # lax.scan unroll factor (forward and backward loops)
    compute_dtype: Optional[np.dtype] = None  # matmul operand dtype (None: the parameter dtype)
    forward_mode: bool = False                # custom JVP (every transformation) vs custom VJP
    hoist_input: bool = False                 # x @ W_ih as one GEMM before the loop


#: Every option at its default (the in-loop input projection).
DEFAULT_OPTIONS = ScanOptions()


def scan_options(unroll: int = 1, compute_dtype: Any = None, forward_mode: bool = False,
                 input_projection: Optional[str] = None) -> ScanOptions:
    """Validated :class:`ScanOptions` from the user-facing arguments (see
    :func:`jaxseq.functional.recurrent`); ``input_projection=None`` takes the backend's default from
    :data:`INPUT_PROJECTION_DEFAULTS`.

    Raises:
      ValueError / TypeError: a bad ``unroll``, ``compute_dtype`` or ``input_projection``.
    """
    unroll = check_size(unroll, "unroll")
    if compute_dtype is not None:
        check_floating(compute_dtype, "compute_dtype")
        compute_dtype = jnp.dtype(compute_dtype)
    if input_projection is None:
        input_projection = INPUT_PROJECTION_DEFAULTS.get(jax.default_backend(), "hoisted")
    if input_projection not in INPUT_PROJECTIONS:
        raise ValueError(f"input_projection must be one of {INPUT_PROJECTIONS} or None, got "
                         f"{input_projection!r}")
    return ScanOptions(unroll, compute_dtype, bool(forward_mode), input_projection == "hoisted")


def _summed(cell: Callable) -> bool:
    """Whether ``cell`` uses ``xp`` and ``hw`` only as ``xp + hw`` (then ``d xp == d hw``)."""
    return cell is not gru_cell


def _matmul(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    """``a @ b`` with operands in ``compute_dtype`` (if set), accumulated and returned in ``a.dtype``."""
    if compute_dtype is None:
        return jnp.matmul(a, b)
    return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype), preferred_element_type=a.dtype)


def _matmul_nt(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    """``a @ swapaxes(b, -1, -2)``: ``[..., M, K] x [..., N, K] -> [..., M, N]``, with
    :func:`_matmul`'s ``compute_dtype`` rule. Its transpose with respect to ``a`` is the plain
    product ``ct @ b``: used in the tangent map with ``b`` in torch's ``[G, ·]`` layout, it gives
    reverse mode the same non-transposed GEMMs as the hand-written backward pass."""
    batch = tuple(range(b.ndim - 2))                  # b's leading axes are batch axes of both
    dims = (((a.ndim - 1,), (b.ndim - 1,)), (batch, batch))
    if compute_dtype is None:
        return lax.dot_general(a, b, dims)
    return lax.dot_general(a.astype(compute_dtype), b.astype(compute_dtype), dims,
                           preferred_element_type=a.dtype)


def _gemm(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    """``[S, B, F] @ [F, G]`` as one 2-D GEMM (its transpose is one 2-D GEMM too)."""
    return _matmul(a.reshape(-1, a.shape[-1]), b, compute_dtype).reshape(a.shape[:2] + b.shape[1:])


def _scan(cell: Callable, options: ScanOptions, xs, valid, carry0, w: LayerWeights, p,
          state_mask, starts, inits, residuals: bool):
    """Forward loop. Returns ``(carry, (outs, states, pre))``; ``pre`` only with ``residuals``."""
    compute_dtype = options.compute_dtype
    w_ih_t, w_hh_t = (w.w_ih_t, w.w_hh_t) if compute_dtype is None else (
        w.w_ih_t.astype(compute_dtype), w.w_hh_t.astype(compute_dtype))
    per_step_mask = _per_step(state_mask)
    D = len(xs)

    def project(x_t):                                              # [D, B, F] -> [D, B, G]
        xp = _matmul(x_t, w_ih_t, compute_dtype)
        return xp if w.bias is None else xp + w.bias

    if options.hoist_input:   # one [S*B, F] @ [F, G] GEMM per direction; the loop reads its rows
        xs = tuple(_gemm(x, w_ih_t[d], compute_dtype) + (0 if w.bias is None else w.bias[d])
                   for d, x in enumerate(xs))

    def body(carry, inputs):
        x_t, valid_t, start_t, init_t, mask_t = inputs
        if start_t is not None:       # a new sequence starts here: its state replaces the carry
            carry = _reset(carry, start_t, init_t)
        mask = mask_t if per_step_mask else state_mask
        xp = jnp.stack(x_t) if options.hoist_input else project(jnp.stack(x_t))   # [D, B, G]
        h_rec = carry[0] if mask is None else carry[0] * mask
        hw = _matmul(h_rec, w_hh_t, compute_dtype)
        new = cell(xp, hw, carry, p)
        keep = valid_t[..., None]                                             # [D, B, 1]
        nxt = tuple(jnp.where(keep, n, o) for n, o in zip(new, carry))
        out = jnp.where(keep, new[0], jnp.zeros((), new[0].dtype))
        outs = tuple(out[d] for d in range(D))
        if not residuals:
            return nxt, (outs, nxt[1:] if starts is not None else ())
        pre = (xp + hw,) if _summed(cell) else (xp, hw)
        return nxt, (outs, nxt[1:], tuple(a[d] for a in pre for d in range(D)))   # [B, G] each

    seq_mask = state_mask if per_step_mask else None
    return lax.scan(body, carry0, (xs, valid, starts, inits, seq_mask), unroll=options.unroll)


def _per_step(state_mask: Optional[jax.Array]) -> bool:
    """Whether a state mask varies over steps (``[S, D, B, H_out]``) or not (``[D, B, H_out]``)."""
    return state_mask is not None and state_mask.ndim == 4


def _reset(carry: Carry, start: jax.Array, init: Optional[Carry]) -> Carry:
    """``carry`` with the rows where ``start [D, B]`` holds replaced by ``init`` (zeros if None)."""
    start = start[..., None]
    if init is None:
        return tuple(jnp.where(start, jnp.zeros((), c.dtype), c) for c in carry)
    return tuple(jnp.where(start, i, c) for c, i in zip(carry, init))


def _masked_scan(cell: Callable, options: ScanOptions,
                 xs: tuple[jax.Array, ...], valid: jax.Array, carry0: Carry, w: LayerWeights,
                 p: CellParams, state_mask: Optional[jax.Array] = None,
                 starts: Optional[jax.Array] = None, inits: Optional[Carry] = None
                 ) -> tuple[tuple[jax.Array, ...], Carry, Carry]:
    """Run ``cell`` over time with a per-step validity mask, all directions at once.

    Args:
      cell: a cell from :mod:`jaxseq.gates`.
      options: :class:`ScanOptions`: the unroll factor (forward and backward loops);
        ``compute_dtype``: ``None``, or the dtype of every matmul's operands (e.g.
        ``jnp.bfloat16``), products accumulated in, and everything else (cell math, states,
        outputs, gradients) in, the dtype of ``xs``; whether ``x @ W_ih`` is hoisted out of the
        loop. (``forward_mode`` selects between :data:`masked_scan` and :data:`masked_scan_jvp`.)
      xs: one ``[S, B, F]`` input per direction, in the order that direction reads it.
      valid: ``bool [S, D, B]``: whether step ``s`` is a real token of row ``b`` in direction
        ``d``. Each row's valid steps must be contiguous: a prefix (a forward reading) or a suffix
        (a reverse reading of time-flipped inputs); the state is frozen outside them.
      carry0: initial state, a tuple of ``[D, B, ·]`` arrays (``h`` first).
      w: the layer's projections.
      p: the cell's other parameters.
      state_mask: ``None``, ``[D, B, H_out]`` (the same at every step) or ``[S, D, B, H_out]`` (one per
        step): multiplier on ``h_{t-1}`` before ``W_hh`` (variational recurrent dropout).
      starts: ``None`` or ``bool [S, D, B]``: a new sequence begins at this step (packed rows). Its
        state is reset to ``inits`` before the step, so nothing flows across the boundary. Starts
        lie on valid steps.
      inits: with ``starts``, the states to reset to, shaped as the carry with a leading ``[S]``
        axis (read only where ``starts``); ``None`` means zeros.

    Returns:
      ``(outputs, final carry, states)``: one ``[S, B, H_out]`` output per direction, exactly 0
      where ``valid`` is False; a row's carry does not change there. ``states`` (only with
      ``starts``, else ``()``) holds the carry entries after ``h`` (``c`` for LSTM) after every step,
      ``[S, D, B, H]`` each, from which a packed row's per-sequence final states are read.
    """
    carry, (outs, states) = _scan(cell, options, xs, valid, carry0, w, p, state_mask,
                                  starts, inits, residuals=False)
    return outs, carry, states


#: The masked scan for reverse mode (the default): a hand-written VJP (:func:`_masked_scan_bwd`).
#: Reverse-over-reverse works; forward mode does not (use :data:`masked_scan_jvp`).
masked_scan = jax.custom_vjp(_masked_scan, nondiff_argnums=(0, 1))
#: The masked scan for every transformation (``forward_mode=True``): a custom JVP whose reverse
#: mode is its transpose (:func:`_masked_scan_jvp`); forward mode, Hessians and forward-over-reverse
#: work, and reverse mode costs more than with :data:`masked_scan` (``docs/benchmarks.md``).
masked_scan_jvp = jax.custom_jvp(_masked_scan, nondiff_argnums=(0, 1))
masked_scan.__doc__ = masked_scan_jvp.__doc__ = _masked_scan.__doc__


def _previous_h(valid: jax.Array, carry0: Carry, outs: Sequence[jax.Array],
                starts: Optional[jax.Array], inits: Optional[Carry]) -> list[jax.Array]:
    """``h`` before every step, per direction ``[S, B, H_out]``: the previous step's output where
    that step was valid, else the initial state (valid steps are contiguous), or the reset state
    where a packed-row sequence starts. (Invalid steps have zero gradient and never use it.)"""
    zero = jnp.zeros((), outs[0].dtype)
    valid_before = jnp.concatenate([jnp.zeros_like(valid[:1]), valid[:-1]])     # [S, D, B]
    h_prev = [jnp.where(valid_before[:, d, :, None],
                        jnp.concatenate([carry0[0][d][None], outs[d][:-1]]), carry0[0][d])
              for d in range(len(outs))]
    if starts is not None:
        h_prev = [jnp.where(starts[:, d, :, None], zero if inits is None else inits[0][:, d], h)
                  for d, h in enumerate(h_prev)]
    return h_prev


def _recurrent_input(h_prev: Sequence[jax.Array], state_mask: Optional[jax.Array]
                     ) -> list[jax.Array]:
    """``h_{t-1}`` as it enters ``W_hh`` (after the recurrent-state mask), per direction."""
    if state_mask is None:
        return list(h_prev)
    if _per_step(state_mask):
        return [h * state_mask[:, d] for d, h in enumerate(h_prev)]
    return [h * state_mask[d] for d, h in enumerate(h_prev)]


def _masked_scan_fwd(cell, options, xs, valid, carry0, w, p, state_mask, starts,
                     inits):
    carry, (outs, states, pre) = _scan(cell, options, xs, valid, carry0, w, p,
                                       state_mask, starts, inits, residuals=True)
    res = (xs, valid, carry0, w, p, state_mask, starts, inits, outs, states, pre)
    return (outs, carry, states if starts is not None else ()), res


def _masked_scan_bwd(cell, options, res, cts):
    """The hand-written backward pass: one ``dgates @ W_hh`` per step, gate gradients written over
    the saved pre-activations (no new buffer), every weight and input gradient a GEMM after."""
    xs, valid, carry0, w, p, state_mask, starts, inits, outs, states, pre = res
    d_outs, d_carry, d_states = cts
    unroll, compute_dtype = options.unroll, options.compute_dtype
    D, summed, per_step_mask = len(xs), _summed(cell), _per_step(state_mask)
    w_hh = jnp.swapaxes(w.w_hh_t, 1, 2)
    w_hh = w_hh if compute_dtype is None else w_hh.astype(compute_dtype)
    zero = jnp.zeros((), xs[0].dtype)
    h_prev = _previous_h(valid, carry0, outs, starts, inits)

    def body(acc, inputs):
        # ``buffers`` holds the saved pre-activations (one [S, B, G] array per direction, two for
        # GRU: xp and hw); step t reads its slice and overwrites it with its gradient, so the
        # gradient sequences need no new (zero-filled, page-faulted) buffers.
        d_carry, d_p, d_mask, buffers = acc
        t, h_prev_t, valid_t, d_out_t, start_t, init_t, d_states_t, mask_t = inputs
        pre_t = [jnp.stack([lax.dynamic_index_in_dim(b, t, keepdims=False)
                            for b in buffers[k * D:(k + 1) * D]]) for k in range(len(buffers) // D)]
        # The other carry entries before step t: the saved state after step t-1 (carry0 at t=0).
        before = jnp.maximum(t - 1, 0)
        rest_t = tuple(jnp.where(t == 0, c0, lax.dynamic_index_in_dim(s, before, keepdims=False))
                       for c0, s in zip(carry0[1:], states))
        prev_t = (jnp.stack(h_prev_t),) + rest_t
        if start_t is not None:
            prev_t = (prev_t[0],) + _reset(rest_t, start_t, None if init_t is None else init_t[1:])
        if d_states_t:
            d_carry = (d_carry[0],) + tuple(a + b for a, b in zip(d_carry[1:], d_states_t))
        keep = valid_t[..., None]                                             # [D, B, 1]
        d_new = tuple(jnp.where(keep, d, zero) for d in d_carry)
        d_new = (d_new[0] + jnp.where(keep, jnp.stack(d_out_t), zero),) + d_new[1:]
        if summed:
            _, vjp = jax.vjp(lambda y, prev, q: cell(y, zero, prev, q), *pre_t, prev_t, p)
            d_xp, d_prev, d_p_t = vjp(d_new)
            d_hw = d_xp
        else:
            _, vjp = jax.vjp(cell, *pre_t, prev_t, p)
            d_xp, d_hw, d_prev, d_p_t = vjp(d_new)
        d_h_rec = _matmul(d_hw, w_hh, compute_dtype)                           # [D, B, H_out]
        d_mask_t = None
        mask = mask_t if per_step_mask else state_mask
        if mask is not None:
            d_mask_t = d_h_rec * prev_t[0]
            if not per_step_mask:
                d_mask, d_mask_t = d_mask + d_mask_t, None
            d_h_rec = d_h_rec * mask
        d_prev = (d_prev[0] + d_h_rec,) + tuple(d_prev[1:])
        d_prev = tuple(jnp.where(keep, n, o) for n, o in zip(d_prev, d_carry))
        d_init_t = None
        if start_t is not None:   # what reaches a sequence's start goes to its initial state
            start = start_t[..., None]
            if inits is not None:
                d_init_t = tuple(jnp.where(start, d, zero) for d in d_prev)
            d_prev = tuple(jnp.where(start, zero, d) for d in d_prev)
        d_p = jax.tree.map(jnp.add, d_p, d_p_t)
        grads = [d_xp] if summed else [d_xp, d_hw]
        buffers = tuple(lax.dynamic_update_index_in_dim(b, g[d], t, 0)
                        for b, (g, d) in zip(buffers, [(g, d) for g in grads for d in range(D)]))
        return (d_prev, d_p, d_mask, buffers), (d_init_t, d_mask_t)

    constant_mask = state_mask is not None and not per_step_mask
    acc0 = (d_carry, jax.tree.map(jnp.zeros_like, p),
            jnp.zeros_like(state_mask) if constant_mask else None, pre)
    steps = jnp.arange(valid.shape[0])
    (d_carry0, d_p, d_mask, d_seq), (d_inits, d_mask_seq) = lax.scan(
        body, acc0, (steps, h_prev, valid, d_outs, starts, inits, d_states or None,
                     state_mask if per_step_mask else None), reverse=True, unroll=unroll)
    if per_step_mask:
        d_mask = d_mask_seq
    d_xp, d_hw = (d_seq, d_seq) if summed else (d_seq[:D], d_seq[D:])
    h_rec = _recurrent_input(h_prev, state_mask)
    # Per direction: [S, B, ·] sequences, one GEMM each.
    d_xs = tuple(_matmul(d_xp[d], w.w_ih_t[d].T, compute_dtype) for d in range(D))
    d_w = LayerWeights(
        w_ih_t=jnp.stack([_contract(xs[d], d_xp[d], compute_dtype) for d in range(D)]),
        w_hh_t=jnp.stack([_contract(h_rec[d], d_hw[d], compute_dtype) for d in range(D)]),
        bias=None if w.bias is None else jnp.stack([d_xp[d].sum((0, 1))[None] for d in range(D)]))
    return d_xs, None, d_carry0, d_w, d_p, d_mask, None, d_inits


masked_scan.defvjp(_masked_scan_fwd, _masked_scan_bwd)


def _contract(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    """``sum_{s,b} a[s, b, i] b[s, b, j]``: a weight gradient from two ``[S, B, ·]`` sequences."""
    if compute_dtype is None:
        return jnp.tensordot(a, b, axes=([0, 1], [0, 1]))
    return jnp.tensordot(a.astype(compute_dtype), b.astype(compute_dtype), axes=([0, 1], [0, 1]),
                         preferred_element_type=a.dtype)


def _known(t: Any) -> Any:
    """A tangent, or ``None`` for a symbolic zero (a tangent nobody asked for)."""
    return None if isinstance(t, SymbolicZero) else t


def _instantiate(t: Any, like: Any) -> Any:
    """A tangent pytree with its symbolic zeros made concrete (``like``'s shapes and dtypes)."""
    return jax.tree.map(lambda a, b: jnp.zeros_like(b) if isinstance(a, SymbolicZero) else a,
                        t, like,
                        is_leaf=lambda a: isinstance(a, SymbolicZero))


def _masked_scan_jvp(cell, options, primals, tangents):
    """The tangent map, structured so that its transpose is the fast backward pass.

    Everything linear in the tangents that does not depend on the previous step is hoisted out of
    the time loop as large GEMMs: ``dx @ W_ih``, ``x @ dW_ih``, ``dbias``, ``h_rec @ dW_hh`` and
    ``(h * dmask) @ W_hh``. The loop keeps only ``dh_rec @ W_hh`` and the linearised gate
    equations, which it recomputes from the saved pre-activations (``jax.checkpoint``: nothing per
    step is stored for the tangent). Transposed by JAX for reverse mode, the loop becomes one
    ``dgates @ W_hh`` per step (torch's ``[G, H_out]`` layout, as in the hand-written backward
    pass) and the hoisted GEMMs become the weight and input gradients, as large GEMMs after the
    loop. What remains different from :func:`_masked_scan_bwd` is memory: the transposed loop
    writes the gate gradients into a new ``[S, B, G]`` buffer instead of over ``pre``.
    """
    xs, valid, carry0, w, p, state_mask, starts, inits = primals
    dxs, _, dcarry0, dw, dp, dmask, _, dinits = tangents
    unroll, compute_dtype = options.unroll, options.compute_dtype
    D, summed, per_step_mask = len(xs), _summed(cell), _per_step(state_mask)
    carry, (outs, states, pre) = _scan(cell, options, xs, valid, carry0, w, p,
                                       state_mask, starts, inits, residuals=True)
    zero = jnp.zeros((), xs[0].dtype)
    h_prev = _previous_h(valid, carry0, outs, starts, inits)
    rest_prev = [jnp.concatenate([c0[None], s[:-1]]) for c0, s in zip(carry0[1:], states)]
    if starts is not None:
        rest_prev = [jnp.where(starts[..., None], zero if inits is None else i, r)
                     for r, i in zip(rest_prev, [None] * len(rest_prev) if inits is None
                                     else inits[1:])]
    h_rec = _recurrent_input(h_prev, state_mask)

    # --- hoisted: the tangent terms that need no previous tangent state ([S, B, G] per direction)
    dw_ih, dw_hh, dbias = (_known(dw.w_ih_t), _known(dw.w_hh_t),
                           None if w.bias is None else _known(dw.bias))
    dxs, dmask = tuple(map(_known, dxs)), _known(dmask)

    def gemm(a, b):
        return _gemm(a, b, compute_dtype)

    # W in torch's [G, ·] layout, used through _matmul_nt: transposed for reverse mode, the
    # products with W become plain ``ct @ W`` GEMMs, as in _masked_scan_bwd (written with the
    # [·, G] layout, XLA ran them with a transposed operand: measurably slower per step on CPU).
    w_ih = jnp.swapaxes(w.w_ih_t, 1, 2)                                       # [D, G, F]
    w_hh = jnp.swapaxes(w.w_hh_t, 1, 2)                                       # [D, G, H_out]
    w_hh = w_hh if compute_dtype is None else w_hh.astype(compute_dtype)

    def hoisted_x(d):
        terms = [] if dxs[d] is None else [_matmul_nt(dxs[d], w_ih[d], compute_dtype)]
        terms += [] if dw_ih is None else [gemm(xs[d], dw_ih[d])]
        terms += [] if dbias is None else [jnp.broadcast_to(dbias[d], pre[0].shape)]
        return sum(terms[1:], terms[0]) if terms else jnp.zeros_like(pre[0])

    def hoisted_h(d):
        terms = [] if dw_hh is None else [gemm(h_rec[d], dw_hh[d])]
        if dmask is not None:
            m = dmask[:, d] if per_step_mask else dmask[d]
            terms.append(_matmul_nt(h_prev[d] * m, w_hh[d], compute_dtype))
        return sum(terms[1:], terms[0]) if terms else None

    a_x = [hoisted_x(d) for d in range(D)]
    a_h = [hoisted_h(d) for d in range(D)]
    if summed:   # the cell sees xp + hw only: one tangent sequence
        a_x = [a if h is None else a + h for a, h in zip(a_x, a_h)]
        a_h = [None] * D
    elif any(h is None for h in a_h):
        a_h = [jnp.zeros_like(a) if h is None else h for a, h in zip(a_x, a_h)]

    dp = _instantiate(dp, p)
    if inits is None or all(isinstance(t, SymbolicZero) for t in dinits):
        dinits = None
    else:
        dinits = _instantiate(dinits, inits)

    def cell_tangent(pre_t, prev_t, d_in, d_prev):
        if summed:
            f = lambda y, prev, q: cell(y, zero, prev, q)                    # noqa: E731
            return jax.jvp(f, (pre_t[0], prev_t, p), (d_in[0], d_prev, dp))[1]
        return jax.jvp(cell, (pre_t[0], pre_t[1], prev_t, p), (d_in[0], d_in[1], d_prev, dp))[1]

    # The whole step is rematerialised: linearisation then saves no per-step primal values (the
    # recomputation is elementwise work on the saved pre-activations, as in a hand-written backward
    # pass), and no second primal loop is left in the forward pass.
    @jax.checkpoint
    def step(d_carry, inputs):
        a_x_t, a_h_t, pre_t, h_prev_t, rest_prev_t, valid_t, start_t, d_init_t, mask_t = inputs
        if start_t is not None:
            d_carry = _reset(d_carry, start_t, d_init_t)
        mask = mask_t if per_step_mask else state_mask
        d_h_rec = d_carry[0] if mask is None else d_carry[0] * mask
        d_hw = _matmul_nt(d_h_rec, w_hh, compute_dtype)                      # [D, B, G]
        pre_t = [jnp.stack(pre_t[k * D:(k + 1) * D]) for k in range(len(pre_t) // D)]
        d_in = [jnp.stack(a_x_t) + d_hw] if summed else [jnp.stack(a_x_t), jnp.stack(a_h_t) + d_hw]
        d_new = cell_tangent(pre_t, (jnp.stack(h_prev_t),) + tuple(rest_prev_t), d_in, d_carry)
        keep = valid_t[..., None]
        d_next = tuple(jnp.where(keep, n, o) for n, o in zip(d_new, d_carry))
        d_out = jnp.where(keep, d_new[0], zero)
        return d_next, (tuple(d_out[d] for d in range(D)),
                        d_next[1:] if starts is not None else ())

    d_carry0 = _instantiate(dcarry0, carry0)
    d_carry, (d_outs, d_states) = lax.scan(
        step, d_carry0, (tuple(a_x), None if summed else tuple(a_h), pre, tuple(h_prev),
                         tuple(rest_prev), valid, starts, dinits,
                         state_mask if per_step_mask else None), unroll=unroll)
    primal_out = (outs, carry, states if starts is not None else ())
    return primal_out, (d_outs, d_carry, d_states)


masked_scan_jvp.defjvp(_masked_scan_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------
# Staircase schedules: compute proportional to valid tokens
# --------------------------------------------------------------------------------------------
class Staircase(NamedTuple):
    """A static schedule over rows sorted by decreasing length (hashable: usable as a static arg).

    ``chunks`` is ``((start, stop, rows), ...)``: contiguous time ranges from 0, each scanned over
    the first ``rows`` sorted rows only. Valid for ``lengths`` when every row still active at a
    chunk's ``start`` is among its ``rows`` and the last ``stop >= max(lengths)``; steps after the
    last ``stop`` are padding for every row.
    """

    chunks: tuple[tuple[int, int, int], ...]

    def covers(self, lengths: np.ndarray) -> bool:
        """Whether this schedule is valid for the concrete ``lengths``."""
        lengths = np.asarray(lengths)
        stop = 0
        for start, end, rows in self.chunks:
            if start != stop or end <= start or np.count_nonzero(lengths > start) > rows:
                return False
            stop = end
        return stop >= (int(lengths.max()) if lengths.size else 0)

    def padded_steps(self) -> int:
        """Row-steps this schedule computes (``B * T`` for a plain masked scan)."""
        return sum((stop - start) * rows for start, stop, rows in self.chunks)


def staircase(lengths: Sequence[int] | np.ndarray, max_len: int, num_chunks: int = 6,
              row_multiple: Optional[int] = None, time_multiple: int = 1) -> Staircase:
    """The staircase with at most ``num_chunks`` chunks that computes the fewest row-steps.

    Args:
      lengths: concrete ``[B]`` lengths (host values).
      max_len: ``T``, the padded length.
      num_chunks: upper bound on the number of chunks (each is one compiled loop).
      row_multiple: active-row counts are rounded up to a multiple of this (capped at ``B``);
        default ``ceil(B / 8)``, i.e. at most 8 distinct row counts. With ``time_multiple`` (chunk
        boundaries fall on its multiples) it bounds the number of distinct shapes (compilations)
        over many batches.
      time_multiple: see ``row_multiple``.

    Returns:
      a :class:`Staircase` that :meth:`~Staircase.covers` ``lengths``.

    >>> staircase([10, 3, 7, 2], 10, num_chunks=2)
    Staircase(chunks=((0, 3, 4), (3, 10, 2)))
    """
    lens = host_array(lengths, "lengths").astype(np.int64)
    batch, end = lens.shape[0], int(lens.max()) if lens.size else 0
    if end == 0:
        return Staircase(())
    row_multiple = row_multiple or -(-batch // 8)

    def rows_at(t: int) -> int:
        return min(batch, math.ceil(np.count_nonzero(lens > t) / row_multiple) * row_multiple)

    # Candidate boundaries: where the rounded active-row count drops, moved to the grid.
    grid = sorted({min(end, math.ceil(t / time_multiple) * time_multiple)
                   for t in np.unique(lens[lens > 0]).tolist()} | {0, end})
    points = [t for t in grid if t == 0 or t == end or rows_at(t) < rows_at(grid[grid.index(t) - 1])]
    n = len(points) - 1                       # natural segments [points[i], points[i+1])
    # cost[k][j]: fewest row-steps covering [0, points[j]) with k chunks; choice: previous cut.
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(num_chunks + 1)]
    cut = [[0] * (n + 1) for _ in range(num_chunks + 1)]
    cost[0][0] = 0
    for k in range(1, num_chunks + 1):
        for j in range(1, n + 1):
            for i in range(j):
                c = cost[k - 1][i] + (points[j] - points[i]) * rows_at(points[i])
                if c < cost[k][j]:
                    cost[k][j], cut[k][j] = c, i
    k = min(range(1, num_chunks + 1), key=lambda k: (cost[k][n], k))
    bounds, j = [], n
    while k:
        i = cut[k][j]
        bounds.append((points[i], points[j], rows_at(points[i])))
        j, k = i, k - 1
    return Staircase(tuple(reversed(bounds)))


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------
def scan_for(forward_mode: bool) -> Callable:
    """:data:`masked_scan_jvp` (every transformation) or :data:`masked_scan` (fast reverse mode)."""
    return masked_scan_jvp if forward_mode else masked_scan


def _stack(params: Mapping[str, jax.Array], kind: str, layer: int, num_directions: int) -> jax.Array:
    return jnp.stack([params[param_name(kind, layer, d)] for d in range(num_directions)])


def layer_weights(mode: str, params: Mapping[str, jax.Array], layer: int, num_directions: int,
                  weight_hh_mask: Optional[jax.Array] = None) -> tuple[LayerWeights, CellParams]:
    """A layer's torch-named parameters as the scan's :class:`LayerWeights` and :class:`CellParams`.

    ``weight_hh_mask`` (broadcastable to ``[D, G, H_out]``) multiplies ``W_hh`` (weight drop).
    """
    D = num_directions
    w_ih = _stack(params, "weight_ih", layer, D)   # [D, G, I]
    w_hh = _stack(params, "weight_hh", layer, D)   # [D, G, H_out]
    if weight_hh_mask is not None:
        w_hh = w_hh * weight_hh_mask
    G = w_hh.shape[1]
    bias = b_hn = None
    if param_name("bias_ih", layer, 0) in params:
        bias = _stack(params, "bias_ih", layer, D)
        b_hh = _stack(params, "bias_hh", layer, D)
        if mode == "GRU":  # b_hn sits inside r * (W_hn h + b_hn): only b_hr, b_hz fold into xp
            H = G // 3
            bias = bias.at[:, :2 * H].add(b_hh[:, :2 * H])
            b_hn = b_hh[:, None, 2 * H:]
        else:
            bias = bias + b_hh
    w_hr_t = None
    if param_name("weight_hr", layer, 0) in params:
        w_hr_t = jnp.swapaxes(_stack(params, "weight_hr", layer, D), 1, 2)
    w = LayerWeights(w_ih_t=jnp.swapaxes(w_ih, 1, 2), w_hh_t=jnp.swapaxes(w_hh, 1, 2),
                     bias=None if bias is None else bias[:, None, :])
    return w, CellParams(b_hn=b_hn, w_hr_t=w_hr_t)


class Reading(NamedTuple):
    """How the directions of a layer read its input: forward, and (bidirectional) backwards.

    Plain and packed scans read the reverse direction from the time-flipped input (a static
    reversal, ``lax.rev``): a row's valid steps are then a suffix in scan order, before which its
    state stays at its initial value. A staircase needs every direction valid on the same prefix
    of steps (its chunks drop finished rows), so there each row is reversed within its own length
    (a per-row gather) instead.
    """

    xs: tuple[jax.Array, ...]   # [T, B, F] per direction, in its reading order
    valid: jax.Array            # bool [T, D, B]
    within_length: bool

    @staticmethod
    def of(x: jax.Array, lengths: jax.Array, num_directions: int, within_length: bool) -> Reading:
        valid = jnp.arange(x.shape[0])[:, None] < lengths[None, :]          # [T, B]
        if num_directions == 1:
            return Reading((x,), valid[:, None], within_length)
        if within_length:
            return Reading((x, reverse_within_length(x, lengths)), jnp.stack([valid, valid], 1),
                           True)
        return Reading((x, lax.rev(x, (0,))), jnp.stack([valid, lax.rev(valid, (0,))], 1), False)

    def join(self, outs: Sequence[jax.Array], lengths: jax.Array) -> jax.Array:
        """Per-direction outputs in scan order -> ``[T, B, D*H_out]`` in forward time."""
        if len(outs) == 1:
            return outs[0]
        back = (reverse_within_length(outs[1], lengths) if self.within_length
                else lax.rev(outs[1], (0,)))
        return jnp.concatenate([outs[0], back], axis=-1)


def run_layer(mode: str, params: Mapping[str, jax.Array], layer: int, num_directions: int,
              x: jax.Array, lengths: jax.Array, carry0: Carry,
              options: ScanOptions = DEFAULT_OPTIONS, *, plan: Optional[Staircase] = None,
              state_mask: Optional[jax.Array] = None,
              weight_hh_mask: Optional[jax.Array] = None) -> tuple[jax.Array, Carry]:
    """One layer, all directions: ``x [T, B, I] -> (output [T, B, D*H_out], carry)``.

    ``x`` must already be zero at padded positions. ``carry0`` entries are ``[D, B, ·]``.
    ``plan``: ``None`` scans every row over all ``T`` steps; a :class:`Staircase` (valid for
    ``lengths``) scans only the active rows of each chunk. ``state_mask`` is broadcastable to
    ``[D, B, H_out]``. ``weight_hh_mask`` (broadcastable to ``[D, G, H_out]``) multiplies ``W_hh``
    for the whole call (DropConnect / AWD-LSTM weight drop). ``options``: see
    :class:`ScanOptions` (``forward_mode`` runs :data:`masked_scan_jvp`, every transformation,
    instead of :data:`masked_scan`, the fastest reverse mode).
    """
    T, B = x.shape[0], x.shape[1]
    D = num_directions
    w, p = layer_weights(mode, params, layer, D, weight_hh_mask)
    H_out = w.w_hh_t.shape[1]
    if state_mask is not None:
        state_mask = jnp.broadcast_to(state_mask, (D, B, H_out))

    sort_rows = plan is not None
    schedule = plan if plan is not None else Staircase(((0, T, B),))
    if sort_rows:  # sort rows by decreasing length; undone on the way out
        # Host lengths are constants: XLA would constant-fold the permutations' transposes (large
        # scatters) for seconds at every compilation. The barrier keeps them runtime values.
        lengths = lax.optimization_barrier(lengths)
        perm = jnp.argsort(-lengths, stable=True)
        inv = jnp.argsort(perm)
        x, lengths = _permute_rows(x, perm), lengths[perm]
        carry0 = tuple(_permute_rows(c, perm) for c in carry0)
        if state_mask is not None:
            state_mask = _permute_rows(state_mask, perm)

    reading = Reading.of(x, lengths, D, within_length=sort_rows)
    carry, pieces = carry0, []
    for start, stop, rows in schedule.chunks:
        outs, new, _ = scan_for(options.forward_mode)(
            CELLS[mode], options, tuple(a[start:stop, :rows] for a in reading.xs),
            reading.valid[start:stop, :, :rows], tuple(c[:, :rows] for c in carry), w, p,
            None if state_mask is None else state_mask[:, :rows])
        carry = tuple(jnp.concatenate([n, c[:, rows:]], axis=1) for n, c in zip(new, carry))
        pieces.append([jnp.pad(o, ((0, 0), (0, B - rows), (0, 0))) for o in outs])
    stop = schedule.chunks[-1][1] if schedule.chunks else 0
    tail = [jnp.zeros((T - stop, B, H_out), x.dtype)]
    out = reading.join([jnp.concatenate([piece[d] for piece in pieces] + tail)
                        for d in range(D)], lengths)                      # [T, B, D*H_out]
    if sort_rows:
        out = _permute_rows(out, inv)
        carry = tuple(_permute_rows(c, inv) for c in carry)
    return out, carry


def run_segment_layer(mode: str, params: Mapping[str, jax.Array], layer: int, num_directions: int,
                      x: jax.Array, segments: SegmentLayout, init: Carry,
                      options: ScanOptions = DEFAULT_OPTIONS, *, zero_init: bool = False,
                      state_mask: Optional[jax.Array] = None,
                      weight_hh_mask: Optional[jax.Array] = None) -> tuple[jax.Array, Carry]:
    """One layer over packed rows: ``x [T, B, I] -> (output [T, B, D*H_out], per-segment states)``.

    The same masked scan as :func:`run_layer`, with a state reset at every segment start (in each
    direction's reading order). ``x`` must be zero at padding. ``init``: per-segment initial states
    ``[D, B, S, ·]`` (``zero_init=True`` says they are all zero, which skips gathering them). The
    returned states are ``[D, B, S, ·]``: each segment's state after its own last step (reverse
    direction: after its first); segment numbers a row does not hold keep ``init``.
    ``state_mask``: ``None`` or broadcastable to ``[D, B, S, H_out]`` (one mask per segment).
    ``options``: as :func:`run_layer`.
    """
    B = x.shape[1]
    D, S = num_directions, segments.max_segments
    w, p = layer_weights(mode, params, layer, D, weight_hh_mask)
    H_out = w.w_hh_t.shape[1]
    lengths = segments.row_lengths
    ids = [segments.scan_ids(d) for d in range(D)]                        # [T, B] per direction

    def steps(per_segment: jax.Array) -> jax.Array:                       # [D, B, S, F] -> [T, D, B, F]
        return jnp.stack([per_step(per_segment[d], ids[d]) for d in range(D)], axis=1)

    reading = Reading.of(x, lengths, D, within_length=False)
    starts = jnp.stack([sequence_starts(i) for i in ids], axis=1)         # [T, D, B]
    inits = None if zero_init else tuple(steps(c) for c in init)
    if state_mask is not None:
        state_mask = steps(jnp.broadcast_to(state_mask, (D, B, S, H_out)))
    carry0 = tuple(jnp.zeros_like(x, shape=(D, B, c.shape[-1])) for c in init)
    outs, _, states = scan_for(options.forward_mode)(CELLS[mode], options, reading.xs,
                                                     reading.valid, carry0, w, p, state_mask,
                                                     starts, inits)
    present = (segments.sizes > 0)[None, :, :, None]                      # [1, B, S, 1]
    last = [segments.last_steps(d) for d in range(D)]
    gathered = [jnp.stack([take_steps(outs[d], last[d]) for d in range(D)])]
    gathered += [jnp.stack([take_steps(s[:, d], last[d]) for d in range(D)]) for s in states]
    return reading.join(outs, lengths), tuple(jnp.where(present, f, i)
                                              for f, i in zip(gathered, init))
