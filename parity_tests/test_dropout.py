"""Dropouts against torch with injected masks, and their statistics.

Parity: both sides get the same masks, NaN at padded inputs, the same initial state and the same
cotangents; outputs, final states and gradients (input, hx, every parameter) must agree in float64
to 1e-10 relative to the largest torch value.

* inter-layer dropout (element-wise and locked) vs torch's own packed path, run layer by layer
  (``torch_ref.dropout.run_packed_with_dropout``);
* state masks (variational recurrent dropout) and ``W_hh`` masks vs the explicit-loop reference
  ``torch_ref.dropout.run_loop``, itself checked against torch's packed ``nn.LSTM/GRU/RNN`` here;
* ``LockedDropout`` and embedding dropout vs their torch twins.

Statistics use fixed seeds and tolerances of 5 binomial standard deviations.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq
from jaxseq import functional
from jaxseq.dropout import EmbeddingDropout, LockedDropout, embedding_dropout, keep_mask
from jaxseq.parity.harness import JAX_CLASSES, TORCH_CLASSES, Config, _rel_err, random_lengths
from torch_ref.dropout import LockedDropout as TorchLockedDropout
from torch_ref.dropout import embedded_dropout, run_loop, run_packed_with_dropout
from torch_ref.packed import run_packed

TOL = 1e-10
RATE = 0.4


def _binomial_tol(p: float, n: int) -> float:
    """5 standard deviations of an empirical frequency of ``n`` Bernoulli(p) draws."""
    return 5 * np.sqrt(p * (1 - p) / n)


def _np_mask(rng: np.random.Generator, shape, p: float = RATE) -> np.ndarray:
    return (rng.random(shape) >= p) / (1 - p)


# --- one configuration through jaxseq (jit, VJP) and a torch runner -----------------------------
@dataclasses.dataclass
class Case:
    cfg: Config
    tmod: torch.nn.RNNBase
    x: np.ndarray
    lengths: np.ndarray
    hx: list | None
    cots: list

    @property
    def dims(self):
        c = self.cfg
        return c.num_layers, 2 if c.bidirectional else 1, c.proj_size or c.hidden_size

    def masks(self, kinds, *, locked=False, seed=1) -> dict[str, list[np.ndarray]]:
        """Random scaled masks in :func:`jaxseq.functional.recurrent`'s layout."""
        c, rng = self.cfg, np.random.default_rng(seed)
        L, D, H_out = self.dims
        out = {}
        if "dropout" in kinds:
            shape = (1 if locked else c.time, c.batch, D * H_out)
            shape = (shape[1], shape[0], shape[2]) if c.batch_first else shape
            out["dropout_masks"] = [_np_mask(rng, shape) for _ in range(L - 1)]
        if "state" in kinds:
            out["state_masks"] = [_np_mask(rng, (D, c.batch, H_out)) for _ in range(L)]
        if "weight" in kinds:
            G = self.tmod.weight_hh_l0.shape[0]
            out["weight_hh_masks"] = [_np_mask(rng, (D, G, H_out)) for _ in range(L)]
        return out


def make_case(cfg: Config) -> Case:
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    tmod = TORCH_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs()).double()
    T, B, D = cfg.time, cfg.batch, 2 if cfg.bidirectional else 1
    H_out = cfg.proj_size or cfg.hidden_size
    lengths = random_lengths(rng, B, T)
    x = rng.standard_normal((T, B, cfg.input_size))
    x[np.arange(T)[:, None] >= lengths[None, :]] = np.nan                  # padding must not matter
    x = np.swapaxes(x, 0, 1) if cfg.batch_first else x
    shapes = [(D * cfg.num_layers, B, H_out)] + ([(D * cfg.num_layers, B, cfg.hidden_size)]
                                                 if cfg.mode == "LSTM" else [])
    hx = [rng.standard_normal(s) for s in shapes] if cfg.with_hx else None
    out_shape = (B, T, D * H_out) if cfg.batch_first else (T, B, D * H_out)
    cots = [rng.standard_normal(out_shape)] + [rng.standard_normal(s) for s in shapes]
    return Case(cfg, tmod, x, lengths, hx, cots)


