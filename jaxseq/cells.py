"""One time step of torch's LSTM, GRU and Elman RNN cells, batched over directions.

Every step function has the signature ``step(xp, h_rec, carry, rec) -> carry`` where

* ``xp``: ``[D, B, G]`` the input projection of this step, ``x_t @ W_ih.T + b_ih`` plus the part of
  ``b_hh`` that torch adds outside any gate product (all of it for LSTM/RNN, ``b_hr, b_hz`` for GRU);
* ``h_rec``: ``[D, B, H_out]`` the previous hidden state as fed to ``W_hh`` (after recurrent-state
  dropout, if any);
* ``carry``: the previous state, ``(h,)`` or ``(h, c)`` with ``h [D, B, H_out]``, ``c [D, B, H]``;
* ``rec``: :class:`Recurrent` weights of the layer, stacked over directions.

The first element of the returned carry is the step's output ``h_t``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

Carry = tuple


class Recurrent(NamedTuple):
    """A layer's recurrent weights, stacked over directions ``D`` and pre-transposed."""

    w_hh_t: jax.Array                  # [D, H_out, G]
    b_hn: Optional[jax.Array] = None   # [D, 1, H]  GRU only: b_hh's "new" block, inside r * (...)
    w_hr_t: Optional[jax.Array] = None  # [D, H, P]  LSTM projection only


def lstm_step(xp: jax.Array, h_rec: jax.Array, carry: Carry, rec: Recurrent) -> Carry:
    """torch LSTM: gates ``i, f, g, o``; ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``,
    then ``h' = h' @ W_hr.T`` with a projection."""
    _, c = carry
    i, f, g, o = jnp.split(xp + jnp.matmul(h_rec, rec.w_hh_t), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if rec.w_hr_t is not None:
        h = jnp.matmul(h, rec.w_hr_t)
    return h, c


def gru_step(xp: jax.Array, h_rec: jax.Array, carry: Carry, rec: Recurrent) -> Carry:
    """torch GRU: ``r, z = σ(...)``, ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``,
    ``h' = (1 - z) ⊙ n + z ⊙ h``."""
    (h,) = carry
    x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(jnp.matmul(h_rec, rec.w_hh_t), 3, axis=-1)
    if rec.b_hn is not None:
        h_n = h_n + rec.b_hn
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return ((1 - z) * n + z * h,)


def _elman_step(activation: Callable[[jax.Array], jax.Array]):
    def step(xp: jax.Array, h_rec: jax.Array, carry: Carry, rec: Recurrent) -> Carry:
        return (activation(xp + jnp.matmul(h_rec, rec.w_hh_t)),)
    step.__doc__ = f"torch Elman RNN: ``h' = {activation.__name__}(W_ih x + b_ih + W_hh h + b_hh)``."
    return step


rnn_tanh_step = _elman_step(jnp.tanh)
rnn_relu_step = _elman_step(jax.nn.relu)

#: torch ``mode`` -> step function.
STEPS = {"LSTM": lstm_step, "GRU": gru_step, "RNN_TANH": rnn_tanh_step, "RNN_RELU": rnn_relu_step}
