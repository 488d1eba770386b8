"""masked_cross_entropy / masked_mse / masked_l1 vs torch.nn.functional: values and gradients."""
import jax
import torch

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from jaxseq.losses import masked_cross_entropy, masked_l1, masked_mse  # noqa: E402

RTOL = 1e-10
C = 5
IGNORE = {"absent": -100, "negative": -100, "class": 1}  # how ignore_index shows up in targets


def _ce_case(shape, ignore, use_mask, seed=0):
    """Random logits ``[..., C]``, targets and mask; garbage targets where mask is False."""
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((*shape, C))
    targets = np.asarray(rng.integers(0, C, size=shape))
    if ignore != "absent":
        targets[rng.random(shape) < 0.3] = IGNORE[ignore]
    mask = rng.random(shape) < 0.7 if use_mask else None
    if use_mask:
        targets[~mask] = rng.choice([99, -5, 0], size=(~mask).sum())
        mask.flat[0] = mask.flat[-1] = True
    targets.flat[0] = 0  # at least one contributing position
    if ignore != "absent":
        targets.flat[-1] = IGNORE[ignore]  # at least one ignored, unmasked position
    return logits, targets, mask


def _torch_ce(logits, targets, mask, cotangent, **kw):
    """torch value and d/dlogits (of ``sum(loss * cotangent)``), class axis moved to dim 1."""
    tgt = targets if mask is None else np.where(mask, targets, kw["ignore_index"])
    lt = torch.from_numpy(np.array(logits)).requires_grad_()
    weight = kw.pop("weight")
    loss = F.cross_entropy(lt.movedim(-1, 1) if lt.dim() > 1 else lt, torch.from_numpy(tgt),
                           weight=None if weight is None else torch.from_numpy(weight), **kw)
    (loss * torch.from_numpy(np.asarray(cotangent))).sum().backward()
    return loss.detach().numpy(), lt.grad.numpy()


def _jax_ce(logits, targets, mask, cotangent, **kw):
    value, vjp = jax.vjp(lambda lg: masked_cross_entropy(
        lg, jnp.asarray(targets), None if mask is None else jnp.asarray(mask), **kw),
        jnp.asarray(logits))
    return np.asarray(value), np.asarray(vjp(jnp.asarray(cotangent))[0])


def _rel_err(got, ref):
    """Largest ``|got - ref|`` relative to ``max|ref|`` (0 when both are all zero)."""
    scale = np.max(np.abs(ref), initial=0.0)
    diff = np.max(np.abs(got - ref), initial=0.0)
    return 0.0 if diff == 0 else diff / scale


def ce_parity(shape, reduction, ignore, use_weight, label_smoothing, use_mask):
    """(value rel err, grad rel err) of masked_cross_entropy vs torch for one configuration."""
    logits, targets, mask = _ce_case(shape, ignore, use_mask)
    rng = np.random.default_rng(1)
    weight = rng.uniform(0.2, 2.0, C) if use_weight else None
    cotangent = rng.standard_normal(shape) if reduction == "none" else np.float64(1.0)
    kw = dict(ignore_index=IGNORE[ignore], reduction=reduction, label_smoothing=label_smoothing)
    value, grad = _jax_ce(logits, targets, mask, cotangent, weight=weight, **kw)
    ref_value, ref_grad = _torch_ce(logits, targets, mask, cotangent, weight=weight, **kw)
    assert value.shape == ref_value.shape
    np.testing.assert_allclose(value, ref_value, rtol=RTOL, atol=0)
    np.testing.assert_allclose(grad, ref_grad, rtol=RTOL, atol=0)
    return _rel_err(value, ref_value), _rel_err(grad, ref_grad)


@pytest.mark.parametrize("use_mask", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15], ids=["ls0", "ls0.15"])
@pytest.mark.parametrize("use_weight", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("ignore", sorted(IGNORE))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(reduction, ignore, use_weight, label_smoothing, use_mask):
    """Every reduction x ignore_index x weight x label_smoothing x mask on ``[B, T, C]`` logits."""
    value_err, grad_err = ce_parity((3, 6), reduction, ignore, use_weight, label_smoothing,
                                    use_mask)
    assert value_err <= RTOL and grad_err <= RTOL


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape, ignore", [((7,), "absent"), ((7,), "negative"), ((), "absent")],
                         ids=["N", "N-ignored", "unbatched"])
def test_cross_entropy_other_ranks_match_torch(shape, reduction, ignore):
    """``[N, C]`` and unbatched ``[C]`` logits, with weight, label smoothing and ignore_index."""
    value_err, grad_err = ce_parity(shape, reduction, ignore, True, 0.15, False)
    assert value_err <= RTOL and grad_err <= RTOL


