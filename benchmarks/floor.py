"""The GEMM floor of a training step: its matrix products alone, in bare scans.

A recurrent training step cannot be faster than the matrix products it must do, run in the loops
they must run in. :func:`gemm_floor` builds, for a benchmark config and a number of rows (the
padded batch ``B``, or the packed rows ``R``), a jitted function with exactly those products and
shapes and (nearly) nothing else, per layer, with both directions stacked as jaxseq stacks them
(``[D, rows, ·]`` operands):

* forward: the input projection, either hoisted (one ``x [T*rows, F] @ W_ih^T [F, G]`` GEMM per
  direction before the loop) or in the loop (``x_t @ W_ih^T`` at every step), and a scan over
  ``T`` of ``h @ W_hh^T`` that saves the pre-activations ``[T, D, rows, G]`` and ``h``; the next
  ``h`` is a slice of the pre-activations (no gate math);
* backward: a reverse scan over ``T`` of ``dgates @ W_hh`` (``dgates`` = saved pre-activations plus
  the incoming gradient, one fused add), saving ``dgates``; then the gradient GEMMs
  ``dW_ih = x^T dgates``, ``dW_hh = h^T dgates`` and ``dx = dgates W_ih`` (the first layer's only
  when the step differentiates the input), each one 2-D GEMM over ``T * rows``.

Layers are chained as in the real step (a layer's ``h`` sequence is the next layer's input; the
``dx`` of a layer is the gradient entering the backward loop of the one below). Weights are scaled
so that the bare loops stay bounded (no inf, no denormals); the cost of a product does not depend
on the values. The floor of a config is the faster of the two projections, timed interleaved
with the contenders in one process: ``step time / floor time`` is what everything but the matrix
products (gate math, masks, resets, residual bookkeeping) costs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.configs import GATES, BenchConfig
from benchmarks.timing import Contender, compile_step

PROJECTIONS = ("hoisted", "in_loop")


def _weights(cfg: BenchConfig, seed: int = 0) -> list[tuple[jax.Array, jax.Array]]:
    """``(W_ih^T [D, F, G], W_hh^T [D, H, G])`` per layer: contractive bare loops."""
    rng = np.random.default_rng(seed)
    H, G, D = cfg.hidden_size, GATES[cfg.mode] * cfg.hidden_size, cfg.directions
    bound = 1 / np.sqrt(H)
    out = []
    for layer in range(cfg.num_layers):
        fan_in = cfg.input_size if layer == 0 else D * H
        w_ih = rng.uniform(-bound, bound, (D, fan_in, G)).astype(np.float32)
        w_hh = rng.uniform(-bound, bound, (D, H, G)).astype(np.float32) * 0.5
        out.append((jnp.asarray(w_ih), jnp.asarray(w_hh)))
    return out


def _gemm(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a [T, R, F] @ w [F, G]`` as one ``[T*R, F]`` GEMM."""
    return (a.reshape(-1, a.shape[-1]) @ w).reshape(a.shape[:2] + w.shape[1:])


def _layer_forward(x: jax.Array, w_ih: jax.Array, w_hh: jax.Array, hoisted: bool
                   ) -> tuple[jax.Array, jax.Array]:
    """``x [T, R, F]`` -> saved ``pre [T, D, R, G]`` and ``hs [T, D, R, H]``."""
    D, H = w_hh.shape[0], w_hh.shape[1]
    if hoisted:
        xs = jnp.stack([_gemm(x, w_ih[d]) for d in range(D)], axis=1)       # [T, D, R, G]
    else:
        xs = x

    def body(h, x_t):
        xp = x_t if hoisted else jnp.matmul(jnp.stack([x_t] * D), w_ih)       # [D, R, G]
        pre = xp + jnp.matmul(h, w_hh)
        return pre[..., :H], (pre, pre[..., :H])

    _, (pre, hs) = lax.scan(body, jnp.zeros((D, x.shape[1], H), x.dtype), xs)
    return pre, hs


