"""Convert between a padded batch plus ``lengths`` and torch's ``PackedSequence``.

``to_packed`` accepts torch tensors, NumPy arrays or JAX arrays, so the parity suite can feed the
same padded data to jaxseq and to a packed torch module.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))


def to_packed(padded: Any, lengths: Any, batch_first: bool = False) -> PackedSequence:
    """Pack a right-padded batch with ``enforce_sorted=False`` (rows keep the caller's order).

    Args:
      padded: ``[T, B, *]`` (or ``[B, T, *]`` with ``batch_first=True``), tensor or array.
      lengths: integer ``[B]`` with ``1 <= lengths[b] <= T`` (torch rejects zero lengths).
      batch_first: layout of ``padded``.

    Returns:
      ``torch.nn.utils.rnn.PackedSequence`` with ``unsorted_indices`` set.

    Raises:
      ValueError: a length exceeds ``T`` (torch itself would silently truncate, pytorch#146744),
        or (from torch) a length is ``<= 0``.

    >>> packed = to_packed(np.arange(6.0).reshape(3, 2), [3, 1])     # [T=3, B=2]
    >>> packed.data.tolist(), packed.batch_sizes.tolist()
    ([0.0, 1.0, 2.0, 4.0], [2, 1, 1])
    """
    padded = _as_tensor(padded)
    lengths = torch.as_tensor(np.array(lengths), dtype=torch.int64)
    max_len = padded.shape[1 if batch_first else 0]
    if lengths.numel() and int(lengths.max()) > max_len:
        raise ValueError(f"`lengths` must be <= T={max_len}, got {int(lengths.max())}")
    return pack_padded_sequence(padded, lengths, batch_first=batch_first, enforce_sorted=False)


def from_packed(packed: PackedSequence, total_length: int,
                batch_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack to a zero-padded batch of time extent ``total_length``, in the caller's row order.

    Args:
      packed: a ``PackedSequence`` (e.g. from :func:`to_packed` or a packed RNN's output).
      total_length: ``T`` of the result; must be ``>= max(lengths)``.
      batch_first: ``False`` returns ``[T, B, *]``, ``True`` returns ``[B, T, *]``.

    Returns:
      ``(padded, lengths)``: padded tensor with zeros after each row's length, and int64 ``[B]``.

    >>> padded, lengths = from_packed(to_packed(np.arange(6.0).reshape(3, 2), [3, 1]), 4)
    >>> padded.tolist(), lengths.tolist()
    ([[0.0, 1.0], [2.0, 0.0], [4.0, 0.0], [0.0, 0.0]], [3, 1])
    """
    return pad_packed_sequence(packed, batch_first=batch_first, total_length=total_length)
