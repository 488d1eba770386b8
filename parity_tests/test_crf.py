"""jaxseq's linear-chain CRF against the real pytorch-crf (``torchcrf.CRF`` 0.7.2).

Log-likelihood (four reductions) and its gradients with respect to the emissions and the three
parameters, and Viterbi paths, on padded batches (``mask`` and ``lengths`` forms, both layouts) and
on packed rows (each segment against pytorch-crf run on that sequence alone); padding garbage,
length-0 rows, ``jit`` with traced boundaries, compile counts of eager calls, ``state_dict``
exchange, errors, and a property-based check against brute-force enumeration of all ``K**T``
paths (``JAXSEQ_HYPOTHESIS_EXAMPLES=N`` for a longer search).
"""
import itertools
import os

import jax
import torch

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from hypothesis import HealthCheck, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torchcrf import CRF as TorchCRF  # noqa: E402

from jaxseq import checked, load_torch_state_dict, torch_state_dict  # noqa: E402
from jaxseq.losses.crf import (  # noqa: E402
    CRF,
    REDUCTIONS,
    CRFParams,
    crf_decode,
    crf_log_likelihood,
    init_crf_params,
    paths_to_lists,
)
from parity_tests.cases import split_cases  # noqa: E402
from parity_tests.compiles import count_compiles  # noqa: E402

# pytorch-crf's own mask=None path calls torch.where with a uint8 mask
pytestmark = pytest.mark.filterwarnings("ignore:where received a uint8 condition:UserWarning")

#: Tolerance per dtype, relative to the largest reference magnitude (at least 1): see rel_err.
TOL = {"float64": 1e-10, "float32": 1e-5}
NAMES = ("start_transitions", "end_transitions", "transitions")
K = 4
T, B = 6, 5
LENGTHS = np.array([6, 1, 3, 6, 4])          # includes 1 and T
MAX_EXAMPLES = int(os.environ.get("JAXSEQ_HYPOTHESIS_EXAMPLES", "8"))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def torch_crf(num_tags: int, batch_first: bool, dtype: str, seed: int = 0) -> TorchCRF:
    """A pytorch-crf model with parameters larger than its U(-0.1, 0.1) init (a sharper test)."""
    torch.manual_seed(seed)
    model = TorchCRF(num_tags, batch_first=batch_first).to(getattr(torch, dtype))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def params_of(model: TorchCRF) -> CRFParams:
    return CRFParams(*(jnp.asarray(getattr(model, n).detach().numpy()) for n in NAMES))


def batch(lengths: np.ndarray, max_len: int, num_tags: int, batch_first: bool, dtype: str,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random emissions and tags in the given layout, and the prefix mask of ``lengths``."""
    rng = np.random.default_rng(seed)
    steps = (len(lengths), max_len) if batch_first else (max_len, len(lengths))
    emissions = (2 * rng.standard_normal(steps + (num_tags,))).astype(dtype)
    tags = rng.integers(0, num_tags, size=steps)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    return emissions, tags, mask if batch_first else mask.T


def torch_llh(model: TorchCRF, emissions, tags, mask, reduction: str):
    """pytorch-crf's value and the gradients of its sum (emissions, then each parameter)."""
    e = torch.tensor(emissions, requires_grad=True)
    model.zero_grad()
    value = model(e, torch.from_numpy(tags), None if mask is None else torch.from_numpy(mask),
                  reduction=reduction)
    value.sum().backward()
    grads = [getattr(model, n).grad for n in NAMES]          # None: unused (a length-1 sequence)
    return (value.detach().numpy(), e.grad.numpy()) + tuple(
        np.zeros(getattr(model, n).shape, emissions.dtype) if g is None else g.numpy()
        for n, g in zip(NAMES, grads))


def jax_llh(params: CRFParams, emissions, tags, reduction: str, **bounds):
    """jaxseq's value and the gradients of its sum, in :func:`torch_llh`'s order."""
    def total(p, e):
        value = crf_log_likelihood(p, e, tags, reduction=reduction, **bounds)
        return jnp.sum(value), value

    (_, value), (d_params, d_e) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        params, jnp.asarray(emissions))
    return (np.asarray(value), np.asarray(d_e)) + tuple(np.asarray(g) for g in d_params)


