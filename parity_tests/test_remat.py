"""``remat=k``: the backward pass saves the state every ``k`` steps and recomputes each chunk.

* equality with ``remat=None`` (float64, NaN at padding) of outputs, final states and gradients
  with respect to the parameters, the input, the initial state and every dropout mask, to float
  rounding (``TOL``; weight gradients are summed chunk by chunk): by default traced and concrete
  lengths, packed rows, bidirectional, multi-layer, ``proj_size``, every mask, ``k`` not dividing
  ``T``, ``forward_mode`` (reverse and forward mode) and ``vmap``; the ``slow`` sweep adds every
  cell x layers x directions x packing x ``k`` (``k >= T`` included), ``unroll``, the hoisted
  input projection and the staircase;
* memory: the vjp's saved residuals hold no per-step array but the inputs, only the ``ceil(T/k)``
  chunk boundaries, and the compiled training step's temporary memory falls to a fraction of the
  default's (asserted as ratios; measured: 0.15 bidirectional; ``slow``: 0.22 one direction,
  0.24 ``forward_mode``);
* torch parity of a remat layer (``slow``: and of remat packed rows), with the default tests'
  harness;
* eager training steps compile once; bad ``remat`` values and ``impl="cudnn"`` raise before any
  computation, ``impl="auto"`` falls back to the scan.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxseq
from jaxseq import functional as F
from jaxseq import init
from jaxseq.fused import resolve_impl, use_reference_kernel
from jaxseq.layout import infer_structure
from jaxseq.parity.harness import Config, run, run_rows, worst
from jaxseq.scan import scan_options
from parity_tests.cases import split_cases
from parity_tests.compiles import count_compiles

#: Largest |remat - default| / max |default| allowed for outputs, states and gradients (float64).
#: Measured: outputs and states bit for bit (``unroll=1``; 1e-16 with ``unroll=3``), gradients
#: <= 2e-15 (the weight gradients are summed chunk by chunk).
TOL = 1e-13
IN, H = 3, 5


def _case(mode, layers, bidi, proj=0, T=10, B=4, packed=False, masks=False, seed=0):
    """Parameters, input (NaN at padding), lengths or segment ids, hx, masks and cotangents."""
    rng = np.random.default_rng(seed)
    params = init.torch_default(jax.random.key(seed), mode, IN, H, num_layers=layers,
                                bidirectional=bidi, proj_size=proj, dtype=jnp.float64)
    s = infer_structure(mode, params)
    D, H_out = s.num_directions, s.output_size
    x = rng.standard_normal((T, B, IN))
    case = dict(params=params)
    if packed:
        ids = np.zeros((T, B), np.int32)
        for b in range(B):
            cuts = np.sort(rng.choice(np.arange(1, T), 2, replace=False))
            ids[:, b] = np.searchsorted(cuts, np.arange(T), side="right") + 1
        ids[T - 2:, 1] = 0                                              # trailing padding
        S = 3
        x[ids == 0] = np.nan
        case.update(segment_ids=jnp.asarray(ids), max_segments=S)
        lead = (D * layers, B, S)
    else:
        lengths = np.array([T, 0, 1, T - 3] + list(rng.integers(0, T + 1, B - 4)))[:B]
        x[np.arange(T)[:, None] >= lengths[None, :]] = np.nan
        case.update(lengths=lengths)
        lead = (D * layers, B)
    shapes = [lead + (H_out,)] + ([lead + (H,)] if mode == "LSTM" else [])
    hx = [jnp.asarray(rng.standard_normal(shape)) for shape in shapes]
    case.update(x=jnp.asarray(x), hx=tuple(hx) if mode == "LSTM" else hx[0])
    if masks:
        keep = lambda shape: jnp.asarray(rng.random(shape) > 0.3) / 0.7          # noqa: E731
        state = lead[1:] if packed else (B,)
        case.update(dropout_masks=[keep((T, B, D * H_out)) for _ in range(layers - 1)],
                    state_masks=[keep((D,) + state + (H_out,)) for _ in range(layers)],
                    weight_hh_masks=[keep((D, s.gates * H, H_out)) for _ in range(layers)])
    cot_out = jnp.asarray(rng.standard_normal((T, B, D * H_out)))
    cot_states = tuple(jnp.asarray(rng.standard_normal(shape)) for shape in shapes)
    return mode, case, (cot_out, cot_states if mode == "LSTM" else cot_states[0])


#: Differentiated arguments of a case (the masks too, when given).
DIFF = ("params", "x", "hx", "dropout_masks", "state_masks", "weight_hh_masks")


def _vjp_pair(mode, case, cots, k, traced_lengths=True, **options):
    """``((outputs, gradients) with remat=k, the same with remat=None)`` from one jit: the
    gradients are those of every float argument (the masks too)."""
    diff = {name: v for name, v in case.items() if name in DIFF}
    static = {name: v for name, v in case.items() if name not in DIFF}
    lengths = static.pop("lengths", None)

    def vjp(diff, lengths, remat):
        def call(diff):
            masks = {name: v for name, v in diff.items() if name not in ("params", "x", "hx")}
            return F.recurrent(mode, diff["params"], diff["x"], lengths, diff["hx"], **masks,
                               **static, remat=remat, **options)
        result, pullback = jax.vjp(call, diff)
        return result, pullback(cots)[0]

    def both(diff, lengths):
        return vjp(diff, lengths, k), vjp(diff, lengths, None)

    if traced_lengths or lengths is None:
        return jax.jit(both)(diff, None if lengths is None else jnp.asarray(lengths))
    return jax.jit(lambda d: both(d, lengths))(diff)                          # host lengths


def _assert_same(got, want):
    """Outputs, final states and gradients within ``TOL`` (relative to the largest entry)."""
    flat, flat0 = jax.tree.leaves_with_path(got), jax.tree.leaves(want)
    assert len(flat) == len(flat0)
    for (path, a), b in zip(flat, flat0):
        a, b = np.asarray(a), np.asarray(b)
        assert np.all(np.isfinite(a)), jax.tree_util.keystr(path)
        err = np.max(np.abs(a - b), initial=0) / max(np.max(np.abs(b), initial=0), 1e-30)
        assert err <= TOL, (jax.tree_util.keystr(path), err)


# (name, case kwargs, remat k, options); T = 10 unless given
CASES = {
    "lstm-L2-bi-proj-masks-traced-k3": (dict(mode="LSTM", layers=2, bidi=True, proj=2, masks=True),
                                        3, {}),
    "gru-bi-concrete-k4": (dict(mode="GRU", layers=1, bidi=True), 4, dict(traced_lengths=False)),
    "rnn-relu-L2-k1": (dict(mode="RNN_RELU", layers=2, bidi=False), 1, {}),
    "lstm-packed-bi-masks-k3": (dict(mode="LSTM", layers=1, bidi=True, packed=True, masks=True),
                                3, {}),
}


def _sweep():
    modes = ["LSTM", "GRU", "RNN_TANH"]
    for mode, layers, bidi, packed, k in itertools.product(modes, [1, 2], [False, True],
                                                           [False, True], [1, 2, 5, 9, 11]):
        yield (f"{mode}-L{layers}-{'bi' if bidi else 'uni'}-{'packed' if packed else 'lengths'}"
               f"-k{k}", (dict(mode=mode, layers=layers, bidi=bidi, packed=packed,
                               masks=layers == 2, seed=k), k, {}))
    for fm, traced in itertools.product([False, True], [False, True]):
        yield (f"LSTM-P2-fm{fm}-traced{traced}",
               (dict(mode="LSTM", layers=2, bidi=True, proj=2, masks=True), 3,
                dict(forward_mode=fm, traced_lengths=traced)))
    for name, options in [("unroll3", dict(unroll=3)), ("hoisted", dict(input_projection="hoisted")),
                          ("staircase", dict(time_chunks=3, traced_lengths=False))]:
        yield f"LSTM-L2-bi-{name}", (dict(mode="LSTM", layers=2, bidi=True, masks=True), 3, options)
    for k in (10, 11, 50):   # k >= T: the default path
        yield f"LSTM-bi-k{k}", (dict(mode="LSTM", layers=1, bidi=True), k, {})


SWEEP = dict(_sweep())


@pytest.mark.parametrize("name", split_cases(list(CASES) + list(SWEEP), CASES))
def test_remat_equals_default(name):
    kwargs, k, options = {**CASES, **SWEEP}[name]
    mode, case, cots = _case(**kwargs)
    _assert_same(*_vjp_pair(mode, case, cots, k, **options))


def test_forward_mode_with_remat():
    """``forward_mode=True``: forward mode proper (``jax.jvp``) and reverse mode (``vjp``, the
    recurrent-state mask included) through the checkpointed chunks equal the default's."""
    _, case, _ = _case("LSTM", 1, True)
    lengths, state_mask = jnp.asarray(case["lengths"]), jnp.full((2, 4, H), 0.5)
    primals = (case["params"], jnp.nan_to_num(case["x"]), state_mask)
    tangents = jax.tree.map(lambda a: jnp.full_like(a, 0.1), primals)

    def run_both(remat):
        def f(p, x, m):
            return F.lstm(p, x, lengths, state_masks=[m], forward_mode=True, remat=remat)[0]
        return jax.jvp(f, primals, tangents), jax.grad(lambda *a: jnp.sum(f(*a) ** 2),
                                                       argnums=(0, 1, 2))(*primals)

    _assert_same(*jax.jit(lambda: (run_both(4), run_both(None)))())


