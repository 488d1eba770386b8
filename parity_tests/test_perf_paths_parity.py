"""The fast paths against torch and against each other.

* staircase schedules (``time_chunks`` with concrete lengths, or an explicit ``Staircase`` with
  traced lengths): rows sorted by length, time cut into chunks scanned over only the active rows;
* ``unroll`` and the plain masked scan with traced lengths;
* the hand-written VJP of ``jaxseq.scan.masked_scan`` under every dropout mask (compared between
  paths, since the harness does not draw masks).

Tolerances as in test_recurrent_parity: float64 1e-10, float32 1e-5 (relative to the largest value).
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import functional, init
from jaxseq.scan import Staircase, staircase
from jaxseq.parity.harness import Config, random_lengths, run
from parity_tests.cases import case_id, split_cases

TOL = {"float64": 1e-10, "float32": 1e-5}

# batch=20: staircases round active rows to multiples of ceil(20 / 8) = 3, so chunks really drop rows.
FLAGS = [dict(bias=True, batch_first=False, with_hx=True),
         dict(bias=False, batch_first=True, with_hx=False)]
CONFIGS = [Config(mode=mode, proj_size=proj, num_layers=layers, bidirectional=bidi, batch=20, time=11,
                  seed=layers * 10 + bidi, **FLAGS[(layers + bidi) % 2])
           for (mode, proj), layers, bidi in itertools.product(
               [("LSTM", 0), ("LSTM", 2), ("GRU", 0), ("RNN_TANH", 0), ("RNN_RELU", 0)], [1, 2],
               [False, True])]
EDGE = [Config(mode="LSTM", num_layers=2, bidirectional=True, with_hx=True, zero_rows=3, batch=20),
        Config(mode="GRU", bidirectional=True, with_hx=True, zero_rows=1, batch=9, time=30),
        Config(mode="RNN_TANH", batch=1, time=6), Config(mode="LSTM", batch=5, time=1)]


def _check(cfg, dtype, **kwargs):
    errors = run(cfg, dtype, **kwargs)
    assert errors.pop("padding_and_empty_rows_exact") == 0, "padding output/grad not exactly zero"
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"{cfg.label()} {dtype} {kwargs}: {bad}"


def _lengths(cfg):
    """The lengths ``harness.run`` draws for ``cfg`` (its first use of the seeded generator)."""
    return random_lengths(np.random.default_rng(cfg.seed), cfg.batch, cfg.time, cfg.zero_rows)


# Default run: float64 on a diagonal of the config list (every cell, each layers x direction
# combination once) and on the edge cases, float32 on two; the rest of the matrix is ``slow``.
DIAGONAL = [CONFIGS[4 * m + m % 4] for m in range(5)]
STAIRCASE_CASES = split_cases(
    [(c, d) for d in ("float64", "float32") for c in CONFIGS + EDGE],
    default=[(c, "float64") for c in DIAGONAL + EDGE] + [(CONFIGS[13], "float32"), (EDGE[0], "float32")])


@pytest.mark.parametrize("cfg, dtype", STAIRCASE_CASES, ids=case_id)
def test_staircase_concrete_lengths(cfg, dtype):
    """Host lengths with a staircase asked for (``time_chunks=6``)."""
    _check(cfg, dtype, concrete_lengths=True, time_chunks=6)


@pytest.mark.parametrize("cfg, time_chunks", split_cases(
    itertools.product(CONFIGS[::10] + EDGE[:1], [2, 8]), default=[(CONFIGS[0], 8), (EDGE[0], 2)]),
    ids=case_id)
def test_staircase_chunk_counts(cfg, time_chunks):
    _check(cfg, "float64", concrete_lengths=True, time_chunks=time_chunks)


@pytest.mark.parametrize("cfg", split_cases(CONFIGS[1::6] + EDGE[:1], default=CONFIGS[13::6]),
                         ids=case_id)
def test_explicit_staircase_with_traced_lengths(cfg):
    """A host-built Staircase passed as a static option while the lengths are traced."""
    plan = staircase(_lengths(cfg), cfg.time, num_chunks=5, row_multiple=1)
    assert len(plan.chunks) > 1
    _check(cfg, "float64", time_chunks=plan)


@pytest.mark.parametrize("cfg, options", split_cases(
    itertools.product(CONFIGS[2::10], [dict(unroll=3), dict(time_chunks=1, unroll=2)]),
    default=[(CONFIGS[12], dict(unroll=3)), (CONFIGS[12], dict(time_chunks=1, unroll=2)),
             (CONFIGS[2], dict(time_chunks=1, unroll=2))]), ids=case_id)
def test_unroll(cfg, options):
    _check(cfg, "float64", concrete_lengths=True, **options)


# --- masks: staircase vs plain scan (same function, different schedule) -----------------------
@pytest.mark.parametrize("mode, bidirectional", split_cases([("LSTM", True), ("GRU", False)],
                                                          default=[("LSTM", True)]))
def test_masks_match_between_paths(mode, bidirectional):
    T, B, I, H, L = 9, 13, 3, 5, 2
    D = 2 if bidirectional else 1
    key = jax.random.key(0)
    params = init.torch_default(key, mode, I, H, L, bidirectional=bidirectional, dtype=jnp.float64)
    rng = np.random.default_rng(1)
    lengths = random_lengths(rng, B, T, zero_rows=1)
    x = jnp.asarray(rng.standard_normal((T, B, I)))
    keep = lambda shape: jnp.asarray(rng.integers(0, 2, size=shape) * 2.0)   # noqa: E731
    masks = dict(dropout_masks=[keep((T, B, D * H))], state_masks=[keep((D, B, H)), keep((D, 1, H))],
                 weight_hh_masks=[keep((D, params["weight_hh_l0"].shape[0], H)), None])

    def loss(p, xx, m, lens, chunks):
        out, state = functional.recurrent(mode, p, xx, lens, time_chunks=chunks, **m)
        states = state if mode == "LSTM" else (state,)
        return jnp.sum(out * jnp.cos(out)) + sum(jnp.sum(jnp.sin(s)) for s in states)

    plain = jax.jit(jax.value_and_grad(lambda p, xx, m, lens: loss(p, xx, m, lens, 1),
                                       argnums=(0, 1, 2)))(params, x, masks, jnp.asarray(lengths))
    stair = jax.jit(jax.value_and_grad(lambda p, xx, m: loss(p, xx, m, lengths, 3),
                                       argnums=(0, 1, 2)))(params, x, masks)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(stair)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


# --- the schedule itself ---------------------------------------------------------------------
def _brute_force_steps(lengths, T, num_chunks, row_multiple):
    """Fewest row-steps over every choice of chunk starts (exhaustive)."""
    lengths = np.asarray(lengths)
    end, B = int(lengths.max()), len(lengths)
    rows = lambda t: min(B, -(-np.count_nonzero(lengths > t) // row_multiple) * row_multiple)  # noqa
    best = None
    for k in range(num_chunks):
        for starts in itertools.combinations(range(1, end), k):
            bounds = (0,) + starts + (end,)
            steps = sum((b - a) * rows(a) for a, b in zip(bounds, bounds[1:]))
            best = steps if best is None else min(best, steps)
    return best


def test_staircase_is_optimal_and_covers():
    rng = np.random.default_rng(0)
    for _ in range(150):
        B, T = int(rng.integers(1, 12)), int(rng.integers(1, 13))
        lengths = rng.integers(0, T + 1, size=B)
        k, m = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        plan = staircase(lengths, T, num_chunks=k, row_multiple=m)
        assert plan.covers(lengths) and len(plan.chunks) <= k
        if lengths.max() > 0:
            assert plan.padded_steps() == _brute_force_steps(lengths, T, k, m)
        else:
            assert plan == Staircase(())


def test_staircase_time_grid_and_default_rows():
    lengths = np.arange(1, 65)                                   # B = 64: rows in multiples of 8
    plan = staircase(lengths, 64, num_chunks=4, time_multiple=10)
    assert plan.covers(lengths)
    assert all(start % 10 == 0 for start, _, _ in plan.chunks)
    assert all(rows % 8 == 0 for _, _, rows in plan.chunks)
    assert plan.padded_steps() < 0.7 * 64 * 64


def test_bad_options_are_rejected():
    params = init.torch_default(jax.random.key(0), "LSTM", 2, 3)
    x, lengths = jnp.ones((6, 4, 2)), np.array([6, 5, 2, 1])
    assert not Staircase(((0, 6, 2),)).covers(lengths)          # 2 rows, but rows 0-3 start active
    with pytest.raises(ValueError, match="does not cover"):
        functional.lstm(params, x, lengths, time_chunks=Staircase(((0, 6, 2),)))
    with pytest.raises(ValueError, match="does not cover"):
        functional.lstm(params, x, lengths, time_chunks=Staircase(((0, 3, 4),)))
    with pytest.raises(ValueError, match="time_chunks"):
        functional.lstm(params, x, lengths, time_chunks=0)
    with pytest.raises(TypeError, match="compute_dtype"):
        functional.lstm(params, x, lengths, compute_dtype=jnp.int8)
    out_a, _ = functional.lstm(params, x, lengths, time_chunks=Staircase(((0, 1, 4), (1, 6, 3))))
    out_b, _ = functional.lstm(params, x, lengths, time_chunks=1)
    np.testing.assert_allclose(out_a, out_b, rtol=1e-6, atol=1e-6)


# --- mixed precision -------------------------------------------------------------------------
@pytest.mark.parametrize("mode, proj, bidirectional", [
    ("LSTM", 3, True), pytest.param("LSTM", 0, False, marks=pytest.mark.slow),
    pytest.param("GRU", 0, True, marks=pytest.mark.slow),
    pytest.param("RNN_TANH", 0, False, marks=pytest.mark.slow)])
def test_bfloat16_compute_is_close_and_keeps_padding_exact(mode, proj, bidirectional):
    """compute_dtype=bfloat16: float32 results within bf16 accuracy; padding still exactly 0."""
    T, B, I, H = 12, 10, 4, 6
    params = init.torch_default(jax.random.key(1), mode, I, H, 2, bidirectional=bidirectional,
                                proj_size=proj)
    rng = np.random.default_rng(2)
    lengths = random_lengths(rng, B, T, zero_rows=1)
    x = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)

    def step(p, xx, dtype):
        def loss(p, xx):
            out, state = functional.recurrent(mode, p, xx, lengths, compute_dtype=dtype,
                                              time_chunks=3)
            return jnp.sum(out * jnp.cos(out)) + sum(jnp.sum(s) for s in jax.tree.leaves(state)), out
        (value, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, xx)
        return out, grads

    out32, grads32 = jax.jit(step, static_argnums=2)(params, x, None)
    out16, grads16 = jax.jit(step, static_argnums=2)(params, x, jnp.bfloat16)
    pad = np.arange(T)[:, None] >= lengths[None, :]
    assert out16.dtype == jnp.float32 and not np.any(np.asarray(out16)[pad])
    assert not np.any(np.asarray(grads16[1])[pad])
    for a, b in zip(jax.tree.leaves((out16, grads16)), jax.tree.leaves((out32, grads32))):
        assert a.dtype == b.dtype
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) < 3e-2