def rel_err(got, ref) -> float:
    """``max|got - ref|`` relative to ``max|ref|`` (absolute when the reference is all zero)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    diff = np.max(np.abs(got - ref), initial=0.0)
    return float(diff / max(np.max(np.abs(ref), initial=0.0), 1.0))


def assert_close(got: tuple, ref: tuple, dtype: str, what: str = "") -> dict:
    labels = ("llh", "d_emissions") + tuple(f"d_{n}" for n in NAMES)
    errors = {k: rel_err(g, r) for k, g, r in zip(labels, got, ref)}
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"{what} {dtype}: {bad}"
    return errors


# --------------------------------------------------------------------------------------------
# Padded batches: log-likelihood, gradients, paths
# --------------------------------------------------------------------------------------------
LLH_CASES = list(itertools.product(("float64", "float32"), (False, True), REDUCTIONS,
                                   ("mask", "lengths", "full")))
# Every (dtype, layout, reduction) is one compilation (~1 s here); the three forms share it.
LLH_DEFAULT = [c for c in LLH_CASES if c[:2] == ("float64", False)
               or (c[:2] == ("float64", True) and c[2] == "none")
               or c == ("float32", True, "sum", "mask")]


@pytest.mark.parametrize("dtype,batch_first,reduction,form", split_cases(LLH_CASES, LLH_DEFAULT))
def test_log_likelihood_matches_pytorch_crf(dtype, batch_first, reduction, form):
    model = torch_crf(K, batch_first, dtype)
    lengths = LENGTHS if form != "full" else np.full(B, T)
    emissions, tags, mask = batch(lengths, T, K, batch_first, dtype)
    bounds = {"mask": {"mask": mask}, "lengths": {"lengths": lengths}, "full": {}}[form]
    ref = torch_llh(model, emissions, tags, None if form == "full" else mask, reduction)
    got = jax_llh(params_of(model), emissions, tags, reduction, batch_first=batch_first, **bounds)
    assert got[0].dtype == np.dtype(dtype)
    assert_close(got, ref, dtype, f"{reduction} {form} batch_first={batch_first}")


DECODE_CASES = list(itertools.product(("float64", "float32"), (False, True), ("mask", "lengths")))


@pytest.mark.parametrize("dtype,batch_first,form", split_cases(
    DECODE_CASES, [c for c in DECODE_CASES if c[:2] != ("float32", False)]))
def test_decode_matches_pytorch_crf(dtype, batch_first, form):
    model = torch_crf(K, batch_first, dtype, seed=1)
    emissions, _, mask = batch(LENGTHS, T, K, batch_first, dtype, seed=1)
    bounds = {"mask": mask} if form == "mask" else {"lengths": LENGTHS}
    paths = crf_decode(params_of(model), emissions, batch_first=batch_first, **bounds)
    assert paths.dtype == jnp.int32 and paths.shape == emissions.shape[:2]
    expected = model.decode(torch.from_numpy(emissions), torch.from_numpy(mask))
    assert paths_to_lists(paths, batch_first=batch_first) == expected
    np.testing.assert_array_equal(np.asarray(paths) >= 0, mask)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_larger_batches_match_pytorch_crf(dtype, seed):
    """K=9, T=40, B=12, random lengths. float32 is compared with pytorch-crf in float64 on the
    same values (pytorch-crf's own float32 is further from it than jaxseq's: ~3e-5 on the
    emission gradient, measured)."""
    num_tags, max_len, rows = 9, 40, 12
    lengths = np.random.default_rng(seed).integers(1, max_len + 1, rows)
    lengths[:2] = max_len, 1
    batch_first = seed % 2 == 0
    model = torch_crf(num_tags, batch_first, dtype, seed=seed)
    emissions, tags, mask = batch(lengths, max_len, num_tags, batch_first, dtype, seed=seed)
    got = jax_llh(params_of(model), emissions, tags, "none", mask=mask, batch_first=batch_first)
    exact = torch_llh(model.double(), emissions.astype(np.float64), tags, mask, "none")
    errors = {k: rel_err(g, r) for k, g, r in zip(("llh", "d_emissions") + NAMES, got, exact)}
    assert max(errors.values()) <= {"float64": 1e-10, "float32": 5e-5}[dtype], errors
    model = model.to(getattr(torch, dtype))
    paths = crf_decode(params_of(model), emissions, mask, batch_first=batch_first)
    assert paths_to_lists(paths, batch_first=batch_first) == model.decode(
        torch.from_numpy(emissions), torch.from_numpy(mask))


def test_module_matches_pytorch_crf_after_loading_its_state_dict():
    model = torch_crf(K, True, "float64", seed=2)
    crf = CRF(K, batch_first=True, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    load_torch_state_dict(crf, model.state_dict())
    emissions, tags, mask = batch(LENGTHS, T, K, True, "float64", seed=2)
    ref = model(torch.from_numpy(emissions), torch.from_numpy(tags), torch.from_numpy(mask)).item()
    assert abs(float(crf(emissions, tags, mask)) - ref) <= TOL["float64"] * abs(ref)
    grads = nnx.grad(lambda m: m(emissions, tags, mask))(crf)            # an nnx.State
    ref_grads = torch_llh(model, emissions, tags, mask, "sum")[2:]
    for name, ref_grad in zip(NAMES, ref_grads):
        assert rel_err(grads[name][...], ref_grad) <= TOL["float64"], name
    assert paths_to_lists(crf.decode(emissions, mask), batch_first=True) == model.decode(
        torch.from_numpy(emissions), torch.from_numpy(mask))


# --------------------------------------------------------------------------------------------
# Packed rows: every segment against pytorch-crf on that sequence alone
# --------------------------------------------------------------------------------------------
#: Segment lengths per row (row length 7; the last row is all padding; max_segments 4 leaves
#: absent segment numbers in every row).
PACKED_ROWS = [[3, 1, 2], [7], [1, 1, 1, 1], [2, 4], []]
ROW_LEN, MAX_SEG = 7, 4


def packed_batch(num_tags: int, batch_first: bool, dtype: str, seed: int = 3):
    """Packed emissions, tags and ids (garbage at padding) and the sequences' slices."""
    rng = np.random.default_rng(seed)
    n = len(PACKED_ROWS)
    emissions = (2 * rng.standard_normal((n, ROW_LEN, num_tags))).astype(dtype)
    tags = rng.integers(0, num_tags, size=(n, ROW_LEN))
    ids = np.zeros((n, ROW_LEN), np.int32)
    pieces = []
    for b, row in enumerate(PACKED_ROWS):
        offset = 0
        for s, length in enumerate(row, 1):
            ids[b, offset:offset + length] = s
            pieces.append((b, s, slice(offset, offset + length)))
            offset += length
    emissions[ids == 0] = np.nan
    tags[ids == 0] = -7
    if not batch_first:
        emissions, tags, ids = emissions.swapaxes(0, 1), tags.T, ids.T
    return emissions, tags, ids, pieces


