"""Edge shapes and numerics: tiny and huge T/B, degenerate lengths, low precision, x64 hygiene, NaN.

* parity with torch packed (via :func:`jaxseq.parity.harness.run`, with the lengths pinned) for
  ``B=1``, ``T=1``, every length equal (to ``T`` or below it) and every length 1;
* a batch of only zero-length rows (torch cannot run it): zero output, ``h_n == h0`` bit for bit,
  finite gradients, identity gradient to ``h0`` and zero gradient to ``x`` and the parameters;
* ``T = 2000``: parity with torch in float64, and compiled memory of forward + backward measured
  with ``memory_analysis()``: linear in ``T`` by default (``remat=k``: ``test_remat.py``);
* bfloat16 / float16 parameters: finite outputs and gradients, close to float32 within measured
  tolerances (``LOW_PRECISION_ATOL``);
* importing and running jaxseq never switches ``jax_enable_x64`` on (fresh subprocess);
* NaN / inf at padded positions change no output and no gradient, bit for bit.
"""
import functools
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxseq
from jaxseq import functional as F
from jaxseq.parity import harness
from jaxseq.parity.harness import Config
from parity_tests.cases import split_cases
from parity_tests.test_property_parity import assert_matches_torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cfg, lengths", [
    (Config(batch=1, time=1, bidirectional=True, with_hx=True), [1]),
    (Config(mode="GRU", batch=1, time=6, num_layers=2), [6]),
    (Config(mode="LSTM", batch=1, time=6, proj_size=2, bidirectional=True), [3]),
    (Config(mode="RNN_TANH", batch=3, time=4, bidirectional=True, with_hx=True), [4, 4, 4]),
    (Config(mode="LSTM", batch=3, time=6, num_layers=2, bidirectional=True), [3, 3, 3]),
    (Config(mode="GRU", batch=4, time=5, bidirectional=True, with_hx=True, batch_first=True),
     [1, 1, 1, 1]),
    (Config(mode="RNN_RELU", batch=4, time=1, num_layers=3), [1, 1, 1, 1]),
], ids=lambda v: v.label() if isinstance(v, Config) else "len" + "-".join(map(str, v)))
@pytest.mark.parametrize("concrete", [False, True], ids=["traced", "concrete"])
def test_degenerate_lengths_match_torch(cfg, lengths, concrete, monkeypatch):
    monkeypatch.setattr(harness, "random_lengths", lambda rng, batch, time, zero_rows: np.array(lengths))
    assert_matches_torch(cfg, concrete)


# --------------------------------------------------------------------------------------------
# a batch made only of empty sequences
# --------------------------------------------------------------------------------------------
def _jit_with_lengths(fn, lengths: np.ndarray, traced: bool):
    """``jax.jit`` of ``fn(*args, lengths)``: ``lengths`` traced (an argument) or concrete (closed
    over as a host constant, so jaxseq sees its values and may schedule by length)."""
    if traced:
        return lambda *args: jax.jit(fn)(*args, jnp.asarray(lengths))
    return jax.jit(lambda *args: fn(*args, lengths))


