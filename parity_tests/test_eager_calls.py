"""The cost of a call outside ``jit``: one compilation per shape, never one per lengths pattern.

A torch user's first loop is eager (no ``jit``): every layer, cell and :mod:`jaxseq.functional`
entry point must then compile once for a given (shapes, dtypes, static options) and reuse it for
new lengths, new values, new segment layouts and new dropout masks. Compilations are counted with
JAX's monitoring events (:mod:`parity_tests.compiles`), so a regression fails here without timing
anything. Also: under ``jit``, lengths closed over as host values do not switch on the
per-pattern staircase unless ``time_chunks`` asks for it.
"""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxseq
from jaxseq import functional as F
from jaxseq import init
from parity_tests.compiles import count_compiles

T, B, I, H = 9, 5, 3, 4


def _lengths(seed):
    lengths = np.random.default_rng(seed).integers(0, T + 1, B)
    lengths[0] = T
    return lengths


def _x(seed, shape=(T, B, I)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)   # host data


def _block(tree):
    return jax.block_until_ready(tree)


def _calls_compile(call, first_max):
    """``call(seed)`` three times: the first compiles at most ``first_max`` functions, the others
    (new lengths / values) nothing."""
    with count_compiles() as first:
        _block(call(0))
    assert first.count <= first_max, first.names
    with count_compiles() as later:
        _block(call(1))
        _block(call(2))
    assert later.count == 0, later.names


LAYERS = {
    "lstm": lambda: jaxseq.LSTM(I, H, rngs=nnx.Rngs(0)),
    "bilstm2-proj": lambda: jaxseq.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2,
                                        rngs=nnx.Rngs(0)),
    "gru-bf": lambda: jaxseq.GRU(I, H, batch_first=True, rngs=nnx.Rngs(0)),
    "rnn-relu2": lambda: jaxseq.RNN(I, H, num_layers=2, nonlinearity="relu", rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_eager_calls_compile_once(name):
    layer = LAYERS[name]()
    shape = (B, T, I) if layer.batch_first else (T, B, I)
    _calls_compile(lambda seed: layer(_x(seed, shape), _lengths(seed)), first_max=1)


def test_training_mode_with_every_dropout_compiles_once_per_shape():
    layer = jaxseq.LSTM(I, H, num_layers=2, dropout=0.3, recurrent_dropout=0.2, weight_drop=0.1,
                        rngs=nnx.Rngs(0))
    layer.train()
    _calls_compile(lambda seed: layer(_x(seed), _lengths(seed)), first_max=2)   # the mask draw and the layer


def test_packed_rows_and_hx_compile_once():
    layer = jaxseq.LSTM(I, H, bidirectional=True, rngs=nnx.Rngs(0))

    def call(seed):
        rng = np.random.default_rng(seed)
        ids = np.zeros((T, B), np.int32)
        for b in range(B):
            cuts = np.sort(rng.choice(np.arange(1, T), size=2, replace=False))
            ids[:cuts[1], b] = np.where(np.arange(cuts[1]) < cuts[0], 1, 2)
        hx = (_x(seed, (2, B, 3, H)), _x(seed + 7, (2, B, 3, H)))
        return layer(_x(seed), hx=hx, segment_ids=ids, max_segments=3)

    _calls_compile(call, first_max=1)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_functional_and_cells_compile_once(mode):
    params = init.torch_default(jax.random.key(0), mode, I, H, 2, bidirectional=True)
    _calls_compile(lambda seed: F.recurrent(mode, params, _x(seed), _lengths(seed)), first_max=1)
    cell_params = {k[:-3]: v for k, v in init.torch_default(jax.random.key(1), mode, I, H).items()}
    cell = jaxseq.LSTMCell(I, H, rngs=nnx.Rngs(0)) if mode == "LSTM" else jaxseq.GRUCell(
        I, H, rngs=nnx.Rngs(0))
    _calls_compile(lambda seed: F.cell_step(mode, cell_params, _x(seed, (B, I))), first_max=1)
    _calls_compile(lambda seed: cell(_x(seed, (B, I))), first_max=1)


def test_batch_norm_crf_and_ctc_compile_once_per_shape():
    """The whole-model glue: new lengths recompile nothing (the first call's count includes the
    few jnp primitives computed outside the cached cores: masks from lengths)."""
    norm = jaxseq.BatchNorm(I)
    norm.train()
    _calls_compile(lambda seed: norm(_x(seed), _lengths(seed)), first_max=8)
    crf = jaxseq.CRF(I, rngs=nnx.Rngs(0))
    tags = np.random.default_rng(0).integers(0, I, (T, B))
    _calls_compile(lambda seed: crf(_x(seed), tags, lengths=_lengths(seed)), first_max=4)
    _calls_compile(lambda seed: crf.decode(_x(seed), lengths=_lengths(seed)), first_max=2)
    targets = np.random.default_rng(1).integers(1, I, (B, 2))

    def ctc(seed):
        log_probs = jax.nn.log_softmax(_x(seed))
        return jaxseq.ctc_loss(log_probs, targets, _lengths(seed), np.minimum(_lengths(seed), 2))

    _calls_compile(ctc, first_max=5)


def test_asked_for_staircase_compiles_per_schedule_and_matches():
    """``time_chunks=k`` is the opt-in staircase: one compilation per schedule, same results."""
    params = init.torch_default(jax.random.key(0), "LSTM", I, H)
    x = _x(0)
    plain = F.lstm(params, x, _lengths(0))
    stair = F.lstm(params, x, _lengths(0), time_chunks=3)
    np.testing.assert_allclose(stair[0], plain[0], rtol=1e-5, atol=1e-6)
    with count_compiles() as again:
        F.lstm(params, x, _lengths(0), time_chunks=3)[0].block_until_ready()
    assert again.count == 0, again.names


def _scans(jaxpr) -> int:
    """Number of ``scan`` equations in a (closed) jaxpr, nested calls included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "scan"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _scans(sub)
    return count


def test_concrete_lengths_inside_jit_run_the_plain_scan_unless_asked():
    params = init.torch_default(jax.random.key(0), "LSTM", I, H)
    lengths = _lengths(3)                      # host values closed over by the traced function
    plain = jax.make_jaxpr(lambda p, x: F.lstm(p, x, lengths))(params, _x(0))
    stair = jax.make_jaxpr(lambda p, x: F.lstm(p, x, lengths, time_chunks=3))(params, _x(0))
    assert _scans(plain.jaxpr) == 1
    assert _scans(stair.jaxpr) > 1