def _pack(mode, parts):
    return tuple(parts) if mode == "LSTM" else parts[0]


@partial(jax.jit, static_argnames=("mode", "batch_first"))
def _jax_vjp(params, x, lengths, hx, masks, cots, *, mode, batch_first):
    def run(p, xi, hi):
        return functional.recurrent(mode, p, xi, lengths, hi, batch_first=batch_first, **masks)
    result, vjp = jax.vjp(run, params, x, hx)
    return result, vjp(cots)


def jax_side(case: Case, masks: dict) -> dict[str, np.ndarray]:
    mode = case.cfg.mode
    params = {k: jnp.asarray(v.detach().numpy()) for k, v in case.tmod.state_dict().items()}
    hx = None if case.hx is None else _pack(mode, [jnp.asarray(h) for h in case.hx])
    cots = (jnp.asarray(case.cots[0]), _pack(mode, [jnp.asarray(c) for c in case.cots[1:]]))
    jmasks = {k: [jnp.asarray(m) for m in v] for k, v in masks.items()}
    (out, state), (g_params, g_x, g_hx) = _jax_vjp(params, jnp.asarray(case.x), jnp.asarray(case.lengths),
                                                   hx, jmasks, cots, mode=mode,
                                                   batch_first=case.cfg.batch_first)
    states = list(state) if mode == "LSTM" else [state]
    result = {"output": out, "h_n": states[0], "grad_x": g_x}
    result |= {"c_n": states[1]} if mode == "LSTM" else {}
    if case.hx is not None:
        result |= dict(zip(["grad_h0", "grad_c0"], list(g_hx) if mode == "LSTM" else [g_hx]))
    result |= {f"grad_{k}": v for k, v in g_params.items()}
    return {k: np.asarray(v) for k, v in result.items()}


def torch_side(case: Case, runner, masks: dict) -> dict[str, np.ndarray]:
    mode, tmod = case.cfg.mode, case.tmod
    tx = torch.tensor(case.x, requires_grad=True)
    thx = None if case.hx is None else [torch.tensor(h, requires_grad=True) for h in case.hx]
    tmasks = {k: [torch.tensor(m) for m in v] for k, v in masks.items()}
    out, state = runner(tmod, tx, case.lengths, None if thx is None else _pack(mode, thx), **tmasks)
    states = list(state) if mode == "LSTM" else [state]
    total = sum((t * torch.tensor(c)).sum() for t, c in zip([out] + states, case.cots))
    tmod.zero_grad()
    total.backward()
    result = {"output": out, "h_n": states[0], "grad_x": tx.grad}
    result |= {"c_n": states[1]} if mode == "LSTM" else {}
    if thx is not None:
        result |= dict(zip(["grad_h0", "grad_c0"], [h.grad for h in thx]))
    result |= {f"grad_{k}": p.grad for k, p in tmod.named_parameters()}
    return {k: v.detach().numpy() for k, v in result.items()}


def errors(got: dict, want: dict) -> dict[str, float]:
    assert got.keys() == want.keys()
    return {k: _rel_err(got[k], want[k]) for k in want}


def assert_close(got: dict, want: dict, tol: float = TOL) -> float:
    errs = errors(got, want)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, bad
    return max(errs.values())


def _cfg(mode="LSTM", **kw) -> Config:
    return Config(mode=mode, **{"time": 6, "batch": 5, **kw})


# --- the torch references themselves ------------------------------------------------------------
REFERENCE_CONFIGS = [
    _cfg("LSTM", num_layers=2, bidirectional=True, proj_size=2, with_hx=True),
    _cfg("LSTM", bias=False, batch_first=True),
    _cfg("GRU", num_layers=2, bidirectional=True, with_hx=True),
    _cfg("RNN_TANH", num_layers=2, bidirectional=True, batch_first=True),
    _cfg("RNN_RELU", with_hx=True),
]


