"""Packed rows (``segment_ids``): every segment equals torch's packed RNN on that sequence alone.

Parity (``harness.run_rows``): outputs, per-segment ``h_n`` / ``c_n`` and the gradients of the
input, of the per-segment initial states and of every parameter, with NaN at padding, over LSTM
(with and without projection), GRU, RNN tanh/relu, 1-3 layers, uni/bidirectional, batch_first on
and off, rows holding one full-length segment, several segments with and without trailing padding,
and (edge cases) rows holding nothing. Default run: every (cell, 1 or 3 layers, directions)
combination in float64 with alternating flags, float32 on a sixth of all depths; the full matrix
(2 layers included) is marked ``slow``.
Tolerances (relative to the largest torch value): float64 1e-10, float32 1e-5.

Then: recurrent dropout and ``LockedDropout`` per segment, the per-segment helpers against their
per-sequence twins, validation of ``segment_ids``, and host-side packing (``jaxseq.data``).
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxseq
from jaxseq import data, functional, init
from jaxseq.parity.harness import Config, run_rows, segment_ids_of

TOL = {"float64": 1e-10, "float32": 1e-5}
CELLS = [("LSTM", 0), ("LSTM", 2), ("GRU", 0), ("RNN_TANH", 0), ("RNN_RELU", 0)]
FLAGS = [dict(bias=True, batch_first=False, with_hx=True),
         dict(bias=False, batch_first=True, with_hx=False)]


def _configs(flag_settings, alternate: bool):
    for i, ((mode, proj), layers, bidi) in enumerate(itertools.product(CELLS, [1, 2, 3],
                                                                       [False, True])):
        for flags in ([flag_settings[i % 2]] if alternate else flag_settings):
            yield Config(mode=mode, proj_size=proj, num_layers=layers, bidirectional=bidi,
                         batch=6, time=12, seed=100 + 10 * layers + bidi, **flags)


DEFAULT = list(_configs(FLAGS, alternate=True))
#: default run: 1 and 3 layers in float64, a sixth of every depth in float32 (2 layers: ``slow``)
CASES = ([(c, "float64") for c in DEFAULT if c.num_layers != 2]
         + [(c, "float32") for c in DEFAULT[::6]])
FULL = [c for c in _configs([dict(bias=b, batch_first=f, with_hx=h)
                             for b, f, h in itertools.product([True, False], repeat=3)],
                            alternate=False)]


def _check(cfg, dtype, **kwargs):
    errors = run_rows(cfg, dtype, **kwargs)
    assert errors.pop("padding_and_empty_rows_exact") == 0, "padding / absent segments not exact"
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"{cfg.label()} {dtype}: {bad}"
    assert {"output", "h_n", "grad_x", "grad_weight_ih_l0"} <= errors.keys()


@pytest.mark.parametrize("cfg, dtype", CASES, ids=[f"{c.label()}-{d}" for c, d in CASES])
def test_packed_rows_parity(cfg, dtype):
    _check(cfg, dtype)


@pytest.mark.parametrize("cfg, per_row", [
    (Config(mode="LSTM", num_layers=2, bidirectional=True, with_hx=True, zero_rows=2, batch=7,
            time=15), 5),
    (Config(mode="GRU", bidirectional=True, batch_first=True, with_hx=True, zero_rows=1, time=20), 8),
    (Config(mode="LSTM", proj_size=3, batch=3, time=4), 4),        # rows of length-1 segments
    (Config(mode="RNN_TANH", bidirectional=True, batch=1, time=1), 1),
], ids=lambda v: v.label() if isinstance(v, Config) else f"k{v}")
def test_packed_rows_edge_cases(cfg, per_row):
    """Empty rows, many segments per row, segments of length 1, T = B = 1."""
    _check(cfg, "float64", max_per_row=per_row)


def test_packed_rows_unroll_forward_mode_and_bfloat16_compute():
    _check(Config(mode="LSTM", bidirectional=True, with_hx=True, time=10), "float64", unroll=3)
    _check(Config(mode="GRU", bidirectional=True, with_hx=True, time=10), "float64",
           forward_mode=True)              # reverse mode through the custom JVP's transpose
    errors = run_rows(Config(mode="GRU", time=10), "float32", compute_dtype=jnp.bfloat16)
    assert errors.pop("padding_and_empty_rows_exact") == 0 and max(errors.values()) < 3e-2


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cfg", FULL, ids=Config.label)
def test_packed_rows_parity_full_matrix(cfg, dtype):
    _check(cfg, dtype)


def test_harness_sees_a_broken_reset():
    """The harness itself: a packed row whose ids merge two segments must fail parity."""
    rows = [[3, 2]]
    ids = segment_ids_of(rows, 6)
    assert ids.tolist() == [[1, 1, 1, 2, 2, 0]]
    params = init.torch_default(jax.random.key(0), "GRU", 2, 3, dtype=jnp.float64)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 6, 2)))
    split, _ = functional.gru(params, x, segment_ids=ids, batch_first=True)
    merged, _ = functional.gru(params, x, segment_ids=np.minimum(ids, 1), batch_first=True)
    assert np.allclose(split[0, :3], merged[0, :3])
    assert not np.allclose(split[0, 3:5], merged[0, 3:5], atol=1e-3)


# --- modules, dropout per segment ----------------------------------------------------------------
ROWS = [[4, 3, 2], [9], [2, 2, 1, 1]]
T_ROWS = 10


def _rows_batch(rng, features, rows=ROWS, time=T_ROWS):
    ids = segment_ids_of(rows, time)
    x = rng.standard_normal((len(rows), time, features))
    x[ids == 0] = np.nan
    return jnp.asarray(ids), jnp.asarray(x)


def _spans(rows):
    return [(b, k, sum(r[:k]), n) for b, r in enumerate(rows) for k, n in enumerate(r)]


def test_module_matches_functional_and_jit():
    lstm = jaxseq.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                       param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    ids, x = _rows_batch(np.random.default_rng(0), 3)
    out, (h, c) = lstm(x, segment_ids=ids, max_segments=5)
    assert out.shape == (3, 10, 8) and h.shape == c.shape == (4, 3, 5, 4)
    want, (wh, wc) = functional.lstm(lstm.param_dict(), x, segment_ids=ids, max_segments=5,
                                     batch_first=True)
    np.testing.assert_array_equal(out, want)
    jitted = nnx.jit(lambda m, xx, seg: m(xx, segment_ids=seg, max_segments=5))
    jout, (jh, _) = jitted(lstm, x, ids)
    np.testing.assert_allclose(jout, out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jh, h, rtol=1e-12, atol=1e-12)
    # default max_segments with concrete ids: the largest id
    assert lstm(x, segment_ids=ids)[1][0].shape == (4, 3, 4, 4)


def test_unbatched_input_with_segment_ids():
    params = init.torch_default(jax.random.key(2), "LSTM", 2, 3, bidirectional=True,
                                dtype=jnp.float64)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((6, 2)))
    ids = jnp.array([1, 1, 1, 2, 2, 0])
    out, (h, c) = functional.lstm(params, x, segment_ids=ids, max_segments=2)
    bout, (bh, bc) = functional.lstm(params, x[:, None], segment_ids=ids[:, None], max_segments=2)
    assert out.shape == (6, 6) and h.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, bout[:, 0])
    np.testing.assert_array_equal(h, bh[:, 0])


@pytest.mark.parametrize("mode", ["LSTM", pytest.param("GRU", marks=pytest.mark.slow)])
def test_state_masks_per_segment_equal_each_sequence_alone(mode):
    """Explicit per-segment recurrent-dropout masks [D, B, S, H]: outputs, states and gradients
    (parameters, input, masks) equal those of each sequence run alone with its own mask."""
    rng = np.random.default_rng(4)
    I, H, D, S = 3, 4, 2, 4
    params = init.torch_default(jax.random.key(5), mode, I, H, 1, bidirectional=True,
                                dtype=jnp.float64)
    ids, x = _rows_batch(rng, I)
    masks = [jnp.asarray((rng.random((D, 3, S, H)) > 0.4) / 0.6)]

    def loss_rows(p, xx, m):
        out, st = functional.recurrent(mode, p, xx, segment_ids=ids, max_segments=S,
                                       batch_first=True, state_masks=m)
        valid = (ids > 0)[..., None]
        return (jnp.sum(jnp.where(valid, jnp.sin(out), 0))
                + sum(jnp.sum(jnp.cos(s[:, b, k])) for s in jax.tree.leaves(st)
                      for b, k, _, _ in _spans(ROWS)))

    spans = _spans(ROWS)
    lengths = jnp.array([n for *_, n in spans])
    rows, ks = np.array([b for b, *_ in spans]), np.array([k for _, k, *_ in spans])
    steps = np.minimum(np.array([s for *_, s, _ in spans])[:, None] + np.arange(T_ROWS), T_ROWS - 1)

    def loss_alone(p, xx, m):   # every sequence as its own row of a padded batch, with its mask
        seqs = xx[rows[:, None], steps]                                    # [N, T, I]
        out, st = functional.recurrent(mode, p, seqs, lengths, batch_first=True,
                                       state_masks=[mm[:, rows, ks] for mm in m])
        valid = jaxseq.length_mask(lengths, T_ROWS)[..., None]
        return (jnp.sum(jnp.where(valid, jnp.sin(out), 0))
                + sum(jnp.sum(jnp.cos(s)) for s in jax.tree.leaves(st)))

    got = jax.jit(jax.value_and_grad(loss_rows, argnums=(0, 1, 2)))(params, x, masks)
    want = jax.jit(jax.value_and_grad(loss_alone, argnums=(0, 1, 2)))(params, x, masks)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=1e-10, atol=1e-12)
    assert not np.any(np.asarray(got[1][1])[np.asarray(ids) == 0])      # padding gradient exactly 0


def test_drawn_recurrent_dropout_is_per_segment():
    """In training mode the layer draws one state mask per segment: two identical sequences in
    one row get different outputs, while the same sequence in two calls with the same key agrees."""
    gru = jaxseq.GRU(2, 16, batch_first=True, recurrent_dropout=0.5, rngs=nnx.Rngs(0))
    gru.train()
    seq = np.random.default_rng(6).standard_normal((5, 2))
    x = jnp.asarray(np.concatenate([seq, seq])[None])                  # one row, two equal sequences
    ids = jnp.asarray(segment_ids_of([[5, 5]], 10))
    out, h = gru(x, segment_ids=ids, max_segments=2, rngs=jax.random.key(1))
    assert not np.allclose(out[0, :5], out[0, 5:])
    again, _ = gru(x, segment_ids=ids, max_segments=2, rngs=jax.random.key(1))
    np.testing.assert_array_equal(out, again)
    gru.eval()
    out, _ = gru(x, segment_ids=ids, max_segments=2)
    np.testing.assert_allclose(out[0, :5], out[0, 5:], rtol=1e-6)


def test_locked_dropout_per_segment():
    drop = jaxseq.LockedDropout(0.5, batch_first=True, rngs=nnx.Rngs(0))
    drop.train()
    rows = [[30, 30, 40]] * 4
    ids = jnp.asarray(segment_ids_of(rows, 110))
    y = np.asarray(drop(jnp.ones((4, 110, 64)), segment_ids=ids, max_segments=3))
    for b, k, start, n in _spans(rows):
        block = y[b, start:start + n]
        assert (block == block[0]).all()                                # one mask per segment
        assert set(np.unique(block)) <= {0.0, 2.0}
    firsts = np.stack([y[b, start] for b, k, start, n in _spans(rows)])
    assert len({tuple(r) for r in firsts}) == len(firsts)              # segments differ
    assert abs((firsts == 0).mean() - 0.5) < 5 * np.sqrt(0.25 / firsts.size)
    np.testing.assert_array_equal(y[0, 100:], 0)                        # padding
    assert np.all(np.asarray(drop(jnp.ones((4, 110, 64)), rate=0.0, segment_ids=ids)) == 1)
    drop.eval()
    assert np.all(np.asarray(drop(jnp.ones((4, 110, 64)), segment_ids=ids)) == 1)


# --- per-segment helpers against their per-sequence twins -----------------------------------------
@pytest.mark.parametrize("batch_first", [True, False])
def test_segment_reductions_match_masked_twins(batch_first):
    rng = np.random.default_rng(7)
    ids, x = _rows_batch(rng, 3)
    S = 5
    if not batch_first:
        ids, x = ids.T, jnp.swapaxes(x, 0, 1)
    spans = _spans(ROWS)
    pieces = [np.asarray((x if batch_first else jnp.swapaxes(x, 0, 1))[b, s:s + n])
              for b, _, s, n in spans]
    padded = jnp.asarray(np.stack([np.pad(p, ((0, T_ROWS - len(p)), (0, 0))) for p in pieces]))
    lengths = jnp.asarray([n for *_, n in spans])
    twins = {jaxseq.segment_sum: jaxseq.masked_sum, jaxseq.segment_mean: jaxseq.masked_mean,
             jaxseq.segment_max: jaxseq.masked_max}
    for fn, twin in twins.items():
        got = fn(x, ids, S, batch_first=batch_first)
        want = twin(padded, lengths, batch_first=True)
        assert got.shape == (3, S, 3)
        for i, (b, k, _, _) in enumerate(spans):
            np.testing.assert_allclose(got[b, k], want[i], rtol=1e-12)
        held = {(b, k) for b, k, _, _ in spans}
        assert all(not np.any(got[b, k]) for b in range(3) for k in range(S) if (b, k) not in held)
        # gradients: finite, exactly zero at padding, equal to the twin's
        g = jax.grad(lambda xx: jnp.sum(jnp.sin(fn(xx, ids, S, batch_first=batch_first))))(x)
        g = np.asarray(g if batch_first else jnp.swapaxes(g, 0, 1))
        gt = np.asarray(jax.grad(lambda pp: jnp.sum(jnp.sin(twin(pp, lengths, batch_first=True))))(
            padded))
        assert np.all(np.isfinite(g)) and not np.any(g[np.asarray(ids if batch_first else ids.T) == 0])
        for i, (b, _, s, n) in enumerate(spans):
            np.testing.assert_allclose(g[b, s:s + n], gt[i, :n], rtol=1e-12)
    last = jaxseq.segment_last(x, ids, S, batch_first=batch_first)
    for i, (b, k, _, _) in enumerate(spans):
        np.testing.assert_array_equal(last[b, k], pieces[i][-1])
    np.testing.assert_array_equal(jaxseq.segment_lengths(ids, S, batch_first=batch_first),
                                  [[4, 3, 2, 0, 0], [9, 0, 0, 0, 0], [2, 2, 1, 1, 0]])
    per_seq = jnp.arange(15.0).reshape(3, 5)
    spread = np.asarray(jaxseq.segment_broadcast(per_seq, ids, batch_first=batch_first))
    spread = spread if batch_first else spread.T
    for b, k, s, n in spans:
        assert (spread[b, s:s + n] == per_seq[b, k]).all()
    assert not np.any(spread[np.asarray(ids if batch_first else ids.T) == 0])


def test_h_n_equals_segment_last_of_the_forward_output():
    params = init.torch_default(jax.random.key(8), "LSTM", 3, 4, dtype=jnp.float64)
    ids, x = _rows_batch(np.random.default_rng(9), 3)
    out, (h, _) = functional.lstm(params, x, segment_ids=ids, max_segments=4, batch_first=True)
    np.testing.assert_array_equal(h[0], jaxseq.segment_last(out, ids, 4, batch_first=True))


def test_per_token_loss_on_packed_rows_equals_per_sequence_loss():
    """Token-level masked cross entropy with ``mask=segment_ids > 0`` equals the padded batch's."""
    rng = np.random.default_rng(10)
    spans = _spans(ROWS)
    ids = segment_ids_of(ROWS, T_ROWS)
    logits = rng.standard_normal((3, T_ROWS, 7))
    targets = rng.integers(0, 7, (3, T_ROWS))
    packed = jaxseq.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                         jnp.asarray(ids > 0))
    pl = np.zeros((len(spans), T_ROWS, 7))
    pt = np.zeros((len(spans), T_ROWS), int)
    for i, (b, _, s, n) in enumerate(spans):
        pl[i, :n], pt[i, :n] = logits[b, s:s + n], targets[b, s:s + n]
    lengths = np.array([n for *_, n in spans])
    padded = jaxseq.masked_cross_entropy(jnp.asarray(pl), jnp.asarray(pt),
                                         jaxseq.length_mask(lengths, T_ROWS))
    np.testing.assert_allclose(packed, padded, rtol=1e-12)


