"""The one masked scan that runs a recurrent layer (both directions at once) over a padded batch.

Shared by LSTM, GRU and RNN: only the cell step differs (:mod:`jaxseq.cells`). Instead of packing,
each step carries a validity mask: a row's state is frozen once its sequence has ended and its
output is exactly zero there, so the final carry of row ``b`` is its state after its own last valid
step. The reverse direction reads the time axis backwards, so row ``b`` keeps its initial state
through the padding and then reads ``lengths[b]-1`` down to ``0``, as torch does on a
``PackedSequence``.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxseq.cells import STEPS, Carry, Recurrent
from jaxseq.layout import param_name


def masked_scan(step: Callable, xp: jax.Array, valid: jax.Array, carry0: Carry, rec: Recurrent,
                *, state_mask: Optional[jax.Array] = None, unroll: int = 1) -> tuple[jax.Array, Carry]:
    """Run ``step`` over time with a per-step validity mask.

    Args:
      step: a cell step from :mod:`jaxseq.cells`.
      xp: ``[T, D, B, G]`` input projections, direction ``d`` already in the order it is read.
      valid: ``bool [T, D, B]``: whether step ``s`` of direction ``d`` is a real token of row ``b``.
      carry0: initial state, a tuple of ``[D, B, ·]`` arrays (``h`` first).
      rec: the layer's recurrent weights.
      state_mask: optional ``[D, B, H_out]`` multiplier on ``h_{t-1}`` before ``W_hh`` (variational
        recurrent dropout; the same mask at every step).
      unroll: ``lax.scan`` unroll factor.

    Returns:
      ``(outputs [T, D, B, H_out], final carry)``; outputs are exactly 0 where ``valid`` is False.
    """

    def body(carry, inputs):
        xp_t, valid_t = inputs
        h_rec = carry[0] if state_mask is None else carry[0] * state_mask
        new = step(xp_t, h_rec, carry, rec)
        keep = valid_t[..., None]
        carry = tuple(jnp.where(keep, n, o) for n, o in zip(new, carry))
        return carry, jnp.where(keep, new[0], jnp.zeros((), new[0].dtype))

    carry, out = lax.scan(body, carry0, (xp, valid), unroll=unroll)
    return out, carry


def _stack(params: Mapping[str, jax.Array], kind: str, layer: int, num_directions: int) -> jax.Array:
    return jnp.stack([params[param_name(kind, layer, d)] for d in range(num_directions)])


def _flip_reverse(a: jax.Array) -> jax.Array:
    """Reverse the time axis (0) of direction 1 of ``a [T, D, ...]``."""
    if a.shape[1] == 1:
        return a
    return jnp.stack([a[:, 0], a[::-1, 1]], axis=1)


def run_layer(mode: str, params: Mapping[str, jax.Array], layer: int, num_directions: int,
              x: jax.Array, lengths: jax.Array, carry0: Carry, *,
              state_mask: Optional[jax.Array] = None, weight_hh_mask: Optional[jax.Array] = None,
              unroll: int = 1) -> tuple[jax.Array, Carry]:
    """One layer, all directions: ``x [T, B, I] -> (output [T, B, D*H_out], carry)``.

    ``x`` must already be zero at padded positions. ``carry0`` entries are ``[D, B, ·]``.
    ``weight_hh_mask`` (broadcastable to ``[D, G, H_out]``) multiplies ``W_hh`` for the whole call
    (DropConnect / AWD-LSTM weight drop).
    """
    T = x.shape[0]
    D = num_directions
    w_ih = _stack(params, "weight_ih", layer, D)   # [D, G, I]
    w_hh = _stack(params, "weight_hh", layer, D)   # [D, G, H_out]
    if weight_hh_mask is not None:
        w_hh = w_hh * weight_hh_mask
    G = w_ih.shape[1]
    has_bias = param_name("bias_ih", layer, 0) in params
    b_hn = None
    if has_bias:
        bias = _stack(params, "bias_ih", layer, D)
        b_hh = _stack(params, "bias_hh", layer, D)
        if mode == "GRU":  # b_hn sits inside r * (W_hn h + b_hn): only b_hr, b_hz fold into xp
            H = G // 3
            bias = bias.at[:, :2 * H].add(b_hh[:, :2 * H])
            b_hn = b_hh[:, None, 2 * H:]
        else:
            bias = bias + b_hh
    # One GEMM for every step and direction: [T, B, I] x [D*G, I] -> [T, B, D, G] -> [T, D, B, G].
    xp = jnp.matmul(x, w_ih.reshape(D * G, -1).T).reshape(T, x.shape[1], D, G).transpose(0, 2, 1, 3)
    if has_bias:
        xp = xp + bias[None, :, None, :]
    xp = _flip_reverse(xp)
    steps = jnp.arange(T)
    read_time = jnp.stack([steps, T - 1 - steps], axis=1)[:, :D]            # [T, D]
    valid = read_time[:, :, None] < lengths[None, None, :]                   # [T, D, B]
    w_hr_t = None
    if param_name("weight_hr", layer, 0) in params:
        w_hr_t = jnp.swapaxes(_stack(params, "weight_hr", layer, D), 1, 2)
    rec = Recurrent(w_hh_t=jnp.swapaxes(w_hh, 1, 2), b_hn=b_hn, w_hr_t=w_hr_t)
    out, carry = masked_scan(STEPS[mode], xp, valid, carry0, rec, state_mask=state_mask, unroll=unroll)
    out = _flip_reverse(out)                                                 # [T, D, B, H_out]
    out = out.transpose(0, 2, 1, 3).reshape(T, x.shape[1], -1)               # [T, B, D*H_out]
    return out, carry
