"""Attention encoder-decoder on real words: read a word, write it backwards (JAX, jaxseq cells).

    python examples/seq2seq.py --quick
    python examples/seq2seq.py

BiLSTM encoder with ``lengths`` (:class:`jaxseq.LSTM`) -> an :class:`jaxseq.LSTMCell` decoder with
input feeding and Luong dot attention over the padded encoder outputs
(:func:`jaxseq.dot_attention`: no weight on padding), teacher-forced over a ``lax.scan``
(:func:`jaxseq.teacher_forcing`), masked cross entropy over the real target characters. Decoding:
:func:`jaxseq.greedy_decode` and :func:`jaxseq.beam_search`, both under ``jit``. Reports exact-match
accuracy of the greedy decodes on held-out words, the time per epoch, and plots an attention map
(the anti-diagonal of a reversal) to ``runs/seq2seq_attention.png``.

Twin of :class:`torch_ref.seq2seq.Seq2Seq` (``examples/torch_seq2seq.py``): the submodules have the
torch names, so ``jaxseq.load_torch_state_dict(model, torch_model.state_dict())`` ports a trained
torch model as is. Data: the word-language words (``examples/wordlang_data.py``).
"""
from __future__ import annotations

import itertools
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

if __package__ in (None, ""):  # `python examples/seq2seq.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples.training import History, TrainConfig, parse_config
from examples.word_language import torch_linear_init
from examples.wordlang_data import (BOS, EOS, REVERSAL_LENGTH, WordLangData, build_dataset,
                                    reversal_batches)