@pytest.mark.parametrize("dtype,batch_first", split_cases(
    [("float64", True), ("float32", False), ("float64", False)], [("float64", True)]))
def test_packed_rows_match_pytorch_crf_per_sequence(dtype, batch_first):
    model = torch_crf(K, True, dtype, seed=4)
    emissions, tags, ids, pieces = packed_batch(K, batch_first, dtype)
    got = jax_llh(params_of(model), emissions, tags, "none", segment_ids=ids,
                  max_segments=MAX_SEG, batch_first=batch_first)
    llh, d_e = got[0], got[1] if batch_first else got[1].swapaxes(0, 1)
    assert llh.shape == (len(PACKED_ROWS), MAX_SEG)
    e_rows = emissions if batch_first else emissions.swapaxes(0, 1)
    y_rows = tags if batch_first else tags.T
    ref_llh = np.zeros_like(llh)
    ref_d_e = np.zeros_like(d_e)
    ref_d_params = [np.zeros(getattr(model, n).shape, dtype) for n in NAMES]
    for b, s, where in pieces:
        one = torch_llh(model, e_rows[b:b + 1, where], y_rows[b:b + 1, where], None, "sum")
        ref_llh[b, s - 1] = one[0]
        ref_d_e[b, where] = one[1][0]
        ref_d_params = [acc + g for acc, g in zip(ref_d_params, one[2:])]
    assert_close((llh, d_e) + got[2:], (ref_llh, ref_d_e) + tuple(ref_d_params), dtype, "packed")
    present = np.zeros_like(llh, bool)
    for b, s, _ in pieces:
        present[b, s - 1] = True
    assert np.all(llh[~present] == 0)
    assert np.all(np.isfinite(d_e)) and np.all(d_e[np.isnan(e_rows)] == 0)

    # reductions over present segments / valid tokens
    params = params_of(model)
    kw = dict(segment_ids=ids, max_segments=MAX_SEG, batch_first=batch_first)
    for reduction, count in (("mean", len(pieces)), ("token_mean", int((ids > 0).sum()))):
        value = float(crf_log_likelihood(params, emissions, tags, reduction=reduction, **kw))
        assert rel_err(value, ref_llh.sum() / count) <= TOL[dtype]

    paths = crf_decode(params, emissions, segment_ids=ids, batch_first=batch_first)
    lists = paths_to_lists(paths, ids, batch_first=batch_first)
    assert [len(row) for row in lists] == [len(row) for row in PACKED_ROWS]
    for b, s, where in pieces:
        alone = model.decode(torch.from_numpy(e_rows[b:b + 1, where]))
        assert lists[b][s - 1] == alone[0]
    assert np.all((np.asarray(paths) == -1) == (ids == 0))


