"""Character-level language model on the word-language words: the per-token (tagging) pattern in JAX.

    python examples/char_lm.py --quick                  # packed rows (the default layout)
    python examples/char_lm.py --quick --layout padded  # one word per row, with lengths
    python examples/char_lm.py

Each word is read as ``BOS c_1 ... c_n`` and must predict ``c_1 ... c_n EOS`` (next character at every
step). Embedding → locked dropout → :class:`jaxseq.LSTM` → dropout → linear over the vocabulary
``[B, T, V]``; the loss is :func:`jaxseq.losses.masked_cross_entropy` over the real characters only.
Reports per-character perplexity on the held-out test words. Twin of :class:`torch_ref.models.CharLM`.

Two layouts of the same words, the same model and the same loss:

* ``packed`` (default): words end to end in rows of ``ROW_LENGTH`` steps, ``segment_ids`` telling
  them apart; every word still starts from a zero state, its own locked dropout mask, and the loss
  mask is ``segment_ids > 0``. One static shape for every batch and nearly no padding.
* ``padded``: one word per row, ``lengths`` and ``length_mask`` (the torch twin's layout).

The data pipeline is grain's: a ``MapDataset`` of the words, shuffled anew every epoch, encoded,
then packed by grain's best-fit packer (:func:`jaxseq.grain_data.pack_sequences`) or padded, and
batched to one static shape (:func:`jaxseq.grain_data.pad_and_batch`).
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

if __package__ in (None, ""):  # `python examples/char_lm.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples.training import History, TrainConfig, parse_config
from examples.word_language import torch_linear_init
from examples.wordlang_data import BOS, EOS, IGNORE, PAD, WordLangData, build_dataset, num_batches
from jaxseq.grain_data import pack_sequences, pad_and_batch
from jaxseq.losses import masked_cross_entropy


class CharLM(nnx.Module):
    """Embedding → locked dropout → LSTM (``lengths``) → dropout → linear, at every step.

    ``model(inputs [B, T], lengths [B]) -> logits [B, T, V]``. Starts in evaluation mode.
    Arguments as :class:`examples.word_language.WordClassifier`.
    """

    def __init__(self, vocab_size: int, *, embed_dim: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.embedding = nnx.Embed(vocab_size, embed_dim, param_dtype=param_dtype,
                                   embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.embed_dropout = jaxseq.LockedDropout(dropout, batch_first=True, rngs=rngs)
        self.lstm = jaxseq.LSTM(embed_dim, hidden_size, num_layers, batch_first=True,
                                dropout=dropout if num_layers > 1 else 0.0,
                                param_dtype=param_dtype, rngs=rngs)
        self.output_dropout = nnx.Dropout(dropout, deterministic=True, rngs=rngs)
        kernel_init, bias_init = torch_linear_init(hidden_size)
        self.decoder = nnx.Linear(hidden_size, vocab_size, param_dtype=param_dtype,
                                  kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)

    def __call__(self, inputs: jax.Array, lengths: Optional[jax.Array] = None, *,
                 segment_ids: Optional[jax.Array] = None,
                 max_segments: Optional[int] = None) -> jax.Array:
        """``inputs [B, T]`` with ``lengths [B]`` (padded) or ``segment_ids [B, T]`` (packed rows)."""
        rows = dict(segment_ids=segment_ids, max_segments=max_segments)
        x = self.embed_dropout(self.embedding(inputs), **(rows if segment_ids is not None else {}))
        output, _ = self.lstm(x, lengths, **rows)                   # [B, T, H], 0 at padding
        return self.decoder(self.output_dropout(output))            # [B, T, V]


def build_model(data: WordLangData, config: TrainConfig, *, param_dtype: Any = jnp.float32
                ) -> CharLM:
    """The language model of ``config`` for ``data``, initialised from ``config.seed``."""
    return CharLM(data.vocab_size, embed_dim=config.embed_dim, hidden_size=config.hidden_size,
                  num_layers=config.num_layers, dropout=config.dropout, param_dtype=param_dtype,
                  rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))


def token_loss(model: CharLM, inputs: jax.Array, lengths: jax.Array, targets: jax.Array,
               reduction: str = "mean") -> jax.Array:
    """Cross entropy over the real (``t < lengths[b]``) positions of ``targets [B, T]``."""
    logits = model(inputs, lengths)
    mask = jaxseq.length_mask(lengths, inputs.shape[1])                     # [B, T]
    return masked_cross_entropy(logits, targets, mask, reduction=reduction)


def packed_token_loss(model: CharLM, inputs: jax.Array, segment_ids: jax.Array,
                      targets: jax.Array, max_segments: int, reduction: str = "mean") -> jax.Array:
    """:func:`token_loss` on packed rows: the real positions are ``segment_ids > 0``."""
    logits = model(inputs, segment_ids=segment_ids, max_segments=max_segments)
    return masked_cross_entropy(logits, targets, segment_ids > 0, reduction=reduction)


@nnx.jit
def train_step(model: CharLM, optimizer: nnx.Optimizer, inputs: jax.Array, lengths: jax.Array,
               targets: jax.Array) -> jax.Array:
    """One optimizer step; returns the mean loss per real character."""
    loss, grads = nnx.value_and_grad(token_loss)(model, inputs, lengths, targets)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def total_loss(model: CharLM, inputs: jax.Array, lengths: jax.Array, targets: jax.Array
               ) -> jax.Array:
    """Summed loss over the real characters of a batch."""
    return token_loss(model, inputs, lengths, targets, reduction="sum")


@partial(nnx.jit, static_argnames="max_segments")
def packed_train_step(model: CharLM, optimizer: nnx.Optimizer, inputs: jax.Array,
                      segment_ids: jax.Array, targets: jax.Array, max_segments: int) -> jax.Array:
    """:func:`train_step` on packed rows."""
    loss, grads = nnx.value_and_grad(packed_token_loss)(model, inputs, segment_ids, targets,
                                                        max_segments)
    optimizer.update(model, grads)
    return loss


@partial(nnx.jit, static_argnames="max_segments")
def packed_total_loss(model: CharLM, inputs: jax.Array, segment_ids: jax.Array,
                      targets: jax.Array, max_segments: int) -> jax.Array:
    """:func:`total_loss` on packed rows."""
    return packed_token_loss(model, inputs, segment_ids, targets, max_segments, reduction="sum")


#: Packed layout: rows of this many steps (longer than any word + BOS), at most half as many
#: words per row (every word takes at least 2 steps), so ``max_segments`` is one static number.
ROW_LENGTH = 64
MAX_SEGMENTS = ROW_LENGTH // 2
#: Rows grain's packer fills at a time (its window): 98.4% real characters on the training words,
#: as dense as an offline best-fit over the whole split (``jaxseq.pack_rows``: 98.5%).
PACKING_BINS = 64
PADDING = {"inputs": PAD, "targets": IGNORE}
#: grain's default 16 reader threads cost more than these cheap reads on a few CPU cores.
SERIAL_READS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def lm_examples(data: WordLangData, split: str, *, shuffle: bool = False, seed: int = 0
                ) -> grain.MapDataset:
    """Every word of ``split`` as ``{"inputs": BOS + word, "targets": word + EOS}`` (a grain
    ``MapDataset``; ``shuffle``: a new order per ``seed``)."""
    words = grain.MapDataset.source(data.split(split).words)
    if shuffle:
        words = words.shuffle(seed=seed)
    return words.map(lambda word: _lm_example(data.encode(word)))


def _lm_example(word: np.ndarray) -> dict[str, np.ndarray]:
    return {"inputs": np.concatenate([[BOS], word]).astype(np.int32),
            "targets": np.concatenate([word, [EOS]]).astype(np.int32)}


def packed_lm_batches(data: WordLangData, split: str, rows_per_batch: int, *,
                      shuffle: bool = False, seed: int = 0) -> Any:
    """grain batches of packed rows: dicts of ``inputs``, ``targets`` (``IGNORE`` at padding),
    ``segment_ids`` and ``positions``, each ``[rows_per_batch, ROW_LENGTH]``, over every word of
    ``split`` (grain's best-fit packer, :func:`jaxseq.grain_data.pack_sequences`). The last batch
    is filled up with empty rows, so every batch has the same shape."""
    rows = pack_sequences(lm_examples(data, split, shuffle=shuffle, seed=seed), ROW_LENGTH,
                          max_segments=MAX_SEGMENTS, padding=PADDING,
                          num_packing_bins=PACKING_BINS, seed=seed)
    return pad_and_batch(rows, rows_per_batch, padding=PADDING)


def padded_lm_batches(data: WordLangData, split: str, batch_size: int, *, shuffle: bool = False,
                      seed: int = 0) -> Any:
    """grain batches of one word per row: ``inputs``, ``targets`` ``[batch_size, T]`` (``T`` a
    multiple of 8) and ``lengths``; the last batch is filled up with empty rows (length 0)."""
    examples = lm_examples(data, split, shuffle=shuffle, seed=seed)
    return pad_and_batch(examples.to_iter_dataset(SERIAL_READS), batch_size,
                         sequences=("inputs", "targets"), padding=PADDING, time_multiple=8)


def rows_per_batch(data: WordLangData, batch_size: int) -> int:
    """Rows of ``ROW_LENGTH`` holding about as many characters as ``batch_size`` words do."""
    mean = float(np.mean([len(w) + 1 for w in data.train.words]))
    return max(1, round(batch_size * mean / ROW_LENGTH))


def arrays(data: WordLangData, split: str, batch_size: int, *, packed: bool = False,
           shuffle: bool = False, seed: int = 0) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """Device arrays ``(inputs, lengths, targets)`` of :func:`padded_lm_batches`, or with
    ``packed`` ``(inputs, segment_ids, targets)`` of :func:`packed_lm_batches`."""
    if packed:
        source = packed_lm_batches(data, split, rows_per_batch(data, batch_size), shuffle=shuffle,
                                   seed=seed)
    else:
        source = padded_lm_batches(data, split, batch_size, shuffle=shuffle, seed=seed)
    layout = "segment_ids" if packed else "lengths"
    for batch in source:
        yield tuple(jnp.asarray(batch[k]) for k in ("inputs", layout, "targets"))


def evaluate(model: CharLM, data: WordLangData, split: str, batch_size: int, *,
             packed: bool = False) -> tuple[float, float]:
    """(mean loss per character, perplexity per character) on ``split``; ``EOS`` counts."""
    model.eval()
    total, count = 0.0, 0
    for inputs, layout, targets in arrays(data, split, batch_size, packed=packed):
        total += float(packed_total_loss(model, inputs, layout, targets, MAX_SEGMENTS) if packed
                       else total_loss(model, inputs, layout, targets))
        count += int(jnp.sum(targets != IGNORE))
    return total / count, math.exp(total / count)


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Train, then report test perplexity; returns it."""
    from tqdm import tqdm

    layout_parser = argparse.ArgumentParser(add_help=False)
    layout_parser.add_argument("--layout", choices=["packed", "padded"], default="packed")
    layout_args, rest = layout_parser.parse_known_args(argv)
    packed = layout_args.layout == "packed"
    config, out = parse_config(__doc__.splitlines()[0], rest)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)
    model = build_model(data, config)
    optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
    history = History()
    if packed:       # grain packs each epoch's order anew: about this many batches per epoch
        steps = sum(1 for _ in packed_lm_batches(data, "train", rows_per_batch(data, config.batch_size)))
        print(f"packed rows: {rows_per_batch(data, config.batch_size)} rows x {ROW_LENGTH} steps "
              f"per batch, {steps} batches for {len(data.train)} words")
    else:
        steps = num_batches(data, "train", config.batch_size)
    steps = min(steps, config.max_steps) if config.max_steps else steps
    print(f"{len(data.train)} training words, vocabulary {data.vocab_size}; "
          f"uniform perplexity would be {data.vocab_size - 1}")
    for epoch in range(config.epochs):
        start = time.perf_counter()
        model.train()
        epoch_arrays = arrays(data, "train", config.batch_size, packed=packed, shuffle=True,
                              seed=config.seed * 1000 + epoch)
        bar = tqdm(itertools.islice(epoch_arrays, config.max_steps), total=steps, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}")
        for inputs, layout, targets in bar:
            loss = (packed_train_step(model, optimizer, inputs, layout, targets, MAX_SEGMENTS)
                    if packed else train_step(model, optimizer, inputs, layout, targets))
            history.step_loss.append(float(loss))
            history.step_metric.append(math.exp(history.step_loss[-1]))
            bar.set_postfix(loss=f"{history.step_loss[-1]:.3f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        valid_loss, valid_ppl = evaluate(model, data, "valid", config.batch_size, packed=packed)
        history.add_epoch(valid_loss, valid_ppl, seconds)
        print(f"epoch {epoch + 1}: {seconds:.1f} s, valid loss {valid_loss:.3f}, "
              f"valid perplexity {valid_ppl:.2f}")
    test_loss, test_ppl = evaluate(model, data, "test", config.batch_size, packed=packed)
    plot = history.plot(out / f"char_lm_{layout_args.layout}.png",
                        f"character LM, JAX (jaxseq LSTM, {layout_args.layout})", metric="perplexity")
    print(f"plot: {plot}")
    print(f"test loss {test_loss:.4f} nats/char, test perplexity {test_ppl:.3f} per character")
    return test_ppl


if __name__ == "__main__":
    main()
