"""Single-step cells against torch.nn.LSTMCell / GRUCell / RNNCell, and the functional cell step.

Parity: identical weights, one step and a multi-step decoder loop (a ``lax.scan`` under ``jit``
against a Python loop in torch), outputs and the gradients of the inputs, the initial state and
every parameter, float64 (<= 1e-10) and float32 (<= 1e-5), batched and unbatched, with and without
bias. Also: a cell equals a one-layer, one-step layer with the same weights; torch's init bounds;
interop keys; every bad input raises before computing.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq
from jaxseq import functional

TOL = {"float64": 1e-10, "float32": 1e-5}
DTYPES = {"float64": (torch.float64, jnp.float64), "float32": (torch.float32, jnp.float32)}
KINDS = {"LSTM": (torch.nn.LSTMCell, jaxseq.LSTMCell, {}),
         "GRU": (torch.nn.GRUCell, jaxseq.GRUCell, {}),
         "RNN_TANH": (torch.nn.RNNCell, jaxseq.RNNCell, {"nonlinearity": "tanh"}),
         "RNN_RELU": (torch.nn.RNNCell, jaxseq.RNNCell, {"nonlinearity": "relu"})}


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _pair(mode, dtype, bias=True, input_size=3, hidden_size=5, seed=0):
    t_cls, j_cls, kw = KINDS[mode]
    torch.manual_seed(seed)
    tcell = t_cls(input_size, hidden_size, bias=bias, **kw).to(DTYPES[dtype][0])
    jcell = j_cls(input_size, hidden_size, bias=bias, param_dtype=DTYPES[dtype][1],
                  rngs=nnx.Rngs(seed), **kw)
    return tcell, jaxseq.load_torch_state_dict(jcell, tcell.state_dict())


CASES = [(mode, dtype, bias, steps, unbatched)
         for mode in KINDS for dtype in DTYPES
         for bias, steps, unbatched in [(True, 1, False), (False, 4, False), (True, 4, True)]
         if dtype == "float64" or (steps, unbatched) == (4, False)]


@pytest.mark.parametrize("mode, dtype, bias, steps, unbatched", CASES,
                         ids=[f"{m}-{d}-{'bias' if b else 'nobias'}-T{s}{'-unbatched' if u else ''}"
                              for m, d, b, s, u in CASES])
def test_cell_parity(mode, dtype, bias, steps, unbatched):
    """``steps`` steps fed with inputs and the previous state: one step, or a decoder loop
    (``lax.scan`` under ``jit`` against torch's Python loop)."""
    tcell, jcell = _pair(mode, dtype, bias)
    t_dtype, j_dtype = DTYPES[dtype]
    rng = np.random.default_rng(1)
    B, I, H = 4, 3, 5
    lead = () if unbatched else (B,)
    xs = rng.standard_normal((steps,) + lead + (I,))
    n_state = 2 if mode == "LSTM" else 1
    h0 = [rng.standard_normal(lead + (H,)) for _ in range(n_state)]
    cot = rng.standard_normal((steps,) + lead + (H,))                 # on every step's h
    cot_last = [rng.standard_normal(lead + (H,)) for _ in range(n_state)]
    pack = (lambda s: tuple(s)) if mode == "LSTM" else (lambda s: s[0])
    unpack = (lambda s: list(s)) if mode == "LSTM" else (lambda s: [s])

    @jax.jit
    def run(params, xs, state):
        def step(carry, x):
            new = functional.cell_step(mode, params, x, pack(carry))
            return unpack(new), unpack(new)[0]
        final, hs = jax.lax.scan(step, state, xs)
        return (jnp.sum(hs * cot) + sum(jnp.sum(f * c) for f, c in zip(final, cot_last))), (hs, final)

    (_, (hs, final)), grads = jax.value_and_grad(run, argnums=(0, 1, 2), has_aux=True)(
        jcell.param_dict(), jnp.asarray(xs, j_dtype), [jnp.asarray(h, j_dtype) for h in h0])

    tx = torch.tensor(xs, dtype=t_dtype, requires_grad=True)
    th0 = [torch.tensor(h, dtype=t_dtype, requires_grad=True) for h in h0]
    state, t_hs = pack(th0), []
    for t in range(steps):
        state = tcell(tx[t], state)
        t_hs.append(unpack(state)[0])
    t_hs = torch.stack(t_hs)
    total = (t_hs * torch.tensor(cot, dtype=t_dtype)).sum() + sum(
        (f * torch.tensor(c, dtype=t_dtype)).sum() for f, c in zip(unpack(state), cot_last))
    total.backward()

    errors = {"h": _rel(hs, t_hs.detach().numpy()),
              "grad_x": _rel(grads[1], tx.grad.numpy())}
    errors |= {f"final_{i}": _rel(f, t.detach().numpy()) for i, (f, t) in
               enumerate(zip(final, unpack(state)))}
    errors |= {f"grad_h0_{i}": _rel(g, t.grad.numpy()) for i, (g, t) in enumerate(zip(grads[2], th0))}
    errors |= {f"grad_{k}": _rel(grads[0][k], p.grad.numpy()) for k, p in tcell.named_parameters()}
    assert {"grad_weight_ih", "grad_weight_hh"} <= errors.keys()
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, bad


def test_module_call_and_defaults_match_torch():
    tcell, jcell = _pair("LSTM", "float64")
    x = np.random.default_rng(2).standard_normal((2, 3))
    h, c = jcell(jnp.asarray(x))                                      # hx=None: zeros
    th, tc = tcell(torch.tensor(x))
    np.testing.assert_allclose(h, th.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(c, tc.detach().numpy(), rtol=1e-12)
    assert [k for k in jaxseq.torch_state_dict(jcell)] == list(tcell.state_dict())
    assert repr(jaxseq.GRUCell(2, 3, bias=False, rngs=nnx.Rngs(0))) == "GRUCell(2, 3, bias=False)"


@pytest.mark.parametrize("mode", list(KINDS))
def test_cell_equals_one_step_of_a_layer(mode):
    """One implementation of the gate equations: a cell and a one-layer layer over T=1 agree."""
    _, jcell = _pair(mode, "float64")
    params = {f"{k}_l0": v for k, v in jcell.param_dict().items()}
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((4, 3)))
    hx = [jnp.asarray(rng.standard_normal((4, 5))) for _ in range(2 if mode == "LSTM" else 1)]
    pack = tuple if mode == "LSTM" else (lambda s: s[0])
    cell_state = jax.tree.leaves(jcell(x, pack(hx)))
    _, layer_state = functional.recurrent(mode, params, x[None], hx=pack([h[None] for h in hx]))
    for a, b in zip(cell_state, jax.tree.leaves(layer_state)):
        np.testing.assert_allclose(a, b[0], rtol=1e-14, atol=1e-15)


def test_default_init_bounds_and_recommended():
    cell = jaxseq.GRUCell(7, 16, rngs=nnx.Rngs(0))
    for name, value in cell.param_dict().items():
        v = np.asarray(value)
        assert np.abs(v).max() <= 1 / 4 and np.abs(v).max() > 0.2, name   # U(-1/sqrt(16), ...)
    rec = jaxseq.LSTMCell(3, 2, init="recommended", rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(rec.bias_ih[...] + rec.bias_hh[...], [0, 0, 1, 1, 0, 0, 0, 0])
    assert jaxseq.LSTMCell(3, 2, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)).weight_ih.dtype == jnp.bfloat16


def test_cells_compose_with_vmap_jacfwd_and_grad_of_grad():
    _, jcell = _pair("GRU", "float64")
    p = jcell.param_dict()
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3)))
    f = lambda xx: functional.gru_cell(p, xx).sum()                     # noqa: E731
    jf = jax.jacfwd(jax.grad(f))(x)
    jr = jax.jacrev(jax.grad(f))(x)
    np.testing.assert_allclose(jf, jr, rtol=1e-10, atol=1e-12)
    batched = jax.vmap(lambda xx: functional.gru_cell(p, xx))(x)      # unbatched cell under vmap
    np.testing.assert_allclose(batched, functional.gru_cell(p, x), rtol=1e-12)