@pytest.mark.parametrize("cfg", REFERENCE_CONFIGS, ids=Config.label)
def test_loop_reference_equals_torch_packed(cfg):
    """run_loop (no masks) == torch's packed nn.LSTM/GRU/RNN: values and every gradient."""
    case = make_case(cfg)
    assert_close(torch_side(case, run_loop, {}), torch_side(case, run_packed, {}))


@pytest.mark.parametrize("cfg", REFERENCE_CONFIGS[:4], ids=Config.label)
def test_layerwise_packed_reference(cfg):
    """run_packed_with_dropout: no masks == run_packed; with masks == run_loop (two torch paths)."""
    case = make_case(dataclasses.replace(cfg, num_layers=3))
    packed = torch_side(case, run_packed, {})
    assert_close(torch_side(case, run_packed_with_dropout, {}), packed)
    masks = case.masks({"dropout"})
    dropped = torch_side(case, run_packed_with_dropout, masks)
    assert_close(dropped, torch_side(case, run_loop, masks))
    assert _rel_err(dropped["output"], packed["output"]) > 1e-2                # the masks did act


# --- jaxseq vs torch with injected masks --------------------------------------------------------
PACKED = run_packed_with_dropout
ALL = {"dropout", "state", "weight"}
PARITY = [  # (config, mask kinds, locked inter-layer masks, torch runner)
    (_cfg("LSTM", num_layers=3, bidirectional=True, with_hx=True), {"dropout"}, False, PACKED),
    (_cfg("LSTM", num_layers=2, bidirectional=True, proj_size=2, batch_first=True, with_hx=True),
     {"dropout"}, True, PACKED),
    (_cfg("GRU", num_layers=2, batch_first=True), {"dropout"}, False, PACKED),
    (_cfg("RNN_TANH", num_layers=2, bidirectional=True, bias=False), {"dropout"}, True, PACKED),
    (_cfg("LSTM", num_layers=2, bidirectional=True, proj_size=2, with_hx=True), {"state"}, False, run_loop),
    (_cfg("GRU", bidirectional=True, with_hx=True), {"state"}, False, run_loop),
    (_cfg("RNN_RELU", bias=False, with_hx=True), {"state"}, False, run_loop),
    (_cfg("LSTM", bidirectional=True, proj_size=2, batch_first=True), {"weight"}, False, run_loop),
    (_cfg("RNN_TANH", with_hx=True), {"weight"}, False, run_loop),
    (_cfg("LSTM", num_layers=2, bidirectional=True, proj_size=3, batch_first=True, with_hx=True),
     ALL, False, run_loop),
    (_cfg("GRU", num_layers=2, bidirectional=True, with_hx=True), ALL, True, run_loop),
    (_cfg("RNN_RELU", num_layers=2, batch_first=True), ALL, False, run_loop),
]


@pytest.mark.parametrize("cfg,kinds,locked,runner", PARITY,
                         ids=[f"{c.label()}-{'+'.join(sorted(k))}{'-locked' if lk else ''}"
                              for c, k, lk, _ in PARITY])
def test_injected_masks_match_torch(cfg, kinds, locked, runner):
    case = make_case(cfg)
    masks = case.masks(kinds, locked=locked)
    want = torch_side(case, runner, masks)
    assert_close(jax_side(case, masks), want)
    assert _rel_err(want["output"], torch_side(case, run_packed, {})["output"]) > 1e-2  # masks acted


# --- the NNX modules in training mode -------------------------------------------------------------
def _module(cfg: Config, **extras):
    jmod = JAX_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs(),
                                 param_dtype=jnp.float64, rngs=nnx.Rngs(cfg.seed), **extras)
    torch.manual_seed(cfg.seed)
    tmod = TORCH_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs()).double()
    return jaxseq.load_torch_state_dict(jmod, tmod.state_dict()), tmod


DROPS = dict(dropout=0.5, recurrent_dropout=0.3, weight_drop=0.2)
MODULE_CFG = _cfg("LSTM", num_layers=2, bidirectional=True, proj_size=2, batch_first=True)


def _flat(result) -> np.ndarray:
    return np.concatenate([np.asarray(a).ravel() for a in jax.tree_util.tree_leaves(result)])