class Encoder(nnx.Module):
    """Embedding -> BiLSTM (``lengths``); the decoder starts from both directions' final states."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, *, param_dtype: Any,
                 rngs: nnx.Rngs):
        self.embedding = nnx.Embed(vocab_size, embed_dim, param_dtype=param_dtype,
                                   embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.lstm = jaxseq.LSTM(embed_dim, hidden_size, batch_first=True, bidirectional=True,
                                param_dtype=param_dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array, lengths: jax.Array):
        """``tokens [B, S]`` -> ``(memory [B, S, 2H] (0 at padding), (h, c) [B, 2H] each)``."""
        memory, (h_n, c_n) = self.lstm(self.embedding(tokens), lengths)
        join = lambda s: jnp.concatenate([s[0], s[1]], axis=-1)          # noqa: E731 fwd | bwd
        return memory, (join(h_n), join(c_n))


class Decoder(nnx.Module):
    """``LSTMCell`` over ``[embedding, previous context]`` -> dot attention -> linear."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, *, param_dtype: Any,
                 rngs: nnx.Rngs):
        self.embedding = nnx.Embed(vocab_size, embed_dim, param_dtype=param_dtype,
                                   embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.cell = jaxseq.LSTMCell(embed_dim + hidden_size, hidden_size, param_dtype=param_dtype,
                                    rngs=rngs)
        kernel_init, bias_init = torch_linear_init(2 * hidden_size)
        self.out = nnx.Linear(2 * hidden_size, vocab_size, param_dtype=param_dtype,
                              kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)

    def step(self, tokens: jax.Array, state, context: jax.Array, memory: jax.Array,
             lengths: jax.Array):
        """One step: ``tokens [B]`` -> ``(logits [B, V], state, context [B, 2H], weights [B, S])``."""
        h, c = self.cell(jnp.concatenate([self.embedding(tokens), context], axis=-1), state)
        context, weights = jaxseq.dot_attention(h, memory, memory, lengths)
        return self.out(jnp.concatenate([h, context], axis=-1)), (h, c), context, weights


class Seq2Seq(nnx.Module):
    """``model(source [B, S], source_lengths [B], target_in [B, T]) -> logits [B, T, V]``."""

    def __init__(self, vocab_size: int, *, embed_dim: int, hidden_size: int,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.encoder = Encoder(vocab_size, embed_dim, hidden_size, param_dtype=param_dtype,
                               rngs=rngs)
        self.decoder = Decoder(vocab_size, embed_dim, 2 * hidden_size, param_dtype=param_dtype,
                               rngs=rngs)

    def start(self, source: jax.Array, lengths: jax.Array):
        """The decoder's initial carry: ``(state, context, memory, lengths)``."""
        memory, state = self.encoder(source, lengths)
        return state, jnp.zeros_like(state[0]), memory, lengths

    def _search_step(self, carry, tokens):
        """``step(carry, tokens) -> (logits, carry)`` for greedy and beam search."""
        state, context, memory, lengths = carry
        logits, state, context, _ = self.decoder.step(tokens, state, context, memory, lengths)
        return logits, (state, context, memory, lengths)

    def __call__(self, source: jax.Array, lengths: jax.Array, target_in: jax.Array,
                 return_attention: bool = False):
        state, context, memory, lengths = self.start(source, lengths)

        def step(carry, tokens):
            state, context = carry
            logits, state, context, weights = self.decoder.step(tokens, state, context, memory,
                                                                lengths)
            return (state, context), (logits, weights)

        _, (logits, weights) = jaxseq.teacher_forcing(step, (state, context), target_in)
        return (logits, weights) if return_attention else logits

    def greedy(self, source: jax.Array, lengths: jax.Array, max_len: int = REVERSAL_LENGTH):
        """Greedy decodes ``[B, max_len]`` (``PAD`` after ``EOS``) and their lengths."""
        start = jnp.full(source.shape[:1], BOS, jnp.int32)
        return jaxseq.greedy_decode(self._search_step, self.start(source, lengths), start,
                                    max_len, eos_id=EOS)

    def beam(self, source: jax.Array, lengths: jax.Array, beam_size: int,
             max_len: int = REVERSAL_LENGTH) -> jaxseq.decoding.Beams:
        """Beam search (every carry leaf has its batch axis first)."""
        start = jnp.full(source.shape[:1], BOS, jnp.int32)
        return jaxseq.beam_search(self._search_step, self.start(source, lengths), start,
                                  beam_size, max_len, eos_id=EOS)


def build_model(data: WordLangData, config: TrainConfig, *, param_dtype: Any = jnp.float32
                ) -> Seq2Seq:
    return Seq2Seq(data.vocab_size, embed_dim=config.embed_dim, hidden_size=config.hidden_size,
                   param_dtype=param_dtype, rngs=nnx.Rngs(config.seed))


def loss_fn(model: Seq2Seq, source, lengths, target_in, target_out) -> jax.Array:
    """Mean cross entropy over the real target characters (``IGNORE`` elsewhere)."""
    return jaxseq.masked_cross_entropy(model(source, lengths, target_in), target_out)


@nnx.jit
def train_step(model: Seq2Seq, optimizer: nnx.Optimizer, source, lengths, target_in, target_out):
    loss, grads = nnx.value_and_grad(loss_fn)(model, source, lengths, target_in, target_out)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def greedy(model: Seq2Seq, source, lengths):
    return model.greedy(source, lengths)


def exact_match(tokens: np.ndarray, target_out: np.ndarray) -> np.ndarray:
    """Per row: the decode equals the target up to and including ``EOS`` (``bool [B]``)."""
    real = target_out >= 0
    return np.all(np.where(real, tokens == target_out, True), axis=1) & (
        np.sum(real, axis=1) > 0)


def accuracy(model: Seq2Seq, data: WordLangData, split: str, batch_size: int,
             max_words: Optional[int] = None) -> float:
    """Share of words of ``split`` whose greedy decode is exactly the reversed word + EOS."""
    hits = count = 0
    for batch in reversal_batches(data, split, batch_size, max_words=max_words):
        tokens, _ = greedy(model, batch.source, batch.source_lengths)
        rows = batch.target_out[:, 0] >= 0                               # not a filler row
        hits += int(exact_match(np.asarray(tokens), batch.target_out)[rows].sum())
        count += int(rows.sum())
    return hits / count


@partial(nnx.jit, static_argnames="beam_size")
def beam(model: Seq2Seq, source, lengths, beam_size: int):
    return model.beam(source, lengths, beam_size)


def beam_accuracy(model: Seq2Seq, data: WordLangData, split: str, batch_size: int, *,
                  beam_size: int, max_words: Optional[int] = None) -> float:
    """:func:`accuracy` of the best beam of :func:`jaxseq.beam_search`."""
    hits = count = 0
    for batch in reversal_batches(data, split, batch_size, max_words=max_words):
        best = np.asarray(beam(model, batch.source, batch.source_lengths, beam_size).tokens)[:, 0]
        rows = batch.target_out[:, 0] >= 0
        hits += int(exact_match(best, batch.target_out)[rows].sum())
        count += int(rows.sum())
    return hits / count


def plot_attention(model: Seq2Seq, data: WordLangData, word: str, path: Path) -> Path:
    """Save the attention map of the greedy decode of ``word`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = np.zeros((1, REVERSAL_LENGTH - 1), np.int32)
    source[0, :len(word)] = data.encode(word)
    lengths = np.array([len(word)], np.int32)
    tokens, n = greedy(model, source, lengths)
    target_in = np.concatenate([[BOS], np.asarray(tokens)[0, :-1]])[None]
    _, weights = model(source, lengths, target_in, return_attention=True)
    shown = int(n[0])
    out_chars = [data.chars[t] if t != EOS else "</s>" for t in np.asarray(tokens)[0, :shown]]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.asarray(weights)[0, :shown, :len(word)], cmap="viridis")
    ax.set_xticks(range(len(word)), list(word))
    ax.set_yticks(range(shown), out_chars)
    ax.set_xlabel("source (encoder step)")
    ax.set_ylabel("output (decoder step)")
    ax.set_title(f"attention, {word!r}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Train, then report test accuracy; returns the figures."""
    from tqdm import tqdm

    config, out = parse_config(__doc__.splitlines()[0], argv)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)
    model = build_model(data, config)
    optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
    history = History()
    steps = -(-len(data.train) // config.batch_size)
    steps = min(steps, config.max_steps) if config.max_steps else steps
    for epoch in range(config.epochs):
        start = time.perf_counter()
        batches = reversal_batches(data, "train", config.batch_size, shuffle=True,
                                   seed=config.seed * 1000 + epoch)
        bar = tqdm(itertools.islice(batches, steps), total=steps, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}")
        for b in bar:
            loss = train_step(model, optimizer, b.source, b.source_lengths, b.target_in,
                              b.target_out)
            history.step_loss.append(float(loss))
            history.step_metric.append(float("nan"))
        bar.close()
        seconds = time.perf_counter() - start
        valid_acc = accuracy(model, data, "valid", config.batch_size, max_words=1000)
        history.add_epoch(float("nan"), valid_acc, seconds)
        print(f"epoch {epoch + 1}: {seconds:.1f} s, train loss {history.step_loss[-1]:.3f}, "
              f"valid exact match {valid_acc:.3f}")
    test_acc = accuracy(model, data, "test", config.batch_size)
    beam_acc = beam_accuracy(model, data, "test", config.batch_size, beam_size=4, max_words=1000)
    plot = plot_attention(model, data, data.test.words[0], out / "seq2seq_attention.png")
    print(f"plot: {plot}")
    print(f"test exact-match accuracy: greedy {test_acc:.4f} ({len(data.test)} words), beam 4 "
          f"{beam_acc:.4f} (first 1000 words); epoch times "
          f"{', '.join(f'{s:.1f}' for s in history.epoch_seconds)} s")
    return dict(test_accuracy=test_acc, beam_accuracy=beam_acc,
                epoch_seconds=history.epoch_seconds)


if __name__ == "__main__":
    main()