# --- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, message", [
    ([[1, 2, 1, 0]], "contiguous runs"),          # a segment number comes back
    ([[1, 3, 3, 0]], "contiguous runs"),          # a gap in the numbering
    ([[1, 0, 2, 2]], "contiguous runs"),          # padding in the middle
    ([[2, 2, 0, 0]], "contiguous runs"),          # does not start with 1
    ([[0, 1, 1, 0]], "contiguous runs"),          # does not start at t = 0
    ([[1, 2, 3, 4]], r"\[0, max_segments=3\]"),   # more segments than max_segments
    ([[1, -1, 0, 0]], r"\[0, max_segments=3\]"),
])
def test_bad_segment_ids_raise(ids, message):
    params = init.torch_default(jax.random.key(0), "GRU", 2, 3)
    x = jnp.ones((1, 4, 2))
    with pytest.raises(ValueError, match=message) as info:
        functional.gru(params, x, segment_ids=jnp.asarray(ids), max_segments=3, batch_first=True)
    assert "row 0" in str(info.value)


def test_segment_ids_argument_errors():
    params = init.torch_default(jax.random.key(0), "LSTM", 2, 3)
    x, ids = jnp.ones((2, 4, 2)), jnp.array([[1, 1, 2, 0], [1, 0, 0, 0]])
    run = lambda **kw: functional.lstm(params, x, batch_first=True, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="mutually exclusive"):
        run(lengths=jnp.array([4, 1]), segment_ids=ids)
    with pytest.raises(ValueError, match="only applies together with `segment_ids`"):
        run(max_segments=2)
    with pytest.raises(TypeError, match="integer dtype"):
        run(segment_ids=ids.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"shape \[B, T\] = \(2, 4\)"):
        run(segment_ids=ids.T)
    with pytest.raises(ValueError, match="max_segments` must be given"):
        jax.jit(lambda s: run(segment_ids=s))(ids)
    with pytest.raises(ValueError, match=r"Expected hidden size \(1, 2, 2, 3\) for h_0"):
        run(segment_ids=ids, max_segments=2, hx=(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3))))
    with pytest.raises(ValueError, match=r"state_masks\[0\].*\[D, B, S, H_out\]"):
        run(segment_ids=ids, max_segments=2, state_masks=[jnp.ones((1, 2, 3, 3))])
    with pytest.raises(ValueError, match="does not apply to packed rows"):
        run(segment_ids=ids, time_chunks=jaxseq.scan.Staircase(((0, 4, 2),)))


