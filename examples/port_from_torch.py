"""Port a trained torch model to JAX: same predictions, checked on every test word.

    python examples/port_from_torch.py            # trains the torch twin briefly (about 20 s)
    python examples/port_from_torch.py --steps 0  # untrained weights, faster

1. trains :class:`torch_ref.models.WordClassifier` for a few hundred steps (``torch_word_language``);
2. saves its ``state_dict`` with ``torch.save`` and reads it back with ``torch.load(weights_only=True)``
   (the safe loader: tensors only, no pickled code);
3. builds the JAX :class:`examples.word_language.WordClassifier`, whose submodules have the torch
   names, and copies every weight in with ``jaxseq.load_torch_state_dict(model, sd)`` (the LSTM
   as is, the embedding table, the linear layer transposed);
4. runs both on the whole test split in evaluation mode and prints the largest absolute difference
   of the logits, the share of identical predictions and both accuracies.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # `python examples/port_from_torch.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples import torch_word_language, word_language
from examples.training import RUNS_DIR, TrainConfig
from examples.wordlang_data import IGNORE, build_dataset


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Returns the largest absolute logit difference between torch and JAX on the test split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="torch training steps (0: none)")
    parser.add_argument("--out", type=Path, default=RUNS_DIR)
    args = parser.parse_args(argv)
    config = dataclasses.replace(TrainConfig(), epochs=1 if args.steps else 0,
                                 max_steps=args.steps or None)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)

    torch_model = torch_word_language.build_model(data, config)
    torch_word_language.train(torch_model, data, config)
    path = args.out / "torch_word_classifier.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch_model.state_dict(), path)
    state_dict = torch.load(path, weights_only=True)
    print(f"torch checkpoint {path}: {', '.join(state_dict)}")

    jax_model = jaxseq.load_torch_state_dict(word_language.build_model(data, config), state_dict)
    torch_model.eval()
    jax_model.eval()  # already the default; dropout off on both sides
    max_diff, same, correct_torch, correct_jax, count = 0.0, 0, 0, 0, 0
    for batch in torch_word_language.tensor_batches(data, "test", config.batch_size):
        tokens, lengths, labels = batch
        with torch.no_grad():
            logits_torch = torch_model(tokens, lengths).numpy()
        logits_jax = np.asarray(word_language.forward(jax_model, tokens.numpy(), lengths.numpy()))
        real = labels.numpy() != IGNORE
        max_diff = max(max_diff, float(np.abs(logits_torch - logits_jax)[real].max()))
        pred_torch, pred_jax = logits_torch.argmax(-1)[real], logits_jax.argmax(-1)[real]
        same += int((pred_torch == pred_jax).sum())
        correct_torch += int((pred_torch == labels.numpy()[real]).sum())
        correct_jax += int((pred_jax == labels.numpy()[real]).sum())
        count += int(real.sum())
    print(f"{count} test words: max |logits_torch - logits_jax| = {max_diff:.3e}; identical "
          f"predictions {same}/{count}; accuracy torch {correct_torch / count:.4f}, "
          f"JAX {correct_jax / count:.4f}")
    return max_diff


if __name__ == "__main__":
    main()