def _layer_backward(x: jax.Array, pre: jax.Array, hs: jax.Array, d_out: jax.Array,
                    w_ih: jax.Array, w_hh: jax.Array, with_dx: bool
                    ) -> tuple[Optional[jax.Array], jax.Array, jax.Array]:
    """Reverse scan of ``dgates @ W_hh`` and the gradient GEMMs: ``(dx, dW_ih, dW_hh)`` (``dx``
    only ``with_dx``)."""
    D, H, G = w_hh.shape
    R = x.shape[1]
    w_hh_t = jnp.swapaxes(w_hh, 1, 2)                                         # [D, G, H]

    def body(dh, inputs):
        pre_t, d_out_t = inputs                                               # [D, R, G], [D, R, H]
        dg = (pre_t.reshape(D, R, G // H, H) + 0.25 * (dh + d_out_t)[:, :, None]).reshape(D, R, G)
        return jnp.matmul(dg, w_hh_t), dg

    _, dgates = lax.scan(body, jnp.zeros((D, R, H), x.dtype), (pre, d_out), reverse=True)
    d_w_ih = jnp.stack([jnp.tensordot(x, dgates[:, d], axes=([0, 1], [0, 1])) for d in range(D)])
    d_w_hh = jnp.stack([jnp.tensordot(hs[:, d], dgates[:, d], axes=([0, 1], [0, 1]))
                        for d in range(D)])
    dx = sum(_gemm(dgates[:, d], w_ih[d].T) for d in range(D)) if with_dx else None
    return dx, d_w_ih, d_w_hh


def floor_flops(cfg: BenchConfig, rows: int) -> float:
    """Matmul FLOPs of the floor over ``rows x T`` row-steps (forward 2 GEMMs, backward 3 or 4)."""
    return cfg.matmul_flops(rows * cfg.padded_time)


def gemm_floor(cfg: BenchConfig, rows: int, input_projection: str = "hoisted"
               ) -> tuple[Callable, tuple]:
    """``(floor, args)``: ``cfg``'s training-step products over ``rows`` rows of ``T`` steps,
    with the input projection ``"hoisted"`` or ``"in_loop"``; ``floor(*args)`` returns ``dx``
    (when the config's step needs it) and every weight gradient."""
    if input_projection not in PROJECTIONS:
        raise ValueError(f"input_projection must be one of {PROJECTIONS}, got {input_projection!r}")
    weights = _weights(cfg)
    T = cfg.padded_time
    x = jnp.asarray(np.random.default_rng(1).standard_normal(
        (T, rows, cfg.input_size)).astype(np.float32))
    hoisted = input_projection == "hoisted"

    def floor(weights, x):
        saved, layer_in = [], x
        for w_ih, w_hh in weights:
            pre, hs = _layer_forward(layer_in, w_ih, w_hh, hoisted)
            saved.append((layer_in, pre, hs))
            layer_in = jnp.moveaxis(hs, 1, 2).reshape(T, rows, -1)           # [T, R, D*H]
        d_out, grads = hs, []
        for layer in reversed(range(cfg.num_layers)):
            inp, pre, hs = saved[layer]
            dx, d_w_ih, d_w_hh = _layer_backward(inp, pre, hs, d_out, *weights[layer],
                                                 with_dx=layer > 0 or cfg.input_grad)
            grads.append((d_w_ih, d_w_hh))
            if layer:                                # [T, R, D*H] -> the layer below's [T, D, R, H]
                d_out = jnp.moveaxis(dx.reshape(T, rows, cfg.directions, -1), 2, 1)
        return dx, grads

    return floor, (weights, x)


def floor_step(cfg: BenchConfig, rows: int, input_projection: str, name: str) -> Contender:
    """The floor as a :class:`~benchmarks.contenders.Contender` (``kind="floor"``, no loss)."""
    floor, args = gemm_floor(cfg, rows, input_projection)
    compiled, seconds, mb = compile_step(floor, *args)
    out = jax.block_until_ready(compiled(*args))
    if not all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(out)):
        raise FloatingPointError(f"the {name} floor of {cfg.name} overflowed")
    return Contender(name, lambda: jax.block_until_ready(compiled(*args)), math.nan, seconds, mb,
                     f"{rows} rows x {cfg.padded_time}, x @ W_ih {input_projection.replace('_', ' ')}",
                     exact=False, kind="floor", flops=floor_flops(cfg, rows))
