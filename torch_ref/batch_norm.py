"""The torch twin of :class:`jaxseq.BatchNorm`: batch norm over the valid positions of a padded batch.

torch has no masked batch norm. DeepSpeech-style ``SequenceWise(nn.BatchNorm1d(H))`` flattens
``[T, B, H]`` to ``[T * B, H]`` and normalises over the padded frames too, so the statistics (and
the running ones) depend on how much padding the batch holds. :class:`MaskedBatchNorm` runs torch's
own ``nn.BatchNorm1d`` on the valid rows only, ``x[mask] [n, C]``, and puts the result back (0 at
padding): torch's kernels, momentum (``None`` included), unbiased running variance and
``num_batches_tracked``, with ``n`` the number of valid positions. It *is* an ``nn.BatchNorm1d``
(same constructor, parameters and buffers), so it loads any ``nn.BatchNorm1d`` / ``2d`` ``state_dict``
and its ``state_dict`` loads into them: swap it in for ``SequenceWise(nn.BatchNorm1d(H))``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


def length_mask(lengths: Any, max_len: int, batch_first: bool = False) -> torch.Tensor:
    """Boolean ``[T, B]`` (``[B, T]`` with ``batch_first``): ``t < lengths[b]``.

    >>> length_mask([2, 1], 3).int().tolist()
    [[1, 1], [1, 0], [0, 0]]
    """
    lengths = torch.as_tensor(lengths)
    mask = torch.arange(max_len)[None, :] < lengths[:, None]          # [B, T]
    return mask if batch_first else mask.T


class MaskedBatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` on features-last inputs ``[..., C]``, over the positions ``mask`` marks.

    ``forward(x, mask=None)``: ``x [..., C]`` (e.g. ``[T, B, C]``, or ``[B, H, W, C]`` for a
    ``BatchNorm2d``); ``mask`` boolean with the shape of leading axes of ``x`` (``[T, B]``, see
    :func:`length_mask`), broadcast over the remaining ones; ``None`` means all valid (then it
    equals ``nn.BatchNorm1d`` on ``x.reshape(-1, C)``). Returns ``[..., C]``, 0 at invalid
    positions, which reach no statistic and get no gradient.

    >>> bn = MaskedBatchNorm(2).train()
    >>> x = torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]], [[float("nan"), 0.0]]])   # [T=3, B=1, C=2]
    >>> bn(x, length_mask([2], 3)).squeeze(1).round(decimals=3).tolist()
    [[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]
    >>> bn.running_var.tolist()                                      # unbiased: 0.9 + 0.1 * 2
    [1.100000023841858, 1.7000000476837158]
    >>> list(bn.state_dict()) == list(nn.BatchNorm1d(2).state_dict())
    True
    """

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        lead = x.shape[:-1]
        if mask is None:
            keep = torch.ones(lead, dtype=torch.bool, device=x.device)
        else:
            if mask.dtype != torch.bool or mask.dim() > len(lead) or mask.shape != lead[:mask.dim()]:
                raise ValueError(f"mask must be boolean with the shape of x's leading axes: x "
                                 f"{tuple(x.shape)}, mask {tuple(mask.shape)} ({mask.dtype})")
            keep = mask.reshape(mask.shape + (1,) * (len(lead) - mask.dim())).expand(lead)
        rows = super().forward(x[keep])                                  # [n, C]
        return rows.new_zeros(x.shape).index_put((keep,), rows)
