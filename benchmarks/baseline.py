"""The plain masked scan, as a reference for what jaxseq's optimisations pay.

A single-layer, unidirectional LSTM written the straightforward way: one hoisted GEMM for the input
projection of every step, ``lax.scan`` with ``jnp.where`` freezing finished rows, and reverse-mode
autodiff of the scan (which accumulates the weight gradients inside the backward loop). This is
what jaxseq's first version did; ``python -m benchmarks.run --ablations`` times it next to the
current defaults on the same batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def plain_masked_lstm(params: dict, x: jax.Array, lengths: np.ndarray):
    """torch-named single-layer LSTM params, ``x [T, B, I]`` -> ``(output [T, B, H], (h_n, c_n))``."""
    T, B = x.shape[:2]
    H = params["weight_hh_l0"].shape[1]
    valid = jnp.arange(T)[:, None] < jnp.asarray(lengths)[None, :]            # [T, B]
    x = jnp.where(valid[..., None], x, 0)
    xp = x @ params["weight_ih_l0"].T + params["bias_ih_l0"] + params["bias_hh_l0"]
    w_hh_t = params["weight_hh_l0"].T

    def body(carry, inputs):
        h, c = carry
        xp_t, valid_t = inputs
        i, f, g, o = jnp.split(xp_t + h @ w_hh_t, 4, axis=-1)
        c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        keep = valid_t[:, None]
        return ((jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)),
                jnp.where(keep, h_new, 0))

    zeros = jnp.zeros((B, H), x.dtype)
    (h, c), out = lax.scan(body, (zeros, zeros), (xp, valid))
    return out, (h[None], c[None])