def _torch_flat(result) -> np.ndarray:
    out, state = result
    parts = [out, *(state if isinstance(state, tuple) else [state])]
    return np.concatenate([t.detach().numpy().ravel() for t in parts])


def test_module_train_with_explicit_and_drawn_masks_matches_torch():
    cfg = MODULE_CFG
    jmod, tmod = _module(cfg, **DROPS)
    jmod.train()
    case = make_case(cfg)
    x, lengths = jnp.asarray(case.x), jnp.asarray(case.lengths)
    masks = case.masks(ALL)
    explicit = _flat(jmod(x, lengths, **{k: [jnp.asarray(m) for m in v] for k, v in masks.items()}))
    want = run_loop(tmod, torch.tensor(case.x), case.lengths, **{k: [torch.tensor(m) for m in v]
                                                                  for k, v in masks.items()})
    assert _rel_err(explicit, _torch_flat(want)) <= TOL
    # Masks drawn by the module from a given key are exactly those that _draw_masks returns.
    key = jax.random.key(7)
    drawn = jmod._draw_masks(x, key)
    assert drawn.keys() == masks.keys()
    got = _flat(jmod(x, lengths, rngs=key))
    want = run_loop(tmod, torch.tensor(case.x), case.lengths,
                    **{k: [torch.tensor(np.asarray(m)) for m in v] for k, v in drawn.items()})
    assert _rel_err(got, _torch_flat(want)) <= TOL
    assert np.max(np.abs(got - explicit)) > 1e-2


def test_module_drawn_mask_shapes_rates_and_time_structure():
    """State/weight masks have no time axis; inter-layer masks are element-wise in time (torch)."""
    T, B, I, H, P = 40, 32, 3, 16, 8
    p = dict(dropout=0.3, recurrent_dropout=0.5, weight_drop=0.2)
    jmod = jaxseq.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, batch_first=True,
                       rngs=nnx.Rngs(0), **p)
    masks = jmod._draw_masks(jnp.zeros((B, T, I)), jax.random.key(3))
    shapes = {"dropout_masks": (B, T, 2 * P), "state_masks": (2, B, P), "weight_hh_masks": (2, 4 * H, P)}
    rates = {"dropout_masks": p["dropout"], "state_masks": p["recurrent_dropout"],
             "weight_hh_masks": p["weight_drop"]}
    assert {k: len(v) for k, v in masks.items()} == {"dropout_masks": 1, "state_masks": 2,
                                                     "weight_hh_masks": 2}
    for kind, ms in masks.items():
        rate = rates[kind]
        for m in map(np.asarray, ms):
            assert m.shape == shapes[kind] and m.dtype == np.float32
            assert set(np.unique(m)) <= {0.0, np.float32(1 / (1 - rate))}
            assert abs(np.mean(m == 0) - rate) <= _binomial_tol(rate, m.size), kind
    assert not np.array_equal(masks["state_masks"][0], masks["state_masks"][1])   # one per layer
    m = np.asarray(masks["dropout_masks"][0])                          # fresh at every time step
    changed = np.mean((m[:, 1:] == 0) != (m[:, :-1] == 0))
    q = 2 * p["dropout"] * (1 - p["dropout"])
    assert abs(changed - q) <= _binomial_tol(q, m[:, 1:].size)


def test_module_fresh_masks_each_call_and_eval_identity():
    cfg = _cfg("LSTM", num_layers=2)
    jmod, _ = _module(cfg, **DROPS)
    case = make_case(cfg)
    x, lengths = jnp.asarray(case.x), jnp.asarray(case.lengths)
    call = nnx.jit(lambda m, xx, ll: m(xx, ll))          # the module's RNG stream advances inside
    reference = _flat(jax.jit(functional.lstm)(jmod.param_dict(), x, lengths))
    assert jmod.deterministic                                         # evaluation after construction
    assert np.array_equal(_flat(call(jmod, x, lengths)), reference)
    jmod.train()
    first, second = _flat(call(jmod, x, lengths)), _flat(call(jmod, x, lengths))
    assert np.max(np.abs(first - second)) > 1e-2                      # the module's stream advanced
    assert np.max(np.abs(first - reference)) > 1e-2
    jmod.eval()
    assert np.array_equal(_flat(call(jmod, x, lengths)), reference)
    zero, _ = _module(cfg, dropout=0.0, recurrent_dropout=0.0, weight_drop=0.0)
    zero.train()
    assert zero.rngs is None                                           # rate 0 needs no RNG at all
    assert np.array_equal(_flat(call(zero, x, lengths)), reference)


