"""An attention encoder-decoder written the correct torch way: the twin of ``examples/seq2seq.py``.

* encoder: embedding -> BiLSTM over a ``PackedSequence`` (``enforce_sorted=False``, lengths on the
  CPU) -> ``pad_packed_sequence(total_length=T)``; the decoder starts from the concatenated final
  states of both directions (``h_n`` per row, never ``output[:, -1]``);
* decoder: an ``nn.LSTMCell`` loop with input feeding (the previous attention context is part of
  the next input) and Luong dot attention over the encoder outputs with the padding masked out
  *before* the softmax (:func:`masked_dot_attention`);
* loss: cross entropy over real target tokens only (``ignore_index``), averaged over tokens.

Bugs avoided: attending to padded encoder steps (a softmax over ``[B, T]`` scores without the mask
gives padding weight, and the zeros ``pad_packed_sequence`` writes there are not "nothing": they
shift the context); a decoder initialised from ``output[:, -1]``, which is padding for every row
shorter than ``T`` (and only the forward direction's state for the rest).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.packed import run_packed

IGNORE_INDEX = -100


def masked_dot_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``query [B, H]``, ``keys [B, T, H]``, ``values [B, T, F]`` -> ``(context [B, F], weights [B, T])``
    with no weight on ``t >= lengths[b]`` (rows of length 0 get zero weights instead of NaN)."""
    scores = torch.einsum("bh,bth->bt", query, keys)
    mask = torch.arange(keys.shape[1], device=keys.device)[None] < lengths.to(keys.device)[:, None]
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    weights = torch.where(mask, weights, torch.zeros_like(weights))   # NaN rows (length 0) -> 0
    return torch.einsum("bt,btf->bf", weights, values), weights


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """``tokens [B, T]`` -> ``(outputs [B, T, 2H] (0 at padding), (h0, c0) [B, 2H] each)``."""
        out, (h_n, c_n) = run_packed(self.lstm, self.embedding(tokens), lengths)
        join = lambda s: torch.cat([s[0], s[1]], dim=-1)                 # noqa: E731 fwd | bwd
        return out, (join(h_n), join(c_n))


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.cell = nn.LSTMCell(embed_dim + hidden_size, hidden_size)
        self.out = nn.Linear(2 * hidden_size, vocab_size)

    def step(self, tokens: torch.Tensor, state, context: torch.Tensor, memory: torch.Tensor,
             lengths: torch.Tensor):
        """One step: ``tokens [B]`` -> ``(logits [B, V], state, context, weights [B, T])``."""
        h, c = self.cell(torch.cat([self.embedding(tokens), context], dim=-1), state)
        context, weights = masked_dot_attention(h, memory, memory, lengths)
        return self.out(torch.cat([h, context], dim=-1)), (h, c), context, weights


class Seq2Seq(nn.Module):
    """``forward(src [B, S], src_lengths [B], tgt_in [B, T]) -> logits [B, T, V]`` (teacher forcing)."""

    def __init__(self, vocab_size: int, *, embed_dim: int, hidden_size: int):
        super().__init__()
        self.encoder = Encoder(vocab_size, embed_dim, hidden_size)
        self.decoder = Decoder(vocab_size, embed_dim, 2 * hidden_size)

    def start(self, src: torch.Tensor, src_lengths: torch.Tensor):
        memory, state = self.encoder(src, src_lengths)
        return memory, state, torch.zeros_like(state[0])

    def forward(self, src, src_lengths, tgt_in):
        memory, state, context = self.start(src, src_lengths)
        logits = []
        for t in range(tgt_in.shape[1]):
            step_logits, state, context, _ = self.decoder.step(tgt_in[:, t], state, context, memory,
                                                               src_lengths)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def greedy(self, src, src_lengths, bos: int, eos: int, max_len: int, pad: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding: ``(tokens [B, max_len], attention [B, max_len, S])``; ``pad`` after
        each row's ``eos``."""
        memory, state, context = self.start(src, src_lengths)
        tokens = torch.full((src.shape[0],), bos, dtype=torch.long)
        done = torch.zeros(src.shape[0], dtype=torch.bool)
        out, maps = [], []
        for _ in range(max_len):
            logits, state, context, weights = self.decoder.step(tokens, state, context, memory,
                                                                src_lengths)
            tokens = logits.argmax(-1)
            out.append(torch.where(done, torch.full_like(tokens, pad), tokens))
            maps.append(weights)
            done = done | (tokens == eos)
        return torch.stack(out, 1), torch.stack(maps, 1)


def token_loss(logits: torch.Tensor, targets: torch.Tensor,
               weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross entropy over real target tokens (``IGNORE_INDEX`` elsewhere)."""
    return F.cross_entropy(logits.transpose(1, 2), targets, weight=weight, ignore_index=IGNORE_INDEX)
