"""``nnx.Sequential`` exchanges a torch ``nn.Sequential``'s keys: torch ``0.weight`` is NNX
``layers[0].kernel``, nested ones too (``postnet.0.weight``), with the Conv / BatchNorm mappings,
``prefix=`` and ``rename=``.

* a real ``nn.Sequential(Linear, ReLU, Dropout, Linear)``: parameterless modules keep their
  indices on both sides (``nnx.relu``, ``nnx.Dropout`` at the same positions: keys ``0.*``,
  ``3.*``); forward in float64 and the round trip, bit-exact, with torch's strict load;
* a model with two nested ``nn.Sequential``\\ s (Linear / Conv1d / BatchNorm1d / Tanh / Dropout):
  ``compare_models`` (forward, every gradient by torch name, buffers) and the round trip;
  the same weights through ``prefix=`` and ``rename=``;
* mismatches name both keys (a missing ReLU shifts the indices; an ``nnx.List`` named ``layers``
  is one level off); a gradient State without ``like=`` keeps the ``layers`` level;
* the keys before 0.4.0 (``postnet.layers.0.weight``) still load, with a ``FutureWarning``, when
  they are all the model's; an ``nnx.List`` named ``layers`` keeps its keys.
"""
from __future__ import annotations

import re
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import jaxseq
from jaxseq.parity import compare_models
from parity_tests.test_interop_layers import _randomized

B, T, M, H, C = 3, 6, 4, 5, 3


def _sd_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in module.state_dict().items()}


def _assert_round_trip(jax_model, torch_model, fresh: nn.Module) -> None:
    """Every exported key is torch's, bit-exact; a strict torch load reproduces the weights
    (``nnx.BatchNorm`` has no counter: torch keeps its own ``num_batches_tracked``)."""
    sd, back = _sd_numpy(torch_model), jaxseq.torch_state_dict(jax_model)
    counters = {k for k in sd if k.endswith("num_batches_tracked")}
    assert set(back) <= set(sd) and set(sd) - set(back) <= counters
    for key, value in back.items():
        assert value.dtype == sd[key].dtype and np.array_equal(value, sd[key]), key
    missing, unexpected = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()},
                                                strict=False)
    assert not unexpected and set(missing) <= counters
    assert all(np.array_equal(_sd_numpy(fresh)[k], sd[k]) for k in back)


def _mlp(rngs: nnx.Rngs) -> nnx.Sequential:
    return nnx.Sequential(nnx.Linear(M, H, param_dtype=jnp.float64, rngs=rngs), nnx.relu,
                          nnx.Dropout(0.3, rngs=rngs),
                          nnx.Linear(H, M, param_dtype=jnp.float64, rngs=rngs))


_build_mlp = nnx.jit(lambda: _mlp(nnx.Rngs(0)))        # one compilation of the initialisers


def _mlp_pair():
    torch.manual_seed(0)
    torch_mlp = _randomized(nn.Sequential(nn.Linear(M, H), nn.ReLU(), nn.Dropout(0.3),
                                          nn.Linear(H, M)).double()).eval()
    mlp = _build_mlp()
    mlp.eval()
    return torch_mlp, mlp


