"""Port a trained torch model to JAX: same predictions, checked on every test word.

    python examples/port_from_torch.py            # trains the torch twin briefly (about 20 s)
    python examples/port_from_torch.py --steps 0  # untrained weights, faster

1. trains :class:`torch_ref.models.WordClassifier` for a few hundred steps (``torch_word_language``);
2. saves its ``state_dict`` with ``torch.save`` and reads it back with ``torch.load(weights_only=True)``
   (the safe loader: tensors only, no pickled code);
3. builds the JAX :class:`examples.word_language.WordClassifier` and copies the weights in with
   :func:`load_torch_weights`: ``jaxseq.load_torch_state_dict(model.lstm, sd, prefix="lstm.")`` for
   the LSTM submodule, plain copies for the embedding table and the (transposed) linear layer;
4. runs both on the whole test split in evaluation mode and prints the largest absolute difference
   of the logits, the share of identical predictions and both accuracies.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

if __package__ in (None, ""):  # `python examples/port_from_torch.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples import torch_word_language, word_language
from examples.training import RUNS_DIR, TrainConfig
from examples.wordlang_data import IGNORE, build_dataset


def load_torch_weights(model: nnx.Module, state_dict: Mapping[str, Any]) -> nnx.Module:
    """Copy a torch ``state_dict`` into the JAX twin ``model`` (in place) and return ``model``.

    Every direct submodule of ``model`` named like its torch counterpart receives
    ``{name}.weight`` (``nnx.Embed``: as is; ``nnx.Linear``: transposed, torch keeps ``[out, in]``
    and Flax ``[in, out]``, plus ``{name}.bias``) or, for a jaxseq LSTM/GRU/RNN, every key under
    ``{name}.`` through :func:`jaxseq.load_torch_state_dict` with that prefix.

    Raises:
      ValueError: a missing key, a key that no submodule takes, or a shape mismatch.
    """
    # Owned numpy copies: on CPU, arrays made from `tensor.numpy()` can share the tensor's memory,
    # and a later in-place torch update (optimizer.step()) would then change the JAX parameters too.
    arrays = {k: np.array(v.detach().cpu().numpy() if hasattr(v, "detach") else v, copy=True)
              for k, v in state_dict.items()}

    def copy(param: nnx.Param, key: str, transpose: bool = False) -> None:
        if key not in arrays:
            raise ValueError(f"state_dict has no {key!r}")
        value = arrays[key].T if transpose else arrays[key]
        if value.shape != param.shape:
            raise ValueError(f"{key}: torch shape {value.shape}, JAX shape {param.shape}")
        param[...] = jnp.asarray(value, param.dtype)

    used: set[str] = set()
    for name, child in vars(model).items():
        prefix = f"{name}."
        if isinstance(child, jaxseq.RecurrentBase):
            jaxseq.load_torch_state_dict(child, arrays, prefix=prefix)
            used.update(k for k in arrays if k.startswith(prefix))
        elif isinstance(child, nnx.Embed):
            copy(child.embedding, prefix + "weight")
            used.add(prefix + "weight")
        elif isinstance(child, nnx.Linear):
            copy(child.kernel, prefix + "weight", transpose=True)
            copy(child.bias, prefix + "bias")
            used.update((prefix + "weight", prefix + "bias"))
    if unused := sorted(set(arrays) - used):
        raise ValueError(f"state_dict keys without a JAX counterpart: {unused}")
    return model


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

    jax_model = load_torch_weights(word_language.build_model(data, config), state_dict)
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
