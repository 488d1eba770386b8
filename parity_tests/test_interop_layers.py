"""torch ``state_dict`` interop for the stock Flax layers a torch model maps to, and for gradients.

* ``nnx.Conv`` (1-D, 2-D, 3-D; groups, dilation, stride, padding, bias on / off), ``nnx.GroupNorm``,
  ``nnx.LayerNorm``, ``nnx.Embed`` loaded from torch: forward values in float64 against torch,
  torch -> jaxseq -> torch bit-exact, torch's strict ``load_state_dict`` of the export;
* ``nnx.BatchNorm`` (``num_batches_tracked`` accepted and ignored, left out of the export);
* a DeepSpeech-style model (Conv2d + BatchNorm2d front end, BiLSTM, BatchNorm1d, Linear) with
  :class:`jaxseq.BatchNorm`: the whole ``state_dict`` (parameters and buffers) loads with no hand
  copying, the eval forward pass matches, the round trip is bit-exact buffers included;
* the same model built with ``nnx.eval_shape`` (no random init) and filled by the load;
* ``torch_state_dict(nnx.State)``: gradients (with and without ``like=``) and optimizer moments by
  torch name, equal to torch's gradients;
* errors: the key and both shapes, integer buffers, unmapped Flax layers, nothing written.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxseq
from jaxseq.batch_norm import BatchNorm
from jaxseq.interop import BY_NAME, KERNEL, RULES, load_torch_state_dict, torch_state_dict
from parity_tests.cases import split_cases

TOL64 = dict(rtol=1e-11, atol=1e-12)
_apply = nnx.jit(lambda layer, x: layer(x))       # one compile per layer (eager Flax norms: dozens)


def _randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every floating parameter and buffer (torch's init leaves biases of norms
    at 0 and running statistics at 0 / 1, which would hide a swapped key)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                fresh = torch.rand(value.shape, generator=gen, dtype=value.dtype)
                value.copy_(fresh + 0.5 if name.endswith("running_var") else fresh - 0.5)
    return module


def _assert_round_trip(jmodel, tmodel, fresh):
    """torch -> jaxseq (already loaded) -> torch: same keys, bit-exact, and a strict load into the
    ``fresh`` torch twin reproduces ``tmodel``'s state_dict. Each layer's keys keep torch's order
    (the order of submodules follows attributes, which NNX transforms sort)."""
    sd = tmodel.state_dict()
    back = torch_state_dict(jmodel)
    assert sorted(back) == sorted(sd)
    layer = lambda key: key.rpartition(".")[0]                       # noqa: E731
    for prefix in {layer(k) for k in sd}:
        assert [k for k in back if layer(k) == prefix] == [k for k in sd if layer(k) == prefix]
    for k, v in sd.items():
        assert back[k].dtype == v.numpy().dtype and np.array_equal(back[k], v.numpy()), k
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())


# --- convolutions ---------------------------------------------------------------------------------
CONVS = {   # name: (torch class, in, out, kernel, torch kwargs, input spatial shape)
    "1d": (torch.nn.Conv1d, 4, 6, 3, {}, (11,)),
    "1d-groups-dilation-stride-pad-nobias": (torch.nn.Conv1d, 4, 6, 3,
                                             dict(stride=2, padding=2, dilation=2, groups=2,
                                                  bias=False), (11,)),
    "2d-groups-dilation-stride-pad": (torch.nn.Conv2d, 4, 6, (3, 2),
                                      dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                                           groups=2), (9, 7)),
    "2d-depthwise-nobias": (torch.nn.Conv2d, 3, 6, 3, dict(padding=1, groups=3, bias=False),
                            (5, 6)),
    "3d-stride-pad": (torch.nn.Conv3d, 2, 4, (2, 3, 2), dict(stride=(1, 2, 1), padding=(1, 0, 1)),
                      (4, 7, 3)),
}


def _flax_conv(cls, cin, cout, kernel, kw, dtype):
    nd = {torch.nn.Conv1d: 1, torch.nn.Conv2d: 2, torch.nn.Conv3d: 3}[cls]
    tup = lambda v: tuple(v) if isinstance(v, tuple) else (v,) * nd   # noqa: E731
    return nnx.Conv(cin, cout, tup(kernel), strides=tup(kw.get("stride", 1)),
                    padding=[(p, p) for p in tup(kw.get("padding", 0))],
                    kernel_dilation=tup(kw.get("dilation", 1)),
                    feature_group_count=kw.get("groups", 1), use_bias=kw.get("bias", True),
                    param_dtype=dtype, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", split_cases(CONVS, [n for n in CONVS if n != "1d"]))
def test_conv_matches_torch(name):
    cls, cin, cout, kernel, kw, spatial = CONVS[name]
    tconv = _randomized(cls(cin, cout, kernel, **kw).double())
    jconv = load_torch_state_dict(_flax_conv(cls, cin, cout, kernel, kw, jnp.float64),
                                  tconv.state_dict())
    np.testing.assert_array_equal(np.moveaxis(np.asarray(jconv.kernel[...]), (-1, -2), (0, 1)),
                                  tconv.weight.detach().numpy())
    x = np.random.default_rng(0).standard_normal((2, cin) + spatial)
    want = np.moveaxis(tconv(torch.from_numpy(x)).detach().numpy(), 1, -1)
    got = np.asarray(_apply(jconv, jnp.asarray(np.moveaxis(x, 1, -1))))   # channels last
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL64)
    back = torch_state_dict(jconv)
    assert list(back) == list(tconv.state_dict())
    for k, v in tconv.state_dict().items():
        assert np.array_equal(back[k], v.numpy()) and back[k].flags.c_contiguous, k
    fresh = cls(cin, cout, kernel, **kw).double()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})   # strict


# --- norms and embeddings ---------------------------------------------------------------------------
def test_group_norm_layer_norm_embed_match_torch():
    rng = np.random.default_rng(1)
    tgn = _randomized(torch.nn.GroupNorm(2, 6).double())
    jgn = load_torch_state_dict(nnx.GroupNorm(6, num_groups=2, epsilon=1e-5,
                                              param_dtype=jnp.float64, rngs=nnx.Rngs(0)),
                                tgn.state_dict())
    x = rng.standard_normal((3, 6, 5)) * 2 + 1                      # torch [B, C, L]
    np.testing.assert_allclose(_apply(jgn, jnp.asarray(np.moveaxis(x, 1, -1))),
                               np.moveaxis(tgn(torch.from_numpy(x)).detach().numpy(), 1, -1),
                               **TOL64)
    tln = _randomized(torch.nn.LayerNorm(5).double())
    jln = load_torch_state_dict(nnx.LayerNorm(5, epsilon=1e-5, param_dtype=jnp.float64,
                                              rngs=nnx.Rngs(0)), tln.state_dict())
    x = rng.standard_normal((3, 4, 5)) * 2 + 1
    np.testing.assert_allclose(_apply(jln, jnp.asarray(x)), tln(torch.from_numpy(x)).detach().numpy(),
                               **TOL64)
    temb = _randomized(torch.nn.Embedding(7, 3).double())
    jemb = load_torch_state_dict(nnx.Embed(7, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(0)),
                                 temb.state_dict())
    ids = rng.integers(0, 7, (4, 5))
    np.testing.assert_array_equal(jemb(jnp.asarray(ids)),
                                  temb(torch.from_numpy(ids)).detach().numpy())
    for jmod, tmod in ((jgn, tgn), (jln, tln), (jemb, temb)):
        back = torch_state_dict(jmod)
        assert list(back) == list(tmod.state_dict())
        assert all(np.array_equal(back[k], v.numpy()) for k, v in tmod.state_dict().items())


def test_flax_batch_norm_loads_buffers_and_ignores_the_counter():
    tbn = _randomized(torch.nn.BatchNorm2d(3))
    tbn.num_batches_tracked.fill_(9)
    fbn = load_torch_state_dict(nnx.BatchNorm(3, use_running_average=True, momentum=0.9,
                                              epsilon=1e-5, rngs=nnx.Rngs(0)), tbn.state_dict())
    np.testing.assert_array_equal(fbn.mean[...], tbn.running_mean.numpy())
    np.testing.assert_array_equal(fbn.var[...], tbn.running_var.numpy())
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    tbn.eval()
    np.testing.assert_allclose(_apply(fbn, jnp.asarray(np.moveaxis(x, 1, -1))),
                               np.moveaxis(tbn(torch.from_numpy(x)).detach().numpy(), 1, -1),
                               rtol=1e-5, atol=1e-5)
    back = torch_state_dict(fbn)                                      # no counter to export
    assert list(back) == [k for k in tbn.state_dict() if k != "num_batches_tracked"]
    assert all(np.array_equal(back[k], tbn.state_dict()[k].numpy()) for k in back)
    fresh = torch.nn.BatchNorm2d(3)
    fresh.num_batches_tracked.fill_(4)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})   # strict works
    assert fresh.num_batches_tracked.item() == 4                      # torch keeps its own count
    load_torch_state_dict(fbn, {k: v for k, v in tbn.state_dict().items()
                                if k != "num_batches_tracked"})      # optional on load
    wide = load_torch_state_dict(nnx.BatchNorm(3, param_dtype=jnp.float64, rngs=nnx.Rngs(0)),
                                 tbn.double().state_dict())
    assert wide.mean[...].dtype == jnp.float32                       # Flax's float32 statistics


# --- a DeepSpeech-style model -------------------------------------------------------------------
FREQ, T, B, CLASSES = 8, 7, 3, 5


class TorchSpeech(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=(2, 1), padding=1),
                                        torch.nn.BatchNorm2d(4), torch.nn.Hardtanh(0, 20))
        self.rnn = torch.nn.LSTM(4 * FREQ // 2, 5, bidirectional=True)
        self.norm = torch.nn.BatchNorm1d(10)                        # SequenceWise
        self.fc = torch.nn.Linear(10, CLASSES, bias=False)

    def forward(self, x, lengths):                                   # x [B, 1, FREQ, T]
        h = self.conv(x)                                             # [B, 4, FREQ/2, T]
        h = h.reshape(h.shape[0], -1, h.shape[-1]).permute(2, 0, 1)  # [T, B, 16]
        packed = torch.nn.utils.rnn.pack_padded_sequence(h, lengths, enforce_sorted=False)
        h, _ = torch.nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], total_length=T)
        h = self.norm(h.reshape(-1, 10)).reshape(T, -1, 10)
        return self.fc(h)                                            # [T, B, CLASSES]


class JaxSpeech(nnx.Module):
    def __init__(self, dtype=jnp.float64):
        rngs = nnx.Rngs(0)
        self.conv = nnx.List([nnx.Conv(1, 4, (3, 3), strides=(2, 1), padding=[(1, 1), (1, 1)],
                                       param_dtype=dtype, rngs=rngs),
                              BatchNorm(4, param_dtype=dtype)])
        self.rnn = jaxseq.LSTM(4 * FREQ // 2, 5, bidirectional=True, param_dtype=dtype, rngs=rngs)
        self.norm = BatchNorm(10, param_dtype=dtype)
        self.fc = nnx.Linear(10, CLASSES, use_bias=False, param_dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(0.1, deterministic=True, rngs=rngs)  # RNG state, no torch key

    def __call__(self, x, lengths):                                  # x [B, FREQ, T, 1]
        h = jnp.clip(self.conv[1](self.conv[0](x)), 0, 20)           # [B, FREQ/2, T, 4]
        h = jnp.transpose(h, (2, 0, 3, 1)).reshape(T, x.shape[0], -1)   # [T, B, 4 * FREQ/2]
        h, _ = self.rnn(self.drop(h), lengths)
        return self.fc(self.norm(h, lengths))


def _trained_torch_speech(seed=0):
    """A torch model with non-trivial running statistics and counters (3 training batches)."""
    torch.manual_seed(seed)
    model = _randomized(TorchSpeech().double(), seed)
    model.train()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _ in range(3):
            model(torch.from_numpy(rng.standard_normal((B, 1, FREQ, T))), torch.tensor([T, 4, 2]))
    return model.eval()


@pytest.fixture(scope="module")
def speech():
    """The torch model, its loaded JAX twin, and both sides' eval-mode outputs and gradients of
    ``sum(r * output)`` over valid positions (one eager forward and one gradient on each side)."""
    tmodel = _trained_torch_speech()
    sd = tmodel.state_dict()
    assert sd["conv.1.num_batches_tracked"].item() == 3 and sd["norm.num_batches_tracked"].item() == 3
    jmodel = load_torch_state_dict(JaxSpeech(), sd)                 # parameters and buffers
    rng = np.random.default_rng(1)
    x, lengths = rng.standard_normal((B, 1, FREQ, T)), np.array([T, 3, 5])
    valid = np.arange(T)[:, None] < lengths[None, :]                # [T, B]
    r = rng.standard_normal((T, B, CLASSES)) * valid[..., None]
    xt = torch.from_numpy(x)
    out = tmodel(xt, torch.from_numpy(lengths))
    (out * torch.from_numpy(r)).sum().backward()
    want_grads = {k: p.grad.numpy() for k, p in tmodel.named_parameters()}
    xj = jnp.asarray(np.moveaxis(x, 1, -1))

    def loss(m, x, lengths):
        y = m(x, lengths)
        return jnp.sum(y * r), y

    grads, got = nnx.jit(nnx.grad(loss, has_aux=True))(jmodel, xj, jnp.asarray(lengths))
    return dict(tmodel=tmodel, jmodel=jmodel, got=np.asarray(got), want=out.detach().numpy(),
                valid=valid, grads=grads, want_grads=want_grads)


def test_deepspeech_style_model_loads_whole_state_dict_and_matches(speech):
    _assert_round_trip(speech["jmodel"], speech["tmodel"], TorchSpeech().double())
    got, want, valid = speech["got"], speech["want"], speech["valid"]
    np.testing.assert_allclose(got[valid], want[valid], **TOL64)  # torch normalises padding too
    assert np.all(got[~valid] == 0)


def test_a_model_built_with_eval_shape_loads_with_no_random_init(speech):
    """Conv + batch norms + BiLSTM + Linear + a dropout built with ``nnx.eval_shape``: the load
    names the dropout's RNG stream (no key survives ``eval_shape``), and after ``nnx.reseed``
    fills parameters and buffers: the same graph and state as the concrete model's load."""
    model = nnx.eval_shape(JaxSpeech)
    sd = speech["tmodel"].state_dict()
    with pytest.raises(ValueError, match=r"RNG streams without a key \('default': drop\.rngs\)"
                                         r".*nnx\.reseed\(model, default=SEED\)"):
        load_torch_state_dict(model, sd)
    nnx.reseed(model, default=0)
    load_torch_state_dict(model, sd)
    _assert_round_trip(model, speech["tmodel"], TorchSpeech().double())
    assert nnx.graphdef(model) == nnx.graphdef(speech["jmodel"])


