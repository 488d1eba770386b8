"""Every bad input raises a clear error before any computation; traced lengths are checkable.

``BAD_INPUTS`` is the table of misuse cases: each names the call, the exception type and a phrase
the message must contain. The second half checks :func:`jaxseq.validation.checked`: a jitted
training step (``jax.jit`` of loss + grad, via ``nnx.split``/``nnx.merge`` or the functional API)
raises ``checkify.JaxRuntimeError`` (a ``ValueError``) for an out-of-range traced length and returns
the same numbers as the unchecked step for good lengths.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.experimental import checkify

import jaxseq
from jaxseq import functional as F
from jaxseq.validation import check_floating, check_lengths, check_size, checked

T, B, I, H = 5, 2, 3, 4
X = jnp.zeros((T, B, I), jnp.float32)
LSTM = jaxseq.LSTM(I, H, rngs=nnx.Rngs(0))
LSTM3 = jaxseq.LSTM(I, H, num_layers=3, rngs=nnx.Rngs(0))
GRU = jaxseq.GRU(I, H, rngs=nnx.Rngs(0))
H0 = jnp.zeros((1, B, H))
SD = {k: torch.from_numpy(np.array(v)) for k, v in jaxseq.torch_state_dict(LSTM).items()}


def _sd(**changes):
    """``SD`` with keys replaced (value) or removed (``None``)."""
    out = {**SD, **changes}
    return {k: v for k, v in out.items() if v is not None}


BAD_INPUTS = [
    # --- lengths ----------------------------------------------------------------------------
    ("lengths > T", lambda: LSTM(X, jnp.array([6, 1])), ValueError,
     "`lengths` must satisfy 0 <= lengths[b] <= T=5, but found lengths[0] = 6"),
    ("lengths < 0", lambda: LSTM(X, jnp.array([3, -1])), ValueError, "found lengths[1] = -1"),
    ("lengths float", lambda: LSTM(X, np.array([2.0, 1.0], np.float32)), TypeError,
     "`lengths` must have an integer dtype, got float32"),
    ("lengths bool", lambda: LSTM(X, np.array([True, False])), TypeError, "integer dtype, got bool"),
    ("lengths [B, 1]", lambda: LSTM(X, jnp.array([[2], [1]])), ValueError,
     "`lengths` must have shape [B], got shape (2, 1)"),
    ("lengths scalar", lambda: LSTM(X, jnp.array(2)), ValueError, "must have shape [B], got shape ()"),
    ("lengths B mismatch", lambda: LSTM(X, jnp.array([2, 1, 1])), ValueError,
     "Expected len(lengths) to be equal to batch_size, but got 3 (batch_size=2)"),
    ("lengths torch", lambda: LSTM(X, torch.tensor([2, 1])), TypeError,
     "`lengths` is a torch.Tensor: jaxseq takes JAX or numpy arrays. Convert it once, where the "
     "data enters: `jnp.asarray(lengths.detach().cpu().numpy())`"),
    ("lengths batch_first B", lambda: jaxseq.GRU(I, H, batch_first=True, rngs=nnx.Rngs(0))(
        jnp.zeros((B, T, I)), jnp.array([1, 1, 1])), ValueError, "but got 3 (batch_size=2)"),
    # lengths that fit the other layout name batch_first (x time-major [5, 2, 3])
    ("lengths fit batch-first x", lambda: LSTM(jnp.zeros((B, T, I)), jnp.array([2, 1])), ValueError,
     "Expected len(lengths) to be equal to batch_size, but got 2 (batch_size=5). 2 is the time "
     "extent T of the input. The numbers fit the other layout: with batch_first=False the input "
     "is read as [T, B, ...]; data shaped [B, T, ...] needs batch_first=True (a layer takes it at "
     "construction, e.g. LSTM(..., batch_first=True))."),
    ("lengths fit time-major x", lambda: jaxseq.GRU(I, H, batch_first=True, rngs=nnx.Rngs(0))(
        X, jnp.array([2, 1])), ValueError, "data shaped [T, B, ...] needs batch_first=False"),
    ("last_valid other layout", lambda: jaxseq.last_valid(X, jnp.array([5, 5]), batch_first=True),
     ValueError, "but got 2 (batch_size=5). 2 is the time extent T of the input. The numbers fit "
     "the other layout: with batch_first=True the input is read as [B, T, ...]"),
    ("reverse_padded other layout", lambda: jaxseq.reverse_padded(
        jnp.zeros((B, T)), jnp.array([1, 2])), ValueError, "needs batch_first=True"),
    ("unpad_sequence other layout", lambda: jaxseq.unpad_sequence(X, np.array([1, 2]),
                                                                  batch_first=True),
     ValueError, "needs batch_first=False"),
    ("masked_mean other layout", lambda: jaxseq.masked_mean(jnp.zeros((B, T, 1)), jnp.array([1, 2])),
     ValueError, "needs batch_first=True"),
    ("BatchNorm lengths other layout", lambda: jaxseq.BatchNorm(I)(jnp.ones((B, T, I)),
                                                                   jnp.array([1, 2])),
     ValueError, "needs batch_first=True"),
    ("CRF lengths other layout", lambda: jaxseq.CRF(3, rngs=nnx.Rngs(0))(
        jnp.zeros((B, T, 3)), jnp.zeros((B, T), jnp.int32), lengths=jnp.array([1, 2])),
     ValueError, "needs batch_first=True"),
    ("CRF mask other layout", lambda: jaxseq.CRF(3, rngs=nnx.Rngs(0)).decode(
        jnp.zeros((T, B, 3)), jnp.ones((B, T), bool)), ValueError,
     "the first two dimensions of `emissions` and `mask` must match, got (5, 2) and (2, 5). The "
     "numbers fit the other layout"),
    ("ctc input_lengths other layout", lambda: jaxseq.ctc_loss(
        jnp.zeros((B, T, 3)), jnp.ones((5, 1), jnp.int32), jnp.array([1, 1]), jnp.ones(5, jnp.int32)),
     ValueError, "needs batch_first=True"),
    ("segment_ids other layout", lambda: LSTM(X, segment_ids=jnp.ones((B, T), jnp.int32)),
     ValueError, "`segment_ids` must have shape [T, B] = (5, 2) (the first two axes of the input), "
     "got (2, 5). The numbers fit the other layout"),
    ("masked loss mask other layout", lambda: jaxseq.masked_cross_entropy(
        jnp.zeros((T, B, 3)), jnp.zeros((T, B), jnp.int32), jaxseq.length_mask(jnp.array([5, 2]), T)),
     ValueError, "`mask` of shape (2, 5) does not broadcast to the targets shape (5, 2). Its first "
     "two axes fit the other layout: length_mask(lengths, T) gives [B, T] (batch_first=True, its "
     "default); time-major [T, B, ...] data needs length_mask(lengths, T, batch_first=False)"),
    ("attention lengths other layout", lambda: jaxseq.attention_weights(
        jnp.zeros((T, B)), jnp.array([1, 2])), ValueError,
     "The numbers fit the input with its batch and time axes swapped: check its layout."),
    ("lengths for unbatched x", lambda: LSTM(jnp.zeros((T, I)), jnp.array([T])), ValueError,
     "`lengths` must be None for unbatched input"),
    ("last_valid lengths > T", lambda: jaxseq.last_valid(X, jnp.array([6, 1])), ValueError,
     "found lengths[0] = 6"),
    ("reverse_padded lengths < 0", lambda: jaxseq.reverse_padded(X, jnp.array([-2, 1])), ValueError,
     "found lengths[0] = -2"),
    ("length_mask lengths > max_len", lambda: jaxseq.length_mask(jnp.array([4]), 3), ValueError,
     "0 <= lengths[b] <= T=3"),
    ("check_lengths traced='bogus'", lambda: check_lengths([1], 2, traced="bogus"), ValueError,
     "traced must be one of ('skip', 'checkify') or None"),
    # --- input x ----------------------------------------------------------------------------
    ("x 4-D", lambda: LSTM(jnp.zeros((T, B, I, 1))), ValueError,
     "Expected input of shape [T, B, input_size]"),
    ("x 1-D", lambda: LSTM(jnp.zeros((T,))), ValueError, "got (5,)"),
    ("x feature size", lambda: LSTM(jnp.zeros((T, B, I + 1))), ValueError,
     "input.size(-1) must be equal to input_size. Expected 3, got 4"),
    ("x integer dtype", lambda: LSTM(jnp.zeros((T, B, I), jnp.int32)), TypeError,
     "input must have a floating dtype, got int32"),
    ("x T = 0", lambda: LSTM(jnp.zeros((0, B, I)), jnp.array([0, 0])), ValueError,
     "Expected sequence length to be larger than 0 in RNN, got input of shape (0, 2, 3)"),
    ("x python list", lambda: LSTM([[0.0] * I]), ValueError, "got list"),
    # --- hx -----------------------------------------------------------------------------------
    ("h_0 wrong batch", lambda: LSTM(X, hx=(jnp.zeros((1, 3, H)), H0)), ValueError,
     "Expected hidden size (1, 2, 4) for h_0, got (1, 3, 4)"),
    ("c_0 wrong layers", lambda: LSTM(X, hx=(H0, jnp.zeros((2, B, H)))), ValueError,
     "Expected hidden size (1, 2, 4) for c_0, got (2, 2, 4)"),
    ("h_0 unbatched shape", lambda: GRU(jnp.zeros((T, I)), hx=H0), ValueError,
     "Expected hidden size (1, 4) for h_0, got (1, 2, 4)"),
    ("h_0 int dtype", lambda: GRU(X, hx=H0.astype(jnp.int32)), TypeError,
     "h_0 must have a floating dtype, got int32"),
    ("c_0 int dtype", lambda: LSTM(X, hx=(H0, H0.astype(jnp.int32))), TypeError,
     "c_0 must have a floating dtype, got int32"),
    ("LSTM given one array", lambda: LSTM(X, hx=H0), TypeError,
     "LSTM expects hx=(h_0, c_0), got a single array of shape (1, 2, 4)"),
    ("LSTM given 3-tuple", lambda: LSTM(X, hx=(H0, H0, H0)), TypeError, "got a tuple of length 3"),
    ("GRU given a tuple", lambda: GRU(X, hx=(H0,)), TypeError,
     "GRU expects hx=h_0 (a single array), got a tuple of length 1"),
    # --- constructor --------------------------------------------------------------------------
    ("dropout 1.5", lambda: jaxseq.LSTM(I, H, 2, dropout=1.5, rngs=nnx.Rngs(0)), ValueError,
     "dropout should be a number in range [0, 1]"),
    ("dropout -0.1", lambda: jaxseq.GRU(I, H, 2, dropout=-0.1, rngs=nnx.Rngs(0)), ValueError,
     "got -0.1"),
    ("recurrent_dropout 2", lambda: jaxseq.LSTM(I, H, recurrent_dropout=2, rngs=nnx.Rngs(0)),
     ValueError, "recurrent_dropout should be a number in range [0, 1]"),
    ("weight_drop nan", lambda: jaxseq.RNN(I, H, weight_drop=float("nan"), rngs=nnx.Rngs(0)),
     ValueError, "weight_drop should be a number in range [0, 1]"),
    ("proj_size == hidden", lambda: jaxseq.LSTM(I, H, proj_size=H, rngs=nnx.Rngs(0)), ValueError,
     "proj_size has to be smaller than hidden_size, got proj_size=4 and hidden_size=4"),
    ("proj_size < 0", lambda: jaxseq.LSTM(I, H, proj_size=-1, rngs=nnx.Rngs(0)), ValueError,
     "proj_size must be an integer >= 0, got -1"),
    ("proj_size on GRU", lambda: jaxseq.GRU(I, H, proj_size=2, rngs=nnx.Rngs(0)), ValueError,
     "proj_size is only supported by LSTM (torch.nn.GRU has no proj_size)"),
    ("proj_size on RNN", lambda: jaxseq.RNN(I, H, proj_size=2, rngs=nnx.Rngs(0)), ValueError,
     "torch.nn.RNN has no proj_size"),
    ("nonlinearity 'gelu'", lambda: jaxseq.RNN(I, H, nonlinearity="gelu", rngs=nnx.Rngs(0)),
     ValueError, "Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'."),
    ("hidden_size 0", lambda: jaxseq.LSTM(I, 0, rngs=nnx.Rngs(0)), ValueError,
     "hidden_size must be an integer >= 1, got 0"),
    ("num_layers 0", lambda: jaxseq.GRU(I, H, 0, rngs=nnx.Rngs(0)), ValueError,
     "num_layers must be an integer >= 1, got 0"),
    ("input_size 0", lambda: jaxseq.RNN(0, H, rngs=nnx.Rngs(0)), ValueError,
     "input_size must be an integer >= 1, got 0"),
    ("hidden_size 2.0", lambda: jaxseq.LSTM(I, 2.0, rngs=nnx.Rngs(0)), TypeError,
     "hidden_size should be of type int, got: float (2.0)"),
    ("num_layers '2'", lambda: jaxseq.LSTM(I, H, "2", rngs=nnx.Rngs(0)), TypeError,
     "num_layers should be of type int, got: str"),
    ("input_size True", lambda: jaxseq.LSTM(True, H, rngs=nnx.Rngs(0)), TypeError,
     "input_size should be of type int, got: bool (True)"),
    ("unroll 0", lambda: jaxseq.LSTM(I, H, unroll=0, rngs=nnx.Rngs(0)), ValueError,
     "unroll must be an integer >= 1, got 0"),
    ("param_dtype int32", lambda: jaxseq.LSTM(I, H, param_dtype=jnp.int32, rngs=nnx.Rngs(0)),
     TypeError, "param_dtype must have a floating dtype, got int32"),
    # --- state_dict ---------------------------------------------------------------------------
    ("state_dict unknown key", lambda: jaxseq.load_torch_state_dict(
        LSTM, _sd(weight_xx_l0=torch.zeros(1))), ValueError,
     "unexpected keys 'weight_xx_l0' (shape (1,))"),
    ("state_dict extra layer", lambda: jaxseq.load_torch_state_dict(
        LSTM, _sd(weight_hh_l1=torch.zeros(16, H))), ValueError,
     "unexpected keys 'weight_hh_l1' (shape (16, 4))"),
    ("state_dict missing key", lambda: jaxseq.load_torch_state_dict(LSTM, _sd(bias_hh_l0=None)),
     ValueError, "missing keys 'bias_hh_l0' (expected shape (16,))"),
    ("state_dict mis-shaped", lambda: jaxseq.load_torch_state_dict(
        LSTM, _sd(weight_hh_l0=torch.zeros(16, 5))), ValueError,
     "'weight_hh_l0': expected shape (16, 4), got (16, 5)"),
    ("state_dict int tensor", lambda: jaxseq.load_torch_state_dict(
        LSTM, _sd(weight_hh_l0=torch.zeros(16, H, dtype=torch.int64))), TypeError,
     "state_dict['weight_hh_l0'] must have a floating dtype, got int64"),
    ("state_dict not a mapping", lambda: jaxseq.load_torch_state_dict(LSTM, list(SD.items())),
     TypeError, "state_dict must be a mapping {torch name: tensor}, got list"),
    ("state_dict prefix missing", lambda: jaxseq.load_torch_state_dict(LSTM, SD, prefix="rnn."),
     ValueError, "state_dict (prefix 'rnn.') does not match LSTM(3, 4): missing keys 'weight_ih_l0'"),
    # --- functional params --------------------------------------------------------------------
    ("params int dtype", lambda: F.lstm({k: v.astype(jnp.int32) for k, v in LSTM.param_dict().items()},
                                        X), TypeError,
     "params['weight_ih_l0'] must have a floating dtype, got int32"),
    ("params mis-shaped", lambda: F.gru({**GRU.param_dict(), "bias_hh_l0": jnp.zeros(5)}, X),
     ValueError, "'bias_hh_l0': expected shape (12,), got (5,)"),
    ("unknown mode", lambda: F.recurrent("LSTMX", LSTM.param_dict(), X), ValueError,
     "Unknown mode 'LSTMX'"),
    ("functional unroll 2.5", lambda: F.gru(GRU.param_dict(), X, unroll=2.5), TypeError,
     "unroll should be of type int, got: float (2.5)"),
    ("functional unroll 0", lambda: F.gru(GRU.param_dict(), X, unroll=0), ValueError,
     "unroll must be an integer >= 1, got 0"),
    # --- explicit masks -----------------------------------------------------------------------
    ("dropout_masks count", lambda: LSTM3(X, dropout_masks=[jnp.ones(())]), ValueError,
     "dropout_masks: expected 2 masks (one per layer boundary), got 1"),
    ("state_masks count", lambda: LSTM3(X, state_masks=[jnp.ones(())] * 2), ValueError,
     "state_masks: expected 3 masks (one per layer), got 2"),
    ("weight_hh_masks count", lambda: LSTM3(X, weight_hh_masks=[jnp.ones(())] * 4), ValueError,
     "weight_hh_masks: expected 3 masks (one per layer), got 4"),
    ("dropout_masks shape", lambda: LSTM3(X, dropout_masks=[None, jnp.ones((T, B, 7))]), ValueError,
     "dropout_masks[1] has shape (5, 2, 7), which does not broadcast to (5, 2, 4)"),
    ("state_masks shape grows", lambda: LSTM3(X, state_masks=[jnp.ones((2, 1, B, H))] * 3),
     ValueError, "state_masks[0] has shape (2, 1, 2, 4), which does not broadcast to (1, 2, 4)"),
    ("weight_hh_masks shape", lambda: LSTM3(X, weight_hh_masks=[jnp.ones((1, 16, 5))] * 3),
     ValueError, "weight_hh_masks[0] has shape (1, 16, 5), which does not broadcast to (1, 16, 4)"),
]


@pytest.mark.parametrize("call, exc, phrase", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_raises_named_error(call, exc, phrase):
    with pytest.raises(exc) as info:
        call()
    assert phrase in str(info.value)


def test_training_mode_checks_x_before_drawing_masks():
    lstm = jaxseq.LSTM(I, H, 2, dropout=0.5, recurrent_dropout=0.5, rngs=nnx.Rngs(0))
    lstm.train()
    with pytest.raises(ValueError, match="Expected input of shape"):
        lstm([[0.0] * I])


@pytest.mark.parametrize("value, want", [(np.int64(4), 4), (np.int32(1), 1), (7, 7)])
def test_check_size_accepts_integers(value, want):
    got = check_size(value, "hidden_size")
    assert got == want and type(got) is int


def test_numpy_sizes_build_a_plain_int_structure():
    lstm = jaxseq.LSTM(np.int64(I), np.int64(H), np.int64(2), rngs=nnx.Rngs(0))
    assert lstm.structure[1:4] == (I, H, 2) and all(type(v) is int for v in lstm.structure[1:4])


def test_check_floating_accepts_low_precision():
    for dtype in (jnp.bfloat16, jnp.float16, np.float32, np.float64):
        check_floating(dtype, "x")
    with pytest.raises(TypeError, match="x must have a floating dtype, got complex64"):
        check_floating(np.complex64, "x")


def test_lengths_accept_lists_tuples_and_arrays():
    want = np.array([3, 0], np.int32)
    for lengths in ([3, 0], (3, 0), np.array([3, 0]), jnp.array([3, 0])):
        got = check_lengths(lengths, 3, 2)
        assert got.dtype == jnp.int32 and np.array_equal(got, want)


# --------------------------------------------------------------------------------------------
# traced lengths: jaxseq.validation.checked
# --------------------------------------------------------------------------------------------
def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((B, 2 * H)), jnp.float32)
    return x, target


def _nnx_train_step():
    """``(state, x, lengths, target) -> (loss, grads)`` for a bidirectional LSTM, via split/merge."""
    graphdef, state = nnx.split(jaxseq.LSTM(I, H, bidirectional=True, rngs=nnx.Rngs(0)))

    def step(state, x, lengths, target):
        def loss_fn(state):
            out, _ = nnx.merge(graphdef, state)(x, lengths)
            return jnp.mean((jaxseq.last_valid(out, lengths) - target) ** 2)
        return jax.value_and_grad(loss_fn)(state)

    return step, state


@pytest.mark.parametrize("bad, phrase", [([T + 1, 2], "found lengths[0] = 6"),
                                         ([3, -1], "found lengths[1] = -1")])
def test_checked_nnx_training_step_rejects_bad_traced_lengths(bad, phrase):
    step, state = _nnx_train_step()
    safe_step = checked(step)
    x, target = _batch()
    with pytest.raises(checkify.JaxRuntimeError) as info:
        safe_step(state, x, jnp.array(bad), target)
    assert "`lengths` must satisfy 0 <= lengths[b] <= T=5" in str(info.value) and phrase in str(info.value)
    assert isinstance(info.value, ValueError)      # catchable like the eager error


def test_checked_nnx_training_step_matches_unchecked_for_good_lengths():
    step, state = _nnx_train_step()
    x, target = _batch()
    lengths = jnp.array([T, 0])                     # the extremes are valid
    loss, grads = checked(step)(state, x, lengths, target)
    want_loss, want_grads = jax.jit(step)(state, x, lengths, target)
    assert float(loss) == float(want_loss) and np.isfinite(float(loss))
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_array_equal(got, want)


def test_checked_functional_step():
    params = jaxseq.init.torch_default(jax.random.key(0), "GRU", I, H, num_layers=2)
    x, _ = _batch()

    @checked
    def grads(params, x, lengths):
        return jax.grad(lambda p: F.gru(p, x, lengths)[0].sum())(params)

    assert set(grads(params, x, jnp.array([2, 5]))) == set(params)
    with pytest.raises(checkify.JaxRuntimeError, match=r"found lengths\[1\] = 8"):
        grads(params, x, jnp.array([2, 8]))


def test_checked_does_not_leak_the_policy():
    """After a checked call, plain jit traces no checks again (it would fail: checks unstaged)."""
    checked(jaxseq.last_valid)(X, jnp.array([1, 2]))
    out = jax.jit(jaxseq.last_valid)(X, jnp.array([-1, 2]))      # traced, unchecked: no error
    assert out.shape == (B, I)
    with pytest.raises(ValueError, match="not functionalized"):   # what a leaked policy would do
        jax.jit(lambda l: check_lengths(l, T, traced="checkify"))(jnp.array([1, 2]))


def test_explicit_checkify_policy_inside_user_checkify():
    def f(lengths):
        return check_lengths(lengths, T, traced="checkify").sum()

    err, _ = jax.jit(checkify.checkify(f))(jnp.array([1, 7]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"found lengths\[1\] = 7"):
        err.throw()
    err, total = jax.jit(checkify.checkify(f))(jnp.array([1, 4]))
    err.throw()
    assert int(total) == 5


def test_checked_forwards_extra_error_sets():
    safe = checked(lambda x, lengths: jnp.log(jaxseq.last_valid(x, lengths)),
                   errors=checkify.user_checks | checkify.nan_checks)
    with pytest.raises(checkify.JaxRuntimeError, match="nan generated"):
        safe(-jnp.ones((T, B, I)), jnp.array([1, 2]))


# --------------------------------------------------------------------------------------------
# torch tensors where jaxseq takes arrays: a TypeError naming the argument and the conversion
# --------------------------------------------------------------------------------------------
def _t(array):
    return torch.tensor(np.array(array))


LENGTHS = jnp.array([5, 2])
CRF = jaxseq.CRF(3, rngs=nnx.Rngs(0))
TORCH_INPUTS = [
    ("LSTM x", lambda: LSTM(_t(X)), "x"),
    ("LSTM hx", lambda: LSTM(X, hx=(H0, _t(H0))), "hx[1]"),
    ("LSTM segment_ids", lambda: LSTM(X, segment_ids=_t(np.ones((T, B), np.int32))), "segment_ids"),
    ("LSTM dropout_masks", lambda: LSTM3(X, dropout_masks=[None, _t(np.ones(()))]),
     "dropout_masks[1]"),
    ("GRUCell x", lambda: jaxseq.GRUCell(I, H, rngs=nnx.Rngs(0))(_t(X[0])), "x"),
    ("functional params", lambda: F.lstm({k: _t(v) for k, v in LSTM.param_dict().items()}, X),
     "params['weight_ih_l0']"),
    ("functional cell_step x", lambda: F.cell_step("GRU", {k: v[...] for k, v in {
        "weight_ih": GRU.weight_ih_l0, "weight_hh": GRU.weight_hh_l0, "bias_ih": GRU.bias_ih_l0,
        "bias_hh": GRU.bias_hh_l0}.items()}, _t(X[0])), "x"),
    ("check_lengths", lambda: check_lengths(torch.tensor([1]), 2), "lengths"),
    ("length_mask", lambda: jaxseq.length_mask(torch.tensor([1, 2]), 3), "lengths"),
    ("last_valid output", lambda: jaxseq.last_valid(_t(X), LENGTHS), "output"),
    ("reverse_padded lengths", lambda: jaxseq.reverse_padded(X, _t(LENGTHS)), "lengths"),
    ("pad_sequence", lambda: jaxseq.pad_sequence([jnp.ones(2), _t(np.ones(3))]), "sequences[1]"),
    ("unpad_sequence", lambda: jaxseq.unpad_sequence(_t(X), LENGTHS), "padded"),
    ("masked_max", lambda: jaxseq.masked_max(_t(X), LENGTHS), "x"),
    ("segment_mean ids", lambda: jaxseq.segment_mean(X, _t(np.ones((T, B), np.int32))),
     "segment_ids"),
    ("masked_cross_entropy", lambda: jaxseq.masked_cross_entropy(
        X, jnp.zeros((T, B), jnp.int32), _t(np.ones((T, B), bool))), "mask"),
    ("masked_mse", lambda: jaxseq.masked_mse(X, _t(X)), "target"),
    ("ctc_loss targets", lambda: jaxseq.ctc_loss(X, _t(np.ones((B, 1), np.int64)), LENGTHS,
                                                 jnp.array([1, 1])), "targets"),
    ("CRF emissions", lambda: CRF(_t(X), jnp.zeros((T, B), jnp.int32)), "emissions"),
    ("CRF.decode mask", lambda: CRF.decode(X, _t(np.ones((T, B), bool))), "mask"),
    ("paths_to_lists", lambda: jaxseq.paths_to_lists(_t(np.zeros((T, B), np.int32))), "paths"),
    ("BatchNorm x", lambda: jaxseq.BatchNorm(I)(_t(X)), "x"),
    ("LockedDropout x", lambda: jaxseq.LockedDropout(0.5)(_t(X)), "x"),
    ("dot_attention keys", lambda: jaxseq.dot_attention(X[0].T, _t(X), X, LENGTHS), "keys"),
    ("reorder_state", lambda: jaxseq.reorder_state({"h": _t(X)}, jnp.array([1, 0])),
     "state['h']"),
    ("pack_rows lengths", lambda: jaxseq.pack_rows(torch.tensor([3, 2]), 8), "lengths"),
    ("bucket_by_length", lambda: jaxseq.bucket_by_length(torch.tensor([3, 2]), 2), "lengths"),
    ("RowPacking.pack", lambda: jaxseq.pack_rows([3, 2], 8).pack([np.ones(3), _t(np.ones(2))]),
     "sequences[1]"),
]


@pytest.mark.parametrize("call, path", [case[1:] for case in TORCH_INPUTS],
                         ids=[case[0] for case in TORCH_INPUTS])
def test_torch_tensors_raise_a_type_error_naming_the_conversion(call, path):
    with pytest.raises(TypeError) as info:
        call()
    assert str(info.value).startswith(
        f"`{path}` is a torch.Tensor: jaxseq takes JAX or numpy arrays. Convert it once, where the "
        f"data enters: `jnp.asarray({path}.detach().cpu().numpy())` (a CPU tensor without "
        f"gradient: `{path}.numpy()`)")


def test_torch_params_name_the_state_dict_loader_and_parameters_pass():
    with pytest.raises(TypeError, match=r"a torch state_dict goes in with "
                                        r"jaxseq\.load_torch_state_dict"):
        F.gru({k: _t(v) for k, v in GRU.param_dict().items()}, X)
    weight = torch.nn.Parameter(torch.zeros(2))                   # a Tensor subclass
    with pytest.raises(TypeError, match=r"`x` is a torch\.Tensor"):
        jaxseq.masked_sum(weight, jnp.array([1]))
    np.testing.assert_array_equal(jaxseq.masked_sum(np.ones((2, 1)), [1]), [1.0])   # numpy: fine
    assert jaxseq.load_torch_state_dict(GRU, {k: _t(v) for k, v in GRU.param_dict().items()}) is GRU


def test_every_public_entry_point_checks_for_torch_tensors():
    """Each public function or module call that takes arrays goes through ``rejects_torch``."""
    exempt = {"checked", "keep_mask", "key_renamer",               # a function; a PRNG key; rules
              "load_torch_state_dict", "torch_state_dict"}         # torch state_dicts by design
    unchecked = []
    for name in jaxseq.__all__:
        obj = getattr(jaxseq, name)
        if isinstance(obj, type):
            obj = obj.__call__
        elif not callable(obj) or name in exempt:
            continue
        if not hasattr(obj, "__wrapped__"):
            unchecked.append(name)
    for fn in (F.recurrent, F.cell_step, jaxseq.CRF.decode):
        if not hasattr(fn, "__wrapped__"):
            unchecked.append(fn.__qualname__)
    assert not unchecked, unchecked
