"""Put the spaces back: the torch twin of ``segment_crf.py`` (packed BiLSTM + pytorch-crf).

    python examples/torch_segment_crf.py --quick
    python examples/torch_segment_crf.py

Same lines, batches (each JAX batch of packed rows holds exactly the lines of the torch batch,
here padded one per row with ``lengths``), hyper-parameters, loops and metrics as the JAX script
(:mod:`examples.segment_data`); the model is :class:`torch_ref.segmenter.Segmenter`
(``pack_padded_sequence(enforce_sorted=False)`` -> BiLSTM -> linear -> ``torchcrf.CRF`` with the
length mask, ``reduction="mean"``). Writes ``runs/torch_segment_crf.png``.

Measured 2026-12-02 on 2 CPU cores (AMD EPYC; torch 2.13.0, 2 threads; seed 0): full run, test
(2,000 lines) tag accuracy 0.9905, word-boundary F1 0.9667, word F1 0.9333, 47.0 s per epoch,
251 s in all; ``--quick`` 0.9754 / 0.9132 / 0.8291, 10.0 s per epoch, 48 s (the JAX figures are in
``segment_crf.py``).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch

if __package__ in (None, ""):  # `python examples/torch_segment_crf.py`: repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.segment_data import (
    NUM_TAGS,
    VOCAB_SIZE,
    Decode,
    SegmentBatch,
    SegmentConfig,
    Step,
    evaluate,
    finish,
    load,
    parse_args,
    train_epochs,
)
from torch_ref.segmenter import Segmenter


def build_model(config: SegmentConfig) -> Segmenter:
    """The segmenter of ``config``, initialised from ``torch.manual_seed(config.seed)``."""
    torch.manual_seed(config.seed)
    return Segmenter(VOCAB_SIZE, NUM_TAGS, embed_dim=config.embed_dim,
                     hidden_size=config.hidden_size, num_layers=config.num_layers)


def tensors(batch: SegmentBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens [N, T], lengths [N], tags [N, T])``: the batch's lines, padded."""
    return (torch.from_numpy(batch.padded_tokens), torch.from_numpy(batch.lengths),
            torch.from_numpy(batch.padded_tags))


def step_fn(model: Segmenter, config: SegmentConfig) -> Step:
    """The training step of :func:`examples.segment_data.train_epochs` (Adam)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    def step(batch: SegmentBatch) -> float:
        loss = model(*tensors(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def decode_fn(model: Segmenter) -> Decode:
    """The evaluation of :func:`examples.segment_data.evaluate`."""
    @torch.no_grad()
    def decode(batch: SegmentBatch) -> tuple[list[list[int]], float]:
        tokens, lengths, tags = tensors(batch)
        return model.decode(tokens, lengths), -model.log_likelihood(tokens, lengths,
                                                                    tags).mean().item()

    return decode


def mode_fn(model: Segmenter) -> Callable[[bool], None]:
    """``set_training(True / False)``: ``model.train(...)``."""
    def set_training(training: bool) -> None:
        model.train(training)

    return set_training


def main(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Train, evaluate on the test lines, plot; returns the test figures."""
    start = time.perf_counter()
    config, out = parse_args(__doc__.splitlines()[0], argv)
    data, splits = load(config)
    print(f"{len(data.train)}/{len(data.valid)}/{len(data.test)} train/valid/test lines from "
          f"{len(data.vocabulary)} words; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    model = build_model(config)
    history = train_epochs(step_fn(model, config), decode_fn(model), mode_fn(model), splits,
                           config)
    model.eval()
    test = evaluate(decode_fn(model), splits["test"], config)
    return finish("torch_segment_crf", out, splits, history, test, time.perf_counter() - start)


if __name__ == "__main__":
    main()
