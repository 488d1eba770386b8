"""``examples/port_speech.py``: a DeepSpeech-like torch model (convs, batch norm over valid frames,
packed BiLSTM, CTC) and its NNX twin, loaded in one call and checked with ``compare_models``.

The check runs with ``--quick``: float64 within 1e-10 (evaluation mode here; training mode in
``docs/porting.md`` recipe 16) and float32 within 1e-4 (training mode), relative, every entry;
``atol`` only matters for the conv biases, whose training-mode gradient is exactly 0 and comes out
as rounding noise on both sides. The slow test runs every mode and dtype after the full training.
The torch model's own claims (lengths through the convs, padding content and amount reach nothing)
are checked on torch alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from examples import port_speech
from torch_ref import speech as torch_speech

CFG = port_speech.SpeechConfig(steps=0, batch_size=4, max_frames=20)


def _check_report(report, dtype: str, steps: int) -> None:
    tol = port_speech.TOLERANCE[dtype]
    report.assert_close(**tol)
    for kind in ("loss", "output", "input_grad", "grad", "buffer"):
        assert report.worst(kind, tol["atol"]) <= tol["rtol"], (dtype, kind)
    # the spectrogram's gradient is compared; the float32 percentages (kept: the notes say so)
    # reach the loss through an integer cast only, on both sides: no entry
    assert [e.name for e in report.entries if e.kind == "input_grad"] == ["spect"]
    assert report.entry("input_grad", "spect").scale > 0
    assert "inputs kept in their own dtype (keep_dtype): percentages (float32)" in report.notes
    names = [n for n, _ in torch_speech.SpeechModel().named_parameters()]
    assert sorted(e.name for e in report.entries if e.kind == "grad") == sorted(names)
    assert report.entry("output", "output_lengths").max_abs == 0
    assert report.entry("output", "log_probs").shape == (8, 24, 8)
    assert {e.name for e in report.entries if e.kind == "buffer"} == {
        f"conv.{i}.{b}" for i in (1, 4) for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert report.entry("buffer", "conv.1.running_var").scale != 1.0        # trained statistics
    assert report.entry("buffer", "conv.4.num_batches_tracked").scale >= steps


def test_quick_check_float64_eval(tmp_path):
    """Evaluation mode (the loaded running statistics) in float64; training mode in float64 is
    checked by recipe 16 of ``docs/porting.md`` (``test_examples_docs.py``), every mode and dtype by
    the slow full run below."""
    reports = port_speech.main(["--quick", "--mode", "eval", "--dtype", "float64", "--out",
                                str(tmp_path)])
    assert set(reports) == {("eval", "float64")}
    report = reports["eval", "float64"]
    steps = port_speech.SpeechConfig.quick().steps
    _check_report(report, "float64", steps)
    assert report.entry("buffer", "conv.1.num_batches_tracked").scale == steps   # as loaded
    assert report.worst(atol=1e-14) < 1e-12                  # exact to rounding, not just 1e-10
    assert report.entry("grad", "conv.0.bias").scale > 1e-3  # a real gradient in evaluation mode
    (line,) = port_speech.summary(reports)
    assert line.startswith("eval  float64") and line.endswith("ok)")


def test_quick_check_float32_train(tmp_path):
    """Training mode: batch statistics, and the updated running statistics as buffers."""
    reports = port_speech.main(["--quick", "--steps", "3", "--mode", "train", "--dtype", "float32",
                                "--out", str(tmp_path)])
    assert set(reports) == {("train", "float32")}
    report = reports["train", "float32"]
    _check_report(report, "float32", 3)
    assert report.entry("buffer", "conv.1.num_batches_tracked").scale == 3 + 1   # one more batch
    # the conv biases before batch norm: their gradient is rounding noise on both sides
    assert report.entry("grad", "conv.0.bias").scale < 1e-6


@pytest.mark.slow
def test_full_run_every_mode_and_dtype(tmp_path):
    reports = port_speech.main(["--out", str(tmp_path)])
    assert len(reports) == 4
    for (_, dtype), report in reports.items():
        _check_report(report, dtype, port_speech.SpeechConfig().steps)


@pytest.mark.parametrize("index", [0, 3])
def test_output_lengths_follow_every_conv(index):
    """The length formula (torch and JAX) equals the conv's real output size, for every length."""
    torch_conv = torch_speech.SpeechModel().conv[index]
    jax_conv = port_speech.SpeechModel(CFG, rngs=nnx.Rngs(0)).conv[index]
    lengths = np.arange(1, 30)
    sizes = [torch_conv(torch.zeros(1, torch_conv.in_channels, 16, n)).shape[-1] for n in lengths]
    assert torch_speech.conv_output_lengths(torch.tensor(lengths), torch_conv).tolist() == sizes
    assert port_speech.conv_output_lengths(jnp.asarray(lengths), jax_conv).tolist() == sizes
    x = jnp.zeros((1, 16, 11, jax_conv.in_features))                    # [B, F, T, C]
    freq = int(torch_speech.conv_output_lengths(torch.tensor(16), torch_conv, torch_speech.FREQ))
    assert port_speech.conv_output_lengths(16, jax_conv, axis=0) == freq
    assert jax_conv(x).shape[1:3] == (freq, sizes[10])


def _log_probs(model, batch, total_frames):
    """The torch model's log-probabilities for ``batch`` padded (with NaN) to ``total_frames``."""
    spect = np.full(batch["spect"].shape[:2] + (total_frames,), np.nan, np.float32)
    spect[..., :batch["spect"].shape[2]] = batch["spect"]
    log_probs, lengths = model(torch.from_numpy(spect)[:, None], torch.from_numpy(batch["lengths"]))
    return log_probs.detach().numpy(), lengths.numpy()


def test_torch_model_ignores_padding_content_and_amount():
    """NaN padding and extra padded frames change no valid output, in training mode too (batch
    statistics over valid frames only), and a row alone equals the row in the batch (eval)."""
    batch = port_speech.synthetic_batch(np.random.default_rng(0), CFG)
    assert np.isnan(batch["spect"]).any()
    model = port_speech.build_torch_model(CFG)
    for train in (True, False):
        model.train(train)
        short, lengths = _log_probs(model, batch, 20)
        long, lengths_long = _log_probs(model, batch, 31)
        assert np.array_equal(lengths, lengths_long)
        for b, n in enumerate(lengths):
            np.testing.assert_allclose(long[b, :n], short[b, :n], rtol=1e-5, atol=1e-6)
    alone = {k: v[1:2] for k, v in batch.items()}
    single, (n,) = _log_probs(model, alone, int(alone["lengths"][0]))
    np.testing.assert_allclose(single[0, :n], short[1, :n], rtol=1e-5, atol=1e-6)


def test_hardtanh_gradient_is_torchs_at_the_bounds():
    x = np.array([-1.0, 0.0, 0.5, 20.0, 21.0])
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.Hardtanh(0, 20)(xt).sum().backward()
    grad = jax.grad(lambda v: port_speech.Hardtanh(0.0, 20.0)(v).sum())(jnp.asarray(x))
    assert np.array_equal(np.asarray(grad), xt.grad.numpy()) and xt.grad.tolist() == [0, 0, 1, 0, 0]