def test_vmap_of_grad_with_remat():
    _, case, _ = _case("GRU", 1, True, T=7)
    xs = jnp.stack([jnp.nan_to_num(case["x"]) * s for s in (1.0, 0.5, -2.0)])
    lengths = jnp.asarray(case["lengths"])

    def grads(remat):
        g = jax.grad(lambda p, x: jnp.sum(F.gru(p, x, lengths, remat=remat)[0] ** 2))
        return jax.vmap(g, in_axes=(None, 0))(case["params"], xs)

    _assert_same(*jax.jit(lambda: (grads(2), grads(None)))())


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------
def _lstm_vjp_residuals(T, remat, bidirectional=False, B=4, I_=8, H_=16):
    """Shapes of the float arrays the vjp of an LSTM keeps for the backward pass (traced only)."""
    params = init.torch_default(jax.random.key(0), "LSTM", I_, H_, bidirectional=bidirectional)
    x = jnp.ones((T, B, I_), jnp.float32)
    lengths = jnp.array([T, T // 2, 1, 0])

    def pullback(p, x):
        return jax.vjp(lambda p, x: F.lstm(p, x, lengths, remat=remat)[0], p, x)[1]

    return [leaf.shape for leaf in jax.tree.leaves(jax.eval_shape(pullback, params, x))
            if leaf.shape and jnp.issubdtype(leaf.dtype, jnp.floating)]


def test_saved_residuals_are_the_chunk_boundaries():
    """Saved for the backward pass: the input, and of the recurrent state only ``h`` and ``c``
    before each of the ``ceil(T/k)`` chunks, nothing per step; without remat, every step's gate
    pre-activations."""
    T, k, B, H_ = 300, 16, 4, 16
    chunks = math.ceil(T / k)
    for D in (1, 2):
        saved = _lstm_vjp_residuals(T, k, bidirectional=D == 2)
        per_step = [shape for shape in saved if shape[0] == T and shape != (T, B, 8)]
        assert not per_step, per_step
        assert saved.count((chunks, D, B, H_)) == 2, saved
        assert (T, B, 4 * H_) in _lstm_vjp_residuals(T, None, bidirectional=D == 2)


def _train_step_temp_bytes(T, remat, bidirectional, forward_mode=False):
    params = init.torch_default(jax.random.key(0), "LSTM", 8, 16, bidirectional=bidirectional)
    x = jnp.ones((T, 4, 8), jnp.float32)
    lengths = jnp.array([T, T // 2, 1, 0])
    step = jax.jit(jax.grad(lambda p, x: F.lstm(p, x, lengths, remat=remat,
                                               forward_mode=forward_mode)[0].sum()))
    return step.lower(params, x).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("bidirectional, forward_mode, at_most", split_cases(
    [(True, False, 0.3), (False, False, 0.35), (False, True, 0.4)], [(True, False, 0.3)]))
def test_compiled_step_memory_falls(bidirectional, forward_mode, at_most, record_property):
    """Compiled temporary bytes of a training step at T = 1024, ``remat=32`` over the default.
    Measured: 0.15 bidirectional, 0.22 one direction, 0.24 with ``forward_mode``."""
    T = 1024
    ratio = (_train_step_temp_bytes(T, 32, bidirectional, forward_mode)
             / _train_step_temp_bytes(T, None, bidirectional, forward_mode))
    record_property("temp_ratio", ratio)
    assert ratio <= at_most, ratio


# --------------------------------------------------------------------------------------------
# torch parity, eager calls, errors, the fused path
# --------------------------------------------------------------------------------------------
TORCH_CASES = [
    ("lengths", Config(mode="LSTM", num_layers=2, bidirectional=True, proj_size=2, with_hx=True,
                       zero_rows=1, time=9), 4),
    ("rows", Config(mode="GRU", bidirectional=True, with_hx=True, time=11), 3),
]


@pytest.mark.parametrize("kind, cfg, k", split_cases(TORCH_CASES, TORCH_CASES[:1]),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_remat_matches_torch(kind, cfg, k):
    errors = (run if kind == "lengths" else run_rows)(cfg, "float64", remat=k)
    assert errors.pop("padding_and_empty_rows_exact") == 0
    assert worst(errors) <= 1e-10, errors


def test_layer_option_and_eager_training_steps_compile_once():
    lstm = jaxseq.LSTM(IN, H, bidirectional=True, remat=4, rngs=nnx.Rngs(0))
    assert lstm.remat == 4

    def step(seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((9, 5, IN)).astype(np.float32)
        lengths = rng.integers(0, 10, 5)
        return nnx.grad(lambda m: jnp.sum(m(x, lengths)[0] ** 2))(lstm)

    with count_compiles() as first:
        jax.block_until_ready(step(0))
    with count_compiles() as later:
        jax.block_until_ready(step(1))
        jax.block_until_ready(step(2))
    assert later.count == 0, later.names
    assert first.count >= 1


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4", np.float32(3)])
def test_bad_remat_raises_before_computation(bad):
    params = init.torch_default(jax.random.key(0), "LSTM", IN, H)
    with pytest.raises(ValueError, match=r"remat must be None .* or an integer k >= 1"):
        F.lstm(params, jnp.ones((4, 2, IN)), remat=bad)
    with pytest.raises(ValueError, match="remat must be"):
        jaxseq.GRU(IN, H, remat=bad, rngs=nnx.Rngs(0))


def test_numpy_integer_remat_is_accepted():
    assert scan_options(remat=np.int64(7)).remat == 7


def test_fused_kernel_refuses_remat_and_auto_runs_the_scan():
    s = init.torch_default(jax.random.key(0), "LSTM", IN, H)
    structure = infer_structure("LSTM", s)
    options = scan_options(remat=8)
    with use_reference_kernel():
        with pytest.raises(ValueError, match="remat=8"):
            jaxseq.LSTM(IN, H, impl="cudnn", remat=8, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="impl='cudnn' cannot serve this call: remat=8"):
            F.lstm(s, jnp.ones((4, 2, IN)), impl="cudnn", remat=8)
        assert resolve_impl("auto", structure, jnp.float32, options, packed=False,
                            state_masks=False) == "scan"
        assert resolve_impl("auto", structure, jnp.float32, scan_options(), packed=False,
                            state_masks=False) != "scan"
