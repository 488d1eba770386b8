"""``jaxseq.losses.ctc.ctc_loss`` against ``torch.nn.functional.ctc_loss``.

Values and gradients (w.r.t. ``log_probs`` with a random cotangent, and w.r.t. logits through
``log_softmax``) in float64 (rtol 1e-10) and float32 (1e-5), over reductions x zero_infinity x
padded / 1-D targets x batch_first x blank in {0, middle, C-1}; every batch holds infeasible rows
(too short, and repeats making it infeasible), a tight feasible row, empty targets, rows of length
0, 1 and T, NaN at the padding of ``log_probs`` and garbage in the padding of the targets. Also:
long sequences whose log-likelihood is below optax's ``log_epsilon``, ``-inf`` log-probabilities,
feasibility against the exact rule, packed rows (each segment against torch on that sequence
alone), ``jit`` with traced lengths and ``jaxseq.checked``, the errors, and compile counts of
eager calls.
"""
import functools
import itertools

import jax
import torch
import torch.nn.functional as F

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.experimental import checkify  # noqa: E402

from jaxseq import checked  # noqa: E402
from jaxseq.losses.ctc import REDUCTIONS, ctc_loss  # noqa: E402
from parity_tests.cases import split_cases  # noqa: E402
from parity_tests.compiles import count_compiles  # noqa: E402

#: Relative tolerance (to the largest finite reference magnitude) per dtype.
TOL = {"float64": 1e-10, "float32": 1e-5}
T, B, C, S = 12, 8, 6, 4


def _labels(rng, blank, size):
    """``size`` random classes other than ``blank``."""
    return rng.choice([c for c in range(C) if c != blank], size=size)


def make_batch(seed, blank, dtype="float64"):
    """A batch exercising every special row; ``torch_*`` entries are the clean twins.

    Rows: 0 full (il=T, tl=S); 1 lengths 1 and 1; 2 ``a a b`` in 3 frames (infeasible by a
    repeat); 3 three labels in 2 frames (too short); 4 an empty target; 5 il=0, tl=0 (loss 0);
    6 il=0, tl=2 (inf, zero gradient); 7 ``a a b b`` in exactly 6 frames (tight, feasible).
    """
    rng = np.random.default_rng(seed)
    il = np.array([T, 1, 3, 2, 7, 0, 0, 6])
    tl = np.array([S, 1, 3, 3, 0, 0, 2, 4])
    targets = np.zeros((B, S), np.int64)
    for b in range(B):
        targets[b, :tl[b]] = _labels(rng, blank, tl[b])
    a, c = _labels(rng, blank, 2)
    c = c if c != a else next(x for x in range(C) if x not in (blank, a))
    targets[2, :3] = [a, a, c]
    targets[7, :4] = [a, a, c, c]
    garbage = targets.copy()
    pad = np.arange(S)[None] >= tl[:, None]
    garbage[pad] = rng.choice([blank, -7, 99, a], size=pad.sum())
    valid = np.arange(T)[:, None] < il[None]                                    # [T, B]
    logits = rng.normal(size=(T, B, C)) * 2
    torch_logits = np.where(valid[..., None], logits, 0.0)
    logits = np.where(valid[..., None], logits, rng.normal(size=(T, B, C)) * 1e3)
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(torch_logits)))
    return dict(logits=logits.astype(dtype), torch_logits=torch_logits.astype(dtype),
                lp=np.where(valid[..., None], lp, np.nan).astype(dtype),
                torch_lp=np.where(valid[..., None], lp, 0.0).astype(dtype),
                targets=garbage, torch_targets=targets, il=il, tl=tl)


def concatenated(targets, tl):
    return np.concatenate([targets[b, :tl[b]] for b in range(len(tl))])


