"""Port a Tacotron-style text-to-speech model (conv + batch-norm encoder, BiLSTM, an attention
decoder loop of LSTM cells, a postnet) from torch to JAX, prove it equal, and train it.

    python examples/port_tts.py --quick     # toy sizes, float64 check, 10 steps: ~40 s of CPU
    python examples/port_tts.py             # both dtypes, 500 Adam steps: ~75 s of CPU

1. trains :class:`torch_ref.tts.Tacotron` (NVIDIA Tacotron 2's structure at a toy size) for a few
   steps, saves its ``state_dict`` and loads it into the NNX twin :class:`Tacotron` here
   (submodules named as torch's) with one :func:`jaxseq.load_torch_state_dict` call, the twin
   built with ``nnx.eval_shape`` (shapes only: no random initialisation to overwrite) and its
   dropouts' RNG streams seeded with ``nnx.reseed``;
2. checks the port with one :func:`jaxseq.parity.compare_models` call per dtype, in training mode
   (batch statistics, every dropout on) with torch's dropout draws replayed on the JAX side
   (``dropout="replay"``) and the output of every submodule compared (``modules=True``), in
   float64 and float32 (``--check-dtypes``), every entry within ``assert_close``'s default
   tolerance (1e-10 and 1e-5 relative);
3. trains the JAX twin (Adam, ``optax``) on words rendered as "spectrograms"
   (:mod:`examples.tts_data`: each frame is a column strip of the word drawn in DejaVu Sans) and
   plots teacher-forced predictions and attention alignments of held-out words to
   ``runs/port_tts.png``.

The twin, module by module (torch ``[B, C, T]`` convolutions become channels-last ``nnx.Conv``;
features stay last everywhere else):

* ``nn.Embedding`` -> ``nnx.Embed``; ``Conv1d`` -> ``nnx.Conv`` with explicit ``padding``;
  :class:`torch_ref.batch_norm.MaskedBatchNorm` -> :class:`jaxseq.BatchNorm` with ``mask=``;
  packed ``nn.LSTM(bidirectional=True)`` -> :class:`jaxseq.LSTM` with ``lengths``;
* ``nn.LSTMCell`` -> :class:`jaxseq.LSTMCell`; the Python loop over decoder steps, whose state
  torch keeps in module attributes, -> a carry through :func:`jaxseq.teacher_forcing` (a
  ``lax.scan``; given the decoder as ``modules=``, so that its dropouts draw a fresh mask at every
  step); ``masked_fill(mask, -inf).softmax()`` -> :func:`jaxseq.attention_weights`;
* ``nn.Dropout`` / ``F.dropout(x, p, self.training)`` -> ``nnx.Dropout`` modules, each drawing
  from its own RNG stream (inside the decoder loop too); the prenet's ``F.dropout(...,
  training=True)``, on in evaluation as well, -> ``nnx.Dropout(...)(x, deterministic=False)``;
* ``F.mse_loss(pred[valid], target[valid])`` -> :func:`jaxseq.masked_mse`;
  ``F.binary_cross_entropy_with_logits`` over the valid frames ->
  ``optax.sigmoid_binary_cross_entropy`` averaged with ``jnp.mean(..., where=valid)``; the guided
  attention loss's ``(alignments * weight)[valid].mean()`` -> ``jnp.mean(..., where=valid)``.
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

if __package__ in (None, ""):  # `python examples/port_tts.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples import tts_data
from examples.training import parse_config, save_figure
from jaxseq.parity import compare_models
from jaxseq.parity.models import ModelReport
from torch_ref import tts as torch_tts
from torch_ref.tts import HParams


# ------------------------------------------------------------------------------------------------
# The NNX twin
# ------------------------------------------------------------------------------------------------
class ConvNorm(nnx.Module):
    """``nnx.Conv`` (same length, no bias) -> :class:`jaxseq.BatchNorm` over valid positions.

    ``__call__(x [B, T, C_in], valid bool [B, T]) -> [B, T, C_out]``, 0 at padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 param_dtype: Any, rngs: nnx.Rngs):
        pad = (kernel_size - 1) // 2
        self.conv = nnx.Conv(in_channels, out_channels, (kernel_size,), padding=[(pad, pad)],
                             use_bias=False, param_dtype=param_dtype, rngs=rngs)
        self.norm = jaxseq.BatchNorm(out_channels, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        x = jnp.where(valid[..., None], x, 0.0)
        return self.norm(self.conv(x), mask=valid)


class Encoder(nnx.Module):
    """``__call__(x [B, S, E], lengths [B]) -> memory [B, S, E]`` (0 at padding)."""

    def __init__(self, hp: HParams, *, param_dtype: Any, rngs: nnx.Rngs):
        E = hp.symbols_embedding_dim
        self.convolutions = nnx.List([
            ConvNorm(E, E, hp.encoder_kernel_size, param_dtype=param_dtype, rngs=rngs)
            for _ in range(hp.encoder_n_convolutions)])
        self.dropout = nnx.Dropout(hp.p_encoder_dropout, deterministic=True, rngs=rngs)
        self.lstm = jaxseq.LSTM(E, E // 2, batch_first=True, bidirectional=True,
                                param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        valid = jaxseq.length_mask(lengths, x.shape[1])
        for conv in self.convolutions:
            x = self.dropout(jax.nn.relu(conv(x, valid)))
        memory, _ = self.lstm(x, lengths)
        return memory


class Prenet(nnx.Module):
    """``Linear`` (no bias) -> ReLU -> dropout per layer; the dropout is on in evaluation too."""

    def __init__(self, in_dim: int, sizes: Sequence[int], rate: float, *, param_dtype: Any,
                 rngs: nnx.Rngs):
        in_sizes = [in_dim, *sizes[:-1]]
        self.layers = nnx.List([nnx.Linear(i, o, use_bias=False, param_dtype=param_dtype,
                                           rngs=rngs) for i, o in zip(in_sizes, sizes)])
        self.dropout = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for linear in self.layers:
            x = self.dropout(jax.nn.relu(linear(x)), deterministic=False)
        return x


class LocationLayer(nnx.Module):
    """``__call__(weights_cat [B, S, 2]) -> [B, S, attention_dim]`` (previous and cumulative
    attention weights on the last axis)."""

    def __init__(self, n_filters: int, kernel_size: int, attention_dim: int, *, param_dtype: Any,
                 rngs: nnx.Rngs):
        pad = (kernel_size - 1) // 2
        self.location_conv = nnx.Conv(2, n_filters, (kernel_size,), padding=[(pad, pad)],
                                      use_bias=False, param_dtype=param_dtype, rngs=rngs)
        self.location_dense = nnx.Linear(n_filters, attention_dim, use_bias=False,
                                         param_dtype=param_dtype, rngs=rngs)

    def __call__(self, attention_weights_cat: jax.Array) -> jax.Array:
        return self.location_dense(self.location_conv(attention_weights_cat))


class Attention(nnx.Module):
    """Location-sensitive attention: ``__call__(query [B, Q], memory [B, S, E], processed_memory
    [B, S, A], weights_cat [B, S, 2], lengths [B]) -> (context [B, E], weights [B, S])``."""

    def __init__(self, hp: HParams, *, param_dtype: Any, rngs: nnx.Rngs):
        A = hp.attention_dim
        linear = lambda i, o: nnx.Linear(i, o, use_bias=False, param_dtype=param_dtype,  # noqa: E731
                                         rngs=rngs)
        self.query_layer = linear(hp.attention_rnn_dim, A)
        self.memory_layer = linear(hp.symbols_embedding_dim, A)
        self.v = linear(A, 1)
        self.location_layer = LocationLayer(hp.attention_location_n_filters,
                                            hp.attention_location_kernel_size, A,
                                            param_dtype=param_dtype, rngs=rngs)

    def __call__(self, query: jax.Array, memory: jax.Array, processed_memory: jax.Array,
                 attention_weights_cat: jax.Array, lengths: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
        energies = self.v(jnp.tanh(self.query_layer(query)[:, None]
                                   + self.location_layer(attention_weights_cat)
                                   + processed_memory))[..., 0]                 # [B, S]
        weights = jaxseq.attention_weights(energies, lengths)
        return jnp.einsum("bs,bse->be", weights, memory), weights


class DecoderState(NamedTuple):
    """The decoder loop's carry (torch's ``Decoder`` attributes of the same names)."""

    attention_hidden: jax.Array          # [B, attention_rnn_dim]
    attention_cell: jax.Array
    decoder_hidden: jax.Array            # [B, decoder_rnn_dim]
    decoder_cell: jax.Array
    attention_weights: jax.Array         # [B, S]
    attention_weights_cum: jax.Array     # [B, S]
    attention_context: jax.Array         # [B, E]


class Decoder(nnx.Module):
    """``__call__(memory [B, S, E], decoder_inputs [B, T, n_mel], memory_lengths [B]) -> (frames
    [B, T, n_mel], stop logits [B, T], alignments [B, T, S])``, teacher-forced."""

    def __init__(self, hp: HParams, *, param_dtype: Any, rngs: nnx.Rngs):
        E, n_mel = hp.symbols_embedding_dim, hp.n_mel_channels
        self.prenet = Prenet(n_mel, [hp.prenet_dim, hp.prenet_dim], hp.p_prenet_dropout,
                             param_dtype=param_dtype, rngs=rngs)
        self.attention_rnn = jaxseq.LSTMCell(hp.prenet_dim + E, hp.attention_rnn_dim,
                                             param_dtype=param_dtype, rngs=rngs)
        self.attention_layer = Attention(hp, param_dtype=param_dtype, rngs=rngs)
        self.decoder_rnn = jaxseq.LSTMCell(hp.attention_rnn_dim + E, hp.decoder_rnn_dim,
                                           param_dtype=param_dtype, rngs=rngs)
        self.linear_projection = nnx.Linear(hp.decoder_rnn_dim + E, n_mel,
                                            param_dtype=param_dtype, rngs=rngs)
        self.gate_layer = nnx.Linear(hp.decoder_rnn_dim + E, 1, param_dtype=param_dtype,
                                     rngs=rngs)
        self.attention_dropout = nnx.Dropout(hp.p_attention_dropout, deterministic=True,
                                             rngs=rngs)
        self.decoder_dropout = nnx.Dropout(hp.p_decoder_dropout, deterministic=True, rngs=rngs)

    def decode(self, state: DecoderState, decoder_input: jax.Array, memory: jax.Array,
               processed_memory: jax.Array, lengths: jax.Array
               ) -> tuple[DecoderState, tuple[jax.Array, jax.Array, jax.Array]]:
        """One step from the previous frame ``[B, n_mel]``: ``(state, (frame [B, n_mel], stop logit
        [B], attention weights [B, S]))``."""
        cell_input = jnp.concatenate([self.prenet(decoder_input), state.attention_context], -1)
        attention_hidden, attention_cell = self.attention_rnn(
            cell_input, (state.attention_hidden, state.attention_cell))
        attention_hidden = self.attention_dropout(attention_hidden)
        weights_cat = jnp.stack([state.attention_weights, state.attention_weights_cum], -1)
        context, weights = self.attention_layer(attention_hidden, memory, processed_memory,
                                                weights_cat, lengths)
        decoder_hidden, decoder_cell = self.decoder_rnn(
            jnp.concatenate([attention_hidden, context], -1),
            (state.decoder_hidden, state.decoder_cell))
        decoder_hidden = self.decoder_dropout(decoder_hidden)
        hidden_context = jnp.concatenate([decoder_hidden, context], -1)
        state = DecoderState(attention_hidden, attention_cell, decoder_hidden, decoder_cell,
                             weights, state.attention_weights_cum + weights, context)
        return state, (self.linear_projection(hidden_context),
                       self.gate_layer(hidden_context)[:, 0], weights)

    def __call__(self, memory: jax.Array, decoder_inputs: jax.Array, memory_lengths: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        B, S, E = memory.shape
        processed_memory = self.attention_layer.memory_layer(memory)
        zeros = lambda n: jnp.zeros((B, n), memory.dtype)                   # noqa: E731
        state = DecoderState(*(zeros(self.attention_rnn.hidden_size) for _ in range(2)),
                             *(zeros(self.decoder_rnn.hidden_size) for _ in range(2)),
                             zeros(S), zeros(S), zeros(E))
        go = jnp.zeros_like(decoder_inputs[:, :1])
        inputs = jnp.concatenate([go, decoder_inputs[:, :-1]], axis=1)      # [B, T, n_mel]

        def step(decoder: Decoder, state: DecoderState, frame: jax.Array):
            return decoder.decode(state, frame, memory, processed_memory, memory_lengths)

        _, (frames, gates, alignments) = jaxseq.teacher_forcing(step, state, inputs, modules=self)
        return frames, gates, alignments


class Postnet(nnx.Module):
    """``__call__(frames [B, T, n_mel], valid [B, T]) -> residual [B, T, n_mel]`` (0 at padding)."""

    def __init__(self, hp: HParams, *, param_dtype: Any, rngs: nnx.Rngs):
        n_mel, C = hp.n_mel_channels, hp.postnet_embedding_dim
        sizes = [n_mel] + [C] * (hp.postnet_n_convolutions - 1) + [n_mel]
        self.convolutions = nnx.List([
            ConvNorm(i, o, hp.postnet_kernel_size, param_dtype=param_dtype, rngs=rngs)
            for i, o in itertools.pairwise(sizes)])
        self.dropout = nnx.Dropout(hp.p_postnet_dropout, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        last = len(self.convolutions) - 1
        for i, conv in enumerate(self.convolutions):
            x = conv(x, valid)
            x = self.dropout(x if i == last else jnp.tanh(x))
        return x


class Tacotron(nnx.Module):
    """The twin of :class:`torch_ref.tts.Tacotron`: ``__call__(text [B, S], text_lengths [B],
    mels [B, T, n_mel], mel_lengths [B]) -> (frames, frames after the postnet, stop logits
    [B, T], alignments [B, T, S])``. Starts in evaluation mode (``model.train()`` for batch
    statistics and dropout; the prenet's dropout is always on). ``rngs`` needs ``params`` and
    ``dropout`` streams.
    """

    def __init__(self, hp: HParams, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.embedding = nnx.Embed(hp.n_symbols, hp.symbols_embedding_dim,
                                   param_dtype=param_dtype, rngs=rngs)
        self.encoder = Encoder(hp, param_dtype=param_dtype, rngs=rngs)
        self.decoder = Decoder(hp, param_dtype=param_dtype, rngs=rngs)
        self.postnet = Postnet(hp, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, text: jax.Array, text_lengths: jax.Array, mels: jax.Array,
                 mel_lengths: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        valid = jaxseq.length_mask(mel_lengths, mels.shape[1])
        memory = self.encoder(self.embedding(text), text_lengths)
        frames, gates, alignments = self.decoder(memory, jnp.where(valid[..., None], mels, 0.0),
                                                 text_lengths)
        frames = jnp.where(valid[..., None], frames, 0.0)
        return frames, frames + self.postnet(frames, valid), gates, alignments


def guided_attention_loss(alignments: jax.Array, text_lengths: jax.Array,
                          mel_lengths: jax.Array, sigma: float = 0.4) -> jax.Array:
    """The twin of :func:`torch_ref.tts.guided_attention_loss`: the mean over valid (frame,
    character) pairs of ``alignments [B, T, S]`` weighted by their distance from the diagonal."""
    _, T, S = alignments.shape
    valid = (jaxseq.length_mask(mel_lengths, T)[:, :, None]
             & jaxseq.length_mask(text_lengths, S)[:, None, :])
    t = jnp.arange(T, dtype=alignments.dtype) / mel_lengths[:, None]            # [B, T]
    s = jnp.arange(S, dtype=alignments.dtype) / text_lengths[:, None]           # [B, S]
    weight = 1.0 - jnp.exp(-((t[:, :, None] - s[:, None, :]) ** 2) / (2 * sigma ** 2))
    return jnp.mean(alignments * weight, where=valid)


def tacotron_loss(outputs: tuple[jax.Array, ...], mels: jax.Array, stop: jax.Array,
                  mel_lengths: jax.Array, text_lengths: jax.Array) -> jax.Array:
    """Frame MSE before and after the postnet, stop-token BCE and the guided attention loss, over
    the valid frames (the twin of :func:`torch_ref.tts.tacotron_loss`)."""
    frames, postnet_frames, gates, alignments = outputs
    valid = jaxseq.length_mask(mel_lengths, mels.shape[1])
    stop = jnp.where(valid, stop, 0.0)                      # padding (NaN too) reaches no gradient
    stop_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(gates, stop), where=valid)
    return (jaxseq.masked_mse(frames, mels, valid[..., None])
            + jaxseq.masked_mse(postnet_frames, mels, valid[..., None]) + stop_loss
            + guided_attention_loss(alignments, text_lengths, mel_lengths))


# ------------------------------------------------------------------------------------------------
# The two losses compare_models differentiates (the same batch pytree on both sides)
# ------------------------------------------------------------------------------------------------
def torch_loss(model: torch_tts.Tacotron, batch: dict[str, torch.Tensor]):
    outputs = model(batch["text"], batch["text_lengths"], batch["mels"], batch["mel_lengths"])
    loss = torch_tts.tacotron_loss(outputs, batch["mels"], batch["stop"], batch["mel_lengths"],
                                   batch["text_lengths"])
    return loss, dict(zip(OUTPUTS, outputs))


def jax_loss(model: Tacotron, batch: dict[str, jax.Array]):
    outputs = model(batch["text"], batch["text_lengths"], batch["mels"], batch["mel_lengths"])
    loss = tacotron_loss(outputs, batch["mels"], batch["stop"], batch["mel_lengths"],
                         batch["text_lengths"])
    return loss, dict(zip(OUTPUTS, outputs))


#: The named outputs both loss functions return.
OUTPUTS = ("frames", "postnet_frames", "stop_logits", "alignments")


def check(torch_model: torch_tts.Tacotron, jax_model: Tacotron, batch: dict[str, np.ndarray],
          dtypes: Sequence[str] = ("float64", "float32"), *, verbose: bool = True
          ) -> dict[str, ModelReport]:
    """One :func:`compare_models` call per dtype, in training mode, dropout replayed, every
    submodule compared; returns ``{dtype: report}``. Both models are left in evaluation mode."""
    torch_model.train()
    jax_model.train()
    reports = {}
    try:
        for dtype in dtypes:
            reports[dtype] = compare_models(torch_model, jax_model, batch, torch_loss=torch_loss,
                                            jax_loss=jax_loss, dtype=dtype, dropout="replay",
                                            modules=True)
            if verbose:
                print(f"\n== training mode, {dtype} ==")
                print(reports[dtype])
    finally:
        torch_model.eval()
        jax_model.eval()
    return reports


# ------------------------------------------------------------------------------------------------
# Training the JAX twin
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TTSConfig:
    """Model sizes, data and training budget of the example (``quick()``: the smoke test's).

    ``torch_steps``: Adam steps of the torch model before the port (a trained model, batch-norm
    statistics that moved, a decoder holding its last forward pass's tensors); ``steps``: Adam
    steps of the JAX twin after the check.
    """

    num_words: int = 2000
    max_letters: int = 7
    embedding_dim: int = 32
    rnn_dim: int = 64
    prenet_dim: int = 32
    attention_dim: int = 32
    postnet_dim: int = 32
    batch_size: int = 32
    torch_steps: int = 20
    steps: int = 500
    learning_rate: float = 5e-3
    clip_norm: float = 1.0
    check_words: int = 4
    check_dtypes: str = "float64,float32"
    seed: int = 0

    @classmethod
    def quick(cls) -> TTSConfig:
        return cls(num_words=200, max_letters=4, embedding_dim=16, rnn_dim=24, prenet_dim=16,
                   attention_dim=16, postnet_dim=16, batch_size=8, torch_steps=2, steps=10,
                   check_words=3, check_dtypes="float64")

    def hparams(self) -> HParams:
        return HParams(n_symbols=tts_data.N_SYMBOLS, symbols_embedding_dim=self.embedding_dim,
                       n_mel_channels=tts_data.N_MEL, prenet_dim=self.prenet_dim,
                       attention_rnn_dim=self.rnn_dim, attention_dim=self.attention_dim,
                       decoder_rnn_dim=self.rnn_dim, postnet_embedding_dim=self.postnet_dim)


def training_batches(words: Sequence[str], cfg: TTSConfig, steps: int, seed: int, *,
                     text_length: int, num_frames: int) -> Iterator[dict[str, np.ndarray]]:
    """``steps`` batches of ``cfg.batch_size`` random ``words``, all padded alike."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        chosen = [words[i] for i in rng.choice(len(words), cfg.batch_size, replace=False)]
        yield tts_data.make_batch(chosen, text_length=text_length, num_frames=num_frames)


def train_torch(model: torch_tts.Tacotron, batches: Iterable[dict[str, np.ndarray]],
                cfg: TTSConfig) -> list[float]:
    """Adam steps of the torch model (training mode) on ``batches``; the losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    model.train()
    losses = []
    for batch in batches:
        loss, _ = torch_loss(model, {k: torch.from_numpy(v) for k, v in batch.items()})
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def loss_fn(model: Tacotron, batch: dict[str, jax.Array]) -> jax.Array:
    return jax_loss(model, batch)[0]


@nnx.jit
def train_step(model: Tacotron, optimizer: nnx.Optimizer, batch: dict[str, jax.Array]):
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def predict(model: Tacotron, batch: dict[str, jax.Array]):
    """The loss and the outputs (teacher-forced) in the model's current mode."""
    return jax_loss(model, batch)


def train(model: Tacotron, batches: Iterable[dict[str, np.ndarray]], cfg: TTSConfig
          ) -> list[float]:
    """Adam steps of the JAX model (training mode) on ``batches``; the losses."""
    optimizer = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                                                 optax.adam(cfg.learning_rate)), wrt=nnx.Param)
    model.train()
    losses = [float(train_step(model, optimizer, batch)) for batch in batches]
    model.eval()
    return losses


def plot_predictions(path: Path, words: Sequence[str], batch: dict[str, np.ndarray],
                     outputs: dict[str, np.ndarray], title: str) -> Path:
    """Save a PNG: per word, the target frames, the predicted ones (after the postnet) and the
    attention alignment; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(words), 3, figsize=(11, 1.6 * len(words)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 3, 2]})
    for row, word in enumerate(words):
        n, s = int(batch["mel_lengths"][row]), int(batch["text_lengths"][row])
        shown = [(batch["mels"][row, :n].T, f"{word!r}: target"),
                 (outputs["postnet_frames"][row, :n].T, "predicted (teacher-forced)"),
                 (outputs["alignments"][row, :n, :s].T, "alignment")]
        for ax, (image, label) in zip(axes[row], shown):
            ax.imshow(image, cmap="gray_r" if label != "alignment" else "viridis",
                      aspect="auto", origin="upper" if label != "alignment" else "lower")
            ax.set_title(label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks(range(s) if label == "alignment" else [])
            if label == "alignment":
                ax.set_yticklabels(list(word), fontsize=7)
    return save_figure(fig, title, path)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train in torch, port, check, train the port, plot; returns the figures (losses, reports,
    timings)."""
    cfg, out = parse_config(__doc__.splitlines()[0], argv, TTSConfig)
    start = time.perf_counter()
    torch.set_num_threads(1)      # tiny ops: one thread beats thread start-up on a small machine
    hp = cfg.hparams()
    train_words, test_words = tts_data.word_splits(cfg.num_words, cfg.max_letters, seed=cfg.seed)
    sizes = {"text_length": cfg.max_letters,
             "num_frames": tts_data.max_frames(train_words + test_words)}

    torch.manual_seed(cfg.seed)
    torch_model = torch_tts.Tacotron(hp)
    torch_losses = train_torch(torch_model, training_batches(train_words, cfg, cfg.torch_steps,
                                                             cfg.seed, **sizes), cfg)
    path = out / "torch_tts.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch_model.state_dict(), path)
    jax_model = nnx.eval_shape(                        # shapes only: no random init to overwrite
        lambda: Tacotron(hp, rngs=nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1)))
    nnx.reseed(jax_model, dropout=cfg.seed + 1)        # eval_shape keeps no RNG key: give them one
    jaxseq.load_torch_state_dict(jax_model, torch.load(path, weights_only=True))
    trained = (f" (loss {torch_losses[0]:.3f} -> {torch_losses[-1]:.3f})" if torch_losses else "")
    print(f"torch Tacotron: {sum(p.numel() for p in torch_model.parameters())} parameters, "
          f"{cfg.torch_steps} Adam steps{trained}; its {len(torch_model.state_dict())} "
          f"state_dict entries loaded into the NNX twin")

    shown = test_words[:cfg.check_words]
    check_batch = tts_data.make_batch(shown, text_length=max(map(len, shown)),
                                      num_frames=tts_data.max_frames(shown), pad_value=np.nan)
    check_start = time.perf_counter()
    reports = check(torch_model, jax_model, check_batch, cfg.check_dtypes.split(","))
    check_seconds = time.perf_counter() - check_start
    for dtype, report in reports.items():
        report.assert_close()                        # rtol 1e-10 (float64), 1e-5 (float32)
        print(f"{dtype}: worst relative error {report.worst():.1e} over {len(report.entries)} "
              f"entries ({sum(e.kind == 'module' for e in report.entries)} module outputs)")

    steps_start = time.perf_counter()
    losses = train(jax_model, training_batches(train_words, cfg, cfg.steps, cfg.seed + 1,
                                               **sizes), cfg)
    train_seconds = time.perf_counter() - steps_start
    test_batch = tts_data.make_batch(test_words, **sizes)
    test_loss, outputs = predict(jax_model, test_batch)
    window = max(1, len(losses) // 10)
    print(f"JAX training: {cfg.steps} Adam steps of {cfg.batch_size} words in "
          f"{train_seconds:.1f} s (compile included); loss {np.mean(losses[:window]):.4f} "
          f"(first {window} steps) -> {np.mean(losses[-window:]):.4f} (last {window}); "
          f"held-out words {float(test_loss):.4f}")
    plot = plot_predictions(out / "port_tts.png", test_words[:4],
                            {k: v[:4] for k, v in test_batch.items()},
                            {k: np.asarray(v)[:4] for k, v in outputs.items()},
                            f"Tacotron-style port (jaxseq), {cfg.steps} steps, held-out words")
    print(f"plot: {plot}; check {check_seconds:.1f} s; total {time.perf_counter() - start:.1f} s")
    return {"torch_losses": torch_losses, "losses": losses, "test_loss": float(test_loss),
            "reports": reports, "check_batch": check_batch, "check_seconds": check_seconds,
            "train_seconds": train_seconds, "plot": plot}


if __name__ == "__main__":
    main()
