"""Which language is this word? A character-level bidirectional LSTM in JAX (Flax NNX + optax + jaxseq).

    python examples/word_language.py --quick      # about a minute on 2 CPU cores
    python examples/word_language.py              # full run (see examples/training.py: TrainConfig)

Model: characters ``[B, T]`` → embedding ``[B, T, E]`` → locked dropout (one mask per word, before the
recurrence) → bidirectional :class:`jaxseq.LSTM` with ``lengths`` (no packing, no sorting) → the last
layer's final forward and backward states ``h_n[-2], h_n[-1]`` ``[B, 2H]`` → dropout → linear
``[B, C]``; loss :func:`jaxseq.losses.masked_cross_entropy` (filler rows carry ``IGNORE`` labels).

Data: a grain pipeline (shuffle per epoch, encode, pad and batch to one static shape with
:func:`jaxseq.grain_data.pad_and_batch`). The batch is split across every local device
(``jax.sharding``: a 1-D ``Mesh`` named ``"data"``, batch arrays ``NamedSharding(mesh, P("data"))``,
parameters and optimizer state replicated); the same code runs on 1 or N devices, with batches
padded to a multiple of the device count by filler rows.
Outputs under ``runs/``: a loss / accuracy plot and an orbax checkpoint, restored at the end and
checked to give identical test predictions. ``torch_word_language.py`` is the torch twin.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

if __package__ in (None, ""):  # `python examples/word_language.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples.training import History, TrainConfig, parse_config
from examples.wordlang_data import IGNORE, PAD, WordLangData, build_dataset, num_batches
from jaxseq.grain_data import pad_and_batch
from jaxseq.losses import masked_cross_entropy


def torch_linear_init(fan_in: int) -> tuple[nnx.Initializer, nnx.Initializer]:
    """``torch.nn.Linear``'s default init as (kernel, bias) initialisers: both ``U(±1/sqrt(fan_in))``.

    The twins then start from the same distributions (not the same values: the PRNGs differ).
    """
    bound = 1.0 / np.sqrt(fan_in)

    def bias_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), bias_init


class WordClassifier(nnx.Module):
    """Embedding → locked dropout → BiLSTM (``lengths``) → ``cat(h_n[-2], h_n[-1])`` → dropout → linear.

    Args:
      vocab_size: number of token ids (``PAD = 0`` included).
      num_classes: number of languages ``C``.
      embed_dim, hidden_size, num_layers: ``E``, ``H``, ``L`` of the embedding and the LSTM stack.
      dropout: rate of the locked dropout on the embeddings, of the LSTM's inter-layer dropout
        (``num_layers > 1``) and of the dropout before the classifier.
      param_dtype: dtype of every parameter (float64 for exact comparisons with torch).
      rngs: ``params`` and ``dropout`` streams.

    Starts in evaluation mode (no dropout); ``model.train()`` / ``model.eval()`` switch every dropout.
    """

    def __init__(self, vocab_size: int, num_classes: int, *, embed_dim: int, hidden_size: int,
                 num_layers: int = 1, dropout: float = 0.0, param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.embedding = nnx.Embed(vocab_size, embed_dim, param_dtype=param_dtype,
                                   embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.embed_dropout = jaxseq.LockedDropout(dropout, batch_first=True, rngs=rngs)
        self.lstm = jaxseq.LSTM(embed_dim, hidden_size, num_layers, batch_first=True,
                                dropout=dropout if num_layers > 1 else 0.0, bidirectional=True,
                                param_dtype=param_dtype, rngs=rngs)
        self.head_dropout = nnx.Dropout(dropout, deterministic=True, rngs=rngs)
        kernel_init, bias_init = torch_linear_init(2 * hidden_size)
        self.classifier = nnx.Linear(2 * hidden_size, num_classes, param_dtype=param_dtype,
                                     kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        """``tokens [B, T]`` int, ``lengths [B]`` → logits ``[B, C]``."""
        x = self.embed_dropout(self.embedding(tokens))              # [B, T, E], one mask per word
        _, (h_n, _) = self.lstm(x, lengths)                         # h_n [L*2, B, H]
        features = jnp.concatenate([h_n[-2], h_n[-1]], axis=-1)     # last layer: fwd, bwd [B, 2H]
        return self.classifier(self.head_dropout(features))


def build_model(data: WordLangData, config: TrainConfig, *, param_dtype: Any = jnp.float32
                ) -> WordClassifier:
    """The classifier of ``config`` for ``data``, initialised from ``config.seed``."""
    return WordClassifier(data.vocab_size, data.num_classes, embed_dim=config.embed_dim,
                          hidden_size=config.hidden_size, num_layers=config.num_layers,
                          dropout=config.dropout, param_dtype=param_dtype,
                          rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))


# -- training and evaluation steps ---------------------------------------------------------------
def _loss_and_accuracy(model: WordClassifier, tokens: jax.Array, lengths: jax.Array,
                       labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = model(tokens, lengths)                                         # [B, C]
    loss = masked_cross_entropy(logits, labels, ignore_index=IGNORE)        # mean over real rows
    real = labels != IGNORE
    accuracy = jnp.sum((jnp.argmax(logits, axis=-1) == labels) & real) / jnp.sum(real)
    return loss, accuracy


@nnx.jit
def train_step(model: WordClassifier, optimizer: nnx.Optimizer, tokens: jax.Array,
               lengths: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One optimizer step on a batch; returns (mean loss, accuracy) over its real rows."""
    grad_fn = nnx.value_and_grad(_loss_and_accuracy, has_aux=True)
    (loss, accuracy), grads = grad_fn(model, tokens, lengths, labels)
    optimizer.update(model, grads)
    return loss, accuracy


