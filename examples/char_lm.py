"""Character-level language model on the word-language words: the per-token (tagging) pattern in JAX.

    python examples/char_lm.py --quick
    python examples/char_lm.py

Each word is read as ``BOS c_1 ... c_n`` and must predict ``c_1 ... c_n EOS`` (next character at every
step). Embedding → locked dropout → :class:`jaxseq.LSTM` with ``lengths`` → dropout → linear over the
vocabulary ``[B, T, V]``; the loss is :func:`jaxseq.losses.masked_cross_entropy` with the validity mask
``jaxseq.length_mask(lengths, T)``, i.e. averaged over real characters only. Reports per-character
perplexity on the held-out test words. Twin of :class:`torch_ref.models.CharLM`.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

if __package__ in (None, ""):  # `python examples/char_lm.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples.training import History, TrainConfig, parse_config
from examples.word_language import torch_linear_init
from examples.wordlang_data import IGNORE, WordLangData, build_dataset, lm_batches, num_batches
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

    def __call__(self, inputs: jax.Array, lengths: jax.Array) -> jax.Array:
        x = self.embed_dropout(self.embedding(inputs))                  # [B, T, E]
        output, _ = self.lstm(x, lengths)                           # [B, T, H], 0 at padding
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


def arrays(data: WordLangData, split: str, batch_size: int, *, shuffle: bool = False,
           seed: int = 0) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """``(inputs, lengths, targets)`` device arrays of the shared loader."""
    for batch in lm_batches(data, split, batch_size, shuffle=shuffle, seed=seed):
        yield jnp.asarray(batch.inputs), jnp.asarray(batch.lengths), jnp.asarray(batch.targets)


def evaluate(model: CharLM, data: WordLangData, split: str, batch_size: int) -> tuple[float, float]:
    """(mean loss per character, perplexity per character) on ``split``; ``EOS`` counts."""
    model.eval()
    total, count = 0.0, 0
    for inputs, lengths, targets in arrays(data, split, batch_size):
        total += float(total_loss(model, inputs, lengths, targets))
        count += int(jnp.sum(targets != IGNORE))
    return total / count, math.exp(total / count)


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Train, then report test perplexity; returns it."""
    from tqdm import tqdm

    config, out = parse_config(__doc__.splitlines()[0], argv)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)
    model = build_model(data, config)
    optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
    history = History()
    steps = num_batches(data, "train", config.batch_size)
    steps = min(steps, config.max_steps) if config.max_steps else steps
    print(f"{len(data.train)} training words, vocabulary {data.vocab_size}; "
          f"uniform perplexity would be {data.vocab_size - 1}")
    for epoch in range(config.epochs):
        start = time.perf_counter()
        model.train()
        epoch_arrays = arrays(data, "train", config.batch_size, shuffle=True,
                              seed=config.seed * 1000 + epoch)
        bar = tqdm(itertools.islice(epoch_arrays, steps), total=steps, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}")
        for inputs, lengths, targets in bar:
            history.step_loss.append(float(train_step(model, optimizer, inputs, lengths, targets)))
            history.step_metric.append(math.exp(history.step_loss[-1]))
            bar.set_postfix(loss=f"{history.step_loss[-1]:.3f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        valid_loss, valid_ppl = evaluate(model, data, "valid", config.batch_size)
        history.add_epoch(valid_loss, valid_ppl, seconds)
        print(f"epoch {epoch + 1}: {seconds:.1f} s, valid loss {valid_loss:.3f}, "
              f"valid perplexity {valid_ppl:.2f}")
    test_loss, test_ppl = evaluate(model, data, "test", config.batch_size)
    plot = history.plot(out / "char_lm.png", "character LM, JAX (jaxseq LSTM)",
                        metric="perplexity")
    print(f"plot: {plot}")
    print(f"test loss {test_loss:.4f} nats/char, test perplexity {test_ppl:.3f} per character")
    return test_ppl


if __name__ == "__main__":
    main()