def test_module_rate_one():
    """recurrent_dropout=1 and weight_drop=1 both remove W_hh h (== torch with W_hh = 0);
    dropout=1 == torch's nn.LSTM(dropout=1.0) in train mode (its inter-layer input is 0)."""
    cfg = _cfg("LSTM", num_layers=2, with_hx=True)
    case = make_case(cfg)
    x, lengths = jnp.asarray(case.x), jnp.asarray(case.lengths)
    hx = tuple(jnp.asarray(h) for h in case.hx)
    thx = tuple(torch.tensor(h) for h in case.hx)
    results = []
    for extras in [dict(recurrent_dropout=1.0), dict(weight_drop=1.0)]:
        jmod, tmod = _module(cfg, **extras)
        jmod.train()
        results.append(_flat(jmod(x, lengths, hx)))
    with torch.no_grad():
        for name, p in tmod.named_parameters():
            if name.startswith("weight_hh"):
                p.zero_()
    want = _torch_flat(run_packed(tmod, torch.tensor(case.x), case.lengths, thx))
    for got in results:
        assert _rel_err(got, want) <= TOL
    jmod, _ = _module(cfg, dropout=1.0)
    jmod.train()
    tmod = TORCH_CLASSES["LSTM"](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs(), dropout=1.0).double()
    tmod.load_state_dict({k: torch.tensor(v) for k, v in jaxseq.torch_state_dict(jmod).items()})
    tmod.train()
    want = _torch_flat(run_packed(tmod, torch.tensor(case.x), case.lengths, thx))
    assert _rel_err(_flat(jmod(x, lengths, hx)), want) <= TOL


def test_module_unbatched_input_with_dropout():
    """Unbatched x [T, I] in training (here with batch_first=True, which must not swap its masks):
    drawn masks work, and an explicit mask [T, F] gives the batched result with [B=1, T, F]."""
    jmod = jaxseq.RNN(3, 4, num_layers=2, dropout=0.5, recurrent_dropout=0.3, batch_first=True,
                      param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    jmod.train()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)))
    out, h_n = jmod(x)
    assert out.shape == (6, 4) and h_n.shape == (2, 4)
    mask = jnp.asarray(_np_mask(np.random.default_rng(1), (6, 4)))
    out, h_n = jmod(x, dropout_masks=[mask], deterministic=True)
    out_b, h_b = jmod(x[None], dropout_masks=[mask[None]], deterministic=True)
    assert np.array_equal(out, out_b[0]) and np.array_equal(h_n, h_b[:, 0])


# --- keep_mask and LockedDropout ------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_mask_statistics(rate):
    n = 200_000
    m = np.asarray(keep_mask(jax.random.key(0), rate, (n,), jnp.float64))
    assert set(np.unique(m)) == {0.0, 1 / (1 - rate)}                 # kept values exactly 1/(1-p)
    assert abs(np.mean(m == 0) - rate) <= _binomial_tol(rate, n)
    assert np.array_equal(keep_mask(jax.random.key(0), 1.0, (5,)), np.zeros(5))
    assert np.array_equal(keep_mask(jax.random.key(0), 0.0, (5,)), np.ones(5))
    with pytest.raises(ValueError, match="range \\[0, 1\\]"):
        keep_mask(jax.random.key(0), 1.5, (5,))


