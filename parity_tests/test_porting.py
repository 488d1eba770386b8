"""Whole-model porting and the ergonomics found while porting real torch code.

* a composite torch ``state_dict`` loaded into an NNX model of jaxseq layers and cells,
  ``nnx.Embed``, ``nnx.Linear``, ``nnx.LayerNorm``: keys, rename rules, errors listing every
  unmatched key on both sides, nothing written on failure, the reverse export;
* the seq2seq twin (``examples/seq2seq.py`` vs ``torch_ref.seq2seq``): identical weights give the
  same teacher-forced loss and gradients (float64) and the same greedy decodes; its ``--quick``
  run trains;
* ``weight_drop`` on chosen matrices and row-wise, against torch's ``WeightDrop``;
  ``LockedDropout``'s per-call rate; ``reduction="sequence_mean"`` against per-sequence torch means.
(The AWD-LSTM model port is a recipe of ``docs/porting.md``, executed by test_examples_docs.)
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

import jaxseq
from torch_ref.awd import WeightDrop

pytest.importorskip("wordfreq")
from examples import seq2seq  # noqa: E402
from examples.training import TrainConfig  # noqa: E402
from examples.wordlang_data import build_dataset, reversal_batches  # noqa: E402
from torch_ref.seq2seq import Seq2Seq as TorchSeq2Seq  # noqa: E402
from torch_ref.seq2seq import token_loss  # noqa: E402

TINY = TrainConfig(words_per_language=200, embed_dim=6, hidden_size=5, batch_size=8, seed=2)


# --- composite state_dicts --------------------------------------------------------------------
class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(7, 4)
        self.rnns = torch.nn.ModuleList([torch.nn.GRU(4, 3), torch.nn.LSTM(3, 2, bidirectional=True)])
        self.cell = torch.nn.LSTMCell(4, 2)
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 5)


class JaxNet(nnx.Module):
    def __init__(self, rngs):
        self.embedding = nnx.Embed(7, 4, rngs=rngs)
        self.rnns = nnx.List([jaxseq.GRU(4, 3, rngs=rngs), jaxseq.LSTM(3, 2, bidirectional=True,
                                                                       rngs=rngs)])
        self.cell = jaxseq.LSTMCell(4, 2, rngs=rngs)
        self.norm = nnx.LayerNorm(4, epsilon=1e-5, rngs=rngs)     # torch's eps (Flax: 1e-6)
        self.head = nnx.Linear(4, 5, rngs=rngs)


def _leaves(model):
    return [np.asarray(x).copy() for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_composite_round_trip_is_bit_exact_and_in_torch_order():
    torch.manual_seed(0)
    tnet = TorchNet()
    sd = tnet.state_dict()
    jnet = jaxseq.load_torch_state_dict(JaxNet(nnx.Rngs(0)), sd)
    back = jaxseq.torch_state_dict(jnet)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert np.array_equal(back[k], v.numpy()), k
    np.testing.assert_array_equal(jnet.head.kernel[...], sd["head.weight"].numpy().T)
    np.testing.assert_array_equal(jnet.norm.scale[...], sd["norm.weight"].numpy())
    assert [k for k in back if k.startswith("rnns.1.")] == [k for k in sd if k.startswith("rnns.1.")]
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})   # strict load works
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with torch.no_grad():
        want = tnet.head(tnet.norm(torch.tensor(x))).numpy()
    np.testing.assert_allclose(jnet.head(jnet.norm(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)


def test_unmatched_keys_on_both_sides_are_listed_and_nothing_is_written():
    torch.manual_seed(0)
    sd = dict(TorchNet().state_dict())
    sd["extra.weight"] = torch.zeros(3)
    del sd["rnns.0.bias_hh_l0"]
    sd["head.weight"] = torch.zeros(4, 5)                           # transposed by mistake
    jnet = JaxNet(nnx.Rngs(1))
    before = _leaves(jnet)
    with pytest.raises(ValueError) as info:
        jaxseq.load_torch_state_dict(jnet, sd)
    text = str(info.value)
    assert text.startswith("state_dict does not match the JaxNet model")
    assert "missing keys 'rnns.0.bias_hh_l0' (expected shape (9,))" in text
    assert "unexpected keys 'extra.weight' (shape (3,))" in text
    assert "'head.weight': expected shape (5, 4), got (4, 5)" in text
    for a, b in zip(before, _leaves(jnet)):
        assert np.array_equal(a, b)


def test_rename_rules_prefix_and_unsupported_layers():
    torch.manual_seed(0)
    sd = {f"model.{k}".replace("rnns.", "layers."): v for k, v in TorchNet().state_dict().items()}
    as_pairs = [(r"^layers\.", "rnns.")]
    for rename in (as_pairs, dict(as_pairs), lambda k: k.replace("layers.", "rnns.", 1)):
        jnet = jaxseq.load_torch_state_dict(JaxNet(nnx.Rngs(0)), sd, prefix="model.", rename=rename)
        np.testing.assert_array_equal(jnet.rnns[0].weight_hh_l0[...],
                                      sd["model.layers.0.weight_hh_l0"].numpy())
    dropped = {**sd, "model.decoder.weight": torch.zeros(1)}
    jaxseq.load_torch_state_dict(JaxNet(nnx.Rngs(0)), dropped, prefix="model.",
                                 rename=as_pairs + [(r"^decoder\.", None)])

    class WithConv(nnx.Module):
        def __init__(self):
            self.conv = nnx.ConvTranspose(2, 2, (3,), rngs=nnx.Rngs(0))

    with pytest.raises(TypeError, match="ConvTranspose at 'conv' has no torch mapping"):
        jaxseq.torch_state_dict(WithConv())
    with pytest.raises(TypeError, match="module must be an NNX module"):
        jaxseq.load_torch_state_dict(torch.nn.Linear(2, 2), {})


# --- the seq2seq twin ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data():
    return build_dataset(words_per_language=TINY.words_per_language, seed=TINY.seed)


def _twins(data):
    torch.manual_seed(0)
    tmodel = TorchSeq2Seq(data.vocab_size, embed_dim=TINY.embed_dim,
                          hidden_size=TINY.hidden_size).double()
    jmodel = seq2seq.build_model(data, TINY, param_dtype=jnp.float64)
    return tmodel, jaxseq.load_torch_state_dict(jmodel, tmodel.state_dict())


def test_seq2seq_teacher_forced_loss_and_gradients_match_torch(tiny_data):
    tmodel, jmodel = _twins(tiny_data)
    batch = next(reversal_batches(tiny_data, "train", TINY.batch_size, shuffle=True))
    arrays = (batch.source, batch.source_lengths, batch.target_in, batch.target_out)
    loss, grads = nnx.jit(nnx.value_and_grad(seq2seq.loss_fn))(jmodel, *arrays)
    t_loss = token_loss(tmodel(*(torch.from_numpy(a.astype(np.int64)) for a in arrays[:3])),
                        torch.from_numpy(batch.target_out.astype(np.int64)))
    t_loss.backward()
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-12)
    # gradients through the same key map as the weights (the Linear kernel transposed)
    shell = nnx.clone(jmodel)
    nnx.update(shell, grads)
    g = jaxseq.torch_state_dict(shell)
    assert len(g) == len(list(tmodel.parameters())) >= 14
    for name, p in tmodel.named_parameters():
        np.testing.assert_allclose(g[name], p.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_seq2seq_greedy_decodes_are_identical(tiny_data):
    tmodel, jmodel = _twins(tiny_data)
    torch_model_opt = torch.optim.Adam(tmodel.parameters(), lr=0.02)
    for batch in itertools.islice(reversal_batches(tiny_data, "train", 32, shuffle=True), 30):
        arrays = [torch.from_numpy(a.astype(np.int64)) for a in
                  (batch.source, batch.source_lengths, batch.target_in, batch.target_out)]
        loss = token_loss(tmodel(*arrays[:3]), arrays[3])
        torch_model_opt.zero_grad()
        loss.backward()
        torch_model_opt.step()
    jaxseq.load_torch_state_dict(jmodel, tmodel.state_dict())          # a trained torch model
    batch = next(reversal_batches(tiny_data, "test", 64))
    src, lengths = (torch.from_numpy(a.astype(np.int64)) for a in (batch.source, batch.source_lengths))
    t_tokens, t_attn = tmodel.greedy(src, lengths, 2, 3, 21)
    j_tokens, j_lengths = seq2seq.greedy(jmodel, batch.source, batch.source_lengths)
    np.testing.assert_array_equal(np.asarray(j_tokens), t_tokens.numpy())
    assert len({tuple(row) for row in np.asarray(j_tokens).tolist()}) > 10     # not degenerate


def test_seq2seq_quick_run_learns(tmp_path):
    figures = seq2seq.main(["--quick", "--words-per-language", "200", "--max-steps", "25",
                            "--batch-size", "32", "--out", str(tmp_path)])
    assert figures["test_accuracy"] > 0.1 and len(figures["epoch_seconds"]) == 3
    assert (tmp_path / "seq2seq_attention.png").stat().st_size > 1000


# --- ergonomics from the ports ----------------------------------------------------------------
@pytest.mark.parametrize("variational", [False, True])
def test_weight_drop_on_chosen_matrices_matches_torch_weightdrop(variational):
    """``weight_drop={"weight_hh_l0": p}`` (and ``weight_drop_mode="row"``) == torch's
    ``WeightDrop(lstm, ["weight_hh_l0"], p, variational)`` with the same mask."""
    torch.manual_seed(0)
    tlstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True).double()
    sd = {k: v.clone() for k, v in tlstm.state_dict().items()}
    wrapped = WeightDrop(tlstm, ["weight_hh_l0"], 0.5, variational=variational)
    jlstm = jaxseq.LSTM(3, 4, num_layers=2, batch_first=True, param_dtype=jnp.float64,
                        weight_drop={"weight_hh_l0": 0.5},
                        weight_drop_mode="row" if variational else "element", rngs=nnx.Rngs(0))
    jaxseq.load_torch_state_dict(jlstm, sd)
    jlstm.train()
    rng = np.random.default_rng(0)
    x, lengths = rng.standard_normal((3, 6, 3)), np.array([6, 2, 4])
    masks = jlstm._draw_masks(jnp.asarray(x), jax.random.key(0))["weight_hh_masks"]
    assert masks[0].shape == ((1, 16, 1) if variational else (1, 16, 4))
    assert np.all(np.asarray(masks[1]) == 1)                             # layer 1 is not dropped
    assert 0 < np.mean(np.asarray(masks[0]) == 0) < 1
    out, _ = jlstm(jnp.asarray(x), jnp.asarray(lengths), rngs=jax.random.key(0))
    t_out, _ = wrapped(torch.tensor(x), lengths,
                       masks={"weight_hh_l0": torch.tensor(np.asarray(masks[0][0]))})
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"weight_drop names \['weight_hh_l2'\]"):
        jaxseq.LSTM(3, 4, num_layers=2, weight_drop={"weight_hh_l2": 0.5}, rngs=nnx.Rngs(0))


def test_locked_dropout_per_call_rate():
    drop = jaxseq.LockedDropout(0.1, rngs=nnx.Rngs(0))
    drop.train()
    x = jnp.ones((3, 400, 50))
    for rate in (0.1, 0.65):
        y = np.asarray(drop(x, rate=rate))
        assert abs(np.mean(y[0] == 0) - rate) < 5 * np.sqrt(rate * (1 - rate) / y[0].size)
        np.testing.assert_allclose(np.unique(y), [0.0, 1 / (1 - rate)], rtol=1e-6)
    with pytest.raises(ValueError, match="rate should be a number in range"):
        drop(x, rate=1.5)


@pytest.mark.parametrize("smoothing, weighted", [(0.0, False), (0.2, True)])
def test_sequence_mean_reduction_matches_per_sequence_torch_means(smoothing, weighted):
    rng = np.random.default_rng(0)
    B, T, C = 4, 6, 5
    logits, targets = rng.standard_normal((B, T, C)), rng.integers(0, C, (B, T))
    lengths = np.array([6, 2, 0, 4])                                   # one empty sequence
    weight = rng.random(C) + 0.5 if weighted else None
    mask = np.arange(T)[None] < lengths[:, None]
    got = jaxseq.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask),
                                      reduction="sequence_mean", label_smoothing=smoothing,
                                      weight=None if weight is None else jnp.asarray(weight))
    per_seq = [F.cross_entropy(torch.tensor(logits[b, :n]), torch.tensor(targets[b, :n]),
                               weight=None if weight is None else torch.tensor(weight),
                               label_smoothing=smoothing) for b, n in enumerate(lengths) if n]
    np.testing.assert_allclose(float(got), torch.stack(per_seq).mean().item(), rtol=1e-12)
    # packed rows: the same four sequences, two per row, through segment_ids
    ids = np.array([[1] * 6 + [2] * 2 + [0] * 4, [1] * 4 + [0] * 8])
    rows_logits = np.zeros((2, 12, C))
    rows_targets = np.zeros((2, 12), int)
    rows_logits[0, :6], rows_logits[0, 6:8], rows_logits[1, :4] = logits[0], logits[1, :2], logits[3, :4]
    rows_targets[0, :6], rows_targets[0, 6:8], rows_targets[1, :4] = targets[0], targets[1, :2], targets[3, :4]
    packed = jaxseq.masked_cross_entropy(jnp.asarray(rows_logits), jnp.asarray(rows_targets),
                                         reduction="sequence_mean", segment_ids=jnp.asarray(ids),
                                         label_smoothing=smoothing,
                                         weight=None if weight is None else jnp.asarray(weight))
    np.testing.assert_allclose(float(packed), float(got), rtol=1e-12)
    with pytest.raises(ValueError, match="only applies with reduction='sequence_mean'"):
        jaxseq.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                    segment_ids=jnp.asarray(targets))