def test_packed_rows_with_pack_rows_data_order():
    """A data set packed with ``jaxseq.pack_rows``: per-sequence llh and paths back in its order."""
    from jaxseq import pack_rows

    model = torch_crf(K, True, "float64", seed=5)
    rng = np.random.default_rng(5)
    seq_lengths = [4, 1, 6, 2, 3, 5]
    seqs = [2 * rng.standard_normal((n, K)) for n in seq_lengths]
    seq_tags = [rng.integers(0, K, n) for n in seq_lengths]
    packing = pack_rows(seq_lengths, row_length=7)
    ids = packing.segment_ids()
    llh = crf_log_likelihood(params_of(model), packing.pack(seqs), packing.pack(seq_tags),
                             segment_ids=ids, max_segments=packing.max_segments,
                             reduction="none", batch_first=True)
    pieces, per_seq = packing.unpack_per_sequence(llh)
    assert pieces.tolist() == list(range(len(seqs)))
    lists = paths_to_lists(crf_decode(params_of(model), packing.pack(seqs), segment_ids=ids,
                                      batch_first=True), ids, batch_first=True)
    for i, (e, y) in enumerate(zip(seqs, seq_tags)):
        ref = model(torch.from_numpy(e[None]), torch.from_numpy(y[None])).item()
        assert abs(per_seq[i] - ref) <= TOL["float64"] * abs(ref)
        r, s = packing.row[i], packing.segment[i]
        assert lists[r][s - 1] == model.decode(torch.from_numpy(e[None]))[0]


# --------------------------------------------------------------------------------------------
# Padding garbage and length-0 rows
# --------------------------------------------------------------------------------------------
def _garbage(emissions, tags, valid, kind: str):
    e, y = emissions.copy(), tags.copy()
    if kind == "nan":
        e[~valid] = np.nan
    elif kind == "huge":
        e[~valid] = 1e30
        e[~valid & (np.arange(e.shape[1])[None, :] % 2 == 1)] = -np.inf
    y[~valid] = {"nan": 99, "huge": -3}[kind]
    return e, y


@pytest.mark.parametrize("form", ["mask", "segment_ids"])
@pytest.mark.parametrize("kind", ["nan", "huge"])
def test_padding_garbage_changes_nothing(kind, form):
    params = params_of(torch_crf(K, True, "float64", seed=6))
    if form == "mask":
        emissions, tags, mask = batch(LENGTHS, T, K, True, "float64", seed=6)
        bounds, valid = {"mask": mask}, mask
    else:
        emissions, tags, ids, _ = packed_batch(K, True, "float64")
        emissions, tags = np.nan_to_num(emissions, nan=0.0), np.where(ids > 0, tags, 0)
        bounds, valid = {"segment_ids": ids, "max_segments": MAX_SEG}, ids > 0
    clean_e, clean_y = np.where(valid[..., None], emissions, 0.0), np.where(valid, tags, 0)
    dirty_e, dirty_y = _garbage(clean_e, clean_y, valid, kind)
    clean = jax_llh(params, clean_e, clean_y, "none", batch_first=True, **bounds)
    dirty = jax_llh(params, dirty_e, dirty_y, "none", batch_first=True, **bounds)
    for c, d in zip(clean, dirty):
        np.testing.assert_array_equal(c, d)          # bitwise (a NaN anywhere would fail here)
    assert np.all(clean[1][~valid] == 0)
    np.testing.assert_array_equal(crf_decode(params, clean_e, batch_first=True, **bounds),
                                  crf_decode(params, dirty_e, batch_first=True, **bounds))