def test_cross_entropy_mask_equals_ignore_index_and_broadcasts():
    logits, targets, _ = _ce_case((3, 6), "absent", False)
    row_mask = np.array([[True], [False], [True]])  # [B, 1] broadcasts over T
    ours = masked_cross_entropy(logits, targets, jnp.asarray(row_mask), reduction="none",
                                label_smoothing=0.1, weight=jnp.arange(1.0, C + 1))
    ignored = np.where(np.broadcast_to(row_mask, targets.shape), targets, -100)
    via_ignore = masked_cross_entropy(logits, ignored, reduction="none", label_smoothing=0.1,
                                      weight=jnp.arange(1.0, C + 1))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(via_ignore))
    assert (np.asarray(ours)[1] == 0).all() and (np.asarray(ours)[0] > 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_nan_logits_at_masked_positions(reduction, label_smoothing):
    """NaN/inf logits where nothing contributes: same value as finite ones, finite zero grads."""
    logits, targets, mask = _ce_case((3, 6), "negative", True, seed=3)
    dead = ~mask | (targets == -100)
    poisoned = logits.copy()
    poisoned[dead] = np.array([np.nan, np.inf, -np.inf, 1e308, 0.0])
    cot = np.random.default_rng(2).standard_normal((3, 6)) if reduction == "none" else 1.0
    kw = dict(reduction=reduction, label_smoothing=label_smoothing, weight=np.linspace(0.5, 2, C))
    value, grad = _jax_ce(poisoned, targets, mask, cot, **kw)
    ref_value, ref_grad = _torch_ce(logits, targets, mask, cot, ignore_index=-100, **kw)
    np.testing.assert_allclose(value, ref_value, rtol=RTOL, atol=0)
    assert np.isfinite(grad).all()
    assert (grad[dead] == 0).all()
    np.testing.assert_allclose(grad, ref_grad, rtol=RTOL, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_nothing_contributes(reduction):
    """All masked: 0 loss and zero grads (torch's "mean" gives NaN here; documented difference)."""
    logits = np.full((3, 6, C), np.nan)
    targets = np.zeros((3, 6), np.int64)
    value, grad = _jax_ce(logits, targets, np.zeros((3, 6), bool),
                          np.ones((3, 6)) if reduction == "none" else 1.0, reduction=reduction,
                          label_smoothing=0.1)
    np.testing.assert_array_equal(value, 0.0)
    np.testing.assert_array_equal(grad, 0.0)
    zero_weight = masked_cross_entropy(jnp.zeros((7, C)), jnp.arange(7) % (C - 1) + 1,
                                       weight=jnp.zeros(C).at[0].set(1.0), reduction=reduction)
    np.testing.assert_array_equal(np.asarray(zero_weight), 0.0)


def test_cross_entropy_under_jit_with_traced_mask():
    logits, targets, mask = _ce_case((3, 6), "negative", True, seed=4)
    fn = jax.jit(lambda lg, t, m: masked_cross_entropy(lg, t, m, label_smoothing=0.1))
    ref, _ = _torch_ce(logits, targets, mask, 1.0, ignore_index=-100, reduction="mean",
                       label_smoothing=0.1, weight=None)
    np.testing.assert_allclose(float(fn(logits, targets, mask)), ref, rtol=RTOL)
    bad = targets.copy()
    bad[mask & (targets != -100)] = C  # out of range at a contributing position: NaN under jit
    assert np.isnan(float(fn(logits, bad, mask)))


def test_cross_entropy_errors():
    logits, targets = jnp.zeros((3, 6, C)), jnp.zeros((3, 6), jnp.int32)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 6, 5\)"):
        masked_cross_entropy(logits, jnp.zeros((3, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"\(6, 3\).*\(3, 6\)"):
        masked_cross_entropy(logits, targets, jnp.ones((6, 3), bool))
    with pytest.raises(ValueError, match="reduction"):
        masked_cross_entropy(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        masked_cross_entropy(logits, targets, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"\(5,\).*\(4,\)"):
        masked_cross_entropy(logits, targets, weight=jnp.ones(4))
    with pytest.raises(ValueError, match=r"\[0, 5\).*got 5 at index \(1, 2\)"):
        masked_cross_entropy(logits, targets.at[1, 2].set(C))
    with pytest.raises(ValueError, match="got -3"):
        masked_cross_entropy(logits, targets.at[0, 0].set(-3))
    with pytest.raises(TypeError, match="integer"):
        masked_cross_entropy(logits, targets.astype(float))
    with pytest.raises(TypeError, match="floating"):
        masked_cross_entropy(logits.astype(int), targets)
    with pytest.raises(TypeError, match="bool"):
        masked_cross_entropy(logits, targets, jnp.ones((3, 6)))
    # Out-of-range values are fine where they do not contribute.
    keep = jnp.ones((3, 6), bool).at[1, 2].set(False)
    assert np.isfinite(float(masked_cross_entropy(logits, targets.at[1, 2].set(C), keep)))


LOSSES = {"mse": (masked_mse, F.mse_loss), "l1": (masked_l1, F.l1_loss)}
MASKS = {"none": None, "full": (2, 5, 3), "feature_broadcast": (2, 5, 1), "row_broadcast": (2, 1, 1)}


def _regression_parity(loss, reduction, mask_kind, seed=0):
    ours_fn, torch_fn = LOSSES[loss]
    rng = np.random.default_rng(seed)
    pred, target = rng.standard_normal((2, 2, 5, 3))
    target[0, 0, 0] = pred[0, 0, 0]  # |d| = 0: l1 gradient must be 0 in both
    mask = None if MASKS[mask_kind] is None else rng.random(MASKS[mask_kind]) < 0.6
    if mask is not None:
        mask.flat[0] = mask.flat[-1] = True
    cot = rng.standard_normal(pred.shape) if reduction == "none" else np.float64(1.0)
    value, vjp = jax.vjp(lambda p, t: ours_fn(p, t, None if mask is None else jnp.asarray(mask),
                                              reduction=reduction), jnp.asarray(pred),
                         jnp.asarray(target))
    grads = vjp(jnp.asarray(cot))
    pt, tt = (torch.from_numpy(a.copy()).requires_grad_() for a in (pred, target))
    full = torch.ones(pred.shape, dtype=torch.bool) if mask is None else torch.from_numpy(
        np.broadcast_to(mask, pred.shape).copy())
    if reduction == "none":
        ref = torch.where(full, torch_fn(pt, tt, reduction="none"), 0.0)
    else:
        ref = torch_fn(pt[full], tt[full], reduction=reduction)
    (ref * torch.from_numpy(np.asarray(cot))).sum().backward()
    np.testing.assert_allclose(np.asarray(value), ref.detach().numpy(), rtol=RTOL, atol=0)
    np.testing.assert_allclose(np.asarray(grads[0]), pt.grad.numpy(), rtol=RTOL, atol=0)
    np.testing.assert_allclose(np.asarray(grads[1]), tt.grad.numpy(), rtol=RTOL, atol=0)
    return (_rel_err(np.asarray(value), ref.detach().numpy()),
            max(_rel_err(np.asarray(grads[0]), pt.grad.numpy()),
                _rel_err(np.asarray(grads[1]), tt.grad.numpy())))


@pytest.mark.parametrize("mask_kind", sorted(MASKS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_regression_losses_match_torch(loss, reduction, mask_kind):
    """No mask, a full mask, and masks broadcast over features / over time and features."""
    assert max(_regression_parity(loss, reduction, mask_kind)) <= RTOL


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_regression_nan_at_masked_positions_and_empty_mask(loss):
    """NaN/inf in masked pred or target: exact value, finite zero grads; empty mask: 0, not NaN."""
    fn = LOSSES[loss][0]
    pred = jnp.array([[1.0, jnp.nan], [jnp.inf, 2.0]])
    target = jnp.array([[0.5, 1.0], [jnp.nan, -jnp.inf]])
    mask = jnp.array([[True, False], [False, False]])
    value, grads = jax.value_and_grad(lambda p, t: fn(p, t, mask), argnums=(0, 1))(pred, target)
    assert float(value) == (0.25 if loss == "mse" else 0.5)
    # At p - t = 0.5 both d/dp (p-t)^2 = 2 * 0.5 and d/dp |p-t| = 1 equal 1.
    np.testing.assert_array_equal(np.asarray(grads[0]), [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(grads[1]), [[-1.0, 0.0], [0.0, 0.0]])
    empty, empty_grad = jax.value_and_grad(fn)(pred, target, jnp.zeros((2, 2), bool))
    assert float(empty) == 0.0  # torch: NaN for an empty mean
    np.testing.assert_array_equal(np.asarray(empty_grad), 0.0)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_regression_errors(loss):
    fn = LOSSES[loss][0]
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        fn(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(2,\).*\(2, 3\)"):
        fn(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones(2, bool))
    with pytest.raises(ValueError, match="reduction"):
        fn(jnp.zeros(2), jnp.zeros(2), reduction="batchmean")
    with pytest.raises(TypeError, match="bool"):
        fn(jnp.zeros(2), jnp.zeros(2), jnp.ones(2))
