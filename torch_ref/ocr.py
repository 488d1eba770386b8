"""A CRNN text-line recogniser written the correct packed way: the twin of ``examples/ocr_ctc.py``.

Shaped like Shi et al.'s CRNN (arXiv:1507.05717) at a small size: a grayscale image ``[B, 1, H, W]``
-> conv blocks (``Conv2d`` 3x3 without bias -> batch norm over the valid columns -> ``ReLU`` ->
``max_pool2d``; the first two halve height and width, the others height only) -> one feature
vector per image column ``[B, W', C * H']`` -> a bidirectional LSTM over a ``PackedSequence`` of
each image's own columns -> ``Linear`` -> ``log_softmax`` ``[B, W', classes]``, trained with CTC
(:func:`ctc_loss`, blank 0).

Bugs avoided (each one is in real CRNN code):

* **widths not followed through the poolings.** A batch pads its images to one width; after
  ``max_pool2d`` of width 2 an image of ``W`` columns has ``floor(W / 2)``
  (:func:`pooled_widths`). Packing with the padded width (or the input width) makes the LSTM and
  CTC read columns of padding as text; the usual "T = W' for every image" hard-codes it.
* **padding leaking through the convolutions.** A 3x3 conv reads its neighbours, so a word's last
  columns see the padded columns: they must be zeros, as the conv's own zero padding, or the
  output depends on how wide the widest image of the batch is. The input is masked (NaN included)
  and every block's output is zeroed beyond its pooled width (a pooling window that straddles the
  end of an odd width is padding).
* **batch statistics over padding.** ``nn.BatchNorm2d`` on the padded batch counts the padded
  columns in its mean and variance, so the statistics, the running ones and the trained model
  depend on the batch's padding. The blocks use :class:`torch_ref.batch_norm.MaskedBatchNorm` (its
  ``state_dict`` is a ``BatchNorm2d``'s) on the valid columns only.
* **a conv bias before batch norm**: its gradient is zero (the mean is subtracted), so it is left
  out (``bias=False``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.batch_norm import MaskedBatchNorm, length_mask
from torch_ref.packed import run_packed

#: Pooling (height, width) of each block of the default model: width stride 4 in all.
POOLS = ((2, 2), (2, 2), (2, 1), (2, 1))


def pooled_widths(widths: torch.Tensor, pool_width: int) -> torch.Tensor:
    """Valid columns after a ``max_pool2d`` of width ``pool_width`` (stride = kernel, no padding):
    ``floor(W / pool_width)``; every output column then reads valid columns only.

    >>> pooled_widths(torch.tensor([7, 8, 1]), 2).tolist()
    [3, 4, 0]
    """
    return torch.div(widths, pool_width, rounding_mode="floor")


class ConvBlock(nn.Module):
    """``Conv2d`` 3x3 (padding 1, no bias) -> masked batch norm -> ReLU -> max pool ``pool``.

    ``forward(x [B, C_in, H, W], widths [B]) -> (y [B, C_out, H / ph, W / pw], pooled widths)``,
    ``y`` exactly 0 beyond each image's pooled width.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = MaskedBatchNorm(out_channels)
        self.pool = tuple(pool)

    def forward(self, x: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x)                                                   # [B, C, H, W]
        B, _, H, W = x.shape
        columns = length_mask(widths, W, batch_first=True).to(x.device)   # [B, W]
        x = self.norm(x.permute(0, 2, 3, 1), columns[:, None, :].expand(B, H, W))
        x = F.max_pool2d(torch.relu(x.permute(0, 3, 1, 2)), self.pool)
        widths = pooled_widths(widths, self.pool[1])
        valid = length_mask(widths, x.shape[3], batch_first=True).to(x.device)
        return x.masked_fill(~valid[:, None, None, :], 0.0), widths


class CRNN(nn.Module):
    """Conv blocks -> packed BiLSTM over columns -> linear -> log-softmax, per column.

    Args:
      num_classes: output classes, blank (0) included.
      height: ``H`` of the input images (a multiple of ``2 ** len(channels)`` with the default
        pools).
      channels: output channels of each conv block.
      hidden_size: ``H`` of the LSTM (each direction).
      num_layers: LSTM layers.
      pools: (height, width) pooling of each block (default :data:`POOLS`).

    ``forward(images [B, 1, H, W], widths [B]) -> (log_probs [B, W', num_classes],
    output_lengths [B])``. Submodules: ``blocks`` (``blocks.i.conv``, ``blocks.i.norm``), ``rnn``,
    ``fc``. Padding content (NaN included) reaches no output and no gradient.

    >>> model = CRNN(num_classes=5, channels=(4, 4, 4, 4), hidden_size=6).eval()
    >>> log_probs, lengths = model(torch.rand(2, 1, 32, 20), torch.tensor([20, 9]))
    >>> tuple(log_probs.shape), lengths.tolist()
    ((2, 5, 5), [5, 2])
    """

    def __init__(self, num_classes: int = 27, *, height: int = 32,
                 channels: Sequence[int] = (32, 64, 96, 96), hidden_size: int = 128,
                 num_layers: int = 1, pools: Sequence[tuple[int, int]] = POOLS):
        super().__init__()
        if len(pools) != len(channels):
            raise ValueError(f"one pool per block: {len(channels)} channels, {len(pools)} pools")
        ins = (1,) + tuple(channels[:-1])
        self.blocks = nn.ModuleList([ConvBlock(i, o, p) for i, o, p in zip(ins, channels, pools)])
        for pool_height, _ in pools:
            height //= pool_height
        self.rnn = nn.LSTM(channels[-1] * height, hidden_size, num_layers, batch_first=True,
                           bidirectional=True)
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, images: torch.Tensor, widths: Any) -> tuple[torch.Tensor, torch.Tensor]:
        widths = torch.as_tensor(widths).cpu()
        valid = length_mask(widths, images.shape[3], batch_first=True).to(images.device)
        x = images.masked_fill(~valid[:, None, None, :], 0.0)                # padding -> 0
        for block in self.blocks:
            x, widths = block(x, widths)
        B, C, H, W = x.shape
        features = x.permute(0, 3, 1, 2).reshape(B, W, C * H)               # [B, W', C * H']
        output, _ = run_packed(self.rnn, features, widths)                  # 0 at padding
        return F.log_softmax(self.fc(output), dim=-1), widths


def ctc_loss(log_probs: torch.Tensor, output_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CTC (blank 0) of ``log_probs [B, W', C]`` against padded ``targets [B, S]``; ``"mean"`` is
    torch's: each image's loss over its target length, then the mean over the batch.

    >>> model = CRNN(num_classes=5, channels=(4, 4, 4, 4), hidden_size=6).eval()
    >>> log_probs, lengths = model(torch.rand(2, 1, 32, 20), torch.tensor([20, 9]))
    >>> ctc_loss(log_probs, lengths, torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1])).ndim
    0
    """
    return F.ctc_loss(log_probs.transpose(0, 1), targets, output_lengths, target_lengths,
                      blank=0, reduction=reduction)
