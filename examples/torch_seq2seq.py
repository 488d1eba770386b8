"""Read a word, write it backwards: the torch twin of ``seq2seq.py`` (packed BiLSTM + LSTMCell).

    python examples/torch_seq2seq.py --quick
    python examples/torch_seq2seq.py

Same data, batches, hyper-parameters and architecture as the JAX script
(:class:`torch_ref.seq2seq.Seq2Seq`: packed BiLSTM encoder, ``nn.LSTMCell`` decoder with input
feeding and masked dot attention, cross entropy with ``ignore_index``). Prints the exact-match
accuracy of greedy decodes on the test words and the time per epoch.
"""
from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # `python examples/torch_seq2seq.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.training import TrainConfig, parse_config
from examples.wordlang_data import (BOS, EOS, REVERSAL_LENGTH, ReversalBatch, WordLangData,
                                    build_dataset, reversal_batches)
from torch_ref.seq2seq import Seq2Seq, token_loss


def build_model(data: WordLangData, config: TrainConfig) -> Seq2Seq:
    """The model of ``config`` for ``data``, initialised from ``torch.manual_seed(config.seed)``."""
    torch.manual_seed(config.seed)
    return Seq2Seq(data.vocab_size, embed_dim=config.embed_dim, hidden_size=config.hidden_size)


def tensors(batch: ReversalBatch) -> tuple[torch.Tensor, ...]:
    """``(source, source_lengths, target_in, target_out)`` as int64 tensors."""
    return tuple(torch.from_numpy(a.astype(np.int64)) for a in
                 (batch.source, batch.source_lengths, batch.target_in, batch.target_out))


def train_step(model: Seq2Seq, optimizer: torch.optim.Optimizer, batch: ReversalBatch) -> float:
    source, lengths, target_in, target_out = tensors(batch)
    loss = token_loss(model(source, lengths, target_in), target_out)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def accuracy(model: Seq2Seq, data: WordLangData, split: str, batch_size: int,
             max_words: Optional[int] = None) -> float:
    """Share of words whose greedy decode is exactly the reversed word + EOS."""
    model.eval()
    hits = count = 0
    for batch in reversal_batches(data, split, batch_size, max_words=max_words):
        source, lengths, _, target_out = tensors(batch)
        tokens, _ = model.greedy(source, lengths, BOS, EOS, REVERSAL_LENGTH)
        real = target_out >= 0
        match = torch.where(real, tokens == target_out, torch.ones_like(real)).all(1)
        rows = target_out[:, 0] >= 0
        hits += int(match[rows].sum())
        count += int(rows.sum())
    model.train()
    return hits / count


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from tqdm import tqdm

    config, _ = parse_config(__doc__.splitlines()[0], argv)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)
    model = build_model(data, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps = -(-len(data.train) // config.batch_size)
    steps = min(steps, config.max_steps) if config.max_steps else steps
    seconds = []
    for epoch in range(config.epochs):
        start = time.perf_counter()
        batches = reversal_batches(data, "train", config.batch_size, shuffle=True,
                                   seed=config.seed * 1000 + epoch)
        loss = float("nan")
        for batch in tqdm(itertools.islice(batches, steps), total=steps, leave=False,
                          desc=f"epoch {epoch + 1}/{config.epochs}"):
            loss = train_step(model, optimizer, batch)
        seconds.append(time.perf_counter() - start)
        valid_acc = accuracy(model, data, "valid", config.batch_size, max_words=1000)
        print(f"epoch {epoch + 1}: {seconds[-1]:.1f} s, train loss {loss:.3f}, "
              f"valid exact match {valid_acc:.3f}")
    test_acc = accuracy(model, data, "test", config.batch_size)
    print(f"test exact-match accuracy: greedy {test_acc:.4f} ({len(data.test)} words); epoch "
          f"times {', '.join(f'{s:.1f}' for s in seconds)} s")
    return dict(test_accuracy=test_acc, epoch_seconds=seconds)


if __name__ == "__main__":
    main()