def torch_side(batch, cotangent, *, flat, through_logits, **options):
    """torch's loss, gradient w.r.t. log_probs and (``through_logits``) w.r.t. logits."""
    targets = batch["torch_targets"]
    targets = torch.tensor(concatenated(targets, batch["tl"]) if flat else targets)
    il, tl = torch.tensor(batch["il"]), torch.tensor(batch["tl"])
    cotangent = torch.tensor(cotangent, dtype=torch.float64 if cotangent.dtype == np.float64
                             else torch.float32)
    lp = torch.tensor(batch["torch_lp"], requires_grad=True)
    loss = F.ctc_loss(lp, targets, il, tl, **options)
    (grad_lp,) = torch.autograd.grad(loss, lp, cotangent)
    if not through_logits:
        return loss.detach().numpy(), grad_lp.numpy()
    logits = torch.tensor(batch["torch_logits"], requires_grad=True)
    loss_x = F.ctc_loss(logits.log_softmax(-1), targets, il, tl, **options)
    (grad_x,) = torch.autograd.grad(loss_x, logits, cotangent)
    return loss.detach().numpy(), grad_lp.numpy(), grad_x.numpy()


@functools.partial(jax.jit, static_argnames=("options", "through_logits"))
def jax_side(lp, logits, targets, il, tl, cotangent, options, through_logits):
    """As :func:`torch_side` (``options``: the keyword arguments, as sorted pairs). With
    ``through_logits`` the loss is taken at ``lp = jax.nn.log_softmax(logits)`` and both gradients
    come from that one backward pass (the gradient of the composition, as ``jax.grad`` forms it)."""
    if through_logits:
        lp, log_softmax_vjp = jax.vjp(jax.nn.log_softmax, logits)
    loss, vjp = jax.vjp(lambda a: ctc_loss(a, targets, il, tl, **dict(options)), lp)
    (grad_lp,) = vjp(cotangent)
    if not through_logits:
        return loss, grad_lp
    return loss, grad_lp, log_softmax_vjp(grad_lp)[0]


def value_and_vjp(fn, x, cotangent):
    """``fn(x)`` and its vjp with ``cotangent`` (jit it: one compilation for both)."""
    value, vjp = jax.vjp(fn, x)
    return value, vjp(cotangent)[0]


def assert_matches(got, want, tol, what=""):
    """Same NaN / inf pattern; finite entries within ``tol`` of the largest finite ``|want|``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN pattern {what}")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)],
                                  err_msg=f"inf {what}")
    scale = max(np.max(np.abs(want[finite]), initial=0.0), np.finfo(np.float64).tiny)
    err = np.max(np.abs(got[finite] - want[finite]), initial=0.0) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"
    return err


def check_parity(batch, dtype, *, flat=False, batch_first=False, through_logits=False,
                 **options):
    """jaxseq vs torch on ``batch``: the relative errors (loss, grad log_probs[, grad logits])."""
    rng = np.random.default_rng(1)
    shape = (B,) if options.get("reduction") == "none" else ()
    cotangent = rng.normal(size=shape).astype(dtype)
    want = torch_side(batch, cotangent, flat=flat, through_logits=through_logits, **options)
    targets = concatenated(batch["torch_targets"], batch["tl"]) if flat else batch["targets"]
    lp, logits = batch["lp"], batch["logits"]
    if batch_first:
        lp, logits = np.swapaxes(lp, 0, 1), np.swapaxes(logits, 0, 1)
    got = jax_side(lp, logits, targets, batch["il"], batch["tl"], cotangent,
                   tuple(sorted(dict(options, batch_first=batch_first).items())), through_logits)
    if batch_first:
        got = (got[0],) + tuple(np.swapaxes(g, 0, 1) for g in got[1:])
    pad = np.arange(T)[:, None] >= batch["il"][None]
    for grad in got[1:]:          # padding (NaN / huge garbage there) gets exactly zero gradient
        assert (np.asarray(grad)[pad] == 0).all()
    names = ("loss", "grad log_probs", "grad logits")
    return [assert_matches(g, w, TOL[dtype], name) for g, w, name in zip(got, want, names)]


# reduction x zero_infinity x form x batch_first x blank: the full product (gradients w.r.t.
# log_probs and logits) runs in the slow sweep; the default run covers every value of every axis
# and every (reduction, zero_infinity), w.r.t. logits in the two DEFAULT_LOGITS cases
GRID = list(itertools.product(REDUCTIONS, (False, True), ("padded", "flat"), (False, True),
                              ("0", "mid", "last")))
DEFAULT_LP = [("none", False, "padded", False, "0"), ("none", True, "padded", False, "0"),
              ("sum", True, "flat", True, "last"), ("mean", False, "flat", False, "mid")]
DEFAULT_LOGITS = [("sum", False, "padded", True, "mid"), ("mean", True, "padded", False, "last")]
BLANKS = {"0": 0, "mid": C // 2, "last": C - 1}


@pytest.mark.parametrize("reduction,zero_infinity,form,batch_first,blank",
                         split_cases(GRID, DEFAULT_LP + DEFAULT_LOGITS))
def test_parity_float64(reduction, zero_infinity, form, batch_first, blank):
    case = (reduction, zero_infinity, form, batch_first, blank)
    check_parity(make_batch(0, BLANKS[blank]), "float64", flat=form == "flat",
                 batch_first=batch_first, through_logits=case not in DEFAULT_LP,
                 reduction=reduction, zero_infinity=zero_infinity, blank=BLANKS[blank])


@pytest.mark.parametrize("seed", split_cases(range(6), [3]))
@pytest.mark.parametrize("reduction", split_cases(REDUCTIONS, ["mean"]))
def test_parity_float32(seed, reduction):
    check_parity(make_batch(seed, 0, "float32"), "float32", reduction=reduction,
                 zero_infinity=True)


def test_float32_long_realistic():
    """T=200, C=30: float32 against the float64 result on the same (float32) inputs. On long
    sequences float32 log-space values carry absolute errors ~ |log-likelihood| * 6e-8, so torch's
    own float32 gradient is off by 3.8e-4 here; jaxseq's must be at least as close."""
    rng = np.random.default_rng(5)
    t, b, c, s = 200, 4, 30, 40
    il, tl = np.array([200, 150, 90, 181]), np.array([40, 33, 20, 1])
    targets = rng.integers(1, c, size=(b, s))
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(rng.normal(size=(t, b, c)) * 3, jnp.float32)))

    def torch_loss(x):
        x = torch.tensor(x, requires_grad=True)
        loss = F.ctc_loss(x, torch.tensor(targets), torch.tensor(il), torch.tensor(tl),
                          reduction="sum")
        return loss.detach().numpy(), torch.autograd.grad(loss, x)[0].numpy()

    reference = torch_loss(lp.astype(np.float64))
    torch32 = torch_loss(lp)
    value, grad = jax.jit(jax.value_and_grad(
        lambda a: ctc_loss(a, targets, il, tl, reduction="sum")))(lp)
    assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
    assert_matches(value, reference[0], 1e-6, "loss")
    torch_err = assert_matches(torch32[1], reference[1], 1e-3, "torch grad")
    assert assert_matches(grad, reference[1], 1e-4, "grad") <= torch_err