@pytest.mark.parametrize("traced", [False, True], ids=["concrete", "traced"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_RELU"])
def test_all_zero_length_batch(mode, traced):
    T, B, I, H, L, D = 4, 3, 2, 5, 2, 2
    params = jaxseq.init.torch_default(jax.random.key(1), mode, I, H, L, bidirectional=True,
                                       dtype=jnp.float64)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((T, B, I)))
    n_states = 2 if mode == "LSTM" else 1
    h0 = [jnp.asarray(rng.standard_normal((D * L, B, H))) for _ in range(n_states)]
    pack = tuple if mode == "LSTM" else (lambda s: s[0])
    cot_states = [jnp.asarray(rng.standard_normal(h.shape)) for h in h0]

    def run(params, x, h0, lengths):
        forward = lambda p, xx, hh: F.recurrent(mode, p, xx, lengths, pack(hh))
        (out, state), vjp = jax.vjp(forward, params, x, h0)
        return out, state, vjp((jnp.ones_like(out), pack(cot_states)))

    out, state, (g_params, g_x, g_h0) = _jit_with_lengths(run, np.zeros(B, np.int32), traced)(
        params, x, h0)
    states = list(state) if mode == "LSTM" else [state]
    assert out.shape == (T, B, D * H) and not np.any(np.asarray(out))
    for got, want in zip(states, h0):
        np.testing.assert_array_equal(got, want)
    for leaf in jax.tree.leaves((g_params, g_x, g_h0)):
        assert np.all(np.isfinite(leaf))
    assert not np.any(np.asarray(g_x)) and not any(np.any(np.asarray(g)) for g in g_params.values())
    for got, want in zip(g_h0, cot_states):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------
# very long sequences
# --------------------------------------------------------------------------------------------
def test_long_sequence_matches_torch():
    """T = 2000 (lengths include 1 and 2000), bidirectional LSTM, float64, full harness."""
    assert_matches_torch(Config(mode="LSTM", time=2000, batch=3, hidden_size=6, bidirectional=True,
                                with_hx=True), concrete_lengths=True)


def _train_memory(T: int) -> dict:
    """``memory_analysis()`` of jit(grad) of a 1-layer LSTM (B=4, I=8, H=16, float32) at ``T``."""
    params = jaxseq.init.torch_default(jax.random.key(0), "LSTM", 8, 16)
    x = jnp.ones((T, 4, 8), jnp.float32)
    lengths = jnp.array([T, T // 2, 1, 0])
    step = jax.jit(jax.grad(lambda p, x, l: F.lstm(p, x, l)[0].sum()))
    stats = step.lower(params, x, lengths).compile().memory_analysis()
    return {"temp": stats.temp_size_in_bytes, "argument": stats.argument_size_in_bytes}


def test_long_sequence_memory_is_linear_in_T(record_property):
    """Without ``remat`` the residuals are O(T * B * G). Measured: ~5.0 kB per step here."""
    short, long = _train_memory(1000), _train_memory(2000)
    record_property("memory_T1000", short)
    record_property("memory_T2000", long)
    print(f"\ncompiled memory, grad of LSTM(8, 16) B=4 float32: T=1000 {short}, T=2000 {long}")
    assert 1.8 <= long["temp"] / short["temp"] <= 2.2
    per_step_per_row = long["temp"] / (2000 * 4)
    assert per_step_per_row < 4 * 4 * (4 * 16) * 2     # < 8 float32 [G]-vectors per row and step


# --------------------------------------------------------------------------------------------
# low-precision parameters
# --------------------------------------------------------------------------------------------
#: Allowed max |out_lowp - out_f32| and max |grad_lowp - grad_f32| / max |grad_f32| over every
#: parameter. Measured on the stacks below (printed by the test): bfloat16 outputs 1.3e-3..6.7e-3,
#: gradients 1.2e-2..1.6e-2; float16 outputs 1.8e-4..7.2e-4, gradients 1.4e-3..1.7e-3.
LOW_PRECISION_ATOL = {"bfloat16": 3e-2, "float16": 3e-3}
LOW_PRECISION_GRAD_RTOL = {"bfloat16": 5e-2, "float16": 7e-3}
LOW_PRECISION_CELLS = {"LSTM-P4": (jaxseq.LSTM, dict(proj_size=4)), "GRU": (jaxseq.GRU, {}),
                       "RNN": (jaxseq.RNN, {})}


@functools.lru_cache(maxsize=None)
def _low_precision_case(cell: str, dtype: str):
    """``(out [T, B, 2*H_out], {name: grad of sum(out**2)})`` as float32 numpy, for ``dtype`` params
    holding the values of one float32 module (T=12, B=4, I=4, H=8, 2 layers, bidirectional)."""
    cls, kwargs = LOW_PRECISION_CELLS[cell]
    ref = cls(4, 8, 2, bidirectional=True, rngs=nnx.Rngs(0), **kwargs)
    module = cls(4, 8, 2, bidirectional=True, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(1),
                 **kwargs)
    jaxseq.load_torch_state_dict(module, jaxseq.torch_state_dict(ref))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((12, 4, 4)), jnp.float32)

    @jax.jit
    def loss_and_grad(params):
        def loss(params):
            out = F.recurrent(module.mode, params, x, jnp.array([12, 7, 1, 0]))[0]
            return jnp.sum(out.astype(jnp.float32) ** 2), out
        return jax.value_and_grad(loss, has_aux=True)(params)

    (_, out), grads = loss_and_grad(module.param_dict())
    assert out.dtype == jnp.dtype(dtype) and all(g.dtype == jnp.dtype(dtype) for g in grads.values())
    return np.asarray(out, np.float32), {k: np.asarray(g, np.float32) for k, g in grads.items()}


@pytest.mark.parametrize("cell, dtype", split_cases(
    itertools.product(LOW_PRECISION_CELLS, ["bfloat16", "float16"]),
    default=[(cell, "bfloat16") for cell in LOW_PRECISION_CELLS] + [("LSTM-P4", "float16")]))
def test_low_precision_params_close_to_float32(cell, dtype):
    out32, g32 = _low_precision_case(cell, "float32")
    out, grads = _low_precision_case(cell, dtype)
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(g)) for g in grads.values())
    err = float(np.max(np.abs(out - out32)))
    grad_err = max(float(np.max(np.abs(grads[k] - g)) / np.max(np.abs(g))) for k, g in g32.items())
    print(f"\n{cell} {dtype}: max |out - out_f32| = {err:.2e}, max grad rel err = {grad_err:.2e}")
    assert err <= LOW_PRECISION_ATOL[dtype]
    assert grad_err <= LOW_PRECISION_GRAD_RTOL[dtype]


