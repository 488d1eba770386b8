"""The fused cuDNN LSTM path (``impl="cudnn"`` / ``"auto"``, :mod:`jaxseq.fused`).

There is no GPU here, so the wrapper (flat weight layout, per-layer split for dropout masks,
weight drop, zero-length guard, ``hx``, layouts) runs jax's pure-JAX statement of the kernel,
``jax.experimental.rnn.lstm_ref``, through :func:`jaxseq.fused.use_reference_kernel`, and is
compared with torch's packed ``nn.LSTM`` (the parity harness) and with jaxseq's masked scan given
the same inputs and masks. A spy on the kernel proves that the fused path really ran. Every
refusal of ``impl="cudnn"`` is checked to raise before any computation. The tests marked
``needs_cuda`` run the real kernel and skip without a CUDA GPU; ``benchmarks/gpu_check.py``
(emulated here) is the device check.

Tolerances: float64 1e-12 (relative to the largest value), float32 1e-5.
"""
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import rnn

import jaxseq
from jaxseq import functional, fused, init
from jaxseq.export import export_model
from jaxseq.layout import infer_structure, param_name
from jaxseq.parity.harness import Config, random_lengths, run
from jaxseq.scan import scan_options
from parity_tests.cases import case_id, split_cases
from parity_tests.compiles import count_compiles
from parity_tests.test_recurrent_parity import DEFAULT as PARITY_DEFAULT

ROOT = Path(__file__).resolve().parents[1]
TOL = {"float64": 1e-12, "float32": 1e-5}
DTYPES = {"float64": jnp.float64, "float32": jnp.float32}
needs_cuda = pytest.mark.skipif(not fused.cuda_available(),
                                reason="needs a CUDA GPU (the real cuDNN kernel)")