@nnx.jit
def eval_step(model: WordClassifier, tokens: jax.Array, lengths: jax.Array, labels: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed loss, correct predictions, real rows) of a batch; no parameter update."""
    logits = model(tokens, lengths)
    loss = masked_cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    real = labels != IGNORE
    return loss, jnp.sum((jnp.argmax(logits, axis=-1) == labels) & real), jnp.sum(real)


@nnx.jit
def forward(model: WordClassifier, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Logits ``[B, C]`` in the model's current mode."""
    return model(tokens, lengths)


# -- data parallelism ----------------------------------------------------------------------------
def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh ``("data",)`` over ``devices`` (default: every local device)."""
    return Mesh(np.array(devices if devices is not None else jax.local_devices()), ("data",))


def replicate(obj: nnx.Module | nnx.Optimizer, mesh: Mesh) -> None:
    """Place every variable of ``obj`` (parameters, RNG and optimizer state) on all of ``mesh``."""
    nnx.update(obj, jax.device_put(nnx.state(obj), NamedSharding(mesh, P())))


#: grain's default 16 reader threads cost more than these cheap reads on a few CPU cores.
SERIAL_READS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def word_examples(data: WordLangData, split: str, *, shuffle: bool = False, seed: int = 0
                  ) -> grain.MapDataset:
    """Every word of ``split`` as ``{"tokens": int32 [L], "label": int32}`` (a grain
    ``MapDataset``; ``shuffle``: a new order per ``seed``)."""
    part = data.split(split)
    indices = grain.MapDataset.range(len(part))
    if shuffle:
        indices = indices.shuffle(seed=seed)
    return indices.map(lambda i: {"tokens": data.encode(part.words[i]),
                                  "label": np.int32(part.labels[i])})


def device_batches(data: WordLangData, split: str, batch_size: int, mesh: Mesh, *,
                   shuffle: bool = False, seed: int = 0, time_multiple: int = 8
                   ) -> Iterator[tuple[jax.Array, ...]]:
    """``(tokens, lengths, labels)`` batches of ``batch_size`` words, split along the batch axis
    over ``mesh``.

    grain pipeline: :func:`word_examples` (shuffled with ``seed``), padded and batched by
    :func:`jaxseq.grain_data.pad_and_batch` to ``T`` = the longest word rounded up to a multiple of
    ``time_multiple``; rows are filled up to a multiple of ``mesh.size`` (and the last batch to
    the full size) with empty rows: length 0, label ``IGNORE``, skipped by the loss.
    """
    sharding = NamedSharding(mesh, P("data"))
    rows = -(-batch_size // mesh.size) * mesh.size
    examples = word_examples(data, split, shuffle=shuffle, seed=seed).to_iter_dataset(SERIAL_READS)
    for batch in pad_and_batch(examples, batch_size, sequences=["tokens"],
                               padding={"tokens": PAD, "label": IGNORE},
                               time_multiple=time_multiple, num_rows=rows):
        yield jax.device_put((batch["tokens"], batch["lengths"], batch["label"]), sharding)


def evaluate(model: WordClassifier, data: WordLangData, split: str, batch_size: int, mesh: Mesh
             ) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``split`` (evaluation mode)."""
    model.eval()
    totals = np.zeros(3)
    for arrays in device_batches(data, split, batch_size, mesh):
        totals += np.array([float(v) for v in eval_step(model, *arrays)])
    loss, correct, count = totals
    return loss / count, correct / count