# --------------------------------------------------------------------------------------------
# x64 hygiene
# --------------------------------------------------------------------------------------------
X64_PROBE = """
import json, jax, jax.numpy as jnp, numpy as np
from flax import nnx
import jaxseq
lstm = jaxseq.LSTM(3, 4, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
jaxseq.load_torch_state_dict(lstm, {k: np.asarray(v, np.float64) for k, v in jaxseq.torch_state_dict(lstm).items()})
x = np.ones((5, 2, 3), np.float64)
out, (h, c) = lstm(x, np.array([5, 2]))
grads = jax.grad(lambda p: jaxseq.functional.lstm(p, x, jnp.array([5, 0]))[0].sum())(lstm.param_dict())
print(json.dumps({"x64": bool(jax.config.jax_enable_x64), "out": str(out.dtype), "h": str(h.dtype),
                  "param": str(lstm.weight_ih_l0[...].dtype),
                  "grads": sorted({str(g.dtype) for g in grads.values()})}))
"""


def test_library_never_enables_x64():
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", X64_PROBE], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"x64": False, "out": "float32", "h": "float32", "param": "float32",
                      "grads": ["float32"]}


# --------------------------------------------------------------------------------------------
# non-finite padding
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("traced", [False, True], ids=["concrete", "traced"])
@pytest.mark.parametrize("mode, proj, batch_first", [("LSTM", 2, False), ("GRU", 0, True),
                                                     ("RNN_RELU", 0, False)])
def test_nonfinite_padding_is_invisible(mode, proj, batch_first, traced):
    """Outputs and every gradient are bit-identical with zeros or NaN/+inf/-inf in the padding."""
    T, B, I, H = 6, 4, 3, 5
    params = jaxseq.init.torch_default(jax.random.key(2), mode, I, H, 2, bidirectional=True,
                                       proj_size=proj, dtype=jnp.float32)
    rng = np.random.default_rng(3)
    lengths = np.array([6, 2, 0, 4])
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    pad = np.arange(T)[:, None] >= lengths[None, :]
    x[pad] = 0.0
    poisoned = x.copy()
    poisoned[pad] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), size=(pad.sum(), I))
    if batch_first:
        x, poisoned = np.swapaxes(x, 0, 1), np.swapaxes(poisoned, 0, 1)
    cot = jnp.asarray(rng.standard_normal(x.shape[:-1] + (2 * (proj or H),)), jnp.float32)

    def loss(params, x, lengths):
        out, _ = F.recurrent(mode, params, x, lengths, batch_first=batch_first)
        return jnp.sum(out * cot), out

    grad_fn = _jit_with_lengths(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), lengths,
                                traced)
    (l_clean, out_clean), g_clean = grad_fn(params, jnp.asarray(x))
    (l_bad, out_bad), g_bad = grad_fn(params, jnp.asarray(poisoned))
    assert np.isfinite(float(l_clean)) and float(l_clean) == float(l_bad)
    np.testing.assert_array_equal(out_bad, out_clean)
    for got, want in zip(jax.tree.leaves(g_bad), jax.tree.leaves(g_clean)):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, want)
    g_x = np.asarray(g_bad[1])
    assert not np.any(g_x[np.swapaxes(pad, 0, 1) if batch_first else pad])
