"""Export a trained packed-sequence model for serving, then run it without jaxseq or flax.

    python examples/export_lstm.py

1. builds the word-language classifier of ``examples/word_language.py`` (embedding -> BiLSTM with
   ``lengths`` -> linear) and trains it briefly;
2. exports it with :func:`jaxseq.export.export_model` to a ``jax.export`` artifact with symbolic
   batch ``b`` and time ``t``, and writes the serialized bytes to ``runs/word_classifier.jax``;
3. starts a fresh Python process that imports only ``jax`` and ``numpy``, loads the file and
   classifies batches of several shapes; their logits must equal the live model's.

Prints the artifact size, the load time in the fresh process and the largest logit difference.
torch cannot do this with a packed LSTM (pytorch/pytorch#49936, #62240, #171978).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

if __package__ in (None, ""):  # `python examples/export_lstm.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples import word_language
from examples.training import RUNS_DIR, TrainConfig
from examples.wordlang_data import batches, build_dataset

SERVE = textwrap.dedent("""
    import sys, time
    start = time.perf_counter()
    import jax, numpy as np
    exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
    loaded = time.perf_counter() - start
    data = np.load(sys.argv[2])
    out = {}
    for k in range(int(data["count"])):
        out[f"logits{k}"] = np.asarray(exported.call(data[f"tokens{k}"], data[f"lengths{k}"]))
    np.savez(sys.argv[3], **out)
    assert not any(m.split(".")[0] in ("jaxseq", "flax") for m in sys.modules)
    print(f"{loaded:.2f}")
""")


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Returns the largest absolute logit difference between the artifact and the live model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps before export")
    parser.add_argument("--out", type=Path, default=RUNS_DIR)
    args = parser.parse_args(argv)
    config = dataclasses.replace(TrainConfig(), words_per_language=1000)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)
    model = word_language.build_model(data, config)
    optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
    model.train()
    for batch in itertools.islice(batches(data, "train", config.batch_size, shuffle=True),
                                  args.steps):
        word_language.train_step(model, optimizer, batch.tokens, batch.lengths, batch.labels)
    model.eval()

    b, t = jax.export.symbolic_shape("b, t")
    exported = jaxseq.export.export_model(model, jax.ShapeDtypeStruct((b, t), jnp.int32),
                                          jax.ShapeDtypeStruct((b,), jnp.int32))
    args.out.mkdir(parents=True, exist_ok=True)
    artifact = args.out / "word_classifier.jax"
    artifact.write_bytes(exported.serialize())
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    test = [next(batches(data, "test", size)) for size in (1, 7, 64)]
    feed = {"count": len(test)}
    for k, batch in enumerate(test):
        feed[f"tokens{k}"], feed[f"lengths{k}"] = batch.tokens, batch.lengths
    np.savez(args.out / "serve_inputs.npz", **feed)
    done = subprocess.run([sys.executable, "-c", SERVE, str(artifact),
                           str(args.out / "serve_inputs.npz"), str(args.out / "serve_outputs.npz")],
                          capture_output=True, text=True, check=True)
    served = np.load(args.out / "serve_outputs.npz")
    diff = max(float(np.abs(served[f"logits{k}"] - np.asarray(model(b.tokens, b.lengths))).max())
               for k, b in enumerate(test))
    shapes = ", ".join(f"{b.tokens.shape}" for b in test)
    print(f"artifact {artifact}: {artifact.stat().st_size / 1024:.0f} KiB ({params / 1024:.0f} KiB "
          f"of parameters); loaded in {done.stdout.strip()} s (import jax included) by a process "
          f"without jaxseq or flax; batches {shapes}: max |logit difference| {diff:.2e}")
    return diff


if __name__ == "__main__":
    main()
