"""Port a DeepSpeech-like torch model (convs, batch norm, BiLSTM, CTC) to JAX and prove it equal.

    python examples/port_speech.py --quick     # 30-60 s on 2 CPU cores (four compilations)
    python examples/port_speech.py             # more torch training steps first

1. trains :class:`torch_ref.speech.SpeechModel` (``Conv2d`` -> batch norm over valid frames ->
   ``Hardtanh`` twice, a packed BiLSTM, ``Linear``, ``log_softmax``) for a few CTC steps on
   synthetic spectrograms (:func:`synthetic_batch`: nothing is downloaded), so that the weights and
   the batch norms' running statistics are not their initial values;
2. saves its ``state_dict`` (``torch.save``) and reads it back (``torch.load(weights_only=True)``);
3. builds the NNX twin :class:`SpeechModel` (``nnx.Conv`` channels last, :class:`jaxseq.BatchNorm`,
   :class:`jaxseq.LSTM`, ``nnx.Linear``; submodules named as in torch) and loads the whole
   ``state_dict``, buffers included, with one :func:`jaxseq.load_torch_state_dict` call;
4. checks the port with :func:`jaxseq.parity.compare_models` on a fresh batch with NaN padding, in
   evaluation mode (running statistics) and in training mode (batch statistics, and the updated
   running statistics compared as buffers), in float64 and float32: the CTC loss
   (:func:`jaxseq.ctc_loss` against ``F.ctc_loss``), the log-probabilities, the output
   lengths, the gradient of the spectrogram and of every torch parameter by name. The lengths
   come from float32 ``percentages`` (as deepspeech.pytorch's ``input_percentages``), which
   ``keep_dtype`` keeps in float32. Prints the four tables.

Layouts: torch convolutions take ``[B, C, F, T]`` and their kernels are ``[out, in, kF, kT]``;
``nnx.Conv`` takes ``[B, F, T, C]`` (channels last) with kernels ``[kF, kT, in, out]``: the loader
transposes the kernels, the model transposes nothing but the spectrogram's channel axis (both keep
frequency before time, so the kernel windows line up).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

if __package__ in (None, ""):  # `python examples/port_speech.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples.training import RUNS_DIR
from jaxseq.batch_norm import BatchNorm
from jaxseq.parity import compare_models
from jaxseq.parity.models import ModelReport
from torch_ref import speech as torch_speech

#: ``assert_close`` tolerances per dtype. ``atol``: in training mode the conv biases feed a batch
#: norm, which subtracts the batch mean, so their gradient is exactly 0 in exact arithmetic and both
#: sides return rounding noise (measured: up to 2e-16 in float64, 2e-7 in float32, against
#: gradients of 5e-3 to 3e-1); ``atol`` sits above that noise, and the real gradients' errors
#: (float32: 1e-9 to 3e-7) stay within ``rtol`` of their scale on their own.
TOLERANCE = {"float64": {"rtol": 1e-10, "atol": 1e-14}, "float32": {"rtol": 1e-4, "atol": 1e-6}}


#: Batch entries ``compare_models`` gives both sides in their own dtype: the float32 percentages
#: (cast to float64, ``int(percentages * T)`` loses a frame for some lengths).
KEEP_DTYPE = ("percentages",)


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
    """Sizes of the model and of the synthetic data, and the torch training before the port."""

    n_freq: int = 16
    num_classes: int = 8            # blank (0) and 7 "phones"
    hidden_size: int = 16
    channels: int = 8
    batch_size: int = 8
    max_frames: int = 48
    steps: int = 200                # torch CTC training steps before the port (0: untrained)
    learning_rate: float = 3e-3
    seed: int = 0

    @classmethod
    def quick(cls) -> SpeechConfig:
        return cls(steps=30)


# ------------------------------------------------------------------------------------------------
# Synthetic spectrograms
# ------------------------------------------------------------------------------------------------
def _envelopes(n_freq: int, num_classes: int) -> np.ndarray:
    """A fixed spectral envelope per class ``[num_classes, F]``: two formant-like bumps."""
    rng = np.random.default_rng(1234)
    freqs = np.arange(n_freq)[None]
    low = rng.uniform(0, n_freq / 2, (num_classes, 1))
    high = rng.uniform(n_freq / 2, n_freq, (num_classes, 1))
    return np.exp(-0.5 * ((freqs - low) / 1.5) ** 2) + 0.6 * np.exp(-0.5 * ((freqs - high) / 2) ** 2)


def synthetic_batch(rng: np.random.Generator, cfg: SpeechConfig) -> dict[str, np.ndarray]:
    """A batch of spectrogram-like utterances and their label sequences (for CTC).

    Each utterance is a run of "phones" (classes ``1 .. C-1``, never the same twice in a row, so
    every target fits its output frames), each 3 to 7 frames of its class's spectral envelope times
    a random gain, plus noise, log-compressed.

    Returns:
      ``{"spect": float32 [B, F, T] (NaN at padding), "lengths": int64 [B] (unsorted, one of them
      T), "percentages": float32 [B] (``lengths / T``, what deepspeech.pytorch's data loader
      gives and the losses read: ``int(percentages * T)`` is ``lengths`` in float32, not always
      in float64), "targets": int64 [B, S] (0 after each target), "target_lengths": int64 [B]}``.
    """
    B, T, Fq = cfg.batch_size, cfg.max_frames, cfg.n_freq
    envelopes = _envelopes(Fq, cfg.num_classes)
    lengths = rng.integers(T // 2, T + 1, B)
    lengths[rng.integers(B)] = T
    spect = np.full((B, Fq, T), np.nan, np.float32)
    labels: list[list[int]] = []
    for b, n in enumerate(lengths):
        energy, t, seq = np.zeros((Fq, n)), 0, []
        while t < n:
            label = int(rng.choice([c for c in range(1, cfg.num_classes) if seq[-1:] != [c]]))
            span = slice(t, min(n, t + int(rng.integers(3, 8))))
            energy[:, span] = rng.uniform(0.5, 2.0) * envelopes[label][:, None]
            seq.append(label)
            t = span.stop
        spect[b, :, :n] = np.log1p(10 * (energy + 0.05 * np.abs(rng.standard_normal((Fq, n)))))
        labels.append(seq)
    target_lengths = np.array([len(s) for s in labels])
    targets = np.zeros((B, target_lengths.max()), np.int64)
    for b, seq in enumerate(labels):
        targets[b, :len(seq)] = seq
    return {"spect": spect, "lengths": lengths.astype(np.int64),
            "percentages": (lengths / T).astype(np.float32), "targets": targets,
            "target_lengths": target_lengths.astype(np.int64)}


# ------------------------------------------------------------------------------------------------
# The NNX twin
# ------------------------------------------------------------------------------------------------
class Hardtanh(nnx.Module):
    """``nn.Hardtanh(min_val, max_val)``, gradient included: 1 strictly inside, 0 elsewhere (a
    ``jnp.clip`` would pass half the gradient at a bound: ``max(x, 0)`` at ``x == 0``). A module, not
    a function, so that the twin's ``conv`` list has torch's indices (``conv.3`` is the second conv).
    """

    def __init__(self, min_val: float, max_val: float):
        self.min_val, self.max_val = min_val, max_val

    def __call__(self, x: jax.Array) -> jax.Array:
        inside = (x > self.min_val) & (x < self.max_val)
        return jnp.where(inside, x, jax.lax.stop_gradient(jnp.clip(x, self.min_val, self.max_val)))


#: torch's default ``Conv2d`` / ``Linear`` weight init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
#: (overwritten by the loaded weights anyway).
TORCH_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _along(value: Any, axis: int) -> int:
    """An ``nnx.Conv`` option given as an int or per spatial axis, along ``axis``."""
    return int(value[axis]) if isinstance(value, Sequence) else int(value)


def conv_output_lengths(lengths: Any, conv: nnx.Conv, axis: int = 1) -> Any:
    """``floor((L + pad_lo + pad_hi - dilation (kernel - 1) - 1) / stride) + 1``: the output sizes
    of ``conv`` along spatial ``axis`` (1: time, 0: frequency, for ``[B, F, T, C]``) for input
    sizes ``L`` (explicit ``padding`` pairs, as torch's)."""
    if isinstance(conv.padding, str):
        raise ValueError(f"padding must be explicit (low, high) pairs, got {conv.padding!r}")
    low, high = conv.padding[axis]
    dilation = _along(1 if conv.kernel_dilation is None else conv.kernel_dilation, axis)
    span = dilation * (_along(conv.kernel_size, axis) - 1)
    return (lengths + low + high - span - 1) // _along(conv.strides, axis) + 1


class SpeechModel(nnx.Module):
    """The twin of :class:`torch_ref.speech.SpeechModel`, channels last.

    ``__call__(spect [B, F, T, 1], lengths [B]) -> (log_probs [B, T', num_classes],
    output_lengths [B])``. Submodules named as torch's: ``conv`` (an ``nnx.List``: ``nnx.Conv`` at 0
    and 3, :class:`jaxseq.BatchNorm` at 1 and 4, :class:`Hardtanh` at 2 and 5), ``rnn``
    (:class:`jaxseq.LSTM`), ``fc``. Starts in evaluation mode (``model.train()`` for batch
    statistics).
    """

    def __init__(self, cfg: SpeechConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        C = cfg.channels

        def conv(c_in: int, kernel: tuple[int, int], stride: tuple[int, int],
                 pad: tuple[int, int]) -> nnx.Conv:
            return nnx.Conv(c_in, C, kernel, stride, padding=[(pad[0], pad[0]), (pad[1], pad[1])],
                            kernel_init=TORCH_KERNEL_INIT, param_dtype=param_dtype, rngs=rngs)

        self.conv = nnx.List([
            conv(1, (5, 5), (2, 2), (2, 2)), BatchNorm(C, param_dtype=param_dtype),
            Hardtanh(0.0, 20.0),
            conv(C, (5, 3), (2, 1), (2, 1)), BatchNorm(C, param_dtype=param_dtype),
            Hardtanh(0.0, 20.0),
        ])
        freq = cfg.n_freq
        for c in self.conv:
            if isinstance(c, nnx.Conv):
                freq = conv_output_lengths(freq, c, axis=0)
        self.rnn = jaxseq.LSTM(C * freq, cfg.hidden_size, batch_first=True, bidirectional=True,
                               param_dtype=param_dtype, rngs=rngs)
        self.fc = nnx.Linear(2 * cfg.hidden_size, cfg.num_classes, param_dtype=param_dtype,
                             rngs=rngs)

    def __call__(self, spect: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        valid = jaxseq.length_mask(lengths, spect.shape[2])                     # [B, T]
        x = jnp.where(valid[:, None, :, None], spect, 0.0)                      # NaN padding -> 0
        for module in self.conv:
            if isinstance(module, nnx.Conv):
                x = module(x)                                                   # [B, F', T', C]
                lengths = conv_output_lengths(lengths, module)
            elif isinstance(module, BatchNorm):                          # valid frames only
                B, Fq, T, _ = x.shape
                frames = jaxseq.length_mask(lengths, T)[:, None, :]             # [B, 1, T']
                x = module(x, mask=jnp.broadcast_to(frames, (B, Fq, T)))        # 0 at padding
            else:
                x = module(x)
        B, Fq, T, C = x.shape
        features = jnp.transpose(x, (0, 2, 3, 1)).reshape(B, T, C * Fq)        # torch's c * F' + f
        output, _ = self.rnn(features, lengths)                                 # 0 at padding
        return jax.nn.log_softmax(self.fc(output), axis=-1), lengths


# ------------------------------------------------------------------------------------------------
# The two losses compare_models differentiates (the same batch pytree on both sides)
# ------------------------------------------------------------------------------------------------
def torch_loss(model: torch_speech.SpeechModel, batch: dict[str, torch.Tensor]):
    lengths = (batch["percentages"] * batch["spect"].shape[2]).int()    # deepspeech.pytorch's sizes
    log_probs, out_lengths = model(batch["spect"][:, None], lengths)            # [B, 1, F, T]
    loss = torch_speech.ctc_loss(log_probs, out_lengths, batch["targets"], batch["target_lengths"])
    return loss, {"log_probs": log_probs, "output_lengths": out_lengths}


def jax_loss(model: SpeechModel, batch: dict[str, jax.Array]):
    lengths = (batch["percentages"] * batch["spect"].shape[2]).astype(jnp.int32)
    log_probs, out_lengths = model(batch["spect"][..., None], lengths)           # [B, F, T, 1]
    loss = jaxseq.ctc_loss(log_probs, batch["targets"], out_lengths, batch["target_lengths"],
                    batch_first=True)
    return loss, {"log_probs": log_probs, "output_lengths": out_lengths}


def build_torch_model(cfg: SpeechConfig) -> torch_speech.SpeechModel:
    torch.manual_seed(cfg.seed)
    return torch_speech.SpeechModel(cfg.n_freq, cfg.num_classes, cfg.hidden_size, cfg.channels)


def train_torch(model: torch_speech.SpeechModel, cfg: SpeechConfig) -> list[float]:
    """``cfg.steps`` Adam steps of CTC on fresh synthetic batches; the losses."""
    rng = np.random.default_rng(cfg.seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    model.train()
    losses = []
    for _ in range(cfg.steps):
        batch = {k: torch.from_numpy(v) for k, v in synthetic_batch(rng, cfg).items()}
        loss, _ = torch_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def check(torch_model: torch_speech.SpeechModel, jax_model: SpeechModel,
          batch: dict[str, np.ndarray], modes: Sequence[str] = ("eval", "train"),
          dtypes: Sequence[str] = ("float64", "float32"), *, verbose: bool = True
          ) -> dict[tuple[str, str], ModelReport]:
    """:func:`compare_models` in every mode and dtype: ``{(mode, dtype): report}``."""
    reports = {}
    for mode in modes:
        for model in (torch_model, jax_model):
            if mode == "train":
                model.train()
            else:
                model.eval()
        for dtype in dtypes:
            report = compare_models(torch_model, jax_model, batch, torch_loss=torch_loss,
                                    jax_loss=jax_loss, dtype=dtype, keep_dtype=KEEP_DTYPE)
            reports[mode, dtype] = report
            if verbose:
                print(f"\n== {mode} mode, {dtype} ==")
                print(report)
    torch_model.eval()
    jax_model.eval()
    return reports


def summary(reports: dict[tuple[str, str], ModelReport]) -> list[str]:
    """One line per report: the worst relative error per kind (entries within ``atol`` count as
    0) and whether every entry passes :data:`TOLERANCE`."""
    lines = []
    for (mode, dtype), report in reports.items():
        tol = TOLERANCE[dtype]
        worst = {kind: report.worst(kind, tol["atol"]) for kind in ("loss", "output", "input_grad",
                                                                    "grad", "buffer")}
        ok = not report.failures(**tol)
        lines.append(f"{mode:5s} {dtype}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
                     + f"  (rtol {tol['rtol']:.0e}, atol {tol['atol']:.0e}: "
                     + ("ok)" if ok else "FAILED)"))
    return lines


def main(argv: Optional[Sequence[str]] = None) -> dict[tuple[str, str], ModelReport]:
    """Train, save, load, port and check; returns the reports ``{(mode, dtype): report}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 torch steps instead of 200")
    parser.add_argument("--steps", type=int, default=None, help="torch training steps (0: none)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    parser.add_argument("--mode", choices=["eval", "train", "both"], default="both")
    parser.add_argument("--out", type=Path, default=RUNS_DIR, help="output folder (default runs/)")
    args = parser.parse_args(argv)
    cfg = SpeechConfig.quick() if args.quick else SpeechConfig()
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})

    start = time.perf_counter()
    torch.set_num_threads(1)      # tiny ops: one thread beats thread start-up on a small machine
    torch_model = build_torch_model(cfg)
    losses = train_torch(torch_model, cfg)
    if losses:
        print(f"torch: {cfg.steps} CTC steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
              f"({time.perf_counter() - start:.1f} s)")
    path = args.out / "torch_speech.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch_model.state_dict(), path)
    state_dict = torch.load(path, weights_only=True)
    print(f"torch checkpoint {path}: {len(state_dict)} keys ({', '.join(list(state_dict)[:7])}, ...)")

    jax_model = SpeechModel(cfg, rngs=nnx.Rngs(cfg.seed))
    jaxseq.load_torch_state_dict(jax_model, state_dict)        # weights and running statistics

    batch = synthetic_batch(np.random.default_rng(cfg.seed + 2), cfg)
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    modes = ("eval", "train") if args.mode == "both" else (args.mode,)
    reports = check(torch_model, jax_model, batch, modes, dtypes)
    print("\nworst relative error per kind (loss, outputs, input gradients, gradients, buffers):")
    for line in summary(reports):
        print("  " + line)
    print(f"total {time.perf_counter() - start:.1f} s")
    return reports


if __name__ == "__main__":
    main()