@pytest.mark.parametrize("call, error, message", [
    (lambda c: c(jnp.ones((2, 4))), ValueError, "input.size(-1) must be equal to input_size. Expected 3, got 4"),
    (lambda c: c(jnp.ones((2, 2, 3))), ValueError, "Expected input of shape [B, input_size]"),
    (lambda c: c(jnp.ones((2, 3), jnp.int32)), TypeError, "input must have a floating dtype"),
    (lambda c: c(jnp.ones((2, 3)), jnp.ones((2, 5))), TypeError, "LSTMCell expects hx=(h_0, c_0)"),
    (lambda c: c(jnp.ones((2, 3)), (jnp.ones((3, 5)), jnp.ones((2, 5)))), ValueError,
     "Expected hidden size (2, 5) for h_0, got (3, 5)"),
    (lambda c: c(jnp.ones(3), (jnp.ones((1, 5)), jnp.ones(5))), ValueError,
     "Expected hidden size (5,) for h_0, got (1, 5)"),
])
def test_bad_inputs_raise(call, error, message):
    cell = jaxseq.LSTMCell(3, 5, rngs=nnx.Rngs(0))
    with pytest.raises(error, match=re.escape(message)):
        call(cell)


def test_bad_params_and_constructor_args():
    p = jaxseq.GRUCell(3, 5, rngs=nnx.Rngs(0)).param_dict()
    with pytest.raises(ValueError, match=r"unexpected keys 'weight_ih_l0'"):
        functional.gru_cell({**p, "weight_ih_l0": p["weight_ih"]}, jnp.ones(3))
    with pytest.raises(ValueError, match=r"'bias_hh': expected shape \(15,\), got \(14,\)"):
        functional.gru_cell({**p, "bias_hh": p["bias_hh"][:-1]}, jnp.ones(3))
    with pytest.raises(ValueError, match="must contain 'weight_ih' and 'weight_hh'"):
        functional.gru_cell({"weight_ih": p["weight_ih"]}, jnp.ones(3))
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        jaxseq.RNNCell(3, 5, nonlinearity="gelu", rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="hidden_size should be of type int"):
        jaxseq.LSTMCell(3, 5.0, rngs=nnx.Rngs(0))
    cell = jaxseq.LSTMCell(3, 5, rngs=nnx.Rngs(0))
    before = np.asarray(cell.weight_ih[...]).copy()
    sd = {k: np.zeros_like(v) for k, v in jaxseq.torch_state_dict(cell).items()}
    sd["bias_hh"] = np.zeros(19)
    with pytest.raises(ValueError, match=r"state_dict does not match LSTMCell\(3, 5\): 'bias_hh'"):
        jaxseq.load_torch_state_dict(cell, sd)
    np.testing.assert_array_equal(cell.weight_ih[...], before)        # nothing written
