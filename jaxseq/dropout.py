"""Dropout masks for sequences: element-wise (torch), locked over time (AWD-LSTM), recurrent, weights.

A *mask* here is a multiplier: ``bernoulli(1 - rate) / (1 - rate)`` (all zeros when ``rate == 1``).
Every dropout in jaxseq takes either a key (a mask is drawn) or an explicit mask (so results can be
checked exactly against torch with the same mask).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.module import first_from


def check_rate(rate: float, name: str = "dropout") -> float:
    """Return ``float(rate)`` or raise torch's ``ValueError`` for a rate outside ``[0, 1]``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1] representing the probability of "
                         f"an element being zeroed, got {rate!r}")
    return float(rate)


def keep_mask(key: jax.Array, rate: float, shape: Sequence[int], dtype: jnp.dtype = jnp.float32
              ) -> jax.Array:
    """Scaled keep mask ``bernoulli(1 - rate) / (1 - rate)`` of ``shape`` (zeros when ``rate == 1``).

    >>> m = keep_mask(jax.random.key(0), 0.5, (1000,))
    >>> sorted(set(m.tolist()))
    [0.0, 2.0]
    """
    rate = check_rate(rate)
    if rate == 1.0:
        return jnp.zeros(shape, dtype)
    keep = jax.random.bernoulli(key, 1.0 - rate, tuple(shape))
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), jnp.zeros((), dtype))


def _key_from(rngs: nnx.Rngs | nnx.RngStream | jax.Array) -> jax.Array:
    if isinstance(rngs, nnx.Rngs):
        return rngs.dropout()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    return rngs


class LockedDropout(nnx.Module):
    """Dropout with one mask per sequence, shared by every time step (AWD-LSTM's ``LockedDropout``).

    The mask has shape ``[1, B, F]`` (``[B, 1, F]`` with ``batch_first``) and is drawn afresh at every
    call in training mode; it is the identity in evaluation mode (the default after construction;
    call ``.train()`` to enable it, as for every jaxseq dropout).

    Args:
      rate: probability of zeroing a feature of a sequence.
      batch_first: layout of the inputs (``[B, T, F]`` if True, else ``[T, B, F]``).
      deterministic: initial mode; ``True`` (evaluation) by default.
      rngs: source of the ``dropout`` stream.

    Call ``layer(x, *, mask=None, deterministic=None, rngs=None)``: an explicit ``mask`` (a scaled
    multiplier broadcastable to ``x``, e.g. from :func:`keep_mask`) is applied as given; ``rngs`` (a key,
    ``RngStream`` or ``Rngs``) overrides the stored stream.

    >>> drop = LockedDropout(0.5, rngs=nnx.Rngs(0))
    >>> drop.train()
    >>> y = drop(jnp.ones((4, 2, 3)))                   # [T, B, F]
    >>> bool((y == y[0]).all())                           # same mask at every step
    True
    """

    def __init__(self, rate: float, *, batch_first: bool = False, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None):
        self.rate = check_rate(rate, "rate")
        self.batch_first = batch_first
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork() if rngs is not None else nnx.data(None)

    def mask_shape(self, x: jax.Array) -> tuple[int, ...]:
        """``[1, B, F...]`` (or ``[B, 1, F...]``): the shape of the mask for input ``x``."""
        t_axis = 1 if self.batch_first else 0
        return x.shape[:t_axis] + (1,) + x.shape[t_axis + 1:]

    def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None,
                 deterministic: Optional[bool] = None,
                 rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> jax.Array:
        if mask is not None:
            return x * mask.astype(x.dtype)
        if first_from(deterministic, self.deterministic, error_msg="deterministic not set") or self.rate == 0:
            return x
        source = first_from(rngs, self.rngs, error_msg="LockedDropout in training mode needs `rngs`")
        return x * keep_mask(_key_from(source), self.rate, self.mask_shape(x), x.dtype)
