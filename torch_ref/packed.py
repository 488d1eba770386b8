"""Run a ``torch.nn.LSTM/GRU/RNN`` on a padded batch the correct, packed way.

``pad -> pack_padded_sequence(enforce_sorted=False) -> rnn -> pad_packed_sequence(total_length=T)``:
torch sorts by length internally and unsorts ``output`` and ``h_n``, so inputs and results stay in
the caller's batch order. ``total_length=T`` keeps ``output`` at the padded length (without it,
``pad_packed_sequence`` trims to ``max(lengths)``, which breaks shape-based code).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, lengths: Any, hx: Optional[Any] = None
               ) -> tuple[torch.Tensor, Any]:
    """Apply ``rnn`` to padded ``x`` with per-row ``lengths``.

    Args:
      rnn: a ``torch.nn.LSTM``, ``GRU`` or ``RNN`` (its ``batch_first`` decides the layout of ``x``).
      x: ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``).
      lengths: ``[B]`` ints, every one in ``[1, T]`` (torch rejects 0).
      hx: optional initial state in the caller's batch order, as for ``rnn(x, hx)``.

    Returns:
      ``(output, state)``: ``output`` padded to ``T`` with zeros, ``state`` as ``rnn`` returns it.

    >>> lstm = nn.LSTM(3, 4)
    >>> out, (h, c) = run_packed(lstm, torch.randn(5, 2, 3), [5, 2])
    >>> out.shape, bool((out[2:, 1] == 0).all())
    (torch.Size([5, 2, 4]), True)
    """
    t_axis = 1 if rnn.batch_first else 0
    lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()
    if int(lengths.max()) > x.shape[t_axis]:
        raise ValueError(f"lengths max {int(lengths.max())} exceeds T={x.shape[t_axis]}")
    packed = pack_padded_sequence(x, lengths, batch_first=rnn.batch_first, enforce_sorted=False)
    out, state = rnn(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=rnn.batch_first, total_length=x.shape[t_axis])
    return out, state
