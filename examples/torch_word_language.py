"""Which language is this word? The torch twin of ``word_language.py`` (packed BiLSTM).

    python examples/torch_word_language.py --quick
    python examples/torch_word_language.py

Same data, batches, hyper-parameters and architecture as the JAX script
(:class:`torch_ref.models.WordClassifier`: embedding → locked dropout before packing →
``pack_padded_sequence(enforce_sorted=False)`` → BiLSTM → ``cat(h_n[-2], h_n[-1])`` → dropout →
linear; ``cross_entropy(ignore_index=-100)`` skips filler rows). Writes ``runs/torch_word_language.png``.
"""
from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # `python examples/torch_word_language.py`: repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.training import History, TrainConfig, parse_config
from examples.wordlang_data import IGNORE, WordLangData, batches, build_dataset, num_batches
from torch_ref.models import WordClassifier


def build_model(data: WordLangData, config: TrainConfig) -> WordClassifier:
    """The classifier of ``config`` for ``data``, initialised from ``torch.manual_seed(config.seed)``."""
    torch.manual_seed(config.seed)
    return WordClassifier(data.vocab_size, data.num_classes, embed_dim=config.embed_dim,
                          hidden_size=config.hidden_size, num_layers=config.num_layers,
                          dropout=config.dropout)


def tensor_batches(data: WordLangData, split: str, batch_size: int, *, shuffle: bool = False,
                   seed: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(tokens [B, T], lengths [B], labels [B])`` int64 tensors of the shared loader."""
    for batch in batches(data, split, batch_size, shuffle=shuffle, seed=seed):
        yield tuple(torch.from_numpy(a.astype(np.int64))
                    for a in (batch.tokens, batch.lengths, batch.labels))


def train_step(model: WordClassifier, optimizer: torch.optim.Optimizer, tokens: torch.Tensor,
               lengths: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """One optimizer step; returns (mean loss, accuracy) over the batch's real rows."""
    logits = model(tokens, lengths)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    real = labels != IGNORE
    accuracy = ((logits.argmax(-1) == labels) & real).sum() / real.sum()
    return loss.item(), accuracy.item()


@torch.no_grad()
def evaluate(model: WordClassifier, data: WordLangData, split: str, batch_size: int
             ) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``split`` (evaluation mode)."""
    model.eval()
    loss = correct = count = 0.0
    for tokens, lengths, labels in tensor_batches(data, split, batch_size):
        logits = model(tokens, lengths)
        real = labels != IGNORE
        loss += F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum").item()
        correct += ((logits.argmax(-1) == labels) & real).sum().item()
        count += real.sum().item()
    return loss / count, correct / count


def train(model: WordClassifier, data: WordLangData, config: TrainConfig, *,
          progress: bool = True) -> History:
    """Adam training on ``data.train`` for ``config.epochs``, validating after each epoch."""
    from tqdm import tqdm

    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    history = History()
    steps = num_batches(data, "train", config.batch_size)
    steps = min(steps, config.max_steps) if config.max_steps else steps
    for epoch in range(config.epochs):
        start = time.perf_counter()
        model.train()
        epoch_batches = tensor_batches(data, "train", config.batch_size, shuffle=True,
                                       seed=config.seed * 1000 + epoch)
        bar = tqdm(itertools.islice(epoch_batches, steps), total=steps, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for tokens, lengths, labels in bar:
            loss, accuracy = train_step(model, optimizer, tokens, lengths, labels)
            history.step_loss.append(loss)
            history.step_metric.append(accuracy)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        history.add_epoch(*evaluate(model, data, "valid", config.batch_size), seconds)
        if progress:
            print(f"epoch {epoch + 1}: {seconds:.1f} s, "
                  f"train loss {np.mean(history.step_loss[-steps:]):.3f}, "
                  f"valid loss {history.valid_loss[-1]:.3f}, "
                  f"valid accuracy {history.valid_metric[-1]:.3f}")
    return history


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Train, evaluate on the test split and plot; returns test accuracy."""
    config, out = parse_config(__doc__.splitlines()[0], argv)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)
    print(f"{len(data.train)}/{len(data.valid)}/{len(data.test)} train/valid/test words, "
          f"{data.num_classes} languages, {data.vocab_size} symbols; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    model = build_model(data, config)
    history = train(model, data, config)
    test_loss, test_accuracy = evaluate(model, data, "test", config.batch_size)
    plot = history.plot(out / "torch_word_language.png", "word → language, torch (packed BiLSTM)")
    print(f"time per epoch: {', '.join(f'{s:.1f} s' for s in history.epoch_seconds)}")
    print(f"plot: {plot}")
    print(f"final test loss {test_loss:.4f}, final test accuracy {test_accuracy:.4f}")
    return test_accuracy


if __name__ == "__main__":
    main()
