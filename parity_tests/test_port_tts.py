"""``examples/port_tts.py``: a Tacotron-style torch model (``torch_ref/tts.py``) and its NNX port.

* the data (:mod:`examples.tts_data`): deterministic renderings, lengths, stop targets;
* the torch model alone: padding content (NaN) and amount reach no valid output, in training and
  evaluation mode, a row alone equals the row in a batch, and the decoder keeps its loop state as
  tensor attributes (as NVIDIA's; ``copy.deepcopy`` of the model then fails);
* the example with ``--quick``: two torch steps, the port loaded from the saved ``state_dict``,
  one :func:`jaxseq.parity.compare_models` call in training mode (batch statistics, every dropout
  on, torch's draws replayed, every submodule compared; float64, every entry within 1e-10), ten
  Adam steps of the port, the plot;
* a bug planted in one submodule of the port (the encoder's conv padding, the attention's mask,
  the postnet's batch-norm ``eps``; the example file is not edited) is named by
  ``report.first_divergence()``.

Marked slow (one compilation of about 6 s of CPU, or the full run): the float32 check, the full
example.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq

pytest.importorskip("wordfreq")
pytest.importorskip("PIL")

from examples import port_tts, tts_data
from torch_ref import tts as torch_tts

HP = torch_tts.HParams()
#: Every dropout off: the torch model alone is then deterministic.
NO_DROPOUT = dataclasses.replace(HP, p_encoder_dropout=0.0, p_prenet_dropout=0.0,
                                 p_attention_dropout=0.0, p_decoder_dropout=0.0,
                                 p_postnet_dropout=0.0)
WORDS = ("ok", "tea", "jazz")
COLUMNS = 4          # pixel columns per frame: 6 to 10 decoder steps for these words


def words_batch(words=WORDS, *, extra_letters: int = 0, extra_frames: int = 0,
                padding: float = 0.0) -> dict[str, np.ndarray]:
    """:func:`tts_data.make_batch` of ``words`` with ``padding`` at every padded frame."""
    return tts_data.make_batch(words, text_length=max(map(len, words)) + extra_letters,
                               num_frames=tts_data.max_frames(words, COLUMNS) + extra_frames,
                               columns_per_frame=COLUMNS, pad_value=padding)


def float64(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in batch.items()}


def torch_outputs(model: torch_tts.Tacotron, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*(torch.from_numpy(batch[k]) for k in ("text", "text_lengths", "mels",
                                                           "mel_lengths")))
    return [o.numpy() for o in out]


# -- data -----------------------------------------------------------------------------------------
def test_frames_follow_the_printed_word():
    frames = {w: tts_data.render_frames(w) for w in ("to", "ok", "committee")}
    assert all(f.dtype == np.float32 and f.shape[1] == tts_data.N_MEL for f in frames.values())
    assert len(frames["committee"]) > 3 * len(frames["to"])           # lengths follow the width
    assert np.array_equal(tts_data.render_frames("to"), frames["to"])  # deterministic
    for f in frames.values():
        assert f.min() >= 0 and f.max() <= 1 and f.max() > 0.9
    wide = tts_data.render_frames("committee", 1)                     # one column per frame
    assert np.allclose(wide[:2 * (len(wide) // 2)].reshape(-1, 2, tts_data.N_MEL).mean(1),
                       frames["committee"][:len(wide) // 2])
    with pytest.raises(ValueError, match="a-z"):
        tts_data.render_frames("Tea")


def test_batch_lengths_stop_targets_and_padding():
    batch = tts_data.make_batch(WORDS, text_length=5, num_frames=12, columns_per_frame=COLUMNS)
    assert batch["text_lengths"].tolist() == [2, 3, 4]
    assert batch["text"][0].tolist() == [15, 11, 0, 0, 0]                       # "ok", 0 = pad
    lengths = batch["mel_lengths"]
    assert lengths.tolist() == [len(tts_data.render_frames(w, COLUMNS)) for w in WORDS]
    assert np.array_equal(batch["stop"].sum(1), np.ones(3))
    assert np.array_equal(batch["stop"][np.arange(3), lengths - 1], np.ones(3))
    padded = np.arange(12) >= lengths[:, None]
    assert not batch["mels"][padded].any() and batch["mels"][~padded].any()
    with pytest.raises(ValueError, match="'jazz' has 4 letters"):
        tts_data.make_batch(WORDS, text_length=3, num_frames=12, columns_per_frame=COLUMNS)
    train, test = tts_data.word_splits(300, 5, test_words=10)
    assert len(train) == 290 and len(test) == 10 and not set(train) & set(test)
    assert max(map(len, train + test)) <= 5


# -- the torch model ------------------------------------------------------------------------------
def test_torch_model_ignores_padding_content_and_amount():
    """NaN in the padded frames, extra padded letters and frames change no valid output, in
    training mode too (batch statistics over valid positions only); a word alone equals its row
    in the batch (evaluation mode)."""
    torch.manual_seed(0)
    model = torch_tts.Tacotron(NO_DROPOUT).double()
    plain = float64(words_batch())
    noisy = float64(words_batch(extra_letters=2, extra_frames=3, padding=np.nan))
    S, T = plain["text"].shape[1], plain["mels"].shape[1]
    for train in (True, False):
        model.train(train)
        want, got = torch_outputs(model, plain), torch_outputs(model, noisy)
        for b, (n, s) in enumerate(zip(plain["mel_lengths"], plain["text_lengths"])):
            for w, g in zip(want[:3], got[:3]):                  # frames, postnet frames, stop
                np.testing.assert_allclose(g[b, :n], w[b, :n], rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(got[3][b, :n, :s], want[3][b, :n, :s], rtol=1e-12,
                                       atol=1e-13)
            assert not got[3][b, :, s:].any()                    # no attention on padding
            assert not got[1][b, n:].any()                       # frames are 0 past the end
        assert got[3].shape[1:] == (T + 3, S + 2)
    alone = torch_outputs(model, float64(words_batch(WORDS[1:2])))
    n = int(plain["mel_lengths"][1])
    np.testing.assert_allclose(alone[1][0, :n], want[1][1, :n], rtol=1e-12, atol=1e-13)


def test_torch_decoder_keeps_the_loop_state_as_tensor_attributes():
    """As NVIDIA's: after a forward pass with gradients the decoder holds non-leaf tensors
    (``copy.deepcopy`` of the model then fails in torch)."""
    import copy

    torch.manual_seed(0)
    model = torch_tts.Tacotron(HP)
    batch = {k: torch.from_numpy(v) for k, v in words_batch().items()}
    model(batch["text"], batch["text_lengths"], batch["mels"], batch["mel_lengths"])
    assert model.decoder.processed_memory.grad_fn is not None
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)


# -- the port -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ported():
    """The torch model after two Adam steps (moved batch-norm statistics, a decoder holding the
    last forward pass's tensors) and its NNX twin built with ``nnx.eval_shape`` (no random init)
    and filled from its ``state_dict`` (the dropouts' RNG streams named until reseeded)."""
    torch.manual_seed(0)
    torch_model = torch_tts.Tacotron(HP)
    cfg = port_tts.TTSConfig(batch_size=4, learning_rate=1e-3)
    words = ("the", "of", "and", "to", "in", "is", "for", "that")
    port_tts.train_torch(torch_model, port_tts.training_batches(
        words, cfg, 2, 0, text_length=4, num_frames=tts_data.max_frames(words)), cfg)
    jax_model = nnx.eval_shape(lambda: port_tts.Tacotron(HP, rngs=nnx.Rngs(params=0, dropout=1)))
    with pytest.raises(ValueError, match=r"RNG streams without a key \('dropout': "
                                         r"decoder\.attention_dropout\.rngs, .* and 2 more\)"):
        jaxseq.load_torch_state_dict(jax_model, torch_model.state_dict())
    nnx.reseed(jax_model, dropout=1)
    jaxseq.load_torch_state_dict(jax_model, torch_model.state_dict())
    return torch_model, jax_model


def check(ported, dtype: str = "float64"):
    """``port_tts.check`` (training mode, dropout replayed, modules) on :func:`words_batch` with
    NaN at every padded frame."""
    (report,) = port_tts.check(*ported, words_batch(padding=np.nan), (dtype,),
                               verbose=False).values()
    return report


def test_quick_run_checks_the_port_in_training_mode_then_trains_it(tmp_path):
    """``port_tts.py --quick``: two torch steps, the port loaded from the saved ``state_dict``, one
    ``compare_models`` call in training mode (float64, every entry within 1e-10, dropout
    replayed, every module compared), ten Adam steps of the port, a plot."""
    figures = port_tts.main(["--quick", "--out", str(tmp_path)])
    (dtype, report), = figures["reports"].items()
    assert dtype == "float64"
    report.assert_close()                                        # rtol 1e-10, every entry
    assert report.first_divergence() is None
    batch = figures["check_batch"]
    T = batch["mels"].shape[1]                                   # decoder steps
    assert np.isnan(batch["mels"]).any() and T >= 10             # NaN at every padded frame
    modules = {e.name for e in report.entries if e.kind == "module"}
    for path in ("embedding", "encoder.convolutions.0.conv", "encoder.convolutions.1.norm",
                 "encoder.dropout[1]", "encoder.lstm:0", "decoder.attention_layer.memory_layer",
                 "postnet.convolutions.2.norm", "postnet"):
        assert path in modules, path
    for path in ("decoder.prenet.layers.1[{}]", "decoder.attention_rnn[{}]:0",      # one per step
                 "decoder.attention_layer[{}]:1",                            # the weights
                 "decoder.attention_layer.location_layer.location_conv[{}]",
                 "decoder.gate_layer[{}]"):
        assert {path.format(t) for t in range(T)} <= modules, path
        assert path.format(T) not in modules
    draws = 2 + 4 * T + 3                   # encoder, per step (prenet x2, both cells), postnet
    assert f"dropout replayed: {draws} mask(s) drawn by torch, taken by the JAX side in order" \
        in report.notes
    # the port's dropouts where torch calls F.dropout: one short note, each with its calls
    (usual,) = [n for n in report.notes if "not compared" in n]
    assert usual.startswith("JAX modules without parameters and no torch module, not compared")
    assert usual.endswith(f"decoder.prenet.dropout (Dropout, {2 * T} calls), decoder."
                          f"attention_dropout (Dropout, {T} calls), decoder.decoder_dropout "
                          f"(Dropout, {T} calls), postnet.dropout (Dropout, 3 calls)")
    assert report.entry("buffer", "postnet.convolutions.1.norm.num_batches_tracked").scale == 3
    assert {e.name for e in report.entries if e.kind == "input_grad"} == {"mels", "stop"}
    assert any("autograd history" in n and "decoder.processed_memory" in n for n in report.notes)
    losses = figures["losses"]
    assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert np.isfinite(figures["test_loss"]) and figures["plot"].stat().st_size > 10_000


@pytest.mark.slow
def test_train_mode_float32(ported):
    report = check(ported, "float32")
    report.assert_close()                                        # rtol 1e-5, every entry
    assert report.first_divergence() is None


def _unmasked_attention(self, query, memory, processed_memory, attention_weights_cat, lengths):
    """``port_tts.Attention.__call__`` as a port might have it: softmax over every position,
    padding included (the mask forgotten)."""
    energies = self.v(jnp.tanh(self.query_layer(query)[:, None]
                               + self.location_layer(attention_weights_cat)
                               + processed_memory))[..., 0]
    weights = jax.nn.softmax(energies, axis=-1)
    return jnp.einsum("bs,bse->be", weights, memory), weights


def _plant(bug: str, jax_model: port_tts.Tacotron, monkeypatch) -> None:
    if bug == "encoder conv padding":           # window shifted by one: same length, other values
        monkeypatch.setattr(jax_model.encoder.convolutions[0].conv, "padding", [(1, 3)])
    elif bug == "attention without mask":
        monkeypatch.setattr(port_tts.Attention, "__call__", _unmasked_attention)
    else:          # torch's eps is 1e-5; eps is read-only: a new norm with the old one's state
        old = jax_model.postnet.convolutions[1].norm
        norm = jaxseq.BatchNorm(old.num_features, eps=1e-3, momentum=old.momentum,
                                batch_first=old.batch_first, param_dtype=old.weight.dtype,
                                deterministic=old.deterministic)
        jaxseq.load_torch_state_dict(norm, jaxseq.torch_state_dict(old))
        monkeypatch.setattr(jax_model.postnet.convolutions[1], "norm", norm)


@pytest.mark.parametrize("bug, where", [
    ("encoder conv padding", "encoder.convolutions.0.conv"),
    ("attention without mask", "decoder.attention_layer[0]:0"),
    ("postnet batch-norm eps", "postnet.convolutions.1.norm"),
])
def test_first_divergence_names_the_module_with_the_planted_bug(ported, monkeypatch, bug, where):
    """The bug changes the loss and gradients everywhere downstream; the first module entry that
    fails, in torch's order of calls, is the module with the bug (the example file is unchanged:
    a submodule of the JAX model or a method of its class is patched). One compilation each
    (about 6 s of CPU)."""
    _plant(bug, ported[1], monkeypatch)
    report = check(ported)
    first = report.first_divergence()
    assert first is not None and (first.kind, first.name) == ("module", where)
    assert first.relative > 1e-4
    assert report.entry("loss", "loss").relative > 1e-7                  # the symptom
    modules = report.modules()                                           # torch's call order
    passing = modules[:modules.index(first)]
    assert passing and all(e.passes(1e-10) for e in passing)            # everything before it


@pytest.mark.slow
def test_full_run_checks_both_dtypes(tmp_path):
    figures = port_tts.main(["--out", str(tmp_path)])
    for report in figures["reports"].values():
        report.assert_close()
    assert set(figures["reports"]) == {"float64", "float32"}
    assert np.mean(figures["losses"][-50:]) < 0.5 * np.mean(figures["losses"][:50])
