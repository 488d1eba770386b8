"""Initialisation: torch's default law, and the recommended recipe in jaxseq and its torch twin.

* ``torch_default`` (jaxseq) and ``torch.nn.LSTM/GRU/RNN`` (torch): every parameter inside
  ``U(-1/sqrt(H), 1/sqrt(H))``, with min / max near the bounds and mean / variance those of the law.
* ``jaxseq.init.recommended`` and ``torch_ref.init.recommended_init_``: every gate block orthogonal,
  zero biases, effective LSTM forget bias exactly ``forget_bias`` (set in one bias vector only).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq
from jaxseq import init
from jaxseq.layout import Structure
from jaxseq.parity.harness import JAX_CLASSES, TORCH_CLASSES, Config
from torch_ref.init import recommended_init_

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
ORTHO_TOL = {np.float64: 1e-12, np.float32: 1e-6}

CONFIGS = [  # blocks wider than tall, taller than wide, square, with projection, multi-layer
    Config(mode="LSTM", input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2),
    Config(mode="LSTM", input_size=8, hidden_size=4),
    Config(mode="GRU", input_size=6, hidden_size=6, num_layers=2, bidirectional=True),
    Config(mode="RNN_TANH", input_size=2, hidden_size=7, num_layers=2),
    Config(mode="RNN_RELU", input_size=9, hidden_size=3, bias=False),
]


def check_recommended(params: dict[str, np.ndarray], mode: str, hidden_size: int,
                      forget_bias: float = 1.0) -> None:
    """Assert the recommended recipe on a ``{torch name: array}`` dict (either framework)."""
    H = hidden_size
    tol = ORTHO_TOL[params["weight_ih_l0"].dtype.type]
    for name, w in params.items():
        if name.startswith("weight"):
            blocks = [w] if name.startswith("weight_hr") else np.split(w, GATES[mode])
            for block in blocks:
                rows, cols = block.shape
                gram = block @ block.T if rows <= cols else block.T @ block      # rows or columns
                assert np.max(np.abs(gram - np.eye(min(rows, cols)))) <= tol, name
            if len(blocks) > 1:                                                    # drawn independently
                assert not np.allclose(blocks[0][:, :1], blocks[1][:, :1])
    for name in (n for n in params if n.startswith("bias_hh")):
        b_ih, b_hh = params[name.replace("_hh", "_ih")], params[name]
        assert np.array_equal(b_hh, np.zeros_like(b_hh)), name
        want = np.zeros_like(b_ih)
        if mode == "LSTM":
            want[H:2 * H] = forget_bias                      # the effective bias b_ih + b_hh, not 2x
        assert np.array_equal(b_ih, want) and np.array_equal(b_ih + b_hh, want), name


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=Config.label)
def test_recommended_jax(cfg, dtype):
    kw = cfg.torch_kwargs()
    structure = Structure(cfg.mode, cfg.input_size, cfg.hidden_size, cfg.num_layers, cfg.bias,
                          cfg.bidirectional, kw.get("proj_size", 0))
    params = init.initialize("recommended", jax.random.key(cfg.seed), structure, dtype)
    check_recommended({k: np.asarray(v) for k, v in params.items()}, cfg.mode, cfg.hidden_size)
    assert all(v.dtype == dtype for v in params.values())


@pytest.mark.parametrize("cfg", CONFIGS, ids=Config.label)
def test_recommended_torch_twin(cfg):
    torch.manual_seed(cfg.seed)
    tmod = recommended_init_(TORCH_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size,
                                                     **cfg.torch_kwargs()).double())
    check_recommended({k: v.detach().numpy() for k, v in tmod.state_dict().items()}, cfg.mode,
                      cfg.hidden_size)


def test_recommended_forget_bias_and_module_option():
    lstm = jaxseq.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3, param_dtype=jnp.float64,
                       init="recommended", rngs=nnx.Rngs(0))
    check_recommended(jaxseq.torch_state_dict(lstm), "LSTM", 6)
    lstm = jaxseq.LSTM(4, 6, init=partial(init.recommended, forget_bias=2.5), param_dtype=jnp.float64,
                       rngs=nnx.Rngs(0))
    check_recommended(jaxseq.torch_state_dict(lstm), "LSTM", 6, forget_bias=2.5)
    gru = jaxseq.GRU(4, 6, param_dtype=jnp.float64, init="recommended", rngs=nnx.Rngs(0))
    check_recommended(jaxseq.torch_state_dict(gru), "GRU", 6)
    tmod = recommended_init_(torch.nn.LSTM(4, 6).double(), forget_bias=2.5)
    check_recommended({k: v.detach().numpy() for k, v in tmod.state_dict().items()}, "LSTM", 6, 2.5)
    with pytest.raises(AssertionError):                    # the checker catches the 2x mistake
        with torch.no_grad():
            tmod.bias_hh_l0[6:12] = 2.5
        check_recommended({k: v.detach().numpy() for k, v in tmod.state_dict().items()}, "LSTM", 6, 2.5)


def test_init_option_errors():
    with pytest.raises(ValueError, match="Unknown init 'orthogonal'"):
        jaxseq.LSTM(2, 3, init="orthogonal", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="callable"):
        jaxseq.GRU(2, 3, init=3, rngs=nnx.Rngs(0))

    def wrong(*args):
        params = init.torch_default(*args)
        params["weight_hh_l0"] = params["weight_hh_l0"][:, :2]
        return params

    with pytest.raises(ValueError, match="'weight_hh_l0': expected shape \\(12, 3\\), got \\(12, 2\\)"):
        jaxseq.LSTM(2, 3, init=wrong, rngs=nnx.Rngs(0))


# --- torch's default law ----------------------------------------------------------------------------
def check_uniform_bounds(params: dict[str, np.ndarray], hidden_size: int) -> None:
    """Every parameter in ``[-b, b]`` with ``b = 1/sqrt(H)``, reaching close to both ends, with the mean
    and variance of ``U(-b, b)``; tolerances leave a failure probability of about 1e-6 per check."""
    b = 1 / np.sqrt(hidden_size)
    for name, p in params.items():
        v, n = p.ravel().astype(np.float64), p.size
        gap = 2 * b * (1 - 1e-6 ** (1 / n))          # P(max < b - gap) = (1 - gap / 2b)^n = 1e-6
        assert -b <= v.min() <= -b + gap and b - gap <= v.max() <= b, name
        assert abs(v.mean()) <= 5 * b / np.sqrt(3 * n), name                  # std of the mean
        assert abs(v.var() - b * b / 3) <= 5 * b * b * np.sqrt(4 / 45 / n), name  # std of the variance


DEFAULT_CONFIGS = [
    Config(mode="LSTM", input_size=16, hidden_size=32, num_layers=2, bidirectional=True, proj_size=8),
    Config(mode="GRU", input_size=16, hidden_size=32, num_layers=2),
    Config(mode="RNN_TANH", input_size=16, hidden_size=64, bidirectional=True),
]


@pytest.mark.parametrize("cfg", DEFAULT_CONFIGS, ids=Config.label)
def test_torch_default_bounds(cfg):
    jmod = JAX_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs(),
                                 param_dtype=jnp.float64, rngs=nnx.Rngs(cfg.seed))
    jax_params = jaxseq.torch_state_dict(jmod)
    torch.manual_seed(cfg.seed)
    tmod = TORCH_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs())
    torch_params = {k: v.detach().numpy() for k, v in tmod.state_dict().items()}
    assert jax_params.keys() == torch_params.keys()
    if cfg.proj_size:
        assert any(k.startswith("weight_hr") for k in jax_params)
    check_uniform_bounds(jax_params, cfg.hidden_size)
    check_uniform_bounds(torch_params, cfg.hidden_size)
    with pytest.raises(AssertionError):                   # the checker rejects a wrong bound
        check_uniform_bounds(jax_params, 2 * cfg.hidden_size)


# --- building under a trace (Flax's abstract-model and sharded-init recipes) ------------------------
BUILDERS = {
    "lstm-bi-proj": lambda: jaxseq.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2,
                                        dropout=0.2, weight_drop=0.1, rngs=nnx.Rngs(0)),
    "gru-recommended": lambda: jaxseq.GRU(3, 5, init="recommended", rngs=nnx.Rngs(1)),
    "lstm-cell-recommended": lambda: jaxseq.LSTMCell(3, 4, init="recommended", rngs=nnx.Rngs(2)),
    "rnn-cell": lambda: jaxseq.RNNCell(3, 4, rngs=nnx.Rngs(3)),
    "crf": lambda: jaxseq.CRF(4, rngs=nnx.Rngs(4)),
    "batch-norm": lambda: jaxseq.BatchNorm(4),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_modules_build_under_eval_shape_and_jit(name):
    """``nnx.eval_shape(lambda: Model(...))`` (the abstract model orbax restores into) and
    ``nnx.jit`` construction (sharded init) work, and ``nnx.jit`` gives the eager parameters."""
    build = BUILDERS[name]
    eager = build()
    abstract = nnx.eval_shape(build)
    graph, abstract_state = nnx.split(abstract)
    state = nnx.state(eager)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract_state) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), state)
    restored = nnx.merge(graph, state)              # what a checkpoint restore does
    assert type(restored) is type(eager)
    jitted = nnx.jit(build)()
    for got, want in zip(jax.tree.leaves(nnx.state(jitted)), jax.tree.leaves(state)):
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):   # the dropout stream's key
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("name", sorted(init.INITIALIZERS))
def test_initializers_return_torch_state_dict_order(name):
    torch_keys = list(torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).state_dict())
    params = init.INITIALIZERS[name](jax.random.key(0), "LSTM", 3, 5, 2, True, True, 2)
    assert list(params) == torch_keys
