"""A small Tacotron-2-style text-to-spectrogram model written the correct packed way: the twin of
``examples/port_tts.py``.

Shaped like NVIDIA's Tacotron 2 (``NVIDIA/tacotron2``, ``model.py``) at a toy size, with the
encoder and postnet blocks written as ESPnet writes them (convolutions without bias before a batch
norm):

* **encoder**: character ids ``[B, S]`` -> ``nn.Embedding`` -> ``encoder_n_convolutions`` blocks of
  ``Conv1d`` -> batch norm -> ``ReLU`` -> ``nn.Dropout`` -> a bidirectional LSTM over a
  ``PackedSequence`` -> ``memory [B, S, E]`` (0 at padding);
* **attention decoder**, one Python loop step per output frame (teacher forcing: the previous
  target frame is the input, a zero "go" frame first): a prenet (``Linear`` -> ``ReLU`` ->
  ``F.dropout(p=0.5, training=True)``, twice: dropout that stays on in ``eval()``, as Tacotron's),
  the attention ``nn.LSTMCell``, location-sensitive attention (the encoder memory projected once
  per forward pass, a ``Conv1d`` over the previous and the cumulative attention weights, additive
  energies, softmax masked by the text lengths), the decoder ``nn.LSTMCell``, ``F.dropout`` on both
  cells' hidden states (training only), linear projections to a frame ``[B, n_mel]`` and a stop
  logit ``[B]``. As in NVIDIA's ``Decoder``, the loop state and the projected memory are kept as
  tensor attributes of the module (``self.attention_hidden``, ``self.processed_memory``...), set by
  :meth:`Decoder.initialize_decoder_states` and still there after the forward pass;
* **postnet**: ``postnet_n_convolutions`` blocks of ``Conv1d`` -> batch norm -> ``tanh`` (not the
  last) -> ``F.dropout`` (training only), added to the decoder's frames (a residual).

Losses (:func:`tacotron_loss`): mean squared error of the frames before and after the postnet,
binary cross entropy of the stop logits, and ESPnet's guided attention loss
(:func:`guided_attention_loss`), each over the valid frames (and characters) only.

Bugs avoided (each one is in real Tacotron code):

* **batch statistics over padding.** ``nn.BatchNorm1d`` on ``[B, C, T]`` (NVIDIA's encoder and
  postnet) counts every padded position, so the statistics, the running statistics and the
  outputs depend on how much padding the batch holds. Here every batch norm is
  :class:`torch_ref.batch_norm.MaskedBatchNorm` over the valid positions (the text lengths in the
  encoder, the frame lengths in the postnet).
* **convolutions reading padding.** A conv at the last valid positions reads the padded ones: they
  are zeroed before every conv (:class:`ConvNorm`), like the conv's own zero padding. NVIDIA's
  postnet convolves the decoder's frames past each target's end (the decoder runs to the longest
  target) and only then masks the output, in place through ``.data`` (which autograd does not
  see); here the frames past the end are zeroed before the postnet and the output is 0 there.
* **teacher forcing past the end.** The decoder runs to the longest target of the batch, reading
  the padded target frames as inputs: they are zeroed first, so what the padding holds (NaN
  included) reaches no output and no gradient (the steps past a target's end are masked in the
  loss, but ``0 * NaN`` in their backward pass is not 0).
* **``pad_packed_sequence`` without ``total_length``.** It cuts the memory to the longest text of
  the batch; here it keeps ``S``, so the attention mask, the memory and the text ids line up.
* **sorted batches.** ``pack_padded_sequence(enforce_sorted=False)``: any batch order (NVIDIA's
  collate function sorts by text length and packs with the default ``enforce_sorted=True``).
* **masking through ``.data``.** NVIDIA masks the attention energies with
  ``alignment.data.masked_fill_(mask, -inf)``; here ``masked_fill`` (not in place), so autograd
  sees every write.
* **loss over padding.** NVIDIA's ``Tacotron2Loss`` averages the frame error over every padded
  frame (zeros on both sides after its masking) and the stop loss over the padded frames too; here
  both losses average over the valid frames only (``F.mse_loss(pred[valid], target[valid])``).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torch_ref.batch_norm import MaskedBatchNorm, length_mask


@dataclasses.dataclass(frozen=True)
class HParams:
    """Sizes and dropout rates (NVIDIA's ``hparams`` names; the defaults are toy sizes).

    ``n_symbols`` counts the padding id 0; ``n_mel_channels`` is the size of one output frame.
    """

    n_symbols: int = 27
    symbols_embedding_dim: int = 16
    encoder_kernel_size: int = 5
    encoder_n_convolutions: int = 2
    n_mel_channels: int = 24
    prenet_dim: int = 16
    attention_rnn_dim: int = 24
    attention_dim: int = 16
    attention_location_n_filters: int = 4
    attention_location_kernel_size: int = 7
    decoder_rnn_dim: int = 24
    postnet_embedding_dim: int = 16
    postnet_kernel_size: int = 5
    postnet_n_convolutions: int = 3
    p_encoder_dropout: float = 0.5
    p_prenet_dropout: float = 0.5
    p_attention_dropout: float = 0.1
    p_decoder_dropout: float = 0.1
    p_postnet_dropout: float = 0.5


class ConvNorm(nn.Module):
    """``Conv1d`` (same length, no bias) -> batch norm over the valid positions, features last.

    ``forward(x [B, T, C_in], valid bool [B, T]) -> [B, T, C_out]``, 0 at padding; padding (NaN
    included) reaches neither the conv nor the statistics.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same-length output), got {kernel_size}")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size,
                              padding=(kernel_size - 1) // 2, bias=False)
        self.norm = MaskedBatchNorm(out_channels)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(~valid[..., None], 0.0)
        return self.norm(self.conv(x.transpose(1, 2)).transpose(1, 2), valid)