on_cpu_only = pytest.mark.skipif(fused.cuda_available(), reason="CPU behaviour (no CUDA backend)")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Record every call of the reference kernel (at trace time): the fused path really ran.

    The caches of the core and of this module's jitted VJPs are cleared first, so a call traced
    by an earlier test with the same shapes is traced again.
    """
    for jitted in (functional._recurrent_core, *VJPS.values()):
        jitted.clear_cache()
    calls = []
    original = fused.KERNELS[fused.REFERENCE]

    def spy(*args, **kwargs):
        calls.append({"dtypes": [str(a.dtype) for a in args], **kwargs})
        return original(*args, **kwargs)

    monkeypatch.setitem(fused.KERNELS, fused.REFERENCE, spy)
    return calls


@pytest.fixture
def no_computation(monkeypatch):
    """Any call reaching the jitted core fails the test: refusals must come before it."""
    def computed(*args, **kwargs):
        raise AssertionError("the computation started before the refusal")

    monkeypatch.setattr(functional, "_recurrent_core", computed)


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.max(np.abs(got - want), initial=0.0) / max(np.max(np.abs(want), initial=0.0),
                                                                1e-30))


# ---------------------------------------------------------------------------------------------
# Against torch: the parity harness with impl="cudnn" (NaN padding, zero rows, hx, layouts)
# ---------------------------------------------------------------------------------------------
LSTM_LAYOUTS = [c for c in PARITY_DEFAULT if c.mode == "LSTM" and not c.proj_size]  # L1-3 uni/bi
EDGES = [Config(num_layers=2, bidirectional=True, with_hx=True, zero_rows=2),
         Config(bidirectional=True, batch_first=True, with_hx=True, zero_rows=1, bias=False),
         Config(num_layers=3, bidirectional=True, zero_rows=3, batch=7),
         Config(time=1, batch=1), Config(time=1, batch=4, bidirectional=True, num_layers=2)]
TORCH_CASES = split_cases(
    [(c, "float64") for c in EDGES + LSTM_LAYOUTS] + [(c, "float32") for c in LSTM_LAYOUTS[::3]]
    + [(EDGES[0], "float32")],
    default=[(EDGES[0], "float64"), (LSTM_LAYOUTS[1], "float64"), (EDGES[0], "float32")])


@pytest.mark.parametrize("cfg, dtype", TORCH_CASES, ids=case_id)
def test_reference_kernel_matches_torch(cfg, dtype, kernel_calls):
    with fused.use_reference_kernel():
        errors = run(cfg, dtype, impl="cudnn")
    assert kernel_calls, "the fused path did not run"
    assert errors.pop("padding_and_empty_rows_exact") == 0, "padding output/grad not exactly zero"
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"{cfg.label()} {dtype}: {bad}"


# ---------------------------------------------------------------------------------------------
# Against the scan, same inputs and masks (dropout split per layer, weight drop)
# ---------------------------------------------------------------------------------------------
def _inputs(cfg: Config, dtype, masks: str = ""):
    """params, x (NaN padding, caller's layout), lengths, hx, cotangents and masks for ``cfg``.

    ``masks``: ``""`` none, ``"drop"`` inter-layer dropout, ``"drop+weight"`` also weight drop
    (element-wise), ``"drop+row"`` weight drop by rows.
    """
    rng = np.random.default_rng(cfg.seed + 100)
    T, B, D, L, H = cfg.time, cfg.batch, 2 if cfg.bidirectional else 1, cfg.num_layers, cfg.hidden_size
    params = init.torch_default(jax.random.key(cfg.seed), "LSTM", cfg.input_size, H, L, cfg.bias,
                                cfg.bidirectional, dtype=dtype)
    lengths = random_lengths(rng, B, T, cfg.zero_rows)
    x = rng.standard_normal((T, B, cfg.input_size))
    x[np.arange(T)[:, None] >= lengths[None, :]] = np.nan
    layout = (lambda a: np.swapaxes(a, 0, 1)) if cfg.batch_first else (lambda a: a)
    hx = tuple(jnp.asarray(rng.standard_normal((D * L, B, H)), dtype) for _ in range(2))
    cots = (jnp.asarray(layout(rng.standard_normal((T, B, D * H))), dtype),
            tuple(jnp.asarray(rng.standard_normal((D * L, B, H)), dtype) for _ in range(2)))
    drop = weight = None
    if "drop" in masks and L > 1:
        drop = [jnp.asarray(layout((rng.random((T, B, D * H)) > 0.3) / 0.7), dtype)
                for _ in range(L - 1)]
    if "weight" in masks or "row" in masks:
        cols = 1 if "row" in masks else H
        weight = [jnp.asarray((rng.random((D, 4 * H, cols)) > 0.25) / 0.75, dtype)
                  for _ in range(L)]
    return dict(params=params, x=jnp.asarray(layout(x), dtype), lengths=jnp.asarray(lengths),
                hx=hx if cfg.with_hx else None, cots=cots, masks=(drop, weight))


def _vjp(impl: str, batch_first: bool):
    """A jitted ``(outputs, VJP)`` of ``functional.lstm`` with ``impl``, shared by the cases."""
    @jax.jit
    def run_impl(params, x, lengths, hx, cots, masks):
        def f(p, xx, h):
            return functional.lstm(p, xx, lengths, h, batch_first=batch_first, impl=impl,
                                   dropout_masks=masks[0], weight_hh_masks=masks[1])
        out, vjp = jax.vjp(f, params, x, hx)
        return out, vjp(cots)
    return run_impl


VJPS = {(impl, bf): _vjp(impl, bf) for impl in ("cudnn", "scan") for bf in (False, True)}


def _versus_scan(cfg: Config, dtype: str, masks: str = "", reference: bool = True):
    """Max relative errors of the fused path against the scan (outputs, states, every gradient),
    and the exact expectations: zero outputs and input gradients at padding, ``hx`` returned
    bitwise (with identity gradient) on empty rows, everything finite."""
    a = _inputs(cfg, DTYPES[dtype], masks)
    args = (a["params"], a["x"], a["lengths"], a["hx"], a["cots"], a["masks"])
    with fused.use_reference_kernel() if reference else contextlib.nullcontext():
        fused_out = VJPS["cudnn", cfg.batch_first](*args)
    scan_out = VJPS["scan", cfg.batch_first](*args)
    leaves = jax.tree_util.tree_leaves_with_path(fused_out)
    want = dict(jax.tree_util.tree_leaves_with_path(scan_out))
    errors = {jax.tree_util.keystr(k): _rel(v, want[k]) for k, v in leaves}
    (out, (h_n, c_n)), (_, g_x, g_hx) = fused_out
    lengths = np.asarray(a["lengths"])
    pad = np.arange(cfg.time)[:, None] >= lengths[None, :]                 # [T, B]
    out_tm, gx_tm = (np.swapaxes(np.asarray(v), 0, 1) if cfg.batch_first else np.asarray(v)
                     for v in (out, g_x))
    problems = {"output at padding": np.count_nonzero(out_tm[pad]),
                "dx at padding": np.count_nonzero(gx_tm[pad]),
                "not finite": sum(not np.isfinite(np.asarray(v)).all() for _, v in leaves)}
    empty = lengths == 0
    init_states = a["hx"] if a["hx"] is not None else [jnp.zeros_like(h_n)] * 2
    for name, got, h0 in zip(("h_n", "c_n"), (h_n, c_n), init_states):
        problems[f"{name} != hx on empty rows"] = int(
            not np.array_equal(np.asarray(got)[:, empty], np.asarray(h0)[:, empty]))
    if a["hx"] is not None:
        for name, g, cot in zip(("dh0", "dc0"), g_hx, a["cots"][1]):
            problems[f"{name} not identity on empty rows"] = int(
                not np.array_equal(np.asarray(g)[:, empty], np.asarray(cot)[:, empty]))
    return errors, {k: int(v) for k, v in problems.items() if v}


SCAN_CASES = split_cases(
    [(c, "float64", m) for c in EDGES[:3] + LSTM_LAYOUTS for m in ("", "drop+weight")]
    + [(EDGES[0], "float64", "drop+row"), (EDGES[0], "float32", "drop+weight")],
    default=[(EDGES[0], "float64", "drop+weight"), (LSTM_LAYOUTS[1], "float64", "")])


@pytest.mark.parametrize("cfg, dtype, masks", SCAN_CASES, ids=case_id)
def test_reference_kernel_matches_scan(cfg, dtype, masks, kernel_calls):
    errors, problems = _versus_scan(cfg, dtype, masks)
    assert kernel_calls, "the fused path did not run"
    split = "drop" in masks and cfg.num_layers > 1
    assert len(kernel_calls) == (cfg.num_layers if split else 1)   # one call per layer if split
    assert not problems, problems
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"{cfg.label()} {dtype} {masks}: {bad}"


def test_split_per_layer_equals_one_fused_call(kernel_calls):
    """All-ones dropout masks force one kernel call per layer: the same as one 2-layer call."""
    cfg = Config(num_layers=2, with_hx=True, zero_rows=1)
    a = _inputs(cfg, jnp.float64)
    ones = [jnp.ones((cfg.time, cfg.batch, cfg.hidden_size), jnp.float64)]
    with fused.use_reference_kernel():
        split = VJPS["cudnn", False](a["params"], a["x"], a["lengths"], a["hx"], a["cots"],
                                     (ones, None))
        assert len(kernel_calls) == 2
        once = VJPS["cudnn", False](a["params"], a["x"], a["lengths"], a["hx"], a["cots"],
                                    (None, None))
        assert len(kernel_calls) == 3
    for got, want in zip(jax.tree.leaves(split), jax.tree.leaves(once)):
        assert _rel(got, want) <= 1e-14


def test_kernel_gets_float32_only(kernel_calls):
    """float32 parameters with float64 masks and state (x64 on): nothing float64 reaches the
    kernel (cuDNN would read it as float32), and the outputs stay float32."""
    params = init.torch_default(jax.random.key(0), "LSTM", 3, 4, num_layers=2, dtype=jnp.float32)
    x = jnp.ones((5, 2, 3), jnp.float64)
    hx = (jnp.ones((2, 2, 4), jnp.float64), jnp.ones((2, 2, 4), jnp.float64))
    with fused.use_reference_kernel():
        out, (h, c) = functional.lstm(params, x, jnp.array([5, 2]), hx, impl="cudnn",
                                      dropout_masks=[jnp.ones((5, 2, 4), jnp.float64)],
                                      weight_hh_masks=[jnp.ones((16, 4), jnp.float64), None])
    assert len(kernel_calls) == 2
    assert all(d in ("float32", "int32") for call in kernel_calls for d in call["dtypes"]), \
        kernel_calls
    assert out.dtype == h.dtype == c.dtype == jnp.float32


def test_unbatched_and_empty_batch(kernel_calls):
    params = init.torch_default(jax.random.key(1), "LSTM", 3, 4, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(2), (6, 3), jnp.float64)            # unbatched [T, I]
    hx = (jnp.full((1, 4), 0.5, jnp.float64), jnp.full((1, 4), -0.5, jnp.float64))

    def loss(impl):
        def f(p, xx):
            out, (h, c) = functional.lstm(p, xx, hx=hx, impl=impl)
            return jnp.sum(out ** 2) + jnp.sum(h * c), (out, h, c)
        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, x)

    with fused.use_reference_kernel():
        got = loss("cudnn")
    assert kernel_calls
    assert got[0][1][0].shape == (6, 4) and got[0][1][1].shape == (1, 4)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(loss("scan"))):
        assert _rel(g, w) <= TOL["float64"]
    # B = 0: torch's empty results, hx returned, nothing computed by the kernel
    kernel_calls.clear()
    empty_hx = (jnp.ones((1, 0, 4), jnp.float64), jnp.ones((1, 0, 4), jnp.float64))
    with fused.use_reference_kernel():
        out, (h, c) = functional.lstm(params, jnp.ones((6, 0, 3), jnp.float64),
                                      jnp.zeros((0,), jnp.int32), empty_hx, impl="cudnn")
    assert out.shape == (6, 0, 4) and h.shape == c.shape == (1, 0, 4) and not kernel_calls


# ---------------------------------------------------------------------------------------------
# The module in training mode: drawn masks, same key -> same result as the scan
# ---------------------------------------------------------------------------------------------
def test_module_training_mode_matches_scan(kernel_calls):
    kw = dict(num_layers=2, batch_first=True, dropout=0.3, weight_drop=0.2, param_dtype=jnp.float64)
    with fused.use_reference_kernel():                      # float64 is served by the reference
        fast = jaxseq.LSTM(4, 5, impl="cudnn", rngs=nnx.Rngs(0), **kw)
    slow = jaxseq.LSTM(4, 5, rngs=nnx.Rngs(0), **kw)
    fast.train()
    slow.train()
    x = jax.random.normal(jax.random.key(1), (6, 7, 4), jnp.float64)
    lengths = jnp.array([7, 1, 0, 4, 7, 3])

    def loss(model, key):
        out, (h, c) = model(x, lengths, rngs=key)
        return jnp.sum(out ** 2) + jnp.sum(h) + jnp.sum(c ** 2), out

    @nnx.jit
    def value_and_grads(model, key):
        return nnx.value_and_grad(loss, has_aux=True)(model, key)

    key = jax.random.key(7)
    with fused.use_reference_kernel():
        (value, out), grads = value_and_grads(fast, key)
        other = value_and_grads(fast, jax.random.key(8))[0][0]     # no new compilation
    assert len(kernel_calls) >= 2                           # dropout splits the layers
    (want_value, want_out), want_grads = value_and_grads(slow, key)
    assert _rel(out, want_out) <= TOL["float64"] and _rel(value, want_value) <= TOL["float64"]
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        assert _rel(g, w) <= TOL["float64"]
    assert abs(float(other) - float(value)) > 1e-3          # the masks come from the key


# ---------------------------------------------------------------------------------------------
# The flat weight vector: jax's layout and size
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers, bidirectional, bias", [(1, False, True), (2, True, True),
                                                         (3, True, False), (3, False, True)])
def test_flat_weights_round_trip(layers, bidirectional, bias):
    n_in, H, D = 3, 4, 2 if bidirectional else 1
    params = init.torch_default(jax.random.key(layers), "LSTM", n_in, H, layers, bias,
                                bidirectional, dtype=jnp.float64)
    s = infer_structure("LSTM", params)
    masks = [jax.random.uniform(jax.random.key(10 + layer), (D, 4 * H, 1)) for layer in
             range(layers)]
    flatten = jax.jit(fused.flat_weights, static_argnums=(1, 2))    # one compilation, not per op
    unpack = jax.jit(rnn.unpack_lstm_weights, static_argnums=(1, 2, 3, 4))
    flat = flatten(params, s, tuple(range(layers)), [None] * layers)
    assert flat.shape == (rnn.get_num_params_in_lstm(n_in, H, layers, bidirectional),)
    w_ih, w_hh, b_ih, b_hh = unpack(flat, n_in, H, layers, bidirectional)
    dropped = unpack(flatten(params, s, tuple(range(layers)), masks), n_in, H, layers,
                     bidirectional)[1]
    for layer in range(layers):
        for d in range(D):
            p = layer * D + d
            np.testing.assert_array_equal(w_ih[p], params[param_name("weight_ih", layer, d)])
            np.testing.assert_array_equal(w_hh[p], params[param_name("weight_hh", layer, d)])
            np.testing.assert_array_equal(dropped[p], params[param_name("weight_hh", layer, d)]
                                          * masks[layer][d])
            for got, kind in ((b_ih[p], "bias_ih"), (b_hh[p], "bias_hh")):
                want = params.get(param_name(kind, layer, d), jnp.zeros(4 * H))
                np.testing.assert_array_equal(got, want)
    # round trip: jax's unpacked dicts flattened in the documented order give the vector back
    again = jnp.concatenate([m[p].ravel() for p in range(layers * D) for m in (w_ih, w_hh)]
                            + [b[p] for p in range(layers * D) for b in (b_ih, b_hh)])
    np.testing.assert_array_equal(again, flat)
    # one layer of a stack (the per-layer split): that layer's blocks only
    last = flatten(params, s, (layers - 1,), [None] * layers)
    in_last = n_in if layers == 1 else D * H
    assert last.shape == (rnn.get_num_params_in_lstm(in_last, H, 1, bidirectional),)


# ---------------------------------------------------------------------------------------------
# Refusals: a ValueError naming the condition, before any computation
# ---------------------------------------------------------------------------------------------
def _lstm_params(dtype=jnp.float32, **kw):
    return init.torch_default(jax.random.key(0), "LSTM", 3, 4, dtype=dtype, **kw)


X = jnp.ones((5, 2, 3), jnp.float32)
LENGTHS = jnp.array([5, 2])
CALL_REFUSALS = {
    "gru": (lambda: functional.gru(init.torch_default(jax.random.key(0), "GRU", 3, 4), X, LENGTHS,
                                   impl="cudnn"), "GRU has no cuDNN path"),
    "rnn": (lambda: functional.rnn_tanh(init.torch_default(jax.random.key(0), "RNN_TANH", 3, 4),
                                        X, LENGTHS, impl="cudnn"), "RNN_TANH has no cuDNN path"),
    "proj_size": (lambda: functional.lstm(_lstm_params(proj_size=2), X, LENGTHS, impl="cudnn"),
                  "proj_size > 0"),
    "float16": (lambda: functional.lstm(_lstm_params(jnp.float16), X, LENGTHS, impl="cudnn"),
                "dtype float16"),
    "bfloat16": (lambda: functional.lstm(_lstm_params(jnp.bfloat16), X, LENGTHS, impl="cudnn"),
                 "dtype bfloat16"),
    "compute_dtype": (lambda: functional.lstm(_lstm_params(), X, LENGTHS, impl="cudnn",
                                              compute_dtype=jnp.bfloat16), "compute_dtype=bfloat16"),
    "segment_ids": (lambda: functional.lstm(_lstm_params(), X, impl="cudnn", max_segments=2,
                                            segment_ids=jnp.array([[1, 1], [1, 2], [2, 2], [2, 0],
                                                                   [0, 0]])), "packed rows"),
    "state_masks": (lambda: functional.lstm(_lstm_params(), X, LENGTHS, impl="cudnn",
                                            state_masks=[jnp.ones((1, 2, 4), jnp.float32)]),
                    "recurrent-state masks"),
    "forward_mode": (lambda: functional.lstm(_lstm_params(), X, LENGTHS, impl="cudnn",
                                             forward_mode=True), "forward_mode=True"),
    "unknown impl": (lambda: functional.lstm(_lstm_params(), X, LENGTHS, impl="cuda"),
                     "impl must be one of"),
}


@pytest.mark.parametrize("condition", list(CALL_REFUSALS))
def test_call_refusals(condition, no_computation):
    """Inside the reference context (so the backend is not the first problem)."""
    call, needle = CALL_REFUSALS[condition]
    with fused.use_reference_kernel(), pytest.raises(ValueError, match="impl") as err:
        call()
    assert needle in str(err.value), str(err.value)


@on_cpu_only
def test_no_cuda_backend_refused_at_call(no_computation):
    lstm = jaxseq.LSTM(3, 4, impl="cudnn", rngs=nnx.Rngs(0))     # construction: backend unknown
    with pytest.raises(ValueError, match="no CUDA backend"):
        lstm(X, LENGTHS)
    with pytest.raises(ValueError, match="no CUDA backend"):
        functional.lstm(_lstm_params(), X, LENGTHS, impl="cudnn")


def test_float64_refused_outside_the_reference(monkeypatch, no_computation):
    """float64 never reaches cuDNN (it would be read as float32), on a CUDA backend too."""
    monkeypatch.setattr(fused, "cuda_available", lambda: True)   # as on a GPU
    with pytest.raises(ValueError, match="dtype float64"):
        functional.lstm(_lstm_params(jnp.float64), X, LENGTHS, impl="cudnn")
    with pytest.raises(ValueError, match="dtype float64"):
        jaxseq.LSTM(3, 4, param_dtype=jnp.float64, impl="cudnn", rngs=nnx.Rngs(0))


MODULE_REFUSALS = {
    "gru": (jaxseq.GRU, {}, "GRU has no cuDNN path"),
    "rnn": (jaxseq.RNN, {}, "RNN_TANH has no cuDNN path"),
    "proj_size": (jaxseq.LSTM, dict(proj_size=2), "proj_size > 0"),
    "float16": (jaxseq.LSTM, dict(param_dtype=jnp.float16), "dtype float16"),
    "bfloat16": (jaxseq.LSTM, dict(param_dtype=jnp.bfloat16), "dtype bfloat16"),
    "float64": (jaxseq.LSTM, dict(param_dtype=jnp.float64), "dtype float64"),
    "compute_dtype": (jaxseq.LSTM, dict(compute_dtype=jnp.bfloat16), "compute_dtype=bfloat16"),
    "recurrent_dropout": (jaxseq.LSTM, dict(recurrent_dropout=0.2), "recurrent-state masks"),
    "forward_mode": (jaxseq.LSTM, dict(forward_mode=True), "forward_mode=True"),
}


@pytest.mark.parametrize("condition", list(MODULE_REFUSALS))
def test_module_construction_refusals(condition):
    cls, kw, needle = MODULE_REFUSALS[condition]
    with pytest.raises(ValueError, match="impl='cudnn' cannot serve") as err:
        cls(3, 4, impl="cudnn", rngs=nnx.Rngs(0), **kw)
    assert needle in str(err.value), str(err.value)
    cls(3, 4, impl="auto", rngs=nnx.Rngs(0), **kw)                 # "auto" takes everything


def test_module_unknown_impl():
    with pytest.raises(ValueError, match="impl must be one of"):
        jaxseq.LSTM(3, 4, impl="fused", rngs=nnx.Rngs(0))


def test_module_call_refusal_packed_rows(no_computation):
    lstm = jaxseq.LSTM(3, 4, impl="cudnn", rngs=nnx.Rngs(0))
    with fused.use_reference_kernel(), pytest.raises(ValueError, match="packed rows"):
        lstm(X, segment_ids=jnp.array([[1, 1], [1, 1], [2, 1], [2, 0], [0, 0]]), max_segments=2)


# ---------------------------------------------------------------------------------------------
# "auto" and the resolved implementation
# ---------------------------------------------------------------------------------------------
@on_cpu_only
def test_auto_on_cpu_is_the_scan_bitwise():
    params = _lstm_params(jnp.float64)
    x = jax.random.normal(jax.random.key(3), (5, 2, 3), jnp.float64)

    def grads(impl):
        def f(p, xx):
            out, (h, c) = functional.lstm(p, xx, LENGTHS, impl=impl)
            return jnp.sum(out ** 3) + jnp.sum(h * c)
        return jax.value_and_grad(f, argnums=(0, 1))(params, x)

    want = grads("scan")
    with count_compiles() as compiles:                  # the scan's own compiled function
        got = grads("auto")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(g, w)
    assert not any("recurrent_core" in n for n in compiles.names), compiles.names


def test_resolve_impl():
    s_lstm = infer_structure("LSTM", _lstm_params())
    s_gru = infer_structure("GRU", init.torch_default(jax.random.key(0), "GRU", 3, 4))
    opts = scan_options()
    resolve = fused.resolve_impl
    assert resolve("scan", s_lstm, jnp.float32, opts, packed=False, state_masks=False) == "scan"
    with fused.use_reference_kernel():
        assert resolve("auto", s_lstm, jnp.float32, opts, packed=False,
                       state_masks=False) == fused.REFERENCE
        assert resolve("cudnn", s_lstm, jnp.float64, opts, packed=False,
                       state_masks=False) == fused.REFERENCE
        for s, packed, masks in [(s_gru, False, False), (s_lstm, True, False), (s_lstm, False, True)]:
            assert resolve("auto", s, jnp.float32, opts, packed=packed, state_masks=masks) == "scan"
        assert resolve("auto", s_lstm, jnp.bfloat16, opts, packed=False, state_masks=False) == "scan"
        with fused.scan_only():
            assert resolve("cudnn", s_gru, jnp.float16, opts, packed=False,
                           state_masks=False) == "scan"
    if not fused.cuda_available():
        assert resolve("auto", s_lstm, jnp.float32, opts, packed=False, state_masks=False) == "scan"


def test_auto_falls_back_for_forward_mode(kernel_calls):
    """``"auto"`` with ``forward_mode`` runs the scan (the kernel has no JVP): jvp works."""
    params = _lstm_params(jnp.float64)
    x = jnp.ones((5, 2, 3), jnp.float64)
    with fused.use_reference_kernel():
        out, tangent = jax.jvp(lambda xx: functional.lstm(params, xx, LENGTHS, impl="auto",
                                                          forward_mode=True)[0], (x,), (x,))
    assert not kernel_calls and out.shape == tangent.shape == (5, 2, 4)


@pytest.mark.parametrize("setting, fp32", [(None, False), ("highest", True), ("float32", True),
                                           ("F32_F32_F32", True), ("tensorfloat32", False),
                                           ("bfloat16", False), ("default", False)])
def test_kernel_precision(setting, fp32):
    """Every matmul setting maps to a precision the kernel takes (FP32 where float32 accuracy is
    asked for): jax's own check neither raises nor allows TF32 then."""
    with jax.default_matmul_precision(setting):
        precision = fused.kernel_precision()
    assert rnn._lstm_cudnn_allow_tf32(precision) is (not fp32)


# ---------------------------------------------------------------------------------------------
# jit: traced lengths, one compilation; eager calls do not recompile; export
# ---------------------------------------------------------------------------------------------
def test_one_compilation_for_two_length_patterns(kernel_calls):
    params = _lstm_params(jnp.float64)
    x = jax.random.normal(jax.random.key(4), (5, 3, 3), jnp.float64)
    patterns = [jnp.array([5, 2, 0]), jnp.array([1, 5, 3])]

    def loss(p, ll, impl):
        out, (h, _) = functional.lstm(p, x, ll, impl=impl)
        return jnp.sum(out ** 2) + jnp.sum(h ** 2)

    step = jax.jit(jax.value_and_grad(loss), static_argnames="impl")
    with fused.use_reference_kernel():
        with count_compiles() as first:
            a = step(params, patterns[0], "cudnn")
        with count_compiles() as second:
            b = step(params, patterns[1], "cudnn")
        eager = [functional.lstm(params, x, patterns[0], impl="cudnn")]
        with count_compiles() as eager_again:
            eager.append(functional.lstm(params, x, patterns[1], impl="cudnn"))
    assert first.count == 1 and second.count == 0, (first.names, second.names)
    assert eager_again.count == 0, eager_again.names
    assert kernel_calls
    for got, ll in zip((a, b), patterns):                 # the lengths are runtime data
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(step(params, ll, "scan"))):
            assert _rel(g, w) <= TOL["float64"]
    for got, ll in zip(eager, patterns):
        assert _rel(got[0], functional.lstm(params, x, ll)[0]) <= TOL["float64"]