@pytest.mark.parametrize("batch_first", [False, True])
def test_locked_dropout_matches_torch_twin(batch_first):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4) if batch_first else (5, 3, 4))  # [B, T, F] or [T, B, F]
    mask = _np_mask(rng, (3, 1, 4) if batch_first else (1, 3, 4))
    cot = rng.standard_normal(x.shape)
    jdrop = LockedDropout(RATE, batch_first=batch_first, rngs=nnx.Rngs(0))
    y, vjp = jax.vjp(lambda v: jdrop(v, mask=jnp.asarray(mask)), jnp.asarray(x))
    tx = torch.tensor(x, requires_grad=True)
    ty = TorchLockedDropout(RATE, batch_first=batch_first)(tx, mask=torch.tensor(mask))
    (ty * torch.tensor(cot)).sum().backward()
    assert np.array_equal(np.asarray(y), ty.detach().numpy())
    assert np.array_equal(np.asarray(vjp(jnp.asarray(cot))[0]), tx.grad.numpy())
    with pytest.raises(ValueError, match="does not broadcast"):
        jdrop(jnp.asarray(x), mask=jnp.ones((2, 3, 4)))


def _locked_stats(y: np.ndarray, rate: float, t_axis: int) -> None:
    first = np.take(y, [0], axis=t_axis)
    assert np.array_equal(y, np.broadcast_to(first, y.shape))          # one mask for every step
    assert set(np.unique(first)) <= {0.0, 1 / (1 - rate)}
    assert abs(np.mean(first == 0) - rate) <= _binomial_tol(rate, first.size)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_locked_dropout_statistics(rate):
    x = jnp.ones((4, 200, 50), jnp.float64)                           # [T, B, F]
    drop = LockedDropout(rate, rngs=nnx.Rngs(0))
    assert np.array_equal(drop(x), x)                                  # evaluation by default
    drop.train()
    first, second = np.asarray(drop(x)), np.asarray(drop(x))
    _locked_stats(first, rate, 0)
    _locked_stats(second, rate, 0)
    assert not np.array_equal(first, second)                           # fresh mask per call
    bf = LockedDropout(rate, batch_first=True, rngs=nnx.Rngs(0))
    bf.train()
    _locked_stats(np.asarray(bf(jnp.swapaxes(x, 0, 1))), rate, 1)
    torch_drop = TorchLockedDropout(rate).train()                      # the twin has the same law
    torch.manual_seed(0)
    _locked_stats(torch_drop(torch.ones(4, 200, 50, dtype=torch.float64)).numpy(), rate, 0)
    drop.eval()
    assert np.array_equal(drop(x), x)


def test_locked_dropout_rate_zero_and_one():
    x = jnp.ones((3, 2, 5))
    zero = LockedDropout(0.0)                                          # no rngs needed at rate 0
    zero.train()
    assert np.array_equal(zero(x), x)
    one = LockedDropout(1.0, rngs=nnx.Rngs(0))
    one.train()
    assert np.array_equal(one(x), np.zeros(x.shape))
    assert np.array_equal(TorchLockedDropout(1.0).train()(torch.ones(3, 2, 5)), torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match="range"):
        LockedDropout(-0.1)


# --- embedding dropout -----------------------------------------------------------------------------
def _embed_pair(V=11, E=4, seed=0):
    jemb = nnx.Embed(V, E, param_dtype=jnp.float64, rngs=nnx.Rngs(seed))
    temb = torch.nn.Embedding(V, E).double()
    with torch.no_grad():
        temb.weight.copy_(torch.tensor(np.asarray(jemb.embedding[...])))
    return jemb, temb


