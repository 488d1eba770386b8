"""The gate equations: the element-wise part of one time step of torch's LSTM, GRU and Elman RNN.

The recurrent matmul ``h_{t-1} @ W_hh.T`` is done by the scan (:mod:`jaxseq.scan`), which also
hoists its weight gradient out of the time loop; a cell only combines the two projections. Every
cell has the signature ``cell(xp, hw, carry, p) -> carry`` where, batched over directions ``D``,

* ``xp``: ``[D, B, G]`` the input projection of this step, ``x_t @ W_ih.T + b_ih`` plus the part of
  ``b_hh`` that torch adds outside any gate product (all of it for LSTM/RNN, ``b_hr, b_hz`` for GRU);
* ``hw``: ``[D, B, G]`` the recurrent projection ``h_rec @ W_hh.T`` (no bias), where ``h_rec`` is the
  previous hidden state after recurrent-state dropout, if any;
* ``carry``: the previous state, ``(h,)`` or ``(h, c)`` with ``h [D, B, H_out]``, ``c [D, B, H]``;
* ``p``: :class:`CellParams`, the other parameters used inside the step.

The first element of the returned carry is the step's output ``h_t``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

Carry = tuple


class CellParams(NamedTuple):
    """Parameters a cell uses besides the two projections, stacked over directions ``D``."""

    b_hn: Optional[jax.Array] = None    # [D, 1, H]  GRU only: b_hh's "new" block, inside r * (...)
    w_hr_t: Optional[jax.Array] = None  # [D, H, P]  LSTM projection only


def lstm_cell(xp: jax.Array, hw: jax.Array, carry: Carry, p: CellParams) -> Carry:
    """torch LSTM: gates ``i, f, g, o``; ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``,
    then ``h' = h' @ W_hr.T`` with a projection."""
    _, c = carry
    i, f, g, o = jnp.split(xp + hw, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if p.w_hr_t is not None:
        h = jnp.matmul(h, p.w_hr_t)
    return h, c


def gru_cell(xp: jax.Array, hw: jax.Array, carry: Carry, p: CellParams) -> Carry:
    """torch GRU: ``r, z = σ(...)``, ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``,
    ``h' = (1 - z) ⊙ n + z ⊙ h``."""
    (h,) = carry
    x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(hw, 3, axis=-1)
    if p.b_hn is not None:
        h_n = h_n + p.b_hn
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return ((1 - z) * n + z * h,)


def _elman_cell(activation: Callable[[jax.Array], jax.Array]):
    def cell(xp: jax.Array, hw: jax.Array, carry: Carry, p: CellParams) -> Carry:
        return (activation(xp + hw),)
    cell.__doc__ = f"torch Elman RNN: ``h' = {activation.__name__}(W_ih x + b_ih + W_hh h + b_hh)``."
    return cell


rnn_tanh_cell = _elman_cell(jnp.tanh)
rnn_relu_cell = _elman_cell(jax.nn.relu)

#: torch ``mode`` -> cell function.
CELLS = {"LSTM": lstm_cell, "GRU": gru_cell, "RNN_TANH": rnn_tanh_cell, "RNN_RELU": rnn_relu_cell}
