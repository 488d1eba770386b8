"""Pooling over the valid time steps of a padded batch.

Every function reduces the time axis of ``x [T, B, *]`` (or ``[B, T, *]``) to ``[B, *]`` using only
the positions ``t < lengths[b]``. Padded positions are removed with ``jnp.where`` (never by
multiplying with a mask), so padding content, NaN and inf included, affects neither the outputs nor
the gradients: the gradient at every padded position is exactly ``0``.

Zero-length rows (``lengths[b] == 0``) have a defined, finite output and zero gradient:
``masked_sum`` -> ``0``, ``masked_mean`` -> ``0``, ``masked_max`` -> ``empty_value`` (default ``0``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseq.masking import length_mask
from jaxseq.validation import check_lengths, rejects_torch


def _valid_mask(x: jax.Array, lengths: jax.Array,
                batch_first: bool) -> tuple[jax.Array, jax.Array, int]:
    """Checked ``lengths [B]``, validity mask broadcastable to ``x`` and the time axis index."""
    if x.ndim < 2:
        raise ValueError(f"`x` must be [T, B, *] or [B, T, *], got shape {tuple(x.shape)}")
    t_axis = 1 if batch_first else 0
    max_len, batch = x.shape[t_axis], x.shape[1 - t_axis]
    lengths = check_lengths(lengths, max_len, batch, batch_first=batch_first)
    mask = length_mask(lengths, max_len)  # [B, T]
    if not batch_first:
        mask = mask.T  # [T, B]
    return lengths, mask.reshape(mask.shape + (1,) * (x.ndim - 2)), t_axis


def _valid_sum(x: jax.Array, lengths: jax.Array,
               batch_first: bool) -> tuple[jax.Array, jax.Array]:
    """Sum of ``x`` over valid steps ``[B, *]`` and the checked ``lengths [B]``."""
    lengths, mask, t_axis = _valid_mask(x, lengths, batch_first)
    return jnp.sum(jnp.where(mask, x, jnp.zeros((), x.dtype)), axis=t_axis), lengths


def _per_row(values: jax.Array, ndim: int) -> jax.Array:
    """Reshape ``[B]`` to ``[B, 1, ...]`` with ``ndim`` axes in all."""
    return values.reshape((-1,) + (1,) * (ndim - 1))


@rejects_torch
def masked_sum(x: jax.Array, lengths: jax.Array, batch_first: bool = False) -> jax.Array:
    """Sum over each row's valid steps ``t < lengths[b]``.

    Args:
      x: ``[T, B, *]`` (or ``[B, T, *]`` with ``batch_first=True``).
      lengths: integer ``[B]``, ``0 <= lengths[b] <= T``.
      batch_first: layout of ``x`` (default ``False``).

    Returns:
      ``[B, *]``, dtype of ``x``. Zero-length rows give ``0``.

    Raises:
      ValueError: ``x`` has fewer than 2 axes, ``lengths`` is not ``[B]``, or (when concrete) a length
        lies outside ``[0, T]``.
      TypeError: ``lengths`` is not integer.

    >>> x = jnp.array([[1.0, 2.0, jnp.nan], [4.0, jnp.inf, 6.0]])[..., None]   # [B=2, T=3, F=1]
    >>> masked_sum(x, jnp.array([2, 1]), batch_first=True).tolist()
    [[3.0], [4.0]]
    """
    return _valid_sum(jnp.asarray(x), lengths, batch_first)[0]


@rejects_torch
def masked_mean(x: jax.Array, lengths: jax.Array, batch_first: bool = False) -> jax.Array:
    """Mean over each row's valid steps: ``masked_sum / lengths[b]``.

    Args:
      x: ``[T, B, *]`` (or ``[B, T, *]`` with ``batch_first=True``).
      lengths: integer ``[B]``, ``0 <= lengths[b] <= T``.
      batch_first: layout of ``x`` (default ``False``).

    Returns:
      ``[B, *]``, floating (integer ``x`` is promoted as ``jnp.mean`` does). Zero-length rows give
      ``0`` with zero gradient (the divisor is clamped to 1, the sum there is 0).

    Raises:
      ValueError, TypeError: as :func:`masked_sum`.

    >>> x = jnp.array([[1.0, 3.0, jnp.nan], [jnp.nan, 0.0, 0.0]])[..., None]   # [B=2, T=3, F=1]
    >>> masked_mean(x, jnp.array([2, 0]), batch_first=True).tolist()
    [[2.0], [0.0]]
    """
    total, lengths = _valid_sum(jnp.asarray(x), lengths, batch_first)
    count = _per_row(jnp.maximum(lengths, 1), total.ndim)
    return total / count.astype(jnp.result_type(total.dtype, float))


@rejects_torch
def masked_max(x: jax.Array, lengths: jax.Array, batch_first: bool = False, *,
               empty_value: float = 0.0) -> jax.Array:
    """Maximum over each row's valid steps ``t < lengths[b]``.

    The gradient flows to the maximising valid step(s); ties share it equally, as ``jnp.max`` does
    (torch's ``amax`` does the same; ``torch.max(dim)`` instead sends it to one index).

    Args:
      x: ``[T, B, *]`` (or ``[B, T, *]`` with ``batch_first=True``).
      lengths: integer ``[B]``, ``0 <= lengths[b] <= T``.
      batch_first: layout of ``x`` (default ``False``).
      empty_value: output for zero-length rows (default ``0.0``), with zero gradient.

    Returns:
      ``[B, *]``, dtype of ``x``.

    Raises:
      ValueError, TypeError: as :func:`masked_sum`.

    >>> x = jnp.array([[-1.0, -3.0, jnp.inf], [2.0, 5.0, 9.0]])[..., None]   # [B=2, T=3, F=1]
    >>> masked_max(x, jnp.array([2, 0]), batch_first=True).tolist()
    [[-1.0], [0.0]]
    """
    x = jnp.asarray(x)
    lengths, mask, t_axis = _valid_mask(x, lengths, batch_first)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        lowest = jnp.asarray(-jnp.inf, x.dtype)
    else:
        lowest = jnp.asarray(jnp.iinfo(x.dtype).min, x.dtype)
    best = jnp.max(jnp.where(mask, x, lowest), axis=t_axis)
    return jnp.where(_per_row(lengths > 0, best.ndim), best, jnp.asarray(empty_value, x.dtype))
