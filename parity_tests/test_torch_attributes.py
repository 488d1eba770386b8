"""torch's configuration attributes on jaxseq's modules: the same values and types as torch's for the
same constructor arguments, read-only, and not part of the module's state."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq

LAYER_ATTRIBUTES = ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                    "dropout", "bidirectional", "proj_size")
CELL_ATTRIBUTES = ("input_size", "hidden_size", "bias")
BATCH_NORM_ATTRIBUTES = ("num_features", "eps", "momentum", "affine", "track_running_stats")

LAYERS = [
    ("LSTM", (3, 4), {}),
    ("LSTM", (5, 6), dict(num_layers=2, bias=False, batch_first=True, dropout=0.25,
                          bidirectional=True, proj_size=2)),
    ("LSTM", (2, 3), dict(num_layers=3, dropout=1)),              # an int rate: torch keeps a float
    ("GRU", (3, 4), dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", (7, 2), dict(bias=False, dropout=0.0)),
    ("RNN", (3, 4), dict(nonlinearity="relu", num_layers=2, dropout=0.5)),
    ("RNN", (3, 4), dict(bidirectional=True, bias=False)),
]


def _same(ours, theirs, name):
    assert ours == theirs and type(ours) is type(theirs), (name, ours, theirs)


@pytest.mark.filterwarnings("ignore:dropout option adds dropout")
@pytest.mark.parametrize("kind, args, kwargs", LAYERS)
def test_layer_attributes_equal_torchs(kind, args, kwargs):
    ours = getattr(jaxseq, kind)(*args, **kwargs, rngs=nnx.Rngs(0))
    theirs = getattr(torch.nn, kind)(*args, **kwargs)
    names = LAYER_ATTRIBUTES + (("nonlinearity",) if kind == "RNN" else ())
    for name in names:
        _same(getattr(ours, name), getattr(theirs, name), name)


@pytest.mark.parametrize("kind, kwargs", [("LSTMCell", {}), ("GRUCell", dict(bias=False)),
                                          ("RNNCell", dict(nonlinearity="relu")),
                                          ("RNNCell", dict(bias=False))])
def test_cell_attributes_equal_torchs(kind, kwargs):
    ours = getattr(jaxseq, kind)(3, 5, **kwargs, rngs=nnx.Rngs(0))
    theirs = getattr(torch.nn, kind)(3, 5, **kwargs)
    for name in CELL_ATTRIBUTES + (("nonlinearity",) if kind == "RNNCell" else ()):
        _same(getattr(ours, name), getattr(theirs, name), name)


@pytest.mark.parametrize("kwargs", [{}, dict(eps=1e-3, momentum=None),
                                    dict(momentum=0.3, affine=False),
                                    dict(track_running_stats=False),
                                    dict(affine=False, track_running_stats=False)])
def test_batch_norm_attributes_equal_torchs(kwargs):
    ours, theirs = jaxseq.BatchNorm(6, **kwargs), torch.nn.BatchNorm1d(6, **kwargs)
    for name in BATCH_NORM_ATTRIBUTES:
        _same(getattr(ours, name), getattr(theirs, name), name)


@pytest.mark.parametrize("batch_first", [False, True])
def test_crf_attributes_equal_pytorch_crfs(batch_first):
    torchcrf = pytest.importorskip("torchcrf")
    ours = jaxseq.CRF(4, batch_first=batch_first, rngs=nnx.Rngs(0))
    theirs = torchcrf.CRF(4, batch_first=batch_first)
    for name in ("num_tags", "batch_first"):
        _same(getattr(ours, name), getattr(theirs, name), name)


def _modules():
    return [jaxseq.LSTM(3, 4, rngs=nnx.Rngs(0)), jaxseq.RNN(3, 4, rngs=nnx.Rngs(0)),
            jaxseq.GRUCell(3, 4, rngs=nnx.Rngs(0)), jaxseq.RNNCell(3, 4, rngs=nnx.Rngs(0)),
            jaxseq.CRF(3, rngs=nnx.Rngs(0)), jaxseq.BatchNorm(3)]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: type(m).__name__)
def test_attributes_are_read_only_with_a_clear_error(module):
    for name in type(module).TORCH_ATTRIBUTES:
        before = getattr(module, name)
        with pytest.raises(AttributeError, match=rf"{type(module).__name__}\.{name} is read-only "
                                                 r"\(fixed when the module is built\): build a new"):
            setattr(module, name, before)
        assert getattr(module, name) == before
    module.deterministic = False                 # other attributes stay assignable
    assert module.deterministic is False


def test_the_attributes_name_every_torch_attribute():
    assert jaxseq.LSTM.TORCH_ATTRIBUTES == jaxseq.GRU.TORCH_ATTRIBUTES == LAYER_ATTRIBUTES
    assert jaxseq.RNN.TORCH_ATTRIBUTES[:-1] == LAYER_ATTRIBUTES
    assert jaxseq.RNN.TORCH_ATTRIBUTES[-1] == "nonlinearity"
    assert set(jaxseq.LSTMCell.TORCH_ATTRIBUTES) == {"mode", *CELL_ATTRIBUTES}
    assert jaxseq.BatchNorm.TORCH_ATTRIBUTES == BATCH_NORM_ATTRIBUTES


def test_attributes_are_not_state_and_survive_split_merge_and_jit():
    lstm = jaxseq.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.5, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(lstm)
    assert not [p for p, _ in nnx.to_flat_state(state)
                if any(n in {"dropout", "batch_first", "_dropout", "_batch_first"} for n in p)]
    merged = nnx.merge(graphdef, state)
    assert (merged.num_layers, merged.batch_first, merged.dropout) == (2, True, 0.5)

    @nnx.jit
    def run(model, x):
        assert model.batch_first and model.hidden_size == 4          # static inside jit
        return model(x)[0]

    assert run(lstm, jnp.ones((2, 5, 3))).shape == (2, 5, 4)
    cell = nnx.clone(jaxseq.RNNCell(2, 3, nonlinearity="relu", rngs=nnx.Rngs(0)))
    assert (cell.nonlinearity, cell.mode, repr(cell)) == ("relu", "RNN_RELU",
                                                         "RNNCell(2, 3, nonlinearity='relu')")
    bn = jaxseq.BatchNorm(3, affine=False, deterministic=False)         # batch statistics
    np.testing.assert_array_equal(bn(jnp.ones((2, 4, 3))), 0.0)