def test_eager_flat_targets_match_torch():
    """Eager calls check on the host and spread 1-D targets there (to N = max(target_lengths));
    the gradients of that path are the jitted ones (test_parity_float64)."""
    batch = make_batch(2, 1)
    flat = concatenated(batch["torch_targets"], batch["tl"])
    loss = ctc_loss(batch["lp"], flat, batch["il"], batch["tl"], blank=1, reduction="none")
    want = torch_side(batch, np.ones(B), flat=True, through_logits=False, blank=1,
                      reduction="none")
    assert_matches(loss, want[0], 1e-10, "loss")


def test_long_sequences_beyond_log_epsilon():
    """Log-likelihoods far below -1e5 (optax's log(0)) stay exact: 500 frames, 200 labels."""
    t, c = 500, 3
    logits = np.zeros((t, 2, c))
    logits[:, 0, 1:] = -600.0                          # row 0: confidently wrong everywhere
    logits[:, 1] = np.random.default_rng(0).normal(size=(t, c))
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
    targets = np.array([[1, 2] * 100, [2, 1] * 100])
    il, tl = np.array([t, t]), np.array([200, 150])
    lp_t = torch.tensor(lp, requires_grad=True)
    loss = F.ctc_loss(lp_t, torch.tensor(targets), torch.tensor(il), torch.tensor(tl),
                      reduction="none")
    cot = np.array([0.7, -1.3])
    (grad,) = torch.autograd.grad(loss, lp_t, torch.tensor(cot))
    value, got = jax_side(lp, lp, targets, il, tl, cot, (("reduction", "none"),), False)
    assert loss[0].item() > 1.1e5                      # far below log_epsilon = -1e5
    assert_matches(value, loss.detach().numpy(), 1e-10, "loss")
    # torch's own error shows here: its posteriors of row 0 sum to 1 only within 7e-11 per frame
    # (it differs from jaxseq by 5.7e-11); jaxseq's sum to 1 within 1e-15
    assert_matches(got, grad.numpy(), 2e-10, "grad")
    frame_sums = np.asarray(got).sum(axis=-1) / cot          # exp(lp) and posterior both sum to 1
    assert np.abs(frame_sums).max() < 1e-13


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_minus_inf_log_probs(zero_infinity):
    """A class at -inf everywhere is harmless; a needed label at -inf on every frame makes the
    row's loss infinite (torch's zero_infinity rule is loss == inf). One deliberate difference:
    at a -inf log-probability torch's gradient is exp(lp) - exp(... - lp) = NaN even in a
    feasible row, jaxseq's is its limit 0."""
    batch = make_batch(0, 0)
    for key in ("targets", "torch_targets"):
        batch[key] = np.where(batch[key] == C - 1, 1, batch[key])
    valid = np.arange(T)[:, None] < batch["il"][None]
    for key in ("lp", "torch_lp"):
        batch[key] = batch[key].copy()
        batch[key][..., C - 1] = np.where(valid, -np.inf, batch[key][..., C - 1])
        batch[key][:, 0, batch["torch_targets"][0, 0]] = -np.inf           # row 0: impossible
    rng = np.random.default_rng(1)
    cotangent = rng.normal(size=B)
    loss, grad = torch_side(batch, cotangent, flat=False, through_logits=False, reduction="none",
                            zero_infinity=zero_infinity)
    got = jax_side(batch["lp"], batch["logits"], batch["targets"], batch["il"], batch["tl"],
                   cotangent, (("batch_first", False), ("blank", 0), ("reduction", "none"),
                               ("zero_infinity", zero_infinity)), False)
    assert np.isinf(loss[0]) != zero_infinity and np.isfinite(loss[[1, 4, 5, 7]]).all()
    torch_nan_at_minus_inf = np.isnan(grad) & (batch["torch_lp"] == -np.inf)
    torch_nan_at_minus_inf[:, np.isinf(loss)] = False                 # infinite rows: NaN both
    assert torch_nan_at_minus_inf.any()
    assert (np.asarray(got[1])[torch_nan_at_minus_inf] == 0).all()
    assert_matches(got[0], loss, 1e-10, "loss")
    assert_matches(got[1], np.where(torch_nan_at_minus_inf, 0, grad), 1e-10, "grad")


