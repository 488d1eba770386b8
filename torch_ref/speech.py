"""A small DeepSpeech-like acoustic model written the correct packed way: the twin of
``examples/port_speech.py``.

Shaped like deepspeech.pytorch's ``DeepSpeech`` (SeanNaren/deepspeech.pytorch, ``model.py``) at a
toy size: a spectrogram ``[B, 1, F, T]`` -> two conv blocks in an ``nn.Sequential`` (``Conv2d`` ->
batch norm -> ``Hardtanh(0, 20)``; the first strides 2 in frequency and time, the second 2 in
frequency only) -> features ``[B, T', C * F']`` -> a bidirectional LSTM over a ``PackedSequence``
-> ``Linear`` -> ``log_softmax`` ``[B, T', classes]``, trained with CTC (:func:`ctc_loss`, blank 0).

Bugs avoided (each one is in real code):

* **lengths not updated through strided convs.** After a time stride of 2 an utterance of ``L``
  frames has ``floor((L + 2p - d(k - 1) - 1) / s) + 1`` (:func:`conv_output_lengths`); packing
  the conv output with the input lengths reads padding as speech (or fails for ``L > T'``), and
  CTC then scores frames that do not exist. The lengths go through every conv, one formula each
  (deepspeech.pytorch's ``get_seq_lens`` does the same).
* **padding in the convolutions.** Convs read their neighbours, so every valid frame near the end
  of an utterance sees the padded frames: they must be zeros, like the conv's own zero padding, or
  the output depends on what the batch's padding holds and on the longest utterance in the batch.
  The input is masked (``masked_fill``) and every block's output is 0 at padding
  (deepspeech.pytorch's ``MaskConv`` masks after each module).
* **normalising over padding.** deepspeech.pytorch's ``SequenceWise(nn.BatchNorm1d)`` (before every
  RNN but the first, and before the output layer) flattens ``[T, B, H]`` and normalises over the
  padded frames too; its ``BatchNorm2d`` after ``MaskConv`` counts the zeroed padding in its
  statistics. Either way the batch statistics, the running statistics and so the trained model
  depend on how much padding each batch had. Here both batch norms are
  :class:`torch_ref.batch_norm.MaskedBatchNorm` (torch's own ``BatchNorm1d`` kernels on the valid
  positions only; its ``state_dict`` is a ``BatchNorm2d``'s), and no batch norm runs on the RNN
  features.
* **taking ``output[-1]``.** Per-frame outputs come from ``pad_packed_sequence(total_length=T')``
  (without ``total_length`` they stop at the longest utterance and no longer line up with
  ``T'``); an utterance-level summary must not read ``output[-1]`` (padding for every shorter
  utterance, and the reverse direction's *first* step) but ``h_n``.
* **sorted batches.** ``pack_padded_sequence(enforce_sorted=False)``: any batch order (deepspeech's
  ``BatchRNN`` uses the default ``enforce_sorted=True`` and relies on a sorting data loader).

The bidirectional outputs are concatenated (deepspeech.pytorch sums the two directions).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torch_ref.batch_norm import MaskedBatchNorm, length_mask

TIME = 1  # the time axis of a Conv2d's kernel / stride / padding over [B, C, F, T]
FREQ = 0


def conv_output_lengths(lengths: torch.Tensor, conv: nn.Conv2d, dim: int = TIME) -> torch.Tensor:
    """Output sizes of ``conv`` along spatial axis ``dim`` (1: time, 0: frequency) for input sizes
    ``lengths``: ``floor((L + 2 padding - dilation (kernel - 1) - 1) / stride) + 1``, torch's
    formula (``nn.Conv2d`` docs, "Shape").

    >>> conv = nn.Conv2d(1, 1, kernel_size=(5, 5), stride=(2, 2), padding=(2, 2))
    >>> conv_output_lengths(torch.tensor([1, 2, 9, 10]), conv).tolist()
    [1, 1, 5, 5]
    """
    if not isinstance(conv.padding, tuple):
        raise ValueError(f"padding must be explicit sizes, got {conv.padding!r}")
    return (lengths + 2 * conv.padding[dim] - conv.dilation[dim] * (conv.kernel_size[dim] - 1)
            - 1) // conv.stride[dim] + 1


class SpeechModel(nn.Module):
    """Conv front end -> packed BiLSTM -> linear -> log-softmax, per frame.

    Args:
      n_freq: ``F``, frequency bins of the input spectrogram.
      num_classes: output classes, blank (0) included.
      hidden_size: ``H`` of the LSTM (each direction).
      channels: output channels of both convs.

    ``forward(spect [B, 1, F, T], lengths [B]) -> (log_probs [B, T', num_classes],
    output_lengths [B])``, ``T'`` and ``output_lengths`` through the convs. Submodules: ``conv`` (the
    ``nn.Sequential``: ``conv.0`` / ``conv.3`` convs, ``conv.1`` / ``conv.4`` batch norms), ``rnn``,
    ``fc``. Padding content (NaN included) reaches no output and no gradient.

    >>> model = SpeechModel().eval()
    >>> log_probs, out_lengths = model(torch.randn(2, 1, 16, 9), torch.tensor([9, 4]))
    >>> tuple(log_probs.shape), out_lengths.tolist()
    ((2, 5, 8), [5, 2])
    """

    def __init__(self, n_freq: int = 16, num_classes: int = 8, hidden_size: int = 16,
                 channels: int = 8):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=(5, 5), stride=(2, 2), padding=(2, 2)),
            MaskedBatchNorm(channels),
            nn.Hardtanh(0, 20),
            nn.Conv2d(channels, channels, kernel_size=(5, 3), stride=(2, 1), padding=(2, 1)),
            MaskedBatchNorm(channels),
            nn.Hardtanh(0, 20),
        )
        freq = torch.tensor(n_freq)
        for conv in self.convs():
            freq = conv_output_lengths(freq, conv, FREQ)
        self.rnn = nn.LSTM(channels * int(freq), hidden_size, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.conv if isinstance(m, nn.Conv2d)]

    def forward(self, spect: torch.Tensor, lengths: Any) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.as_tensor(lengths).cpu()
        valid = length_mask(lengths, spect.shape[3], batch_first=True).to(spect.device)  # [B, T]
        x = spect.masked_fill(~valid[:, None, None, :], 0.0)            # padding -> 0 (NaN too)
        for module in self.conv:
            if isinstance(module, nn.Conv2d):
                x = module(x)                                           # [B, C, F', T']
                lengths = conv_output_lengths(lengths, module)
            elif isinstance(module, MaskedBatchNorm):                   # over valid frames only
                B, _, Fq, T = x.shape
                frames = length_mask(lengths, T, batch_first=True).to(x.device)        # [B, T']
                x = module(x.permute(0, 2, 3, 1), frames[:, None, :].expand(B, Fq, T))
                x = x.permute(0, 3, 1, 2)                               # 0 at padding
            else:
                x = module(x)                                           # Hardtanh(0) = 0
        B, C, Fq, T = x.shape
        features = x.permute(0, 3, 1, 2).reshape(B, T, C * Fq)         # [B, T', C * F']
        packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.rnn(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=T)   # 0 at padding
        return F.log_softmax(self.fc(output), dim=-1), lengths


def ctc_loss(log_probs: torch.Tensor, output_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
    """CTC (blank 0, torch's ``"mean"``: per utterance over its target length, then over the batch)
    of ``log_probs [B, T', C]``, padded ``targets [B, S]``.

    >>> model = SpeechModel().eval()
    >>> log_probs, out_lengths = model(torch.randn(2, 1, 16, 9), torch.tensor([9, 4]))
    >>> ctc_loss(log_probs, out_lengths, torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1])).ndim
    0
    """
    return F.ctc_loss(log_probs.transpose(0, 1), targets, output_lengths, target_lengths, blank=0)