def test_length_zero_rows():
    model = torch_crf(K, False, "float64", seed=7)
    lengths = np.array([6, 0, 3, 0, 4])
    emissions, tags, mask = batch(lengths, T, K, False, "float64", seed=7)
    params = params_of(model)
    got = jax_llh(params, emissions, tags, "none", mask=mask)
    empty = lengths == 0
    assert np.all(got[0][empty] == 0) and np.all(got[1][:, empty] == 0)
    ref = torch_llh(model, emissions[:, ~empty], tags[:, ~empty], mask[:, ~empty], "none")
    assert_close((got[0][~empty], got[1][:, ~empty]) + got[2:], ref, "float64", "non-empty rows")
    for reduction, count in (("mean", 3), ("token_mean", lengths.sum())):
        mean = jax_llh(params, emissions, tags, reduction, lengths=lengths)
        ref = torch_llh(model, emissions[:, ~empty], tags[:, ~empty], mask[:, ~empty], "sum")
        assert_close(mean, tuple(r / count for r in ref[:1]) + (np.insert(
            ref[1] / count, [1, 2], 0.0, axis=1),) + tuple(r / count for r in ref[2:]),
            "float64", reduction)
    paths = np.asarray(crf_decode(params, emissions, lengths=lengths))
    assert np.all(paths[:, empty] == -1)
    assert paths_to_lists(paths) == [
        model.decode(torch.from_numpy(emissions[:n, [b]]))[0] if n else []
        for b, n in enumerate(lengths)]
    nothing = jax_llh(params, emissions, tags, "token_mean", lengths=np.zeros(B, np.int64))
    assert all(np.all(g == 0) for g in nothing)


# --------------------------------------------------------------------------------------------
# jit with traced boundaries; compile counts of eager calls
# --------------------------------------------------------------------------------------------
@jax.jit
def traced(params, emissions, tags, mask, lengths):
    """Batch-first log-likelihood per row by ``mask`` and by ``lengths``, and paths, all traced."""
    return (crf_log_likelihood(params, emissions, tags, mask, reduction="none", batch_first=True),
            crf_log_likelihood(params, emissions, tags, lengths=lengths, reduction="none",
                               batch_first=True),
            crf_decode(params, emissions, mask, batch_first=True))


@jax.jit
def traced_packed(params, emissions, tags, ids):
    return (crf_log_likelihood(params, emissions, tags, segment_ids=ids, max_segments=MAX_SEG,
                               reduction="none", batch_first=True),
            crf_decode(params, emissions, segment_ids=ids, batch_first=True))


def test_jit_with_traced_mask_lengths_and_segment_ids():
    params = params_of(torch_crf(K, True, "float64", seed=8))
    emissions, tags, mask = batch(LENGTHS, T, K, True, "float64", seed=8)
    other_lengths = np.array([2, 6, 6, 1, 0])
    other = np.arange(T)[None, :] < other_lengths[:, None]
    with count_compiles() as compiles:
        for m, n in ((mask, LENGTHS), (other, other_lengths)):
            by_mask, by_lengths, paths = traced(params, emissions, tags, m, n)
            eager = jax_llh(params, emissions, tags, "none", mask=m, batch_first=True)[0]
            np.testing.assert_array_equal(by_mask, eager)
            np.testing.assert_array_equal(by_lengths, eager)
            np.testing.assert_array_equal(paths, crf_decode(params, emissions, m, batch_first=True))
    assert compiles.names.count("jit(traced)") == 1, compiles.names

    e_p, y_p, ids, _ = packed_batch(K, True, "float64")
    other_ids = ids.copy()
    other_ids[1] = [1, 1, 2, 3, 3, 3, 0]
    with count_compiles() as compiles:
        for i in (ids, other_ids):
            llh, paths = traced_packed(params, e_p, y_p, i)
            kw = dict(segment_ids=i, max_segments=MAX_SEG, batch_first=True)
            np.testing.assert_array_equal(llh, jax_llh(params, e_p, y_p, "none", **kw)[0])
            np.testing.assert_array_equal(paths, crf_decode(params, e_p, segment_ids=i,
                                                            batch_first=True))
    assert compiles.names.count("jit(traced_packed)") == 1, compiles.names