def test_unnormalised_inputs_as_torch():
    """``log_probs`` are used as given, like torch (no log_softmax inside, unlike optax): raw
    scores give torch's value and torch's gradient ``exp(lp) - posterior``."""
    batch = make_batch(4, 0)
    valid = (np.arange(T)[:, None] < batch["il"][None])[..., None]
    batch["torch_lp"] = np.where(valid, batch["torch_logits"], 0.0)
    batch["lp"] = np.where(valid, batch["torch_logits"], np.nan)
    check_parity(batch, "float64", reduction="none", zero_infinity=False, blank=0)


def test_feasibility_is_exact():
    """Rows are infinite exactly when input_length < target_length + adjacent repeats (torch's
    rule too), over random lengths and targets drawn from two labels (many repeats)."""
    rng = np.random.default_rng(7)
    t, b, s = 8, 96, 6
    tl = rng.integers(0, s + 1, size=b)
    targets = rng.integers(1, 3, size=(b, s))
    repeats = np.array([np.sum(targets[i, 1:tl[i]] == targets[i, :tl[i] - 1]) if tl[i] > 1
                        else 0 for i in range(b)])
    il = np.clip(tl + repeats + rng.integers(-2, 2, size=b), 0, t)
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(rng.normal(size=(t, b, 3)))))
    value = np.asarray(ctc_loss(lp, targets, il, tl, reduction="none"))
    infeasible = il < tl + repeats
    assert infeasible.any() and (~infeasible).any()
    np.testing.assert_array_equal(np.isinf(value), infeasible)
    want = F.ctc_loss(torch.tensor(lp), torch.tensor(targets), torch.tensor(il),
                      torch.tensor(tl), reduction="none").numpy()
    assert_matches(value, want, 1e-10, "loss")


