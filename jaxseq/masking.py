"""Length masks and per-row time indexing of padded batches.

These are the building blocks that replace ``PackedSequence``: a batch is a padded array plus an
integer ``lengths [B]``; position ``t`` of row ``b`` is valid iff ``t < lengths[b]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseq.validation import check_lengths, rejects_torch


def _time_axis(batch_first: bool) -> int:
    return 1 if batch_first else 0

@rejects_torch
def length_mask(lengths: jax.Array, max_len: int, batch_first: bool = True) -> jax.Array:
    """Boolean validity mask: ``mask[b, t] = t < lengths[b]``, ``[B, max_len]`` (or ``[max_len, B]``).

    Args:
      lengths: integer ``[B]``, ``0 <= lengths[b] <= max_len``.
      max_len: ``T``, the padded length.
      batch_first: ``True`` (default, as ``torch.arange(T)[None] < lengths[:, None]``) gives
        ``[B, T]``; ``False`` gives the time-major ``[T, B]`` of a ``[T, B, F]`` batch (the default
        layout of the recurrent layers). Unlike the other helpers the default is batch-first, for
        compatibility with earlier releases.

    Returns:
      ``bool [B, max_len]`` (``[max_len, B]`` with ``batch_first=False``).

    Raises:
      ValueError / TypeError: as :func:`jaxseq.check_lengths`.

    >>> length_mask(jnp.array([2, 0, 3]), 3).astype(int)
    Array([[1, 1, 0],
           [0, 0, 0],
           [1, 1, 1]], dtype=int32)
    >>> length_mask(jnp.array([2, 0, 3]), 3, batch_first=False).shape
    (3, 3)
    """
    lengths = check_lengths(lengths, max_len)
    if batch_first:
        return jnp.arange(max_len)[None, :] < lengths[:, None]
    return jnp.arange(max_len)[:, None] < lengths[None, :]

def reverse_within_length(x: jax.Array, lengths: jax.Array, t_axis: int = 0) -> jax.Array:
    """Unchecked core of :func:`reverse_padded`: ``lengths`` must already be valid ``int32 [B]``.

    ``t_axis`` is 0 (``[T, B, ...]``) or 1 (``[B, T, ...]``). An involution (a gather; JAX
    differentiates it in both modes).
    """
    max_len = x.shape[t_axis]
    t = jnp.arange(max_len)[None, :]
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)   # [B, T]
    if t_axis == 0:
        idx = idx.T                                                        # [T, B]
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=t_axis)

@rejects_torch
def reverse_padded(x: jax.Array, lengths: jax.Array, batch_first: bool = False) -> jax.Array:
    """Reverse every row within its own length; padded positions stay where they are.

    This is what torch's reverse direction does to a ``PackedSequence``: row ``b`` is read from
    ``lengths[b]-1`` down to ``0``. Applying it twice is the identity.

    Args:
      x: ``[T, B, ...]`` (or ``[B, T, ...]`` with ``batch_first=True``).
      lengths: integer ``[B]``.
      batch_first: layout of ``x``.

    Returns:
      Array of the same shape and dtype as ``x``.

    >>> x = jnp.array([[1, 2, 3], [4, 5, 0]])
    >>> reverse_padded(x, jnp.array([3, 2]), batch_first=True)
    Array([[3, 2, 1],
           [5, 4, 0]], dtype=int32)
    """
    t_axis = _time_axis(batch_first)
    lengths = check_lengths(lengths, x.shape[t_axis], x.shape[1 - t_axis], batch_first=batch_first)
    return reverse_within_length(x, lengths, t_axis)

@rejects_torch
def last_valid(output: jax.Array, lengths: jax.Array, batch_first: bool = False) -> jax.Array:
    """Each row's output at its last valid step ``t = lengths[b]-1``.

    The correct replacement for ``output[:, -1]`` / ``output[-1]`` on a padded RNN output, which
    reads padding for every row shorter than ``T``. Rows with ``lengths[b] == 0`` get zeros.

    Args:
      output: ``[T, B, F...]`` (or ``[B, T, F...]`` with ``batch_first=True``).
      lengths: integer ``[B]``.
      batch_first: layout of ``output``.

    Returns:
      ``[B, F...]``.

    >>> out = jnp.arange(6.0).reshape(2, 3, 1)        # [B=2, T=3, F=1]
    >>> last_valid(out, jnp.array([2, 3]), batch_first=True)
    Array([[1.],
           [5.]], dtype=float32)
    """
    t_axis = _time_axis(batch_first)
    max_len, batch = output.shape[t_axis], output.shape[1 - t_axis]
    lengths = check_lengths(lengths, max_len, batch, batch_first=batch_first)
    seq = output if batch_first else jnp.swapaxes(output, 0, 1)  # [B, T, ...]
    idx = jnp.maximum(lengths - 1, 0).reshape((batch, 1) + (1,) * (seq.ndim - 2))
    picked = jnp.take_along_axis(seq, idx, axis=1)[:, 0]
    keep = (lengths > 0).reshape((batch,) + (1,) * (picked.ndim - 1))
    return jnp.where(keep, picked, jnp.zeros((), picked.dtype))
