"""``examples/ocr_ctc.py`` and its torch twin: rendered words, CRNN + CTC, decoders, error rates.

* the data: deterministic for a seed, disjoint word splits, every image wide enough for a CTC
  alignment after the models' stride; bucketed batches with filler rows;
* the decoders (best path, prefix beam search against brute force over every alignment) and
  the error rates; the example's reshape max pooling against ``F.max_pool2d``;
* the JAX CRNN against :class:`torch_ref.ocr.CRNN` with identical weights
  (:func:`jaxseq.parity.compare_models`, float64, NaN padding): CTC loss, log-probabilities,
  output widths, every parameter's gradient and, in training mode, the updated batch-norm
  statistics; then Adam steps on both sides;
* both scripts end to end with tiny settings, the JAX steps compiled once.

The Adam steps (float64 initialisers and one more float64 compilation) are marked slow.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxseq
from parity_tests.compiles import count_compiles
from parity_tests.twins import assert_same_weights

pytest.importorskip("wordfreq")
pytest.importorskip("PIL")

from examples import ocr_ctc, ocr_data, torch_ocr_ctc
from examples.ocr_data import BLANK, HEIGHT, MAX_LETTERS, WIDTH_STRIDE, OCRConfig, OCRSplit
from torch_ref import ocr as torch_ocr

TINY = OCRConfig(num_words=120, channels=(4, 6, 8, 8), hidden_size=5, batch_size=4,
                 learning_rate=1e-2, clip_norm=1e6, epochs=1, num_buckets=1, beam_width=4, seed=3)
WORDS = ("all", "street", "committee", "ok", "balloon", "jazz")


@pytest.fixture(scope="module")
def data():
    return ocr_data.build_dataset(TINY.num_words, seed=TINY.seed)


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return OCRSplit(WORDS, tuple(ocr_data.render_word(w, rng) for w in WORDS))


# -- data -----------------------------------------------------------------------------------------
def test_dataset_is_deterministic_disjoint_and_feasible(data):
    again = ocr_data.build_dataset(TINY.num_words, seed=TINY.seed)
    other = ocr_data.build_dataset(TINY.num_words, seed=TINY.seed + 1)
    words = data.train.words + data.valid.words + data.test.words
    assert len(set(words)) == len(words) == TINY.num_words         # disjoint word sets
    assert set(words) == set(other.train.words + other.valid.words + other.test.words)
    assert (len(data.valid), len(data.test)) == (6, 12)
    for name in ocr_data.SPLITS:
        mine, same = data.split(name), again.split(name)
        assert mine.words == same.words
        assert all(np.array_equal(a, b) for a, b in zip(mine.images, same.images))
        for word, image in zip(mine.words, mine.images):
            assert image.dtype == np.uint8 and image.shape[0] == HEIGHT
            assert image.shape[1] >= WIDTH_STRIDE * ocr_data.frames_needed(word)
            assert word.isascii() and word.isalpha() and word.islower()
            assert ocr_data.MIN_LETTERS <= len(word) <= MAX_LETTERS
            assert image.max() > 100                                      # ink was drawn
    assert data.train.words != other.train.words
    assert len(set(data.train.widths.tolist())) > 10                     # widths follow the words
    assert ocr_data.frames_needed("balloon") == 7 + 2
    assert ocr_data.decode_labels(ocr_data.encode("jazz")) == "jazz"
    assert ocr_data.encode("az").tolist() == [1, 26]
    with pytest.raises(ValueError, match="lowercase a-z"):
        ocr_data.encode("Jazz")


def test_max_pool_is_torchs_max_pool2d():
    """Values and gradient of the reshape pooling equal ``F.max_pool2d``'s (odd sizes drop the
    trailing rows / columns, as torch)."""
    x = np.random.default_rng(0).normal(size=(2, 7, 9, 3))                  # [B, H, W, C]
    for pool in ((2, 2), (2, 1)):
        xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
        want = torch.nn.functional.max_pool2d(xt, pool)
        (want ** 3).sum().backward()
        pooled = ocr_ctc.max_pool(jnp.asarray(x), pool)
        np.testing.assert_allclose(pooled, want.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-15)
        grad = jax.grad(lambda v, p=pool: jnp.sum(ocr_ctc.max_pool(v, p) ** 3))(jnp.asarray(x))
        np.testing.assert_allclose(grad, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-13)


def test_pools_and_stride_agree_with_the_torch_model():
    assert torch_ocr.POOLS == ocr_data.POOLS
    assert WIDTH_STRIDE == math.prod(w for _, w in ocr_data.POOLS) == 4
    assert torch_ocr.pooled_widths(torch.arange(1, 12), 2).tolist() == [n // 2 for n in range(1, 12)]


def test_batches_pad_to_buckets_with_filler_rows(split):
    bounds = (96, 224)
    seen = []
    for batch in ocr_data.batches(split, 4, bounds, shuffle=True, seed=1):
        B, H, W = batch.images.shape
        assert (B, H) == (4, HEIGHT) and W in bounds and batch.targets.shape == (4, MAX_LETTERS)
        for b in range(B):
            if not batch.real[b]:                    # filler: blank, full width, empty target
                assert batch.index[b] == -1 and batch.widths[b] == W
                assert batch.target_lengths[b] == 0 and not batch.images[b].any()
                continue
            i = batch.index[b]
            image, word, n = split.images[i], split.words[i], batch.widths[b]
            assert n == image.shape[1] <= W and (bounds[0] == W or n > bounds[0])
            np.testing.assert_array_equal(batch.images[b, :, :n], image / np.float32(255))
            assert not batch.images[b, :, n:].any()
            assert ocr_data.decode_labels(batch.targets[b, :batch.target_lengths[b]]) == word
            assert not batch.targets[b, len(word):].any()
            seen.append(i)
    assert sorted(seen) == list(range(len(split)))
    assert ocr_data.num_batches(split, 4, bounds) == 2
    dropped = list(ocr_data.batches(split, 4, bounds, drop_last=True))
    assert ocr_data.num_batches(split, 4, bounds, drop_last=True) == len(dropped) <= 1
    assert all(b.real.all() for b in dropped)


# -- decoders and error rates ---------------------------------------------------------------------
def _best_labelling(log_probs: np.ndarray) -> tuple[int, ...]:
    """Brute force: the labelling with the largest total probability over every alignment."""
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        merged = [c for i, c in enumerate(path) if c != BLANK and (i == 0 or path[i - 1] != c)]
        p = math.exp(sum(log_probs[t, c] for t, c in enumerate(path)))
        totals[tuple(merged)] = totals.get(tuple(merged), 0.0) + p
    return max(totals, key=totals.__getitem__)


def test_beam_search_finds_the_most_probable_labelling():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T, C = int(rng.integers(1, 6)), int(rng.integers(2, 4))
        logits = rng.normal(size=(1, T + 2, C)) * 2
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        log_probs[0, T:] = np.nan                                         # padding never read
        want = _best_labelling(log_probs[0, :T])
        assert tuple(ocr_data.beam_decode(log_probs, np.array([T]), beam_width=64)[0]) == want
    sure = np.log(np.full((2, 4, 3), 1e-6) + np.eye(3)[[[1, 0, 1, 2], [2, 2, 2, 0]]])
    assert ocr_data.beam_decode(sure, np.array([4, 4]), 2) == [[1, 1, 2], [2]]
    assert ocr_data.greedy_decode(sure, np.array([4, 2])) == [[1, 1, 2], [2]]


def test_error_rates():
    rates = ocr_data.error_rates(["hello", "wrld", ""], ["hello", "world", "ab"])
    assert (rates.cer, rates.wer, rates.words) == (3 / 12, 2 / 3, 3)
    assert ocr_data.edit_distance("flaw", "lawn") == 2
    with pytest.raises(ValueError, match="as many predictions"):
        ocr_data.error_rates(["a"], [])


# -- the JAX CRNN against the torch twin ----------------------------------------------------------
def torch_loss(model, batch):
    log_probs, lengths = model(batch["images"][:, None], batch["widths"])
    loss = torch_ocr.ctc_loss(log_probs, lengths, batch["targets"], batch["target_lengths"])
    return loss, {"log_probs": log_probs, "output_widths": lengths}


def jax_loss(model, batch):
    log_probs, lengths = model(batch["images"], batch["widths"])
    loss = jaxseq.ctc_loss(log_probs, batch["targets"], lengths, batch["target_lengths"],
                           batch_first=True)
    return loss, {"log_probs": log_probs, "output_widths": lengths}


def _batch(split, width=224, nan=True):
    batch = next(ocr_data.batches(split, len(split), (width,)))
    images = batch.images.copy()
    if nan:
        padding = np.arange(width)[None, None, :] >= batch.widths[:, None, None]   # [B, 1, W]
        images = np.where(padding, np.float32(np.nan), images)
    return {"images": images, "widths": batch.widths.astype(np.int64),
            "targets": batch.targets.astype(np.int64),
            "target_lengths": batch.target_lengths.astype(np.int64)}


@pytest.fixture(scope="module")
def twins():
    torch_model = torch_ocr_ctc.build_model(TINY)
    jax_model = ocr_ctc.build_model(TINY)
    return torch_model, jax_model


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_crnn_matches_torch_in_float64(twins, split, mode):
    """Loss, log-probabilities, output widths, every gradient (and in training mode the running
    statistics after the call) equal torch's within 1e-10, with NaN in the images' padding."""
    torch_model, jax_model = twins
    batch = _batch(split)
    assert np.isnan(batch["images"]).any()
    torch_model.train(mode == "train")
    jax_model.train() if mode == "train" else jax_model.eval()
    report = jaxseq.parity.compare_models(torch_model, jax_model, batch, torch_loss=torch_loss,
                                          jax_loss=jax_loss, dtype="float64")
    torch_model.eval()
    jax_model.eval()
    report.assert_close(rtol=1e-10)
    grads = {e.name for e in report.entries if e.kind == "grad"}
    assert grads == {n for n, _ in torch_model.named_parameters()}
    assert report.entry("output", "output_widths").max_abs == 0
    log_probs = report.entry("output", "log_probs")
    assert log_probs.shape == (len(WORDS), 224 // WIDTH_STRIDE, ocr_data.NUM_CLASSES)
    assert report.entry("loss", "loss").scale > 1                    # an untrained model
    buffers = {e.name for e in report.entries if e.kind == "buffer"}
    assert buffers == {f"blocks.{i}.norm.{b}" for i in range(4)
                       for b in ("running_mean", "running_var", "num_batches_tracked")}
    if mode == "train":                                               # statistics did move
        assert report.entry("buffer", "blocks.0.norm.running_var").scale != 1.0


def test_torch_model_ignores_padding_content_and_amount(split):
    """NaN padding and more padded columns change no valid output of the torch model, in training
    mode too (batch statistics over valid columns only); the JAX model equals it (above)."""
    model = torch_ocr_ctc.build_model(TINY)
    for training in (True, False):
        model.train(training)
        outs = [torch_loss(model, {k: torch.from_numpy(v) for k, v in _batch(split, w).items()})
                for w in (224, 320)]
        (loss_a, out_a), (loss_b, out_b) = outs
        assert torch.equal(out_a["output_widths"], out_b["output_widths"])
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
        for b, n in enumerate(out_a["output_widths"].tolist()):
            torch.testing.assert_close(out_a["log_probs"][b, :n], out_b["log_probs"][b, :n],
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_adam_steps_match_torch(split):
    """Three Adam steps in training mode (batch statistics), float64, same batches: the losses,
    the weights and the running statistics stay equal (``clip_norm`` above every gradient norm:
    torch's clipping divides by ``norm + 1e-6``, optax's by ``norm``)."""
    torch_model = torch_ocr_ctc.build_model(TINY).double().train()
    jax_model = jaxseq.load_torch_state_dict(ocr_ctc.build_model(TINY, param_dtype=jnp.float64),
                                             torch_model.state_dict())
    jax_model.train()
    torch_step = torch_ocr_ctc.step_fn(torch_model, TINY)
    jax_opt = ocr_ctc.make_optimizer(jax_model, TINY)
    losses = []
    for seed in range(3):
        batch = next(ocr_data.batches(split, 4, (224,), shuffle=True, seed=seed))
        double = dataclasses.replace(batch, images=batch.images.astype(np.float64))
        t_loss, _, _ = torch_step(double)
        j_loss, _, _ = ocr_ctc.train_step(jax_model, jax_opt, double.images, double.widths,
                                          double.targets, double.target_lengths)
        losses.append((t_loss, float(j_loss)))
    torch_losses, jax_losses = np.array(losses).T
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-10)
    assert len(set(torch_losses.tolist())) == 3
    assert_same_weights(jax_model, torch_model)
    assert int(jaxseq.torch_state_dict(jax_model)["blocks.2.norm.num_batches_tracked"]) == 3


# -- both scripts, tiny ---------------------------------------------------------------------------
#: The sizes of ``TINY`` (the random initialisers compile once per parameter shape).
TINY_ARGS = ["--quick", "--num-words", "100", "--channels", "4,6,8,8", "--hidden-size", "5",
             "--epochs", "2", "--batch-size", "16", "--num-buckets", "1", "--beam-width", "2"]


def test_scripts_run_end_to_end(tmp_path):
    """Both scripts train, evaluate and plot; the JAX one compiles its training step and its
    forward pass once (one bucket width), not once per epoch or per call."""
    figures = {}
    with count_compiles() as compiles:
        figures["ocr_ctc"] = ocr_ctc.main(TINY_ARGS + ["--out", str(tmp_path)])
    steps = [n for n in compiles.names if n in ("jit(train_step)", "jit(predict)")]
    assert sorted(steps) == ["jit(predict)", "jit(train_step)"], compiles.names
    figures["torch_ocr_ctc"] = torch_ocr_ctc.main(TINY_ARGS + ["--out", str(tmp_path)])
    for name in figures:
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        assert (tmp_path / f"{name}_curves.png").exists()
    for values in figures.values():
        assert set(values) == {"cer", "wer", "beam_cer", "beam_wer", "epoch_seconds", "test_loss"}
        assert values["cer"] >= 0 and 0 <= values["wer"] <= 1 and values["epoch_seconds"] > 0
        assert math.isfinite(values["test_loss"])