def test_embedding_dropout_matches_torch_twin():
    rng = np.random.default_rng(0)
    V, E = 11, 4
    jemb, temb = _embed_pair(V, E)
    ids = rng.integers(0, V, size=(3, 9))
    mask = _np_mask(rng, (V, 1))
    mask[ids[0, 0]] = 0                                                # at least one dropped word
    cot = rng.standard_normal((3, 9, E))
    tout = embedded_dropout(temb, torch.tensor(ids), mask=torch.tensor(mask))
    (tout * torch.tensor(cot)).sum().backward()
    table = jemb.embedding[...]
    via_table, vjp = jax.vjp(lambda t: jnp.take(embedding_dropout(jnp.asarray(mask), t), ids, axis=0), table)
    module = EmbeddingDropout(jemb, RATE, rngs=nnx.Rngs(1))
    via_module = module(jnp.asarray(ids), mask=jnp.asarray(mask[:, 0]))
    assert np.array_equal(via_table, tout.detach().numpy())
    assert np.array_equal(via_module, tout.detach().numpy())
    # Gradients sum repeated words in another order: equal to rounding, not bit for bit.
    assert _rel_err(vjp(jnp.asarray(cot))[0], temb.weight.grad.numpy()) <= 1e-14
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(ids), mask=jnp.asarray(mask)) * cot))(module)
    assert _rel_err(grads["embed"]["embedding"][...], temb.weight.grad.numpy()) <= 1e-14
    assert np.all(via_module[0, 0] == 0)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_embedding_dropout_statistics(rate):
    V, E = 20_000, 3
    table = jnp.asarray(np.random.default_rng(0).standard_normal((V, E)))
    dropped = np.asarray(embedding_dropout(jax.random.key(0), table, rate))
    row_zero = np.all(dropped == 0, axis=1)
    assert np.array_equal(row_zero, np.any(dropped == 0, axis=1))       # whole word types
    assert abs(np.mean(row_zero) - rate) <= _binomial_tol(rate, V)
    kept = ~row_zero
    assert np.array_equal(dropped[kept], np.asarray(table)[kept] * (1 / (1 - rate)))
    torch.manual_seed(0)                                               # the twin has the same law
    temb = torch.nn.Embedding(V, E).double()
    tout = embedded_dropout(temb, torch.arange(V), rate).detach().numpy()
    assert abs(np.mean(np.all(tout == 0, axis=1)) - rate) <= _binomial_tol(rate, V)


def test_embedding_dropout_module_modes():
    V = 50
    jemb, _ = _embed_pair(V, 3)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, V, size=(8, 30)))
    plain = jemb(ids)
    module = EmbeddingDropout(jemb, 0.5, rngs=nnx.Rngs(0))
    assert np.array_equal(module(ids), plain)                          # evaluation by default
    module.train()
    first, second = np.asarray(module(ids)), np.asarray(module(ids))
    assert not np.array_equal(first, second)                           # fresh mask per call
    for y in (first, second):
        zero = np.all(y == 0, axis=-1)
        for word in np.unique(ids):                                    # one decision per word type
            assert len(set(zero[np.asarray(ids) == word].tolist())) == 1
        assert np.array_equal(y[~zero], 2 * np.asarray(plain)[~zero])
    module.eval()
    assert np.array_equal(module(ids), plain)
    zero_rate = EmbeddingDropout(jemb, 0.0)
    zero_rate.train()
    assert np.array_equal(zero_rate(ids), plain)
    one = EmbeddingDropout(jemb, 1.0, rngs=nnx.Rngs(0))
    one.train()
    assert np.array_equal(one(ids), np.zeros(plain.shape))
    assert np.array_equal(embedding_dropout(jax.random.key(0), jemb.embedding[...], 1.0), np.zeros((V, 3)))


def test_embedding_dropout_errors():
    table = jnp.ones((5, 2))
    with pytest.raises(ValueError, match="shape \\(5, 1\\) or \\(5,\\)"):
        embedding_dropout(jnp.ones((4, 1)), table)
    with pytest.raises(ValueError, match="PRNG key or a floating mask"):
        embedding_dropout(jnp.ones((5, 1), jnp.int32), table)
    with pytest.raises(ValueError, match="table \\[V, E\\]"):
        embedding_dropout(jax.random.key(0), jnp.ones(5), 0.5)
    with pytest.raises(ValueError, match="range"):
        embedding_dropout(jax.random.key(0), table, 2.0)
    module = EmbeddingDropout(nnx.Embed(5, 2, rngs=nnx.Rngs(0)), 0.5)
    module.train()
    with pytest.raises(ValueError, match="needs `rngs`"):
        module(jnp.array([0, 1]))
    with pytest.raises(TypeError, match="embed must be an embedding .*got Array"):
        EmbeddingDropout(table, 0.5)                            # the table, not a module
