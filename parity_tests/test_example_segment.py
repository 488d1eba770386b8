"""``examples/segment_crf.py`` and its torch twin: word segmentation with a BiLSTM-CRF.

* the data: deterministic lines of 3-8 words, B / I tags; each batch holds the same lines as
  packed rows (JAX) and as a padded batch (torch), every line once per epoch;
* the scores (tag accuracy, word-boundary F1, word F1);
* the JAX model on packed rows (:class:`jaxseq.LSTM` and :class:`jaxseq.CRF` with
  ``segment_ids``) against :class:`torch_ref.segmenter.Segmenter` on the padded lines
  (``pack_padded_sequence`` + pytorch-crf) with identical weights, float64
  (:func:`jaxseq.parity.compare_models`): the loss, each line's log-likelihood, the emissions and
  every parameter's gradient; the same Viterbi paths; Adam steps on both sides;
* both scripts end to end with tiny settings, the JAX steps compiled once.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxseq
from parity_tests.compiles import count_compiles
from parity_tests.twins import assert_same_weights

pytest.importorskip("wordfreq")
pytest.importorskip("torchcrf")

from examples import segment_crf, segment_data, torch_segment_crf
from examples.segment_data import (
    B_TAG,
    I_TAG,
    MAX_SEGMENTS,
    MAX_WORDS,
    MIN_WORDS,
    ROW_LENGTH,
    SegmentConfig,
)

TINY = SegmentConfig(num_words=300, train_lines=120, valid_lines=30, test_lines=30, embed_dim=6,
                     hidden_size=5, rows_per_batch=8, learning_rate=1e-2, epochs=2, seed=1)


@pytest.fixture(scope="module")
def loaded():
    return segment_data.load(TINY)


# -- data -----------------------------------------------------------------------------------------
def test_lines_are_deterministic_and_tagged(loaded):
    data, _ = loaded
    again, _ = segment_data.load(TINY)
    other, _ = segment_data.load(dataclasses.replace(TINY, seed=2))
    assert data == again and data.train != other.train
    assert data.vocabulary == other.vocabulary and len(data.vocabulary) == 300
    assert (len(data.train), len(data.valid), len(data.test)) == (120, 30, 30)
    words = set(data.vocabulary)
    for line in data.train + data.valid + data.test:
        assert MIN_WORDS <= len(line) <= MAX_WORDS and set(line) <= words
        text = "".join(line)
        assert len(text) <= ROW_LENGTH
        tags = segment_data.tags_of(line)
        assert tags.shape == (len(text),) and tags[0] == B_TAG
        assert segment_data.split_by_tags(text, tags) == list(line)
        assert (tags == I_TAG).sum() == len(text) - len(line)
    assert segment_data.encode("az").tolist() == [1, 26]
    with pytest.raises(ValueError, match="lowercase a-z"):
        segment_data.encode("a z")


def test_batches_hold_the_same_lines_packed_and_padded(loaded):
    data, splits = loaded
    split = splits["train"]
    assert split.packing.density > 0.9 and split.packing.max_segments <= MAX_SEGMENTS
    seen = []
    for batch in segment_data.batches(split, TINY.rows_per_batch, shuffle=True, seed=4):
        assert batch.tokens.shape == batch.segment_ids.shape == (TINY.rows_per_batch, ROW_LENGTH)
        N, T = batch.padded_tokens.shape
        assert batch.lengths.max() == T and len(batch.index) == N
        assert (batch.segment_ids > 0).sum() == batch.lengths.sum()       # nothing else packed
        for n in range(N):
            r, s, o, k = batch.row[n], batch.segment[n], batch.offset[n], batch.lengths[n]
            line = data.train[batch.index[n]]
            assert k == len("".join(line))
            assert (batch.segment_ids[r, o:o + k] == s).all()
            np.testing.assert_array_equal(batch.padded_tokens[n, :k], batch.tokens[r, o:o + k])
            np.testing.assert_array_equal(batch.padded_tokens[n, :k],
                                          segment_data.encode("".join(line)))
            np.testing.assert_array_equal(batch.padded_tags[n, :k], segment_data.tags_of(line))
            np.testing.assert_array_equal(batch.tags[r, o:o + k], segment_data.tags_of(line))
            assert not batch.padded_tokens[n, k:].any()
        seen.extend(batch.index.tolist())
    assert sorted(seen) == list(range(len(data.train)))
    assert segment_data.num_batches(split, TINY.rows_per_batch) == len(list(
        segment_data.batches(split, TINY.rows_per_batch)))


def test_scores():
    perfect = segment_data.scores([[0, 1, 0], [0]], [[0, 1, 0], [0]])
    assert (perfect.accuracy, perfect.boundary_f1, perfect.word_f1) == (1.0, 1.0, 1.0)
    # gold "ab|c|de" vs predicted "ab|cde": boundaries P 1/1, R 1/2; words P 1/2, R 1/3
    s = segment_data.scores([[0, 1, 0, 1, 1]], [[0, 1, 0, 0, 1]])
    assert s.accuracy == 0.8
    assert s.boundary_f1 == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert s.word_f1 == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    first_i = segment_data.scores([[1, 1]], [[0, 1]])       # position 0 starts a word anyway
    assert (first_i.accuracy, first_i.word_f1) == (0.5, 1.0)
    with pytest.raises(ValueError, match="tags for a line"):
        segment_data.scores([[0, 1]], [[0]])
    assert segment_data.word_spans([0, 1, 1, 0]) == [(0, 3), (3, 4)]


# -- the JAX model on packed rows against the torch twin on padded lines --------------------------
def _batch(batch) -> dict[str, np.ndarray]:
    return {k: np.asarray(getattr(batch, k)) for k in (
        "tokens", "segment_ids", "tags", "padded_tokens", "padded_tags", "lengths", "row",
        "segment", "offset")}


def torch_loss(model, b):
    emissions = model.emissions(b["padded_tokens"], b["lengths"])
    mask = torch.arange(emissions.shape[1])[None] < b["lengths"][:, None]
    llh = model.crf(emissions, b["padded_tags"], mask, reduction="none")
    return -llh.mean(), {"llh": llh, "emissions": emissions * mask[..., None]}


def jax_loss(model, b):
    emissions = model.emissions(b["tokens"], b["segment_ids"], MAX_SEGMENTS)      # [R, L, K]
    llh = model.crf(emissions, b["tags"], reduction="none", segment_ids=b["segment_ids"],
                    max_segments=MAX_SEGMENTS)                                    # [R, S]
    steps = jnp.arange(b["padded_tokens"].shape[1])
    valid = steps[None] < b["lengths"][:, None]                                   # [N, T]
    columns = jnp.minimum(b["offset"][:, None] + steps[None], ROW_LENGTH - 1)
    padded = jnp.where(valid[..., None], emissions[b["row"][:, None], columns], 0.0)
    loss = model(b["tokens"], b["segment_ids"], b["tags"], MAX_SEGMENTS)
    return loss, {"llh": llh[b["row"], b["segment"] - 1], "emissions": padded}


def test_segmenter_matches_torch_in_float64(loaded):
    """Same weights: the mean negative log-likelihood, each line's log-likelihood, the emissions
    and every parameter's gradient equal torch's within 1e-10; the packed batch holds several
    lines per row."""
    _, splits = loaded
    batch = next(segment_data.batches(splits["train"], 4))
    assert (batch.segment_ids.max(axis=1) > 1).any()
    torch_model = torch_segment_crf.build_model(TINY)
    report = jaxseq.parity.compare_models(torch_model, segment_crf.build_model(TINY),
                                          _batch(batch), torch_loss=torch_loss,
                                          jax_loss=jax_loss, dtype="float64")
    report.assert_close(rtol=1e-10)
    assert {e.name for e in report.entries if e.kind == "grad"} == {
        n for n, _ in torch_model.named_parameters()}
    assert report.entry("output", "llh").shape == (len(batch.index),)
    assert report.entry("grad", "crf.transitions").scale > 0


def test_viterbi_paths_and_adam_steps_match_torch(loaded):
    """float64, same weights: three Adam steps give the same losses and weights, then both
    models decode the validation lines to the same tags."""
    _, splits = loaded
    torch_model = torch_segment_crf.build_model(TINY).double()
    # param_dtype, not a cast of the parameters: nnx.Embed keeps computing in its construction
    # dtype (float32), which alone costs 1e-8 here
    jax_model = jaxseq.load_torch_state_dict(
        segment_crf.build_model(TINY, param_dtype=jnp.float64), torch_model.state_dict())
    torch_step = torch_segment_crf.step_fn(torch_model, TINY)
    jax_step = segment_crf.step_fn(jax_model, segment_crf.make_optimizer(jax_model, TINY))
    losses = [(torch_step(b), jax_step(b)) for b in
              list(segment_data.batches(splits["train"], TINY.rows_per_batch, shuffle=True))[:3]]
    torch_losses, jax_losses = np.array(losses).T
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-10)
    assert len(set(torch_losses.tolist())) == 3
    assert_same_weights(jax_model, torch_model)
    torch_model.eval()
    jax_eval = segment_data.evaluate(segment_crf.decode_fn(jax_model), splits["valid"], TINY)
    torch_eval = segment_data.evaluate(torch_segment_crf.decode_fn(torch_model),
                                       splits["valid"], TINY)
    assert jax_eval.predicted == torch_eval.predicted
    assert jax_eval.loss == pytest.approx(torch_eval.loss, rel=1e-10)
    assert jax_eval.scores == torch_eval.scores


# -- both scripts, tiny ---------------------------------------------------------------------------
TINY_ARGS = ["--quick", "--num-words", "300", "--train-lines", "120", "--valid-lines", "30",
             "--test-lines", "30", "--embed-dim", "6", "--hidden-size", "5", "--rows-per-batch",
             "8", "--epochs", "2", "--seed", "1"]


def test_scripts_run_end_to_end(tmp_path):
    """Both scripts train, evaluate and plot; the JAX one compiles its training step and its
    evaluation step once (one static shape of packed rows)."""
    with count_compiles() as compiles:
        figures = {"segment_crf": segment_crf.main(TINY_ARGS + ["--out", str(tmp_path)])}
    steps = [n for n in compiles.names if n in ("jit(train_step)", "jit(predict)")]
    assert sorted(steps) == ["jit(predict)", "jit(train_step)"], compiles.names
    figures["torch_segment_crf"] = torch_segment_crf.main(TINY_ARGS + ["--out", str(tmp_path)])
    for name, values in figures.items():
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        assert set(values) == {"accuracy", "boundary_f1", "word_f1", "epoch_seconds", "test_loss"}
        assert 0.5 < values["accuracy"] <= 1 and 0 <= values["word_f1"] <= 1
        assert values["epoch_seconds"] > 0 and np.isfinite(values["test_loss"])