def test_gradients_state_by_torch_name(speech):
    grads, want, jmodel = speech["grads"], speech["want_grads"], speech["jmodel"]
    assert isinstance(grads, nnx.State)
    by_path = torch_state_dict(grads)                               # from the State's paths
    exact = torch_state_dict(grads, like=jmodel)                    # from the model
    assert sorted(by_path) == sorted(want) == sorted(exact)
    for k, v in want.items():
        np.testing.assert_allclose(exact[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
        np.testing.assert_array_equal(by_path[k], exact[k])
    # a jaxseq layer's gradients on their own
    assert sorted(torch_state_dict(grads["rnn"])) == sorted(jmodel.rnn.param_names())
    # the whole state: parameters and buffers (RNG state skipped), as the module's export
    full = torch_state_dict(nnx.state(jmodel))
    module = torch_state_dict(jmodel)
    assert sorted(full) == sorted(module) == sorted(speech["tmodel"].state_dict())
    assert all(np.array_equal(full[k], module[k]) for k in module)


def test_optimizer_moments_by_torch_name(speech):
    grads, want, jmodel = speech["grads"], speech["want_grads"], nnx.clone(speech["jmodel"])
    optimizer = nnx.Optimizer(jmodel, optax.adam(1e-3), wrt=nnx.Param)
    nnx.jit(lambda opt, model, grads: opt.update(model, grads))(optimizer, jmodel, grads)
    adam = optimizer.opt_state[0]
    mu, nu = torch_state_dict(adam.mu), torch_state_dict(adam.nu, like=jmodel)
    assert sorted(mu) == sorted(want) == sorted(nu)
    for k, g in want.items():
        np.testing.assert_allclose(mu[k], 0.1 * g, rtol=1e-10, atol=1e-14, err_msg=k)   # (1-b1) g
        np.testing.assert_allclose(nu[k], 0.001 * g * g, rtol=1e-10, atol=1e-16, err_msg=k)


def test_state_without_model_refuses_ambiguous_names():
    class Custom(nnx.Module):                      # own variables named like Flax layers'
        def __init__(self):
            self.scale = nnx.Param(jnp.ones(2))
            self.weight = nnx.Param(jnp.zeros(2))

    model = Custom()
    state = nnx.state(model)
    with pytest.raises(ValueError, match=r"map to the torch keys \['weight'\] more than once .* "
                                         "pass like=model"):
        torch_state_dict(state)
    assert list(torch_state_dict(state, like=model)) == ["scale", "weight"]
    with pytest.raises(ValueError, match="State path 'bias' is not a parameter or buffer of the "
                                         "Custom model"):
        torch_state_dict(nnx.state(nnx.Linear(2, 2, rngs=nnx.Rngs(0))), like=model)
    with pytest.raises(TypeError, match=r"module_or_state must be an NNX module or an nnx\.State, "
                                        "got dict"):
        torch_state_dict({"weight": np.ones(2)})


def test_rule_table_is_one_map_per_attribute():
    """The State-only path reads attribute names through the table: each means one thing."""
    for rule in RULES.values():
        for attribute, target in rule.items():
            assert BY_NAME[attribute] == target
    kernel = np.arange(24.0).reshape(2, 3, 4)                       # Conv1d [window, in, out]
    assert KERNEL.to_torch(kernel).shape == (4, 3, 2)
    np.testing.assert_array_equal(KERNEL.from_torch(KERNEL.to_torch(kernel)), kernel)
    np.testing.assert_array_equal(KERNEL.to_torch(kernel[0]), kernel[0].T)   # Linear


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spoil, exc, phrase", [
    (lambda sd: sd.update({"conv.0.weight": torch.zeros(4, 1, 3, 2)}), ValueError,
     "'conv.0.weight': expected shape (4, 1, 3, 3), got (4, 1, 3, 2)"),
    (lambda sd: sd.update({"conv.1.running_mean": torch.zeros(4, dtype=torch.int64)}), TypeError,
     "state_dict['conv.1.running_mean'] must have a floating dtype, got int64 (only integer "
     "counters such as num_batches_tracked may be integer)"),
    (lambda sd: sd.update({"norm.num_batches_tracked": torch.tensor(3.0)}), TypeError,
     "state_dict['norm.num_batches_tracked'] must have an integer dtype"),
    (lambda sd: sd.pop("norm.running_var"), ValueError,
     "missing keys 'norm.running_var' (expected shape (10,))"),
    (lambda sd: sd.update({"norm.positions": torch.arange(3)}), ValueError,
     "unexpected keys 'norm.positions' (shape (3,))"),
    (lambda sd: sd.update({"fc.weight": torch.zeros(10, CLASSES)}), ValueError,
     "'fc.weight': expected shape (5, 10), got (10, 5)"),
], ids=["conv shape", "int running_mean", "float counter", "missing buffer", "int buffer unknown",
        "linear transposed"])