def test_checked_reports_traced_bad_values():
    params = params_of(torch_crf(K, True, "float64"))
    emissions, tags, mask = batch(LENGTHS, T, K, True, "float64")
    step = checked(lambda p, e, y, m: crf_log_likelihood(p, e, y, m, batch_first=True))
    assert np.isfinite(step(params, emissions, tags, mask))
    holes = mask.copy()
    holes[0, 2] = False
    with pytest.raises(ValueError, match=r"prefix of each row.*row 0 breaks this at t = 2"):
        step(params, emissions, tags, holes)
    bad_tags = tags.copy()
    bad_tags[3, 1] = K
    with pytest.raises(ValueError, match=r"`tags` must lie in \[0, 4\).*row 3 at t = 1 holds 4"):
        step(params, emissions, bad_tags, mask)
    # unchecked jit: an out-of-range tag makes its own sequence NaN, nothing else
    llh = np.asarray(traced(params, emissions, bad_tags, mask, LENGTHS)[0])
    assert np.isnan(llh[3]) and np.all(np.isfinite(np.delete(llh, 3)))


def test_eager_calls_do_not_recompile():
    crf = CRF(K, batch_first=True, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    emissions, tags, mask = batch(LENGTHS, T, K, True, "float64", seed=9)
    e_p, y_p, ids, _ = packed_batch(K, True, "float64")
    other_ids = ids.copy()
    other_ids[1] = [1, 1, 2, 2, 2, 3, 0]

    def calls(m, n, i):      # (the programs earlier tests compiled: fast in the full file)
        crf(emissions, tags, m)
        crf(emissions, tags, lengths=n)
        crf(e_p, y_p, segment_ids=i, max_segments=MAX_SEG, reduction="mean")
        crf.decode(emissions, m)
        crf.decode(e_p, segment_ids=i)
        jax_llh(crf.crf_params(), emissions, tags, "none", mask=m, batch_first=True)

    calls(mask, LENGTHS, ids)
    other_mask = np.arange(T)[None, :] < np.array([1, 6, 2, 0, 3])[:, None]
    with count_compiles() as compiles:
        calls(other_mask, np.array([0, 6, 2, 3, 1]), other_ids)
    assert compiles.count == 0, compiles.names


# --------------------------------------------------------------------------------------------
# state_dict, module, errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_dict_round_trip_is_bit_exact(dtype):
    torch.manual_seed(10)
    model = TorchCRF(K).to(getattr(torch, dtype))
    crf = CRF(K, rngs=nnx.Rngs(1), param_dtype=getattr(jnp, dtype))
    load_torch_state_dict(crf, model.state_dict())
    for n in NAMES:
        np.testing.assert_array_equal(np.asarray(getattr(crf, n)[...]),
                                      getattr(model, n).detach().numpy())
    sd = torch_state_dict(crf)
    assert list(sd) == list(model.state_dict())
    back = TorchCRF(K).to(getattr(torch, dtype))
    back.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    for n in NAMES:
        assert torch.equal(getattr(back, n), getattr(model, n))
    with pytest.raises(ValueError, match="transitions"):
        load_torch_state_dict(crf, TorchCRF(K + 1).state_dict())


def test_module_init_and_dtype():
    crf = CRF(K, rngs=nnx.Rngs(3))
    assert repr(crf) == "CRF(num_tags=4)"
    shapes = {n: getattr(crf, n).shape for n in NAMES}
    assert shapes == {"start_transitions": (K,), "end_transitions": (K,), "transitions": (K, K)}
    values = np.concatenate([np.ravel(getattr(crf, n)[...]) for n in NAMES])
    assert values.dtype == np.float32 and np.all(np.abs(values) <= 0.1) and values.std() > 0.03
    assert not np.array_equal(crf.start_transitions[...], crf.end_transitions[...])
    # float64 emissions into float32 parameters: computed (and returned) in float32
    llh = crf(np.zeros((T, B, K)), np.zeros((T, B), np.int32), reduction="none")
    assert llh.dtype == jnp.float32 and llh.shape == (B,)
    params = init_crf_params(jax.random.key(0), K, jnp.float64)
    assert all(p.dtype == jnp.float64 for p in params)


def _errors():
    params = params_of(torch_crf(3, False, "float64"))
    e = np.zeros((4, 2, 3))
    y = np.zeros((4, 2), np.int64)
    m = np.ones((4, 2), bool)
    ids = np.array([[1, 1], [1, 2], [2, 2], [0, 0]])
    holes = m.copy()
    holes[1, 0] = False
    llh, dec = crf_log_likelihood, crf_decode
    return [
        ("reduction", lambda: llh(params, e, y, reduction="avg"), ValueError, "reduction"),
        ("rank", lambda: llh(params, e[0], y), ValueError, "dimension of 3"),
        ("num_tags", lambda: llh(params, np.zeros((4, 2, 5)), y), ValueError, "num_tags"),
        ("int_emissions", lambda: llh(params, e.astype(int), y), TypeError, "floating"),
        ("tags_shape", lambda: llh(params, e, y.T), ValueError, "`tags` must match"),
        ("float_tags", lambda: llh(params, e, y.astype(float)), TypeError, "integer"),
        ("tag_range", lambda: llh(params, e, y + 3), ValueError, r"row 0 at t = 0 holds 3"),
        ("neg_tag", lambda: llh(params, e, np.where(m, -1, 0), lengths=[4, 0]), ValueError,
         "holds -1"),
        ("mask_dtype", lambda: llh(params, e, y, m.astype(np.uint8)), TypeError, "bool"),
        ("mask_shape", lambda: llh(params, e, y, m.T), ValueError, "`mask` must match"),
        ("mask_prefix", lambda: dec(params, e, holes), ValueError, "row 0 breaks this at t = 1"),
        ("mask_and_lengths", lambda: llh(params, e, y, m, lengths=[4, 4]), ValueError, "not both"),
        ("ids_and_mask", lambda: dec(params, e, m, segment_ids=ids), ValueError, "excludes"),
        ("max_segments_alone", lambda: llh(params, e, y, max_segments=2), ValueError,
         "only applies"),
        ("lengths_range", lambda: llh(params, e, y, lengths=[5, 1]), ValueError, "T=4"),
        ("lengths_batch", lambda: dec(params, e, lengths=[4]), ValueError, "batch_size"),
        ("ids_layout", lambda: llh(params, e, y, segment_ids=ids[::-1]), ValueError,
         "segment_ids"),
        ("ids_over_max", lambda: llh(params, e, y, segment_ids=ids, max_segments=1), ValueError,
         "max_segments=1"),
        ("params_type", lambda: llh(tuple(params), e, y), TypeError, "CRFParams"),
        ("params_shape", lambda: llh(params._replace(end_transitions=jnp.zeros(2)), e, y),
         ValueError, r"params.end_transitions` must have shape \(3,\)"),
        ("num_tags_zero", lambda: CRF(0, rngs=nnx.Rngs(0)), ValueError, "num_tags"),
        ("param_dtype", lambda: CRF(3, rngs=nnx.Rngs(0), param_dtype=jnp.int32), TypeError,
         "floating"),
        ("lists_traced", lambda: jax.jit(paths_to_lists)(jnp.zeros((2, 2), jnp.int32)),
         ValueError, "concrete"),
    ]


@pytest.mark.parametrize("name", [case[0] for case in _errors()])
def test_errors(name):
    _, call, error, match = next(case for case in _errors() if case[0] == name)
    with pytest.raises(error, match=match):
        call()


def test_pytorch_crf_nan_padding_poisons_its_rows():
    """The pytorch-crf behaviour jaxseq does not copy (its scores are multiplied by the mask)."""
    model = torch_crf(K, True, "float64")
    emissions, tags, mask = batch(LENGTHS, T, K, True, "float64")
    emissions[~mask] = np.nan
    ref = model(torch.from_numpy(emissions), torch.from_numpy(tags), torch.from_numpy(mask),
                reduction="none").detach().numpy()
    ours = jax_llh(params_of(model), emissions, tags, "none", mask=mask, batch_first=True)[0]
    short = LENGTHS < T
    assert np.all(np.isnan(ref[short])) and np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours[~short], ref[~short], rtol=TOL["float64"])