class Encoder(nn.Module):
    """Conv blocks -> packed BiLSTM: ``forward(x [B, S, E], lengths [B]) -> memory [B, S, E]``."""

    def __init__(self, hparams: HParams):
        super().__init__()
        E = hparams.symbols_embedding_dim
        if E % 2:
            raise ValueError(f"symbols_embedding_dim must be even (two LSTM directions), got {E}")
        self.convolutions = nn.ModuleList([ConvNorm(E, E, hparams.encoder_kernel_size)
                                           for _ in range(hparams.encoder_n_convolutions)])
        self.dropout = nn.Dropout(hparams.p_encoder_dropout)
        self.lstm = nn.LSTM(E, E // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = length_mask(lengths.cpu(), x.shape[1], batch_first=True).to(x.device)
        for conv in self.convolutions:
            x = self.dropout(F.relu(conv(x, valid)))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
        return outputs


class Prenet(nn.Module):
    """``Linear`` (no bias) -> ``ReLU`` -> dropout, per layer; the dropout is on in ``eval()`` too."""

    def __init__(self, in_dim: int, sizes: list[int], p: float):
        super().__init__()
        in_sizes = [in_dim] + sizes[:-1]
        self.layers = nn.ModuleList([nn.Linear(i, o, bias=False) for i, o in zip(in_sizes, sizes)])
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear in self.layers:
            x = F.dropout(F.relu(linear(x)), p=self.p, training=True)
        return x


class LocationLayer(nn.Module):
    """``forward(weights_cat [B, 2, S]) -> [B, S, attention_dim]``: a conv over the previous and the
    cumulative attention weights, then a linear map."""

    def __init__(self, n_filters: int, kernel_size: int, attention_dim: int):
        super().__init__()
        self.location_conv = nn.Conv1d(2, n_filters, kernel_size, padding=(kernel_size - 1) // 2,
                                       bias=False)
        self.location_dense = nn.Linear(n_filters, attention_dim, bias=False)

    def forward(self, attention_weights_cat: torch.Tensor) -> torch.Tensor:
        return self.location_dense(self.location_conv(attention_weights_cat).transpose(1, 2))


class Attention(nn.Module):
    """Location-sensitive additive attention.

    ``forward(query [B, Q], memory [B, S, E], processed_memory [B, S, A], weights_cat [B, 2, S],
    mask bool [B, S] (True at padding)) -> (context [B, E], weights [B, S])``.
    """

    def __init__(self, hparams: HParams):
        super().__init__()
        A = hparams.attention_dim
        self.query_layer = nn.Linear(hparams.attention_rnn_dim, A, bias=False)
        self.memory_layer = nn.Linear(hparams.symbols_embedding_dim, A, bias=False)
        self.v = nn.Linear(A, 1, bias=False)
        self.location_layer = LocationLayer(hparams.attention_location_n_filters,
                                            hparams.attention_location_kernel_size, A)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, processed_memory: torch.Tensor,
                attention_weights_cat: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        energies = self.v(torch.tanh(self.query_layer(query)[:, None]
                                     + self.location_layer(attention_weights_cat)
                                     + processed_memory)).squeeze(-1)            # [B, S]
        weights = F.softmax(energies.masked_fill(mask, -math.inf), dim=1)
        return torch.bmm(weights[:, None], memory).squeeze(1), weights


class Decoder(nn.Module):
    """The attention decoder, teacher-forced.

    ``forward(memory [B, S, E], decoder_inputs [B, T, n_mel], memory_lengths [B]) -> (frames
    [B, T, n_mel], stop logits [B, T], alignments [B, T, S])``: step ``t`` reads target frame
    ``t - 1`` (zeros at ``t = 0``).
    """

    def __init__(self, hparams: HParams):
        super().__init__()
        self.hparams = hparams
        E, n_mel = hparams.symbols_embedding_dim, hparams.n_mel_channels
        self.prenet = Prenet(n_mel, [hparams.prenet_dim, hparams.prenet_dim],
                             hparams.p_prenet_dropout)
        self.attention_rnn = nn.LSTMCell(hparams.prenet_dim + E, hparams.attention_rnn_dim)
        self.attention_layer = Attention(hparams)
        self.decoder_rnn = nn.LSTMCell(hparams.attention_rnn_dim + E, hparams.decoder_rnn_dim)
        self.linear_projection = nn.Linear(hparams.decoder_rnn_dim + E, n_mel)
        self.gate_layer = nn.Linear(hparams.decoder_rnn_dim + E, 1)

    def initialize_decoder_states(self, memory: torch.Tensor, mask: torch.Tensor) -> None:
        """Zero loop state; the memory, its projection and the padding mask, kept for the loop."""
        B, S, E = memory.shape
        zeros = lambda *shape: memory.new_zeros(shape)                      # noqa: E731
        self.attention_hidden = zeros(B, self.hparams.attention_rnn_dim)
        self.attention_cell = zeros(B, self.hparams.attention_rnn_dim)
        self.decoder_hidden = zeros(B, self.hparams.decoder_rnn_dim)
        self.decoder_cell = zeros(B, self.hparams.decoder_rnn_dim)
        self.attention_weights = zeros(B, S)
        self.attention_weights_cum = zeros(B, S)
        self.attention_context = zeros(B, E)
        self.memory = memory
        self.processed_memory = self.attention_layer.memory_layer(memory)
        self.mask = mask

    def decode(self, decoder_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the previous frame ``[B, n_mel]``: ``(frame [B, n_mel], stop logit [B])``."""
        hp = self.hparams
        cell_input = torch.cat((self.prenet(decoder_input), self.attention_context), -1)
        self.attention_hidden, self.attention_cell = self.attention_rnn(
            cell_input, (self.attention_hidden, self.attention_cell))
        self.attention_hidden = F.dropout(self.attention_hidden, hp.p_attention_dropout,
                                          self.training)
        weights_cat = torch.stack((self.attention_weights, self.attention_weights_cum), dim=1)
        self.attention_context, self.attention_weights = self.attention_layer(
            self.attention_hidden, self.memory, self.processed_memory, weights_cat, self.mask)
        self.attention_weights_cum = self.attention_weights_cum + self.attention_weights
        self.decoder_hidden, self.decoder_cell = self.decoder_rnn(
            torch.cat((self.attention_hidden, self.attention_context), -1),
            (self.decoder_hidden, self.decoder_cell))
        self.decoder_hidden = F.dropout(self.decoder_hidden, hp.p_decoder_dropout, self.training)
        hidden_context = torch.cat((self.decoder_hidden, self.attention_context), dim=1)
        return self.linear_projection(hidden_context), self.gate_layer(hidden_context).squeeze(1)

    def forward(self, memory: torch.Tensor, decoder_inputs: torch.Tensor,
                memory_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = ~length_mask(memory_lengths.cpu(), memory.shape[1], batch_first=True)
        self.initialize_decoder_states(memory, mask.to(memory.device))
        go = decoder_inputs.new_zeros(decoder_inputs[:, :1].shape)
        inputs = torch.cat((go, decoder_inputs[:, :-1]), dim=1)              # [B, T, n_mel]
        frames, gates, alignments = [], [], []
        for t in range(inputs.shape[1]):
            frame, gate = self.decode(inputs[:, t])
            frames.append(frame)
            gates.append(gate)
            alignments.append(self.attention_weights)
        return torch.stack(frames, 1), torch.stack(gates, 1), torch.stack(alignments, 1)


class Postnet(nn.Module):
    """``forward(frames [B, T, n_mel], valid [B, T]) -> residual [B, T, n_mel]`` (0 at padding)."""

    def __init__(self, hparams: HParams):
        super().__init__()
        n_mel, C = hparams.n_mel_channels, hparams.postnet_embedding_dim
        sizes = [n_mel] + [C] * (hparams.postnet_n_convolutions - 1) + [n_mel]
        self.convolutions = nn.ModuleList([ConvNorm(i, o, hparams.postnet_kernel_size)
                                           for i, o in itertools.pairwise(sizes)])
        self.p = hparams.p_postnet_dropout

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        last = len(self.convolutions) - 1
        for i, conv in enumerate(self.convolutions):
            x = conv(x, valid)
            x = F.dropout(x if i == last else torch.tanh(x), self.p, self.training)
        return x


class Tacotron(nn.Module):
    """Text -> frames: ``forward(text [B, S], text_lengths [B], mels [B, T, n_mel], mel_lengths
    [B]) -> (frames [B, T, n_mel], frames after the postnet [B, T, n_mel], stop logits [B, T],
    alignments [B, T, S])``, teacher-forced on ``mels``; frames are 0 past each ``mel_lengths``.

    Submodules (``state_dict`` prefixes): ``embedding``, ``encoder``, ``decoder``, ``postnet``.

    >>> model = Tacotron(HParams()).eval()
    >>> out = model(torch.tensor([[3, 1, 20], [9, 20, 0]]), torch.tensor([3, 2]),
    ...             torch.rand(2, 5, 24), torch.tensor([5, 4]))
    >>> [tuple(o.shape) for o in out]
    [(2, 5, 24), (2, 5, 24), (2, 5), (2, 5, 3)]
    >>> float(out[1][1, 4].abs().sum()), float(out[3][1, :, 2].abs().sum())   # padding
    (0.0, 0.0)
    """

    def __init__(self, hparams: HParams):
        super().__init__()
        self.hparams = hparams
        self.embedding = nn.Embedding(hparams.n_symbols, hparams.symbols_embedding_dim)
        std = math.sqrt(2.0 / (hparams.n_symbols + hparams.symbols_embedding_dim))
        bound = math.sqrt(3.0) * std                                        # NVIDIA's init
        self.embedding.weight.data.uniform_(-bound, bound)
        self.encoder = Encoder(hparams)
        self.decoder = Decoder(hparams)
        self.postnet = Postnet(hparams)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, mels: torch.Tensor,
                mel_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        valid = length_mask(mel_lengths.cpu(), mels.shape[1], batch_first=True).to(mels.device)
        memory = self.encoder(self.embedding(text), text_lengths)
        frames, gates, alignments = self.decoder(memory, mels.masked_fill(~valid[..., None], 0.0),
                                                 text_lengths)
        frames = frames.masked_fill(~valid[..., None], 0.0)
        return frames, frames + self.postnet(frames, valid), gates, alignments


def guided_attention_loss(alignments: torch.Tensor, text_lengths: torch.Tensor,
                          mel_lengths: torch.Tensor, sigma: float = 0.4) -> torch.Tensor:
    """Guided attention (Tachibana et al., 2017; ESPnet's ``GuidedAttentionLoss``): the mean over
    valid (frame, character) pairs of ``alignments * (1 - exp(-(t / T_b - s / S_b)^2 / (2
    sigma^2)))``, which pushes the attention of frame ``t`` of ``T_b`` towards character
    ``s ~ t S_b / T_b`` (a diagonal), so that a small model learns to read its text in a few hundred
    steps. ``alignments [B, T, S]``."""
    _, T, S = alignments.shape
    frames = length_mask(mel_lengths.cpu(), T, batch_first=True).to(alignments.device)
    chars = length_mask(text_lengths.cpu(), S, batch_first=True).to(alignments.device)
    steps = lambda n: torch.arange(n, dtype=alignments.dtype, device=alignments.device)  # noqa: E731
    t = steps(T) / mel_lengths[:, None]                                             # [B, T]
    s = steps(S) / text_lengths[:, None]                                            # [B, S]
    weight = 1.0 - torch.exp(-((t[:, :, None] - s[:, None, :]) ** 2) / (2 * sigma ** 2))
    valid = frames[:, :, None] & chars[:, None, :]
    return (alignments * weight)[valid].mean()


def tacotron_loss(outputs: tuple[torch.Tensor, ...], mels: torch.Tensor, stop: torch.Tensor,
                  mel_lengths: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
    """Frame MSE before and after the postnet, stop-token BCE and :func:`guided_attention_loss`,
    each over the valid frames.

    ``outputs`` as :meth:`Tacotron.forward` returns them; ``mels [B, T, n_mel]``, ``stop [B, T]``
    (1.0 at each target's last frame), ``mel_lengths [B]``, ``text_lengths [B]``.
    """
    frames, postnet_frames, gates, alignments = outputs
    valid = length_mask(mel_lengths.cpu(), mels.shape[1], batch_first=True).to(mels.device)
    target = mels[valid]
    return (F.mse_loss(frames[valid], target) + F.mse_loss(postnet_frames[valid], target)
            + F.binary_cross_entropy_with_logits(gates[valid], stop[valid])
            + guided_attention_loss(alignments, text_lengths, mel_lengths))