def test_sequential_keys_indices_forward_and_round_trip():
    torch_mlp, mlp = _mlp_pair()
    assert list(jaxseq.torch_state_dict(mlp)) == list(torch_mlp.state_dict()) == [
        "0.weight", "0.bias", "3.weight", "3.bias"]
    jaxseq.load_torch_state_dict(mlp, torch_mlp.state_dict())
    x = np.random.default_rng(0).standard_normal((B, M))
    np.testing.assert_allclose(mlp(x), torch_mlp(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-13, atol=1e-14)
    _assert_round_trip(mlp, torch_mlp, nn.Sequential(nn.Linear(M, H), nn.ReLU(), nn.Dropout(0.3),
                                                     nn.Linear(H, M)).double())


class TorchDecoderTail(nn.Module):
    """A prenet and a conv + batch-norm postnet, as ``nn.Sequential``\\ s (Tacotron-style)."""

    def __init__(self):
        super().__init__()
        self.prenet = nn.Sequential(nn.Linear(M, H), nn.ReLU(), nn.Dropout(0.5), nn.Linear(H, M))
        self.postnet = nn.Sequential(
            nn.Conv1d(M, C, 5, padding=2), nn.BatchNorm1d(C), nn.Tanh(), nn.Dropout(0.5),
            nn.Conv1d(C, M, 3, padding=1, bias=False), nn.BatchNorm1d(M))

    def forward(self, x):                                         # [B, T, M]
        x = self.prenet(x)
        return x + self.postnet(x.transpose(1, 2)).transpose(1, 2)


class JaxDecoderTail(nnx.Module):
    """The twin, channels last: ``jaxseq.BatchNorm`` and ``nnx.BatchNorm`` (torch's momentum)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.prenet = nnx.Sequential(nnx.Linear(M, H, rngs=rngs), nnx.relu,
                                     nnx.Dropout(0.5, rngs=rngs), nnx.Linear(H, M, rngs=rngs))
        self.postnet = nnx.Sequential(
            nnx.Conv(M, C, 5, padding=[(2, 2)], rngs=rngs), jaxseq.BatchNorm(C), jnp.tanh,
            nnx.Dropout(0.5, rngs=rngs),
            nnx.Conv(C, M, 3, padding=[(1, 1)], use_bias=False, rngs=rngs),
            nnx.BatchNorm(M, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs))

    def __call__(self, x):                                        # [B, T, M]
        x = self.prenet(x)
        return x + self.postnet(x)


#: One compilation for the twin's initialisers (eager Flax init compiles each draw: seconds).
_build_tail = nnx.jit(lambda: JaxDecoderTail(rngs=nnx.Rngs(0)))


def _tail_loss_torch(model, batch):
    out = model(batch["x"])
    return (out ** 2).mean(), {"out": out}


def _tail_loss_jax(model, batch):
    out = model(batch["x"])
    return (out ** 2).mean(), {"out": out}


def test_nested_sequentials_with_conv_and_batch_norm():
    torch.manual_seed(1)
    torch_tail = _randomized(TorchDecoderTail(), seed=1).eval()
    tail = _build_tail()
    tail.eval()
    assert set(jaxseq.torch_state_dict(tail)) == set(torch_tail.state_dict()) - {
        "postnet.5.num_batches_tracked"}                              # nnx.BatchNorm: no counter
    batch = {"x": np.random.default_rng(1).standard_normal((B, T, M))}
    report = compare_models(torch_tail, tail, batch, torch_loss=_tail_loss_torch,
                            jax_loss=_tail_loss_jax)
    report.assert_close(rtol=1e-12)
    assert report.entry("grad", "postnet.4.weight").relative < 1e-12
    jaxseq.load_torch_state_dict(tail, torch_tail.state_dict())
    _assert_round_trip(tail, torch_tail, TorchDecoderTail())

    class Outer(nn.Module):                                       # torch: decoder.postnet.0...
        def __init__(self):
            super().__init__()
            self.decoder = torch_tail
            self.other = nn.Linear(2, 2)

    class Renamed(nnx.Module):                                    # JAX: post.layers[0]...
        def __init__(self, twin: JaxDecoderTail):
            self.pre, self.post = twin.prenet, twin.postnet

    renamed = jaxseq.load_torch_state_dict(
        Renamed(_build_tail()), Outer().state_dict(), prefix="decoder.",
        rename=[(r"^prenet\.", "pre."), (r"^postnet\.", "post.")])
    np.testing.assert_array_equal(renamed.post.layers[4].kernel[...],
                                  tail.postnet.layers[4].kernel[...])
    np.testing.assert_array_equal(renamed.post.layers[1].running_var[...],
                                  torch_tail.postnet[1].running_var.numpy())


def test_mismatches_name_both_keys():
    torch_mlp, _ = _mlp_pair()
    no_dropout = nnx.eval_shape(lambda: nnx.Sequential(     # shapes are all a mismatch needs
        nnx.Linear(M, H, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(H, M, rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match=r"near misses \(state_dict key -> model key\): "
                                         r"'3\.weight' -> '2\.weight', '3\.bias' -> '2\.bias' "
                                         r"\(torch's nn\.Sequential counts its parameterless"):
        jaxseq.load_torch_state_dict(no_dropout, torch_mlp.state_dict())

    class ListNamedLayers(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([nnx.Linear(M, H, rngs=nnx.Rngs(0)), nnx.relu, nnx.relu,
                                    nnx.Linear(H, M, rngs=nnx.Rngs(0))])

    with pytest.raises(ValueError, match=r"'0\.weight' -> 'layers\.0\.weight'.*one level apart"):
        jaxseq.load_torch_state_dict(nnx.eval_shape(ListNamedLayers), torch_mlp.state_dict())


def test_gradient_state_keys_with_and_without_like():
    _, mlp = _mlp_pair()
    grads = nnx.grad(lambda m: m(jnp.ones((B, M))).sum())(mlp)
    assert set(jaxseq.torch_state_dict(grads, like=mlp)) == {"0.weight", "0.bias", "3.weight",
                                                             "3.bias"}
    assert set(jaxseq.torch_state_dict(grads)) == {"layers.0.weight", "layers.0.bias",
                                                   "layers.3.weight", "layers.3.bias"}


def test_sequential_in_sequential_and_subclass_keys():
    torch_keys = list(nn.Sequential(nn.Sequential(nn.Linear(M, H), nn.ReLU()), nn.Tanh(),
                                    nn.Linear(H, M)).state_dict())

    class Head(nnx.Sequential):                                   # a subclass with its own Param
        def __init__(self, rngs):
            super().__init__(nnx.Sequential(nnx.Linear(M, H, rngs=rngs), nnx.relu), jnp.tanh,
                             nnx.Linear(H, M, rngs=rngs))
            self.scale = nnx.Param(jnp.ones(()))

    keys = list(jaxseq.torch_state_dict(nnx.jit(lambda: Head(nnx.Rngs(0)))()))
    assert torch_keys == ["0.0.weight", "0.0.bias", "2.weight", "2.bias"]
    assert sorted(keys) == sorted(torch_keys + ["scale"])


def test_key_renamer_is_what_rename_does():
    renamer = jaxseq.key_renamer([(r"^module\.", ""), (r"^fc\.", "head."), (r"\.bias$", None)])
    assert [renamer(k) for k in ("module.fc.weight", "fc.bias", "emb.weight")] == [
        "head.weight", None, "emb.weight"]
    assert jaxseq.key_renamer({r"(\d+)\.": r"layers.\1."})("postnet.3.weight") == \
        "postnet.layers.3.weight"
    assert jaxseq.key_renamer(None)("a.b") == "a.b"
    for bad in ("fc", [("fc",)], [(r"^fc", 3)]):
        with pytest.raises(TypeError, match="rename must be a callable, a mapping"):
            jaxseq.key_renamer(bad)


def _before_0_4(state_dict) -> dict:
    """The keys jaxseq gave these ports' ``nnx.Sequential``\\ s before 0.4.0 (``layers`` kept)."""
    return {re.sub(r"^(\w+net\.)?(\d+)\.", r"\1layers.\2.", k): v for k, v in state_dict.items()}


def test_keys_before_0_4_load_with_a_future_warning():
    """``postnet.layers.0.weight`` (0.3's key) loads as ``postnet.0.weight``, with a warning that
    names both forms, the release that drops them and the migration; ignored keys
    (``nnx.BatchNorm``'s counter) too. Today's keys give no warning; nothing is guessed."""
    torch.manual_seed(2)
    torch_tail = _randomized(TorchDecoderTail(), seed=2)
    sd, tail = torch_tail.state_dict(), _build_tail()
    old = _before_0_4(sd)
    assert "postnet.layers.5.num_batches_tracked" in old and "postnet.layers.4.weight" in old
    with pytest.warns(FutureWarning, match=r"17 key\(s\) in the form jaxseq gave an nnx\.Sequential "
                      r"before 0\.4\.0 \('prenet\.layers\.0\.weight'\), loaded as torch "
                      r"nn\.Sequential's keys \('prenet\.0\.weight'\).*stops loading in jaxseq "
                      r"0\.5\.0\. Migration: save the state_dict again with "
                      r"jaxseq\.torch_state_dict\(model\)"):
        jaxseq.load_torch_state_dict(tail, old)
    for key, value in jaxseq.torch_state_dict(tail).items():
        np.testing.assert_array_equal(value, sd[key].numpy(), err_msg=key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxseq.load_torch_state_dict(tail, sd)
    for inconsistent in ({**old, "postnet.0.bias": sd["postnet.0.bias"]},     # both forms
                         {k: v for k, v in old.items() if k != "prenet.layers.3.bias"}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="state_dict"):
                jaxseq.load_torch_state_dict(tail, inconsistent)


def test_an_nnx_list_named_layers_keeps_its_keys_beside_a_sequential():
    class Both(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([nnx.Linear(M, H, rngs=nnx.Rngs(0))])
            self.seq = nnx.Sequential(nnx.Linear(H, M, rngs=nnx.Rngs(0)))

    model = nnx.jit(Both)()
    rng = np.random.default_rng(0)
    sd = {"layers.0.weight": rng.standard_normal((H, M), np.float32),
          "layers.0.bias": np.zeros(H, np.float32),
          "seq.0.weight": rng.standard_normal((M, H), np.float32), "seq.0.bias": np.ones(M)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxseq.load_torch_state_dict(model, sd)
    with pytest.warns(FutureWarning, match=r"2 key\(s\) .*\('seq\.layers\.0\.weight'\)"):
        jaxseq.load_torch_state_dict(model, {k.replace("seq.", "seq.layers."): v
                                             for k, v in sd.items()})
    np.testing.assert_array_equal(model.layers[0].kernel[...], sd["layers.0.weight"].T)
    np.testing.assert_array_equal(model.seq.layers[0].bias[...], sd["seq.0.bias"])