def test_traced_segment_ids_are_checked_under_checked():
    params = init.torch_default(jax.random.key(0), "RNN_TANH", 2, 3)

    def step(p, xx, seg):
        return functional.rnn_tanh(p, xx, segment_ids=seg, max_segments=2, batch_first=True)[0].sum()

    step = jaxseq.checked(jax.grad(step))
    x = jnp.ones((1, 4, 2))
    step(params, x, jnp.array([[1, 2, 2, 0]]))
    with pytest.raises(ValueError, match=r"contiguous runs.*row 0 breaks this at t = 2 \(value 1\)"):
        step(params, x, jnp.array([[1, 2, 1, 0]]))
    with pytest.raises(ValueError, match=r"max_segments=2\]; row 0 breaks this at t = 2"):
        step(params, x, jnp.array([[1, 2, 3, 0]]))


# --- host-side packing ----------------------------------------------------------------------------
def test_pack_rows_layout_round_trip_and_density():
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 40, size=300)
    packing = data.pack_rows(lengths, 64)
    assert packing.density > 0.95
    assert packing.num_rows == int(np.ceil(lengths.sum() / 64)) or packing.density > 0.97
    ids = packing.segment_ids()
    jaxseq.segments.check_segment_ids(ids, 64, packing.num_rows, packing.max_segments,
                                      batch_first=True)     # a valid layout
    seqs = [rng.standard_normal((n, 2)) for n in lengths]
    x = packing.pack(seqs, padding_value=np.nan)
    assert x.shape == (packing.num_rows, 64, 2) and np.isnan(x[ids == 0]).all()
    # every sequence sits where the packing says, exactly once
    for i, n in enumerate(lengths):
        r, o = packing.row[i], packing.offset[i]
        np.testing.assert_array_equal(x[r, o:o + n], seqs[i])
        assert (ids[r, o:o + n] == packing.segment[i]).all()
    # per-sequence values round trip through [rows, S]
    labels = np.arange(300) * 10
    per_segment = packing.pack_per_sequence(labels, fill=-1)
    assert per_segment.shape == (packing.num_rows, packing.max_segments)
    pieces, back = packing.unpack_per_sequence(per_segment)
    np.testing.assert_array_equal(pieces, np.arange(300))
    np.testing.assert_array_equal(back, labels)


