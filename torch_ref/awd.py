"""AWD-LSTM's pieces (salesforce/awd-lstm-lm) rewritten for current torch, as port targets.

* :class:`WeightDrop`: re-registers ``weight_hh_l0`` of the wrapped LSTM as ``weight_hh_l0_raw``
  and applies dropout to it at every forward in training (``variational=True`` drops whole rows);
  the original's ``variational`` mode also dropped in evaluation, a bug not copied here.
* :class:`RNNModel`: embedding (with ``embedded_dropout``) -> locked dropout -> several
  single-layer LSTMs, each wrapped in ``WeightDrop``, locked dropout between them with a different
  rate per call -> decoder tied to the embedding. ``state_dict`` keys are the original's:
  ``encoder.weight``, ``rnns.0.module.weight_ih_l0``, ``rnns.0.module.weight_hh_l0_raw``, ...,
  ``decoder.weight`` (the tied embedding again), ``decoder.bias``.

Every dropout takes an explicit mask so that it can be compared exactly with jaxseq.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.dropout import LockedDropout, embedded_dropout
from torch_ref.packed import run_packed


class WeightDrop(nn.Module):
    """Dropout on chosen recurrent weights of ``module`` (an ``nn.LSTM``), AWD-LSTM's ``WeightDrop``."""

    def __init__(self, module: nn.RNNBase, weights: Sequence[str], dropout: float = 0.0,
                 variational: bool = False):
        super().__init__()
        self.module, self.weights = module, list(weights)
        self.dropout, self.variational = dropout, variational
        for name in self.weights:
            raw = getattr(module, name)
            del module._parameters[name]
            module.register_parameter(name + "_raw", nn.Parameter(raw.data))

    def _set_weights(self, masks: Optional[dict] = None) -> None:
        for name in self.weights:
            raw = getattr(self.module, name + "_raw")
            if masks is not None and name in masks:
                w = raw * masks[name]
            elif self.variational:
                rows = F.dropout(torch.ones(raw.shape[0], 1, dtype=raw.dtype), self.dropout,
                                 self.training)
                w = raw * rows
            else:
                w = F.dropout(raw, self.dropout, self.training)
            setattr(self.module, name, w)
        self.module._init_flat_weights()

    def forward(self, x, lengths, hx=None, masks: Optional[dict] = None):
        """``masks``: optional ``{weight name: scaled multiplier}`` replacing the drawn ones."""
        self._set_weights(masks)
        return run_packed(self.module, x, lengths, hx)


class RNNModel(nn.Module):
    """AWD-LSTM language model: ``forward(tokens [B, T], lengths [B]) -> logits [B, T, V]``.

    Rates as the original: ``dropoute`` (embedding rows), ``dropouti`` (input, locked), ``dropouth``
    (between LSTMs, locked), ``dropout`` (output, locked), ``wdrop`` (``W_hh`` of every LSTM).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int = 3, *,
                 dropout: float = 0.4, dropouth: float = 0.3, dropouti: float = 0.65,
                 dropoute: float = 0.1, wdrop: float = 0.5):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, embed_dim)
        sizes = [embed_dim] + [hidden_size] * (num_layers - 1) + [embed_dim]
        self.rnns = nn.ModuleList([
            WeightDrop(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True), ["weight_hh_l0"], wdrop)
            for i in range(num_layers)])
        self.lockdrop = LockedDropout(batch_first=True)
        self.decoder = nn.Linear(embed_dim, vocab_size)
        self.decoder.weight = self.encoder.weight                      # tied
        self.rates = dict(dropout=dropout, dropouth=dropouth, dropouti=dropouti, dropoute=dropoute)

    def forward(self, tokens: torch.Tensor, lengths, masks: Optional[dict] = None) -> torch.Tensor:
        """``masks`` (optional, for exact comparisons): ``embedding [V, 1]``, ``locked`` (one
        ``[B, 1, F]`` mask per LockedDropout call: input, between layers, output) and ``weights``
        (one ``{"weight_hh_l0": mask}`` per LSTM)."""
        masks = masks or {}
        training = self.training
        x = embedded_dropout(self.encoder, tokens, self.rates["dropoute"] if training else 0,
                             mask=masks.get("embedding"))
        locked = list(masks.get("locked", [None] * (len(self.rnns) + 1)))
        rates = [self.rates["dropouti"]] + [self.rates["dropouth"]] * (len(self.rnns) - 1)
        for i, rnn in enumerate(self.rnns):
            x = self._lock(x, rates[i], locked[i], training)
            x, _ = rnn(x, lengths, masks=(masks.get("weights") or [None] * len(self.rnns))[i])
        x = self._lock(x, self.rates["dropout"], locked[-1], training)
        return self.decoder(x)

    def _lock(self, x, rate, mask, training):
        if mask is not None:
            return self.lockdrop(x, mask=mask)
        self.lockdrop.p = rate
        self.lockdrop.train(training)
        return self.lockdrop(x)