# --------------------------------------------------------------------------------------------
# Property: brute-force enumeration of all K**n paths
# --------------------------------------------------------------------------------------------
BF_T, BF_B = 4, 3       # fixed shapes: compilations depend only on K and the form


def brute_force(params: CRFParams, emissions: np.ndarray, tags: np.ndarray):
    """``(llh, best path)`` of one sequence ``emissions [n, K]`` by enumerating all ``K**n`` paths."""
    start, end, trans = (np.asarray(p) for p in params)
    n, num_tags = emissions.shape

    def score(y):
        return (start[y[0]] + end[y[-1]] + sum(emissions[t, y[t]] for t in range(n))
                + sum(trans[y[t - 1], y[t]] for t in range(1, n)))

    paths = list(itertools.product(range(num_tags), repeat=n))
    scores = np.array([score(y) for y in paths])
    top = scores.max()
    return score(tags) - (top + np.log(np.exp(scores - top).sum())), list(paths[scores.argmax()])


@st.composite
def tiny_cases(draw):
    """``K <= 3``, ``T = 4``, ``B = 3``: padded lengths ``0..4`` and packed rows of segments."""
    num_tags = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(0, BF_T), min_size=BF_B, max_size=BF_B))
    rows = [[n for n, end in zip(r, np.cumsum(r)) if end <= BF_T]   # cut where the row is full
            for r in draw(st.lists(st.lists(st.integers(1, BF_T), max_size=BF_T),
                                   min_size=BF_B, max_size=BF_B))]
    return num_tags, lengths, rows, draw(st.integers(0, 2**16))