def split_predictions(model: WordClassifier, data: WordLangData, split: str, batch_size: int,
                      mesh: Mesh) -> np.ndarray:
    """Predicted class of every word of ``split``, in order ``[N]``."""
    model.eval()
    preds = [np.asarray(forward(model, tokens, lengths)).argmax(-1)[np.asarray(labels) != IGNORE]
             for tokens, lengths, labels in device_batches(data, split, batch_size, mesh)]
    return np.concatenate(preds)


def train(model: WordClassifier, data: WordLangData, config: TrainConfig, mesh: Mesh, *,
          progress: bool = True) -> History:
    """Adam training on ``data.train`` for ``config.epochs``, validating after each epoch."""
    from tqdm import tqdm

    optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
    replicate(model, mesh)
    replicate(optimizer, mesh)
    history = History()
    steps = num_batches(data, "train", config.batch_size)
    steps = min(steps, config.max_steps) if config.max_steps else steps
    for epoch in range(config.epochs):
        start = time.perf_counter()
        model.train()
        epoch_batches = device_batches(data, "train", config.batch_size, mesh, shuffle=True,
                                       seed=config.seed * 1000 + epoch)
        bar = tqdm(itertools.islice(epoch_batches, steps), total=steps, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for tokens, lengths, labels in bar:
            loss, accuracy = train_step(model, optimizer, tokens, lengths, labels)
            history.step_loss.append(float(loss))
            history.step_metric.append(float(accuracy))
            bar.set_postfix(loss=f"{history.step_loss[-1]:.3f}",
                            acc=f"{history.step_metric[-1]:.3f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        history.add_epoch(*evaluate(model, data, "valid", config.batch_size, mesh), seconds)
        if progress:
            print(f"epoch {epoch + 1}: {seconds:.1f} s, "
                  f"train loss {np.mean(history.step_loss[-steps:]):.3f}, "
                  f"valid loss {history.valid_loss[-1]:.3f}, "
                  f"valid accuracy {history.valid_metric[-1]:.3f}")
    return history


# -- checkpoints (orbax) ---------------------------------------------------------------------------
def save_checkpoint(model: WordClassifier, data: WordLangData, config: TrainConfig,
                    path: Path) -> Path:
    """Save the parameters (orbax) and what rebuilds the model (``meta.json``) under ``path``."""
    import orbax.checkpoint as ocp

    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").write_text(json.dumps({
        "config": dataclasses.asdict(config), "chars": data.chars, "languages": data.languages}))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / "params", nnx.state(model, nnx.Param), force=True)
    checkpointer.wait_until_finished()
    return path


def restore_checkpoint(path: Path) -> tuple[WordClassifier, dict]:
    """Rebuild the model saved by :func:`save_checkpoint`; returns ``(model, meta)``."""
    import orbax.checkpoint as ocp

    path = path.resolve()
    meta = json.loads((path / "meta.json").read_text())
    config = TrainConfig(**meta["config"])
    model = WordClassifier(len(meta["chars"]), len(meta["languages"]),
                           embed_dim=config.embed_dim, hidden_size=config.hidden_size,
                           num_layers=config.num_layers, dropout=config.dropout,
                           rngs=nnx.Rngs(params=0, dropout=1))
    params = ocp.StandardCheckpointer().restore(path / "params", nnx.state(model, nnx.Param))
    nnx.update(model, params)
    return model, meta


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Train, evaluate on the test split, plot, checkpoint and restore; returns test accuracy."""
    config, out = parse_config(__doc__.splitlines()[0], argv)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)
    mesh = make_mesh()
    print(f"{len(data.train)}/{len(data.valid)}/{len(data.test)} train/valid/test words, "
          f"{data.num_classes} languages, {data.vocab_size} symbols; {mesh.size} device(s): "
          f"{jax.devices()[0].platform}")
    model = build_model(data, config)
    history = train(model, data, config, mesh)
    test_loss, test_accuracy = evaluate(model, data, "test", config.batch_size, mesh)
    plot = history.plot(out / "word_language.png", "word → language, JAX (jaxseq BiLSTM)")
    checkpoint = save_checkpoint(model, data, config, out / "word_language_ckpt")
    restored, _ = restore_checkpoint(checkpoint)
    replicate(restored, mesh)
    same = np.array_equal(split_predictions(model, data, "test", config.batch_size, mesh),
                          split_predictions(restored, data, "test", config.batch_size, mesh))
    print(f"time per epoch: {', '.join(f'{s:.1f} s' for s in history.epoch_seconds)}")
    print(f"plot: {plot}")
    print(f"checkpoint: {checkpoint} (restored model, identical test predictions: {same})")
    print(f"final test loss {test_loss:.4f}, final test accuracy {test_accuracy:.4f}")
    return test_accuracy


if __name__ == "__main__":
    main()
