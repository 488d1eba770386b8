"""``examples/port_tts.py``: a Tacotron-style torch model (``torch_ref/tts.py``) and its NNX port.

* the data (:mod:`examples.tts_data`): deterministic renderings, lengths, stop targets;
* the torch model alone: padding content (NaN) and amount reach no valid output, in training and
  evaluation mode, and a row alone equals the row in a batch;
* the port: one :func:`jaxseq.parity.compare_models` call in training mode (batch statistics,
  every dropout on, torch's draws replayed, every submodule compared) in float64 at the default
  tolerance and in float32, on a torch model that has trained two steps (its decoder keeps the
  last forward pass's tensors as attributes);
* a bug planted in one submodule of the port (the encoder's conv padding, the attention's mask,
  the postnet's batch-norm ``eps``; the example file is not edited) is named by
  ``report.first_divergence()``;
* the example end to end with ``--quick``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("wordfreq")
pytest.importorskip("PIL")

from examples import port_tts, tts_data  # noqa: E402
from torch_ref import tts as torch_tts  # noqa: E402

HP = torch_tts.HParams()
#: Every dropout off: the torch model alone is then deterministic.
NO_DROPOUT = dataclasses.replace(HP, p_encoder_dropout=0.0, p_prenet_dropout=0.0,
                                 p_attention_dropout=0.0, p_decoder_dropout=0.0,
                                 p_postnet_dropout=0.0)
WORDS = ("ok", "tea", "jazz")
COLUMNS = 4          # pixel columns per frame: 6 to 10 decoder steps for these words


def words_batch(words=WORDS, *, extra_letters: int = 0, extra_frames: int = 0,
                padding: float = 0.0) -> dict[str, np.ndarray]:
    """:func:`tts_data.make_batch` of ``words`` with ``padding`` written at every padded frame."""
    batch = tts_data.make_batch(words, text_length=max(map(len, words)) + extra_letters,
                                num_frames=tts_data.max_frames(words, COLUMNS) + extra_frames,
                                columns_per_frame=COLUMNS)
    padded = np.arange(batch["mels"].shape[1]) >= batch["mel_lengths"][:, None]
    batch["mels"][padded] = padding
    batch["stop"][padded] = padding
    return batch


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