@jax.jit
def both_forms(params, emissions, tags, lengths, ids):
    """Per-sequence llh and paths of a padded batch (``lengths``) and of packed rows (``ids``);
    one compilation per ``K``."""
    kw = dict(reduction="none", batch_first=True)
    return (crf_log_likelihood(params, emissions, tags, lengths=lengths, **kw),
            crf_decode(params, emissions, lengths=lengths, batch_first=True),
            crf_log_likelihood(params, emissions, tags, segment_ids=ids, max_segments=BF_T, **kw),
            crf_decode(params, emissions, segment_ids=ids, batch_first=True))


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=tiny_cases())
def test_brute_force_enumeration(case):
    num_tags, lengths, rows, seed = case
    note(f"K={num_tags} lengths={lengths} rows={rows} seed={seed}")
    rng = np.random.default_rng(seed)
    params = CRFParams(*(jnp.asarray(rng.standard_normal(s)) for s in
                         ((num_tags,), (num_tags,), (num_tags, num_tags))))
    emissions = rng.standard_normal((BF_B, BF_T, num_tags))
    tags = rng.integers(0, num_tags, (BF_B, BF_T))
    ids = np.zeros((BF_B, BF_T), np.int32)
    for b, row in enumerate(rows):
        ids[b, :sum(row)] = np.repeat(np.arange(1, len(row) + 1), row)
    llh, paths, llh_rows, paths_rows = both_forms(params, emissions, tags, np.array(lengths), ids)
    # a padded row of length n is a row holding one segment of length n
    cases = [(llh[:, None], paths_to_lists(paths, batch_first=True), [[n] if n else []
                                                                      for n in lengths]),
             (llh_rows, paths_to_lists(paths_rows, ids, batch_first=True), rows)]
    for per_seq, lists, layout in cases:
        per_seq = np.asarray(per_seq)
        for b, row in enumerate(layout):
            offset = 0
            for s, n in enumerate(row):
                where = slice(offset, offset + n)
                ref_llh, ref_path = brute_force(params, emissions[b, where], tags[b, where])
                assert abs(per_seq[b, s] - ref_llh) <= TOL["float64"] * max(1.0, abs(ref_llh))
                found = lists[b][s] if layout is rows else lists[b]
                assert found == ref_path, (b, s)
                offset += n
            assert np.all(per_seq[b, len(row):] == 0)
            if not row:
                assert lists[b] == []
