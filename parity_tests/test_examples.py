"""The examples: data set, torch ↔ JAX twins step for step, orbax round trip, data parallelism.

Tiny budgets (small models, a few steps) so that the file runs in well under two minutes on 2 cores.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxseq

pytest.importorskip("wordfreq")

from examples import char_lm, torch_word_language, word_language  # noqa: E402
from examples.training import TrainConfig  # noqa: E402
from examples.wordlang_data import (BOS, EOS, IGNORE, LANGUAGES, PAD, SPECIALS, UNK,  # noqa: E402
                                    batches, build_dataset, lm_batches)
from torch_ref import models as torch_models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ONE_SHAPE = 24  # time_multiple above the longest word: every batch has T = 24, one compilation
TINY = TrainConfig(words_per_language=300, embed_dim=8, hidden_size=12, dropout=0.3,
                   batch_size=16, learning_rate=0.5, seed=3)


@pytest.fixture(scope="module")
def data():
    return build_dataset()


@pytest.fixture(scope="module")
def tiny_data():
    return build_dataset(words_per_language=TINY.words_per_language, seed=TINY.seed)


# -- data set ---------------------------------------------------------------------------------
def test_dataset_sizes_splits_and_vocabulary(data):
    assert data.languages == LANGUAGES
    assert (len(data.train), len(data.valid), len(data.test)) == (32000, 4000, 4000)
    for split, per_language in ((data.train, 3200), (data.valid, 400), (data.test, 400)):
        assert np.bincount(split.labels, minlength=10).tolist() == [per_language] * 10
    words = data.train.words + data.valid.words + data.test.words
    assert len(set(words)) == len(words)                 # no word in two splits or two languages
    assert not {"de", "a", "in", "radio", "taxi"} & set(words)     # shared words are dropped
    assert all(w.isalpha() and w == w.lower() for w in words)
    assert data.chars[:4] == SPECIALS and (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    train_chars = {c for w in data.train.words for c in w}
    assert set(data.chars[4:]) == train_chars and len(data.chars) == len(set(data.chars))
    assert all((data.encode(w) >= 4).all() for w in data.train.words)       # no UNK in training
    for w in ("über", "çà", "ığ"):
        assert [data.chars[i] for i in data.encode(w)] == list(w)
    assert data.encode("ж€").tolist() == [UNK, UNK]
    lengths = [len(w) for w in words]
    assert min(lengths) == 1 and max(lengths) >= 20


def test_dataset_is_deterministic_and_seed_changes_the_split(data):
    again = build_dataset()
    assert again.train.words == data.train.words and again.test.words == data.test.words
    assert np.array_equal(again.train.labels, data.train.labels) and again.chars == data.chars
    other = build_dataset(seed=1)
    assert other.test.words != data.test.words
    assert (set(other.train.words + other.valid.words + other.test.words)
            == set(data.train.words + data.valid.words + data.test.words))


def test_batches_cover_each_word_once_with_filler_rows(data):
    assert IGNORE == torch_models.IGNORE_INDEX == -100
    seen, labels = [], []
    for batch in batches(data, "valid", 96, shuffle=True, seed=5, row_multiple=7):
        B, T = batch.tokens.shape
        assert B == 98 and T % 8 == 0 and T >= batch.lengths.max()
        real = batch.labels != IGNORE
        filler = ~real
        assert (batch.lengths[filler] == 1).all() and (batch.tokens[filler] == PAD).all()
        for row, n in zip(batch.tokens[real], batch.lengths[real]):
            assert (row[:n] != PAD).all() and (row[n:] == PAD).all()
            seen.append("".join(data.chars[i] for i in row[:n]))
        labels.extend(batch.labels[real])
    assert sorted(seen) == sorted(data.valid.words) and len(seen) == len(data.valid.words)
    assert np.bincount(labels).tolist() == [400] * 10
    in_order = next(batches(data, "valid", 4))
    assert np.array_equal(in_order.labels, data.valid.labels[:4])

    lm = next(lm_batches(data, "valid", 3, row_multiple=2))
    assert lm.inputs.shape == lm.targets.shape == (4, 16)
    for b, word in enumerate(data.valid.words[:3]):
        n = len(word) + 1
        assert lm.lengths[b] == n and lm.inputs[b, 0] == BOS and lm.targets[b, n - 1] == EOS
        assert np.array_equal(lm.inputs[b, 1:n], lm.targets[b, :n - 1])
        assert (lm.targets[b, n:] == IGNORE).all()
    assert lm.lengths[3] == 1 and (lm.targets[3] == IGNORE).all()


# -- torch and JAX twins, same weights, same steps ----------------------------------------------
def test_word_classifier_first_sgd_steps_match_torch(tiny_data):
    torch_model = torch_word_language.build_model(tiny_data, TINY).double()
    torch_model.eval()  # dropout layers present, switched off
    jax_model = jaxseq.load_torch_state_dict(
        word_language.build_model(tiny_data, TINY, param_dtype=jnp.float64),
        torch_model.state_dict())
    jax_model.eval()
    initial = torch_model.lstm.weight_hh_l0_reverse.detach().clone().numpy()
    torch_opt = torch.optim.SGD(torch_model.parameters(), lr=TINY.learning_rate)
    jax_opt = nnx.Optimizer(jax_model, optax.sgd(TINY.learning_rate), wrt=nnx.Param)
    torch_losses, jax_losses = [], []
    for batch in itertools.islice(batches(tiny_data, "train", TINY.batch_size, shuffle=True,
                                          time_multiple=ONE_SHAPE), 5):
        tensors = [torch.from_numpy(a.astype(np.int64))
                   for a in (batch.tokens, batch.lengths, batch.labels)]
        torch_losses.append(torch_word_language.train_step(torch_model, torch_opt, *tensors)[0])
        loss, _ = word_language.train_step(jax_model, jax_opt, batch.tokens, batch.lengths,
                                           batch.labels)
        jax_losses.append(float(loss))
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-9)
    trained = torch_model.lstm.weight_hh_l0_reverse.detach().numpy()
    assert np.abs(trained - initial).max() > 1e-3              # the steps did move the weights
    np.testing.assert_allclose(np.asarray(jax_model.lstm.weight_hh_l0_reverse[...]), trained,
                               rtol=1e-9, atol=1e-12)


def test_char_lm_first_sgd_steps_match_torch(tiny_data):
    torch.manual_seed(0)
    torch_model = torch_models.CharLM(tiny_data.vocab_size, embed_dim=TINY.embed_dim,
                                      hidden_size=TINY.hidden_size, dropout=TINY.dropout).double()
    torch_model.eval()
    jax_model = jaxseq.load_torch_state_dict(char_lm.build_model(tiny_data, TINY, param_dtype=jnp.float64),
                                   torch_model.state_dict())
    initial = torch_model.decoder.weight.detach().clone().numpy()
    torch_opt = torch.optim.SGD(torch_model.parameters(), lr=TINY.learning_rate)
    jax_opt = nnx.Optimizer(jax_model, optax.sgd(TINY.learning_rate), wrt=nnx.Param)
    torch_losses, jax_losses = [], []
    for batch in itertools.islice(lm_batches(tiny_data, "train", TINY.batch_size, shuffle=True,
                                             row_multiple=5, time_multiple=ONE_SHAPE), 5):
        inputs, lengths, targets = (torch.from_numpy(a.astype(np.int64))
                                    for a in (batch.inputs, batch.lengths, batch.targets))
        loss = torch_models.token_loss(torch_model(inputs, lengths), targets)
        torch_opt.zero_grad()
        loss.backward()
        torch_opt.step()
        torch_losses.append(loss.item())
        jax_losses.append(float(char_lm.train_step(jax_model, jax_opt, batch.inputs,
                                                   batch.lengths, batch.targets)))
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-9)
    trained = torch_model.decoder.weight.detach().numpy()
    assert np.abs(trained - initial).max() > 1e-3
    np.testing.assert_allclose(np.asarray(jax_model.decoder.kernel[...]), trained.T, rtol=1e-9,
                               atol=1e-12)


# -- grain pipelines and --quick runs ----------------------------------------------------------
def test_char_lm_grain_batches_cover_every_character_once(tiny_data):
    """Packed and padded: every word of the split once (its characters + EOS as targets), in
    batches of one static shape."""
    words = tiny_data.valid.words
    want = sorted(list(tiny_data.encode(w)) + [EOS] for w in words)
    rows = char_lm.rows_per_batch(tiny_data, 16)
    for packed in (True, False):
        got, shapes = [], set()
        for inputs, layout, targets in char_lm.arrays(tiny_data, "valid", 16, packed=packed,
                                                      shuffle=True, seed=4):
            inputs, layout, targets = (np.asarray(a) for a in (inputs, layout, targets))
            shapes.add(inputs.shape)
            if packed:
                spans = [(b, layout[b] == s) for b in range(len(layout))
                         for s in range(1, layout[b].max() + 1)]
            else:
                spans = [(b, np.arange(inputs.shape[1]) < n) for b, n in enumerate(layout) if n]
            for b, where in spans:
                assert inputs[b][where][0] == BOS
                np.testing.assert_array_equal(inputs[b][where][1:], targets[b][where][:-1])
                got.append(list(targets[b][where]))
        assert sorted(got) == want
        if packed:
            assert shapes == {(rows, char_lm.ROW_LENGTH)}
        else:
            assert all(b == 16 and t % 8 == 0 for b, t in shapes)


QUICK = ["--quick", "--words-per-language", "200", "--epochs", "1", "--max-steps", "12",
         "--learning-rate", "0.01"]


def test_char_lm_quick_run_trains_on_grain_packed_rows(tmp_path):
    """``char_lm.py --quick`` (grain's packer, packed rows), cut to a few steps: it learns."""
    perplexity = char_lm.main([*QUICK, "--out", str(tmp_path)])
    assert perplexity < 30, perplexity                    # uniform would be 60


@pytest.mark.slow
def test_word_language_quick_run_trains_on_grain_batches(tmp_path):
    """``word_language.py --quick`` (grain, padded batches), cut to a few steps: it learns. (Its
    grain pipeline trains in the default suite too: the multi-device test below.)"""
    accuracy = word_language.main([*QUICK, "--out", str(tmp_path)])
    assert accuracy > 0.15, accuracy                      # chance is 0.1


def test_word_language_grain_batches_cover_every_word_once(tiny_data):
    """Padded batches of the grain pipeline: every word once, T a multiple of 8, rows a multiple
    of the device count, filler rows empty (length 0, label IGNORE)."""
    mesh = word_language.make_mesh()
    seen, shapes = [], set()
    for tokens, lengths, labels in word_language.device_batches(tiny_data, "valid", 30, mesh,
                                                                shuffle=True, seed=2):
        tokens, lengths, labels = (np.asarray(a) for a in (tokens, lengths, labels))
        shapes.add(tokens.shape)
        real = labels != IGNORE
        assert (lengths[~real] == 0).all() and (tokens[~real] == PAD).all()
        for row, n in zip(tokens[real], lengths[real]):
            assert (row[:n] != PAD).all() and (row[n:] == PAD).all()
            seen.append(row[:n].tolist())
    assert sorted(seen) == sorted(tiny_data.encode(w).tolist() for w in tiny_data.valid.words)
    assert all(b == 30 and t % 8 == 0 for b, t in shapes)


# -- orbax checkpoint -------------------------------------------------------------------------
def test_checkpoint_round_trip_gives_identical_predictions(tiny_data, tmp_path):
    config = dataclasses.replace(TINY, learning_rate=3e-3)
    model = word_language.build_model(tiny_data, config)
    optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
    model.train()
    for batch in itertools.islice(batches(tiny_data, "train", config.batch_size,
                                          time_multiple=ONE_SHAPE), 2):
        word_language.train_step(model, optimizer, batch.tokens, batch.lengths, batch.labels)
    model.eval()
    path = word_language.save_checkpoint(model, tiny_data, config, tmp_path / "ckpt")
    restored, meta = word_language.restore_checkpoint(path)
    assert tuple(meta["chars"]) == tiny_data.chars and meta["config"] == dataclasses.asdict(config)
    fresh = word_language.build_model(tiny_data, dataclasses.replace(config, seed=99))
    batch = next(batches(tiny_data, "valid", 64, time_multiple=ONE_SHAPE))
    logits = [np.asarray(word_language.forward(m, batch.tokens, batch.lengths))
              for m in (model, restored, fresh)]
    assert np.array_equal(logits[0], logits[1])
    assert not np.allclose(logits[0], logits[2])               # restore did replace the weights


# -- data parallelism -------------------------------------------------------------------------
_MULTI_DEVICE = textwrap.dedent("""
    import itertools, json, sys
    import jax, optax
    from flax import nnx
    from examples import word_language as wl
    from examples.training import TrainConfig
    from examples.wordlang_data import build_dataset

    data = build_dataset(words_per_language=200, seed=1)

    def run(devices, batch_size, dropout):
        config = TrainConfig(embed_dim=8, hidden_size=12, dropout=dropout, seed=1)
        mesh = wl.make_mesh(devices)
        model = wl.build_model(data, config)
        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
        wl.replicate(model, mesh)
        wl.replicate(optimizer, mesh)
        model.train()
        losses, shards = [], set()
        for tokens, lengths, labels in itertools.islice(wl.device_batches(
                data, "train", batch_size, mesh, shuffle=True, time_multiple=24), 4):
            shards.add(tuple(s.data.shape[0] for s in tokens.addressable_shards))
            losses.append(float(wl.train_step(model, optimizer, tokens, lengths, labels)[0]))
        return {"losses": losses, "shard_rows": sorted(shards)}

    runs = {f"{n}-{b}-{p}": run(jax.devices()[:n], b, p)
            for b, p in [(30, 0.0), (32, 0.3)] for n in (1, 4)}
    print(json.dumps({"devices": jax.device_count(), "runs": runs}))
""")


def test_four_devices_give_the_single_device_losses():
    """Batch split over 4 (forced host) devices vs 1: same losses, with and without dropout.

    Batch 30 is padded to 32 rows (8 per device) by filler rows; with dropout the masks are drawn
    from the same replicated key and must not depend on how the batch is split.
    """
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    runs = result["runs"]
    for batch, dropout in ((30, 0.0), (32, 0.3)):
        one, four = runs[f"1-{batch}-{dropout}"], runs[f"4-{batch}-{dropout}"]
        assert one["shard_rows"] == [[batch]] and four["shard_rows"] == [[8, 8, 8, 8]]
        assert len(set(one["losses"])) == 4                      # four different steps
        np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
