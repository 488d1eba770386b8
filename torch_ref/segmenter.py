"""A BiLSTM-CRF sequence tagger written the correct packed way: the twin of
``examples/segment_crf.py`` (word segmentation, tags B / I per character).

``tokens [B, T]`` -> ``nn.Embedding`` -> bidirectional ``nn.LSTM`` over a ``PackedSequence``
(:func:`torch_ref.packed.run_packed`) -> ``nn.Linear`` to per-tag emission scores ``[B, T, K]`` ->
pytorch-crf's ``torchcrf.CRF`` (the log-likelihood of the gold tags, Viterbi decoding).

Bugs avoided (each one is in real BiLSTM-CRF code):

* **no CRF mask.** ``crf(emissions, tags)`` without ``mask=`` scores every padded step as a real
  token (its emission, a transition into it, and ``end_transitions`` of the padding tag instead
  of the last real one), so the loss depends on the batch's padding and ``decode`` returns paths
  of the padded length. Here the mask is the length mask, always.
* **padding read by the LSTM.** Without packing, the reverse direction starts in the padding and
  carries it into every real step; ``pack_padded_sequence(enforce_sorted=False)`` reads each
  line's own characters in the caller's order (no sort / unsort by hand).
* **a sum where a mean was meant.** ``torchcrf.CRF``'s default ``reduction="sum"`` makes the loss
  (and the step size) grow with the batch; :meth:`Segmenter.forward` uses ``"mean"`` over lines.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchcrf import CRF

from torch_ref.batch_norm import length_mask
from torch_ref.packed import run_packed


class Segmenter(nn.Module):
    """Embedding -> packed BiLSTM -> linear -> CRF.

    Args:
      vocab_size: token ids (``0`` the padding).
      num_tags: ``K``.
      embed_dim, hidden_size, num_layers: of the embedding and the LSTM (each direction).

    ``emissions(tokens [B, T], lengths [B]) -> [B, T, K]`` (0 at padding); ``forward(tokens,
    lengths, tags) -> loss``, the negative log-likelihood averaged over lines;
    ``log_likelihood(...)`` per line ``[B]``; ``decode(tokens, lengths) -> List[List[int]]``.
    Submodules: ``embedding``, ``lstm``, ``emission``, ``crf``.

    >>> model = Segmenter(vocab_size=5, num_tags=2, embed_dim=3, hidden_size=4)
    >>> tokens, lengths = torch.tensor([[1, 2, 3], [4, 1, 0]]), torch.tensor([3, 2])
    >>> model(tokens, lengths, torch.tensor([[0, 1, 0], [0, 1, 0]])).ndim
    0
    >>> [len(p) for p in model.decode(tokens, lengths)]
    [3, 2]
    """

    def __init__(self, vocab_size: int, num_tags: int = 2, *, embed_dim: int = 32,
                 hidden_size: int = 64, num_layers: int = 1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True,
                            bidirectional=True)
        self.emission = nn.Linear(2 * hidden_size, num_tags)
        self.crf = CRF(num_tags, batch_first=True)

    def emissions(self, tokens: torch.Tensor, lengths: Any) -> torch.Tensor:
        output, _ = run_packed(self.lstm, self.embedding(tokens), lengths)   # [B, T, 2H]
        return self.emission(output)

    def _mask(self, tokens: torch.Tensor, lengths: Any) -> torch.Tensor:
        return length_mask(lengths, tokens.shape[1], batch_first=True).to(tokens.device)

    def log_likelihood(self, tokens: torch.Tensor, lengths: Any, tags: torch.Tensor
                       ) -> torch.Tensor:
        """Log-likelihood of each line's ``tags`` ``[B]``."""
        return self.crf(self.emissions(tokens, lengths), tags, self._mask(tokens, lengths),
                        reduction="none")

    def forward(self, tokens: torch.Tensor, lengths: Any, tags: torch.Tensor) -> torch.Tensor:
        return -self.log_likelihood(tokens, lengths, tags).mean()

    def decode(self, tokens: torch.Tensor, lengths: Any) -> list[list[int]]:
        """The Viterbi tags of every line (its own length)."""
        return self.crf.decode(self.emissions(tokens, lengths), self._mask(tokens, lengths))