def test_empty_targets_and_zero_lengths():
    """All targets empty, padded [B, 0] and 1-D of length 0; rows of length 0; T = 0."""
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(np.random.default_rng(4).normal(
        size=(5, 3, 4)))))
    il, tl = np.array([5, 2, 0]), np.zeros(3, np.int64)
    want = F.ctc_loss(torch.tensor(lp), torch.zeros(3, 0, dtype=torch.long), torch.tensor(il),
                      torch.tensor(tl), reduction="none").numpy()
    for targets in (np.zeros((3, 0), np.int64), np.zeros((0,), np.int64)):
        assert_matches(ctc_loss(lp, targets, il, tl, reduction="none"), want, 1e-10, "loss")
    # T = 0 (torch raises): every row has no frames, so loss 0 for an empty target, else inf
    empty = ctc_loss(np.zeros((0, 2, 4)), np.array([[1], [1]]), np.array([0, 0]),
                     np.array([0, 1]), reduction="none")
    assert np.asarray(empty).tolist() == [0.0, np.inf]


def test_half_precision_inputs():
    """bfloat16 log-probs are computed in float32 (torch float32 on the same values) and the
    result is rounded to bfloat16."""
    batch = make_batch(0, 0)
    lp = jnp.asarray(batch["lp"], jnp.bfloat16)
    value = ctc_loss(lp, batch["targets"], batch["il"], batch["tl"], reduction="none",
                     zero_infinity=True)
    assert value.dtype == jnp.bfloat16
    want = F.ctc_loss(torch.tensor(np.asarray(lp.astype(jnp.float32))).nan_to_num(0.0),
                      torch.tensor(batch["torch_targets"]), torch.tensor(batch["il"]),
                      torch.tensor(batch["tl"]), reduction="none", zero_infinity=True)
    np.testing.assert_array_equal(value, jnp.asarray(want.numpy()).astype(jnp.bfloat16))


# --------------------------------------------------------------------------------------------
# Packed rows
# --------------------------------------------------------------------------------------------
def packed_batch(seed):
    """Three rows of up to three segments each; the same sequences unpacked for torch."""
    rng = np.random.default_rng(seed)
    rows = [[(5, [1, 2]), (4, [3, 3]), (3, [2])], [(12, [4, 1, 1, 2])], [(2, [1, 2, 3]), (6, [])]]
    t, k, n = 12, 3, 4
    ids = np.zeros((len(rows), t), np.int64)
    targets = np.full((len(rows), k, n), 77)                 # garbage where unused
    tl = np.zeros((len(rows), k), np.int64)
    sequences = []
    for b, row in enumerate(rows):
        start = 0
        for j, (length, labels) in enumerate(row):
            ids[b, start:start + length] = j + 1
            targets[b, j, :len(labels)] = labels
            tl[b, j] = len(labels)
            sequences.append((b, j, start, length, labels))
            start += length
    targets[2, 2, :2], tl[2, 2] = [1, 2], 2                  # an absent segment: ignored
    logits = rng.normal(size=(len(rows), t, 5))
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
    lp = np.where(ids[..., None] > 0, lp, np.nan)
    return lp, ids, targets, tl, sequences


@pytest.mark.parametrize("zero_infinity", split_cases([False, True], [False]))
def test_packed_rows_match_torch_per_segment(zero_infinity):
    lp, ids, targets, tl, sequences = packed_batch(0)
    cot = np.random.default_rng(2).normal(size=tl.shape)
    options = dict(zero_infinity=zero_infinity, batch_first=True, segment_ids=ids)
    value, grad = jax.jit(functools.partial(value_and_vjp, lambda a: ctc_loss(
        a, targets, None, tl, reduction="none", **options)))(lp, cot)
    grad = np.asarray(grad)
    assert value.shape == tl.shape and value[2, 2] == 0       # absent segment
    want_grad = np.zeros_like(grad)
    for b, j, start, length, labels in sequences:
        x = torch.tensor(lp[b:b + 1, start:start + length].transpose(1, 0, 2), requires_grad=True)
        loss = F.ctc_loss(x, torch.tensor([labels + [1]]), torch.tensor([length]),
                          torch.tensor([len(labels)]), reduction="sum",
                          zero_infinity=zero_infinity)
        (g,) = torch.autograd.grad(loss, x, torch.tensor(cot[b, j]))
        assert_matches(value[b, j], loss.detach().numpy(), 1e-10, f"segment {b, j}")
        want_grad[b, start:start + length] = g.numpy()[:, 0]
    assert_matches(grad, want_grad, 1e-10, "grad")             # 0 at padding, NaN-free there
    per = np.asarray(value)
    present = np.zeros(tl.shape, bool)
    for b, j, *_ in sequences:
        present[b, j] = True
    mean = ctc_loss(lp, targets, None, tl, reduction="mean", **options)
    assert_matches(mean, (per / np.maximum(tl, 1))[present].mean(), 1e-12, "mean")