def test_export_routes_to_the_scan(kernel_calls):
    model = jaxseq.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, impl="cudnn",
                        rngs=nnx.Rngs(5))
    twin = jaxseq.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, rngs=nnx.Rngs(5))
    x = jax.random.normal(jax.random.key(6), (4, 6, 3), jnp.float32)
    lengths = jnp.array([6, 0, 2, 5], jnp.int32)
    specs = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((4,), jnp.int32))
    with fused.use_reference_kernel():                 # even where the kernel would be served
        exported = export_model(model, *specs)
    assert not kernel_calls
    if not fused.cuda_available():                     # and on a CPU, outside the reference too
        export_model(model, *specs)
    out, (h, c) = exported.call(x, lengths)
    want_out, (want_h, want_c) = twin(x, lengths)
    for got, want in ((out, want_out), (h, want_h), (c, want_c)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert "cudnn" not in exported.mlir_module().lower()


# ---------------------------------------------------------------------------------------------
# The real kernel (CUDA GPU only)
# ---------------------------------------------------------------------------------------------
REAL_CASES = [Config(num_layers=2, bidirectional=True, with_hx=True, zero_rows=2, batch=16,
                     time=32, input_size=16, hidden_size=32),
              Config(num_layers=3, batch_first=True, bias=False, zero_rows=1),
              Config(bidirectional=True, with_hx=True)]


@needs_cuda
@pytest.mark.parametrize("cfg", REAL_CASES, ids=case_id)
def test_real_kernel_matches_torch(cfg):
    errors = run(cfg, "float32", impl="cudnn")
    assert errors.pop("padding_and_empty_rows_exact") == 0
    bad = {k: v for k, v in errors.items() if not v <= TOL["float32"]}
    assert not bad, f"{cfg.label()}: {bad}"


@needs_cuda
@pytest.mark.parametrize("masks", ["", "drop+weight"])
def test_real_kernel_matches_scan(masks):
    errors, problems = _versus_scan(REAL_CASES[0], "float32", masks, reference=False)
    assert not problems, problems
    bad = {k: v for k, v in errors.items() if not v <= TOL["float32"]}
    assert not bad, bad


@needs_cuda
def test_real_kernel_one_compilation():
    params = _lstm_params(jnp.float32, num_layers=2, bidirectional=True)
    x = jnp.ones((5, 3, 3), jnp.float32)
    step = jax.jit(jax.grad(lambda p, ll: jnp.sum(functional.lstm(p, x, ll, impl="cudnn")[0] ** 2)))
    jax.block_until_ready(step(params, jnp.array([5, 2, 0])))
    with count_compiles() as compiles:
        jax.block_until_ready(step(params, jnp.array([1, 5, 3])))
    assert compiles.count == 0, compiles.names


# ---------------------------------------------------------------------------------------------
# The device check script, emulated on this CPU
# ---------------------------------------------------------------------------------------------
CORRECTNESS = ("environment", "layout", "raw_ragged", "fast_path", "weight_drop_and_split",
               "jit_compiles", "precision", "determinism", "refusals", "torch_cudnn",
               "large_shape")


def _gpu_check(out: Path, budget: float, timeout: float) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--emulate", "--budget",
                           str(budget), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    text = (out / "gpu_check.jsonl").read_text()

    def strict(value):
        raise ValueError(f"non-standard JSON constant {value}")

    lines = [json.loads(line, parse_constant=strict) for line in text.splitlines()]
    printed = [ln for ln in done.stdout.splitlines() if ln.split(" ")[0] in
               ("PASS", "FAIL", "INFO", "SKIP", "ERROR")]
    assert len(printed) == len(lines), done.stdout[-3000:] + done.stderr[-3000:]
    assert lines[-1]["check"] == "summary" and {"run", "status", "metrics", "elapsed"} <= lines[0].keys()
    return lines


def test_gpu_check_emulated_budget_exhausted(tmp_path):
    """A budget of 1 s: the environment is recorded, every other stage is skipped, and each
    line is strict JSON (the machinery a cut-short GPU run relies on)."""
    lines = _gpu_check(tmp_path, 1, 120)
    status = {line["check"]: line["status"] for line in lines}
    assert status["environment"] == "pass"
    assert lines[0]["metrics"]["kernels"]["backend"] == "cpu"
    skipped = CORRECTNESS[1:] + ("parity", "pytest_fused", "pytest_parity", "timing")
    assert all(status[c] == "skip" for c in skipped), status


@pytest.mark.slow
def test_gpu_check_emulated(tmp_path):
    """The emulated device check end to end: every correctness check passes."""
    lines = _gpu_check(tmp_path, 240, 420)
    status = {line["check"]: line["status"] for line in lines}
    assert all(status[c] == "pass" for c in CORRECTNESS), status
    assert all(status[p] == "info" for p in ("raw_zero_length_forward", "raw_float64")), status
    assert {"parity", "pytest_fused", "pytest_parity", "timing"} <= status.keys()
