"""Read words from images: a CRNN (convs, BiLSTM, CTC) in JAX (Flax NNX + optax + jaxseq).

    python examples/ocr_ctc.py --quick      # about a minute on 2 CPU cores
    python examples/ocr_ctc.py              # full run (OCRConfig defaults)

Model (:class:`CRNN`, twin of :class:`torch_ref.ocr.CRNN`): an image ``[B, 32, W]`` -> four conv
blocks (``nnx.Conv`` 3x3 without bias -> :class:`jaxseq.BatchNorm` over the valid columns -> ReLU
-> max pool; widths halved twice) -> one feature vector per column ``[B, W/4, C * 2]`` ->
bidirectional :class:`jaxseq.LSTM` with each image's own number of columns as ``lengths`` (no
packing, no sorting) -> linear -> log-softmax -> :func:`jaxseq.ctc_loss` (blank 0, torch's
``"mean"``). Adam with global-norm clipping. Decoding: best path (greedy) and CTC prefix beam
search (:mod:`examples.ocr_data`); character and word error rates on held-out *words* (never seen
in training). Writes ``runs/ocr_ctc.png`` (test images with their decodings) and
``runs/ocr_ctc_curves.png`` (loss, validation CER).

Data (:mod:`examples.ocr_data`, nothing downloaded): wordfreq's most frequent English words
rendered with matplotlib's DejaVu fonts, random size, spacing, slant, blur and noise.

Measured 2026-12-02 on 2 CPU cores (AMD EPYC, no GPU; jax 0.10.2, torch 2.13.0; seed 0; each
run alone on the machine). The twins start from different random weights (different PRNGs).

* full run (defaults: 10,200 training words, 5 epochs, channels 16-32-64-64, BiLSTM 128 per
  direction): test (1,200 unseen words) greedy CER 1.25% / WER 6.83%, beam search (8) CER 1.15% /
  WER 6.42%; 28.1 s per epoch (41.7 s for the first, three bucket widths compiled), 175 s in all.
  torch twin: greedy CER 1.47% / WER 8.17%, beam 1.33% / 7.42%; 25.4 s per epoch, 139 s.
* ``--quick`` (2,125 training words, 5 epochs, channels 8-16-32-32, BiLSTM 64 per direction): JAX
  CER 9.2% / WER 40.0% (beam 8.7% / 38.4%), 2.4 s per epoch, 31 s in all; torch CER 10.6% / WER
  42.8% (beam 9.9% / 42.0%), 5.1 s per epoch, 34 s.

On the full model torch is a little faster per epoch: the conv front end dominates a step on
XLA's CPU backend (the gradient of a batch of 32 images of width 128: 79 ms, of which the conv
blocks 66 ms and the BiLSTM 12 ms).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

if __package__ in (None, ""):  # `python examples/ocr_ctc.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jaxseq
from examples.ocr_data import (
    HEIGHT,
    NUM_CLASSES,
    POOLS,
    Forward,
    OCRBatch,
    OCRConfig,
    Step,
    build_dataset,
    evaluate,
    finish,
    train_epochs,
    width_boundaries,
)
from examples.training import parse_config
from examples.word_language import torch_linear_init


def max_pool(x: jax.Array, pool: tuple[int, int]) -> jax.Array:
    """Max over non-overlapping ``pool = (ph, pw)`` windows of ``x [B, H, W, C]`` (trailing rows /
    columns that fill no window are dropped, as torch's ``max_pool2d``): ``[B, H // ph, W // pw,
    C]``.

    A reshape and a max rather than ``nnx.max_pool``: XLA's CPU backend differentiates the
    latter's ``reduce_window`` with ``select_and_scatter``; a training step of the default model
    on 32 images of width 128 took 106 ms with it, 80 ms with this (2 cores). The gradient is
    torch's wherever a window's maximum is unique; a tie shares it evenly (torch gives it all to
    the first), which happens here only among zeros after the ReLU, whose gradient is 0 anyway.
    """
    B, H, W, C = x.shape
    ph, pw = pool
    x = x[:, :H // ph * ph, :W // pw * pw]
    return jnp.max(x.reshape(B, H // ph, ph, W // pw, pw, C), axis=(2, 4))


class ConvBlock(nnx.Module):
    """``nnx.Conv`` 3x3 (padding 1, no bias) -> :class:`jaxseq.BatchNorm` over the valid columns
    -> ReLU -> max pool ``pool`` (height, width); twin of :class:`torch_ref.ocr.ConvBlock`.

    ``block(x [B, H, W, C_in], widths [B]) -> (y [B, H / ph, W / pw, C_out], widths // pw)``, ``y``
    exactly 0 beyond each image's pooled width (a window across the end of an odd width is
    padding).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int], *,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        kernel_init, _ = torch_linear_init(9 * in_channels)
        self.conv = nnx.Conv(in_channels, out_channels, (3, 3), padding=((1, 1), (1, 1)),
                             use_bias=False, kernel_init=kernel_init, param_dtype=param_dtype,
                             rngs=rngs)
        self.norm = jaxseq.BatchNorm(out_channels, param_dtype=param_dtype)
        self.pool = tuple(pool)

    def __call__(self, x: jax.Array, widths: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.conv(x)                                                    # [B, H, W, C]
        B, H, W, _ = x.shape
        columns = jaxseq.length_mask(widths, W)                             # [B, W]
        x = self.norm(x, mask=jnp.broadcast_to(columns[:, None, :], (B, H, W)))
        x = max_pool(nnx.relu(x), self.pool)
        widths = widths // self.pool[1]
        valid = jaxseq.length_mask(widths, x.shape[2])
        return jnp.where(valid[:, None, :, None], x, jnp.zeros((), x.dtype)), widths


class CRNN(nnx.Module):
    """Conv blocks -> BiLSTM over columns (``lengths``) -> linear -> log-softmax, per column.

    Args:
      num_classes: output classes, blank (0) included.
      height: image height ``H``.
      channels: output channels of each conv block.
      hidden_size, num_layers: of the LSTM (each direction).
      pools: (height, width) pooling of each block.
      param_dtype: dtype of every parameter and batch statistic.
      rngs: the ``params`` stream.

    ``model(images [B, H, W], widths [B]) -> (log_probs [B, W', num_classes], output_widths [B])``.
    Submodules named as torch's: ``blocks`` (``blocks[i].conv``, ``blocks[i].norm``), ``rnn``,
    ``fc``. Starts in evaluation mode (running statistics); ``model.train()`` for batch statistics.
    Padding content (NaN included) reaches no output and no gradient.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, *, height: int = HEIGHT,
                 channels: Sequence[int] = (32, 64, 96, 96), hidden_size: int = 128,
                 num_layers: int = 1, pools: Sequence[tuple[int, int]] = POOLS,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if len(pools) != len(channels):
            raise ValueError(f"one pool per block: {len(channels)} channels, {len(pools)} pools")
        ins = (1,) + tuple(channels[:-1])
        self.blocks = nnx.List([ConvBlock(i, o, p, param_dtype=param_dtype, rngs=rngs)
                                for i, o, p in zip(ins, channels, pools)])
        for pool_height, _ in pools:
            height //= pool_height
        self.rnn = jaxseq.LSTM(channels[-1] * height, hidden_size, num_layers, batch_first=True,
                               bidirectional=True, param_dtype=param_dtype, rngs=rngs)
        kernel_init, bias_init = torch_linear_init(2 * hidden_size)
        self.fc = nnx.Linear(2 * hidden_size, num_classes, kernel_init=kernel_init,
                             bias_init=bias_init, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, images: jax.Array, widths: jax.Array) -> tuple[jax.Array, jax.Array]:
        valid = jaxseq.length_mask(widths, images.shape[2])                  # [B, W]
        x = jnp.where(valid[:, None, :], images, jnp.zeros((), images.dtype))[..., None]
        for block in self.blocks:
            x, widths = block(x, widths)
        B, H, W, C = x.shape
        features = jnp.transpose(x, (0, 2, 3, 1)).reshape(B, W, C * H)      # torch's c * H' + h
        output, _ = self.rnn(features, widths)                               # 0 at padding
        return jax.nn.log_softmax(self.fc(output), axis=-1), widths


def build_model(config: OCRConfig, *, param_dtype: Any = jnp.float32) -> CRNN:
    """The CRNN of ``config``, initialised from ``config.seed``."""
    return CRNN(channels=config.channels, hidden_size=config.hidden_size,
                num_layers=config.num_layers, param_dtype=param_dtype,
                rngs=nnx.Rngs(params=config.seed))


def make_optimizer(model: CRNN, config: OCRConfig) -> nnx.Optimizer:
    """Adam after global-norm clipping at ``config.clip_norm`` (torch's ``clip_grad_norm_`` divides
    by ``norm + 1e-6``, optax by ``norm``: the clipped steps differ by that much)."""
    transform = optax.chain(optax.clip_by_global_norm(config.clip_norm),
                            optax.adam(config.learning_rate))
    return nnx.Optimizer(model, transform, wrt=nnx.Param)


# -- steps ---------------------------------------------------------------------------------------
def ctc_objective(model: CRNN, images: jax.Array, widths: jax.Array, targets: jax.Array,
                  target_lengths: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """``(loss, (log_probs, output widths))``: CTC of the model's columns against ``targets
    [B, S]``, torch's ``"mean"``."""
    log_probs, lengths = model(images, widths)
    loss = jaxseq.ctc_loss(log_probs, targets, lengths, target_lengths, batch_first=True)
    return loss, (log_probs, lengths)


@nnx.jit
def train_step(model: CRNN, optimizer: nnx.Optimizer, images: jax.Array, widths: jax.Array,
               targets: jax.Array, target_lengths: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One optimizer step (batch statistics updated in training mode); ``(mean CTC loss,
    log_probs, output widths)`` of the batch before the step."""
    grad_fn = nnx.value_and_grad(ctc_objective, has_aux=True)
    (loss, (log_probs, lengths)), grads = grad_fn(model, images, widths, targets, target_lengths)
    optimizer.update(model, grads)
    return loss, log_probs, lengths


@nnx.jit
def predict(model: CRNN, images: jax.Array, widths: jax.Array, targets: jax.Array,
            target_lengths: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(log_probs [B, W', C], output widths [B], per-image loss / target length [B])``."""
    log_probs, lengths = model(images, widths)
    losses = jaxseq.ctc_loss(log_probs, targets, lengths, target_lengths, reduction="none",
                             batch_first=True)
    return log_probs, lengths, losses / jnp.maximum(target_lengths, 1)


def _arrays(batch: OCRBatch) -> tuple[np.ndarray, ...]:
    return batch.images, batch.widths, batch.targets, batch.target_lengths


def forward_fn(model: CRNN) -> Forward:
    """The evaluation-mode forward pass of :func:`examples.ocr_data.evaluate`."""
    def forward(batch: OCRBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        log_probs, lengths, losses = predict(model, *_arrays(batch))
        return np.asarray(log_probs), np.asarray(lengths), np.asarray(losses)

    return forward


def step_fn(model: CRNN, optimizer: nnx.Optimizer) -> Step:
    """The training step of :func:`examples.ocr_data.train_epochs`."""
    def step(batch: OCRBatch) -> tuple[float, np.ndarray, np.ndarray]:
        loss, log_probs, lengths = train_step(model, optimizer, *_arrays(batch))
        return float(loss), np.asarray(log_probs), np.asarray(lengths)

    return step


def mode_fn(model: CRNN) -> Callable[[bool], None]:
    """``set_training(True / False)``: ``model.train()`` / ``model.eval()``."""
    def set_training(training: bool) -> None:
        model.train() if training else model.eval()

    return set_training


def main(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Train, evaluate on the test words, plot; returns the test figures."""
    start = time.perf_counter()
    config, out = parse_config(__doc__.splitlines()[0], argv, OCRConfig)
    data = build_dataset(config.num_words, seed=config.seed)
    boundaries = width_boundaries(data, config.num_buckets)
    print(f"{len(data.train)}/{len(data.valid)}/{len(data.test)} train/valid/test words rendered "
          f"in {time.perf_counter() - start:.1f} s; widths {int(data.train.widths.min())}-"
          f"{int(data.train.widths.max())}, buckets {boundaries}; {jax.devices()[0].platform}")
    model = build_model(config)
    optimizer = make_optimizer(model, config)
    history = train_epochs(step_fn(model, optimizer), forward_fn(model), mode_fn(model), data,
                           config, boundaries)
    model.eval()
    test = evaluate(forward_fn(model), data.test, config, boundaries, beam=True)
    return finish("ocr_ctc", out, data, config, history, test, time.perf_counter() - start)


if __name__ == "__main__":
    main()