def test_packed_rows_of_one_segment_equal_padded():
    """One segment per row is the padded batch, except that a row of length 0 is a sequence
    (torch: loss 0 or inf) while a segment number that does not occur is not (loss 0, left out
    of "mean")."""
    batch = make_batch(6, 0)
    ids = (np.arange(T)[:, None] < batch["il"][None]).astype(np.int64)        # [T, B]
    present = batch["il"] > 0
    padded = torch_side(batch, np.ones(B), flat=False, through_logits=False, reduction="none",
                        zero_infinity=True)[0]
    for reduction, want in (("none", np.where(present, padded, 0)[:, None]),
                            ("mean", (padded / np.maximum(batch["tl"], 1))[present].mean())):
        got = ctc_loss(batch["lp"], batch["targets"][:, None], None, batch["tl"][:, None],
                       reduction=reduction, zero_infinity=True, segment_ids=ids)
        assert_matches(got, want, 1e-10, reduction)


# --------------------------------------------------------------------------------------------
# jit, checked, errors, compilations
# --------------------------------------------------------------------------------------------
def test_jit_traced_lengths_and_flat_targets():
    """Under jit: padded targets, and 1-D targets spread to len(targets) (the default) or to
    max_target_length."""
    batch = make_batch(1, 0)
    flat = concatenated(batch["torch_targets"], batch["tl"])
    want = torch_side(batch, np.ones(B), flat=False, through_logits=False, reduction="none")[0]
    for targets, extra in ((batch["targets"], {}), (flat, {}),
                           (flat, {"max_target_length": S})):
        f = jax.jit(functools.partial(ctc_loss, reduction="none", **extra))
        assert_matches(f(batch["lp"], targets, batch["il"], batch["tl"]), want, 1e-10, "loss")


def _checked_loss(lp, targets, il, tl):
    return ctc_loss(lp, targets, il, tl, reduction="sum")


CHECKED_LOSS = checked(_checked_loss)          # one compilation for the cases below


@pytest.mark.parametrize("change,message", [
    ({"il": [13, 1]}, r"input_lengths.*input_lengths\[0\] = 13"),
    ({"tl": [5, 1]}, r"target_lengths.*S=4.*target_lengths\[0\] = 5"),
    ({"targets": [[1, 0, 2, 3], [1, 9, 9, 9]]}, r"targets.*blank=0.*targets\[0, 1\] = 0"),
    ({"targets": [[1, 2, 2, 3], [6, 9, 9, 9]]}, r"targets\[1, 0\] = 6"),
])
def test_checked_catches_traced_values(change, message):
    good = dict(lp=np.zeros((T, 2, C)), targets=[[1, 2, 2, 3], [1, 9, 9, 9]], il=[12, 1],
                tl=[4, 1])
    step = CHECKED_LOSS
    step(*(np.asarray(v) for v in good.values()))
    bad = dict(good, **change)
    with pytest.raises(checkify.JaxRuntimeError, match=message):
        step(*(np.asarray(v) for v in bad.values()))


def test_checked_flat_sum():
    step = checked(_checked_loss)
    with pytest.raises(checkify.JaxRuntimeError, match=r"sum\(target_lengths\) = 3"):
        step(np.zeros((T, 2, C)), np.array([1, 2]), np.array([5, 5]), np.array([2, 1]))


GOOD = dict(log_probs=np.zeros((T, 2, C)), targets=np.array([[1, 2, 0], [3, 0, 0]]),
            input_lengths=np.array([12, 3]), target_lengths=np.array([2, 1]))


