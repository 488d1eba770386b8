"""Padding and unpadding of variable-length sequences: twins of ``torch.nn.utils.rnn``.

``pad_sequence`` stacks a list of ``[L_i, *]`` arrays into one padded batch; ``unpad_sequence``
splits a padded batch back into that list. Together with an integer ``lengths [B]`` they replace
``PackedSequence``.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.validation import check_lengths, is_concrete, rejects_torch

_PADDING_SIDES = ("right", "left")


@rejects_torch
def pad_sequence(sequences: Sequence[jax.Array], batch_first: bool = False,
                 padding_value: float = 0.0, padding_side: str = "right") -> jax.Array:
    """Stack variable-length arrays ``[L_i, *]`` into one padded array, like torch's ``pad_sequence``.

    Args:
      sequences: non-empty sequence of arrays ``[L_i, *]``; all share the trailing shape ``*`` and
        ``L_i >= 0``. The result dtype is the common JAX result type of all of them.
      batch_first: ``False`` (default) returns ``[T, B, *]``; ``True`` returns ``[B, T, *]``.
      padding_value: value written at padded positions (default ``0.0``), cast to the result dtype.
      padding_side: ``"right"`` (default) keeps row ``b`` at ``t < L_b``; ``"left"`` puts it at
        ``t >= T - L_b``. :func:`unpad_sequence`, ``lengths``-based layers and losses expect
        right padding.

    Returns:
      ``[T, B, *]`` (or ``[B, T, *]``) with ``T = max(L_i)`` and ``B = len(sequences)``.

    Raises:
      ValueError: ``sequences`` is empty, an element has no time axis (0-d), the trailing shapes
        differ, or ``padding_side`` is neither ``"right"`` nor ``"left"``.

    >>> a, b = jnp.array([1, 2, 3]), jnp.array([4])
    >>> pad_sequence([a, b], batch_first=True).tolist()
    [[1, 2, 3], [4, 0, 0]]
    >>> pad_sequence([a, b], batch_first=True, padding_value=-1, padding_side="left").tolist()
    [[1, 2, 3], [-1, -1, 4]]
    """
    if padding_side not in _PADDING_SIDES:
        raise ValueError(f"`padding_side` must be 'right' or 'left', got {padding_side!r}")
    seqs = [jnp.asarray(s) for s in sequences]
    if not seqs:
        raise ValueError("pad_sequence received an empty list of sequences")
    for i, s in enumerate(seqs):
        if s.ndim == 0:
            raise ValueError(f"sequences[{i}] must have a leading time axis [L, *], got a 0-d array")
    trailing = seqs[0].shape[1:]
    for i, s in enumerate(seqs):
        if s.shape[1:] != trailing:
            raise ValueError(f"All sequences must share the trailing shape: sequences[0] has shape "
                             f"{tuple(seqs[0].shape)}, sequences[{i}] has shape {tuple(s.shape)}")
    dtype = jnp.result_type(*seqs)
    lengths = np.array([s.shape[0] for s in seqs])
    max_len = int(lengths.max())
    # One gather from all steps stacked on one axis, followed by a single padding row.
    filler = jnp.full((1, *trailing), padding_value, dtype)
    steps = jnp.concatenate([s.astype(dtype) for s in seqs] + [filler], axis=0)  # [sum L + 1, *]
    offset = np.arange(max_len)[None, :]  # [1, T]
    if padding_side == "left":
        offset = offset - (max_len - lengths[:, None])
    valid = (offset >= 0) & (offset < lengths[:, None])  # [B, T]
    starts = np.cumsum(lengths) - lengths
    index = np.where(valid, starts[:, None] + offset, steps.shape[0] - 1)
    padded = steps[index]  # [B, T, *]
    return padded if batch_first else jnp.swapaxes(padded, 0, 1)


@rejects_torch
def unpad_sequence(padded: jax.Array, lengths: jax.Array,
                   batch_first: bool = False) -> list[jax.Array]:
    """Split a right-padded batch into a list of its valid prefixes, like torch's ``unpad_sequence``.

    Unlike torch (pytorch#98499) the input is never modified.

    Args:
      padded: ``[T, B, *]`` (or ``[B, T, *]`` with ``batch_first=True``), right padded.
      lengths: concrete integer ``[B]`` with ``0 <= lengths[b] <= T``. Output shapes depend on it, so
        it cannot be a ``jit`` tracer.
      batch_first: layout of ``padded``.

    Returns:
      List of ``B`` arrays; element ``b`` is ``[lengths[b], *]``.

    Raises:
      ValueError: ``padded`` has fewer than 2 axes, ``lengths`` is traced, has the wrong size or a
        value outside ``[0, T]``.
      TypeError: ``lengths`` is not integer.

    Examples:
        >>> x = jnp.array([[1, 2, 3], [4, 0, 0]])          # [B=2, T=3]
        >>> [s.tolist() for s in unpad_sequence(x, jnp.array([3, 1]), batch_first=True)]
        [[1, 2, 3], [4]]
    """
    padded = jnp.asarray(padded)
    if padded.ndim < 2:
        raise ValueError(f"`padded` must be [T, B, *] or [B, T, *], got shape {tuple(padded.shape)}")
    if not is_concrete(lengths):
        raise ValueError("unpad_sequence needs concrete `lengths` (its output shapes depend on "
                         "them); call it outside jit")
    t_axis = 1 if batch_first else 0
    lengths = check_lengths(lengths, padded.shape[t_axis], padded.shape[1 - t_axis],
                            batch_first=batch_first)
    rows = padded if batch_first else jnp.swapaxes(padded, 0, 1)  # [B, T, *]
    return [rows[b, :n] for b, n in enumerate(np.asarray(lengths).tolist())]
