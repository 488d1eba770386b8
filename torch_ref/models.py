"""Reference torch models for variable-length batches, written the correct (packed) way.

Twins of the JAX examples (``examples/word_language.py``, ``examples/char_lm.py``): same layers, same
parameter shapes, same dropout placement, so that weights copied across give the same losses.
Each class names the classic mistakes it avoids; ``docs/porting.md`` shows them next to jaxseq.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from torch_ref.dropout import LockedDropout
from torch_ref.packed import run_packed

IGNORE_INDEX = -100  # torch's default ``ignore_index``: targets at padding and filler rows


class WordClassifier(nn.Module):
    """Sequence classifier: embedding → locked dropout → BiLSTM (packed) → ``cat(h_n[-2], h_n[-1])``
    → dropout → linear. ``forward(tokens [B, T], lengths [B]) -> logits [B, C]``.

    Bugs avoided:

    * ``output[:, -1]`` on the padded output: for every sequence shorter than ``T`` that reads
      padding (zeros after ``pad_packed_sequence``), and for the reverse direction ``T - 1`` is the
      *first* step it took, not its summary. The final states ``h_n`` are taken instead: with a
      ``PackedSequence`` each row's forward state is the one after its own last token and its
      backward state the one after reading back to token 0.
    * ``h_n`` indexing: ``h_n`` is ``[L * D, B, H]`` ordered ``layer * D + direction``, so the last
      layer's forward / backward states are ``h_n[-2]`` / ``h_n[-1]`` (``h_n.view(L, D, B, H)[-1]``);
      ``h_n[-1]`` alone is only the backward direction.
    * dropout on a ``PackedSequence``: ``nn.Dropout`` cannot take one (it is a tuple of tensors), and
      dropping ``packed.data`` loses the per-sequence structure a locked mask needs. The locked
      dropout (:class:`torch_ref.dropout.LockedDropout`, one mask per word) acts on the padded
      embeddings before packing; ``enforce_sorted=False`` keeps the caller's batch order (no manual
      sort / unsort).
    * loss averaged over filler rows — the loss uses ``ignore_index`` on their labels.
    """

    def __init__(self, vocab_size: int, num_classes: int, *, embed_dim: int, hidden_size: int,
                 num_layers: int = 1, dropout: float = 0.0, padding_idx: int = 0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.embed_dropout = LockedDropout(dropout, batch_first=True)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0, bidirectional=True)
        self.head_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed_dropout(self.embedding(tokens))                       # [B, T, E]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)                                      # h_n [L*2, B, H]
        features = torch.cat([h_n[-2], h_n[-1]], dim=-1)                     # [B, 2H]
        return self.classifier(self.head_dropout(features))


class CharLM(nn.Module):
    """Per-token model (next-character LM / tagger): embedding → locked dropout → LSTM (packed) →
    dropout → linear at every step. ``forward(inputs [B, T], lengths [B]) -> logits [B, T, V]``.

    Bugs avoided:

    * loss averaged over padding: :func:`token_loss` uses ``ignore_index`` so that padded positions
      neither count in the mean's denominator nor receive gradient. Computing a ``"mean"`` loss and
      then multiplying it by a mask is wrong (the mean already includes the padding); a mask must
      act on the per-token losses before the reduction, dividing by the number of real tokens.
    * ``pad_packed_sequence`` without ``total_length``: the output would be trimmed to the longest
      sequence of the batch and no longer line up with ``[B, T]`` targets (``run_packed`` passes it).
    * dropout on a ``PackedSequence``, as in :class:`WordClassifier`.
    """

    def __init__(self, vocab_size: int, *, embed_dim: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, padding_idx: int = 0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.embed_dropout = LockedDropout(dropout, batch_first=True)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed_dropout(self.embedding(inputs))                       # [B, T, E]
        output, _ = run_packed(self.lstm, x, lengths)                        # [B, T, H], 0 at pad
        return self.decoder(self.output_dropout(output))                     # [B, T, V]


def token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of ``logits [B, T, V]`` against ``targets [B, T]`` (``IGNORE_INDEX`` at padding),
    averaged over real tokens only (``"mean"``); ``"sum"`` gives the total over real tokens.
    """
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                           reduction=reduction)