@pytest.mark.parametrize("change,error,message", [
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"log_probs": np.zeros((T, C))}, ValueError, r"\[T, B, C\]"),
    ({"log_probs": np.zeros((T, 2, C), np.int32)}, TypeError, "floating"),
    ({"targets": np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])}, TypeError, "integer"),
    ({"targets": np.array([[1, 2, 0]])}, ValueError, "B=2 rows"),
    ({"targets": np.zeros((2, 3, 1, 1), np.int64)}, ValueError, "padded"),
    ({"input_lengths": np.array([13, 3])}, ValueError, r"input_lengths\[0\] = 13"),
    ({"input_lengths": np.array([12, -1])}, ValueError, r"input_lengths\[1\] = -1"),
    ({"input_lengths": np.array([12, 3, 1])}, ValueError, "batch_size"),
    ({"input_lengths": np.array([12.0, 3.0])}, TypeError, "integer"),
    ({"input_lengths": None}, ValueError, "required"),
    ({"target_lengths": np.array([4, 1])}, ValueError, r"S=3.*target_lengths\[0\] = 4"),
    ({"target_lengths": np.array([2, -1])}, ValueError, r"target_lengths\[1\] = -1"),
    ({"target_lengths": np.array([2])}, ValueError, "shape"),
    ({"targets": np.array([[1, 0, 0], [3, 0, 0]])}, ValueError, r"blank=0.*targets\[0, 1\] = 0"),
    ({"targets": np.array([[1, 6, 0], [3, 0, 0]])}, ValueError, r"\[0, 6\).*targets\[0, 1\] = 6"),
    ({"targets": np.array([[1, -1, 0], [3, 0, 0]])}, ValueError, r"targets\[0, 1\] = -1"),
    ({"blank": C}, ValueError, "label range"),
    ({"blank": -1}, ValueError, "label range"),
    ({"blank": 1.0}, TypeError, "blank"),
    ({"targets": np.array([1, 2, 3, 4])}, ValueError, r"4 entries.*= 3"),
    ({"targets": np.array([1, 0, 3])}, ValueError, r"targets\[1\] = 0"),
    ({"targets": np.array([1, 2, 3]), "max_target_length": 1}, ValueError,
     r"max_target_length=1.*target_lengths\[0\] = 2"),
    ({"max_target_length": 3}, ValueError, "1-D"),
    ({"segment_ids": np.ones((T, 2), np.int64)}, ValueError, "excludes"),
])
def test_errors(change, error, message):
    arguments = dict(GOOD, **change)
    with pytest.raises(error, match=message):
        ctc_loss(**arguments)


def test_segment_errors():
    lp, ids, targets, tl, _ = packed_batch(0)
    with pytest.raises(ValueError, match=r"\[B, K, N\]"):
        ctc_loss(lp, targets[:, 0], None, tl, segment_ids=ids, batch_first=True)
    with pytest.raises(ValueError, match=r"N=4.*target_lengths\[0, 1\] = 5"):
        ctc_loss(lp, targets, None, np.where(np.arange(3) == 1, 5, tl), segment_ids=ids,
                 batch_first=True)
    with pytest.raises(ValueError, match="max_segments"):
        ctc_loss(lp, targets[:, :1], None, tl[:, :1], segment_ids=ids, batch_first=True)


def test_eager_calls_do_not_recompile():
    """A second eager call with new lengths and targets of the same shapes compiles nothing."""
    rng = np.random.default_rng(9)
    t, b, c, s = 7, 3, 5, 1                     # shapes no other test uses

    def call(flat):
        il = rng.integers(4, t + 1, size=b)
        tl = rng.integers(0, s + 1, size=b)      # <= 1 label: always feasible in 4 frames
        lp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(t, b, c))))
        targets = rng.integers(1, c, size=(b, s))
        if flat:                                 # the same total and maximum each call
            tl = np.array([1, 1, 0])
            targets = targets[:2, 0]
        return jax.value_and_grad(lambda a: ctc_loss(a, targets, il, tl))(lp)

    with count_compiles() as first:
        call(False)
    assert any("_ctc_core" in name for name in first.names), first.names   # the counter works
    for flat in (False, True):
        call(flat)
        with count_compiles() as compiles:
            value, grad = call(flat)
        assert compiles.count == 0, compiles.names
        assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()