def test_errors_name_the_key_and_write_nothing(spoil, exc, phrase):
    sd = {k: v.clone() for k, v in _trained_torch_speech().state_dict().items()}
    spoil(sd)
    jmodel = JaxSpeech()
    before = torch_state_dict(jmodel)
    with pytest.raises(exc) as info:
        load_torch_state_dict(jmodel, sd)
    assert phrase in str(info.value)
    if exc is ValueError:
        assert str(info.value).startswith("state_dict does not match the JaxSpeech model: ")
    after = torch_state_dict(jmodel)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_flax_layers_without_a_rule_still_raise():
    class WithTransposed(nnx.Module):
        def __init__(self):
            self.up = nnx.ConvTranspose(2, 2, (3,), rngs=nnx.Rngs(0))

    with pytest.raises(TypeError, match="ConvTranspose at 'up' has no torch mapping"):
        torch_state_dict(WithTransposed())
    with pytest.raises(TypeError, match=r"like= is for an nnx\.State"):
        torch_state_dict(WithTransposed(), like=WithTransposed())


@pytest.mark.parametrize("dtype", split_cases(["float32", "float64"], ["float64"]))
def test_jaxseq_batch_norm_round_trip_both_ways(dtype):
    tbn = _randomized(torch.nn.BatchNorm1d(6).to(getattr(torch, dtype)))
    tbn.num_batches_tracked.fill_(5)
    jbn = load_torch_state_dict(BatchNorm(6, param_dtype=jnp.dtype(dtype)), tbn.state_dict())
    _assert_round_trip(jbn, tbn, torch.nn.BatchNorm2d(6).to(getattr(torch, dtype)))
    counter = torch_state_dict(jbn)["num_batches_tracked"]
    assert counter.dtype == np.int64 and counter.shape == () and counter == 5