def test_pack_rows_batches_subsets_and_cap():
    lengths = [5, 1, 1, 1, 1, 1, 3, 2, 4]
    packing = data.pack_rows(lengths, 5, max_segments=2)
    assert packing.max_segments <= 2
    assert (packing.segment_ids().max(axis=1) <= 2).all()
    batches = list(packing.batches(2, shuffle=True, seed=0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(packing.num_rows))
    assert all(len(b) == 2 for b in packing.batches(2, drop_last=True))
    rows = batches[0]
    ids = packing.segment_ids(rows)
    per_segment = jnp.asarray(packing.pack_per_sequence(np.arange(9), rows))
    pieces, values = packing.unpack_per_sequence(per_segment, rows)
    np.testing.assert_array_equal(values, pieces)                      # labels were the indices
    assert sorted(pieces.tolist()) == pieces.tolist()
    assert sum(lengths[p] for p in pieces) == int((ids > 0).sum())


def test_pack_rows_errors_and_split():
    with pytest.raises(ValueError, match=r"sequence 1 has length 12 > row_length=10.*split_long"):
        data.pack_rows([3, 12, 4], 10)
    packing = data.pack_rows([3, 25, 4], 10, split_long=True)
    assert packing.source.tolist() == [0, 1, 1, 1, 2]
    assert packing.start.tolist() == [0, 0, 10, 20, 0]
    assert packing.length.tolist() == [3, 10, 10, 5, 4]
    seq = np.arange(25)
    x = packing.pack([np.zeros(3), seq, np.zeros(4)], padding_value=-1)
    for p in (1, 2, 3):
        r, o, n, s = packing.row[p], packing.offset[p], packing.length[p], packing.start[p]
        np.testing.assert_array_equal(x[r, o:o + n], seq[s:s + n])
    with pytest.raises(ValueError, match="row_length"):
        data.pack_rows([3], 0)
    with pytest.raises(ValueError, match="rows must be"):
        packing.segment_ids([99])
    with pytest.raises(ValueError, match="made for 3 sequences"):
        packing.pack([np.zeros(3)])
