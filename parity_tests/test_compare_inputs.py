"""``compare_models``' inputs and robustness: the gradient of every floating batch leaf
(``"input_grad"``), ``keep_dtype``, torch models with tensors that carry autograd history as
attributes, and compilations never reused for changed model code."""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import jaxseq
from jaxseq.parity import compare_models

B, F = 4, 3


class TorchScaler(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(F, F)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class JaxScaler(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(F, F, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.lin(x))


def _batch():
    rng = np.random.default_rng(0)
    return {"inputs": rng.standard_normal((B, F)).astype(np.float32),
            "targets": {"mel": rng.standard_normal((B, F)), "ids": rng.integers(0, 3, B)}}


def _models():
    torch.manual_seed(0)
    return TorchScaler(), JaxScaler(nnx.Rngs(0))


def test_input_gradients_by_key_path_and_torch_losses_that_detach_or_write_in_place():
    """Every floating leaf that torch's loss reaches gets an entry named by its key path; a target
    torch detaches gets none where JAX's loss does not reach it either (``stop_gradient``), and a
    problem entry where it does. torch_loss may write into its inputs (it gets clones)."""
    torch_model, jax_model = _models()

    def torch_loss(m, b):
        x = b["inputs"]
        x.mul_(2.0)                                             # in place, as training code does
        return ((m(x) - b["targets"]["mel"].detach()) ** 2).sum()

    def jax_loss(m, b, reach_target=False):
        target = b["targets"]["mel"] if reach_target else jax.lax.stop_gradient(b["targets"]["mel"])
        return ((m(2.0 * b["inputs"]) - target) ** 2).sum()

    report = compare_models(torch_model, jax_model, _batch(), torch_loss=torch_loss,
                            jax_loss=jax_loss)
    report.assert_close(rtol=1e-10)
    assert [e.name for e in report.entries if e.kind == "input_grad"] == ["inputs"]
    assert report.entry("input_grad", "inputs").scale > 0 and report.entry(
        "input_grad", "inputs").shape == (B, F)
    assert "inputs cast to float64: inputs (was float32)" in report.notes

    reaching = compare_models(torch_model, jax_model, _batch(), torch_loss=torch_loss,
                              jax_loss=lambda m, b: jax_loss(m, b, reach_target=True))
    entry = reaching.entry("input_grad", "targets/mel")
    assert "torch's loss does not reach it" in entry.problem and "non-zero" in entry.problem
    assert [e.label() for e in reaching.failures()] == ["input_grad targets/mel"]


def test_a_jax_gradient_that_is_zero_but_reaches_the_input_is_a_problem():
    """Reaching is decided from JAX's backward pass, not from the values: ``0 * target`` has a
    zero gradient that still depends on the loss; ``stop_gradient`` cuts it."""
    torch_model, jax_model = _models()

    def torch_loss(m, b):
        return m(b["inputs"]).sum() + 0.0 * b["targets"]["mel"].detach().sum()

    def jax_loss(m, b):
        return m(b["inputs"]).sum() + 0.0 * b["targets"]["mel"].sum()

    report = compare_models(torch_model, jax_model, _batch(), torch_loss=torch_loss,
                            jax_loss=jax_loss)
    assert "its gradient is zero here" in report.entry("input_grad", "targets/mel").problem


class TorchPercent(nn.Module):
    """Lengths from float32 fractions, as deepspeech.pytorch's ``input_percentages``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(F, 1)

    def forward(self, x, percentages):                          # x [B, T, F]
        lengths = (percentages * x.shape[1]).int()
        valid = torch.arange(x.shape[1])[None] < lengths[:, None]
        return (self.lin(x)[..., 0] * valid).sum(), lengths


class JaxPercent(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(F, 1, rngs=rngs)

    def __call__(self, x, percentages):
        lengths = (percentages * x.shape[1]).astype(jnp.int32)
        valid = jnp.arange(x.shape[1])[None] < lengths[:, None]
        return (self.lin(x)[..., 0] * valid).sum(), lengths


def test_keep_dtype_keeps_float32_fractions_and_the_notes_say_so():
    """``0.9`` in float32 times 10 is 9.000001 (9 frames); cast to float64 it is 8.999999 (8):
    without ``keep_dtype`` both sides check the other computation."""
    torch.manual_seed(1)
    x = np.random.default_rng(1).standard_normal((2, 10, F))
    batch = {"x": x, "percentages": np.array([0.9, 0.3], np.float32)}

    def loss(m, b):
        total, lengths = m(b["x"], b["percentages"])
        return total, {"lengths": lengths}

    reports = {keep: compare_models(TorchPercent(), JaxPercent(nnx.Rngs(1)), batch, torch_loss=loss,
                                    jax_loss=loss, keep_dtype=keep) for keep in ((), ("percentages",))}
    lengths = {keep: r.entry("output", "lengths") for keep, r in reports.items()}
    assert all(e.max_abs == 0 for e in lengths.values())
    assert lengths[("percentages",)].scale == 9 and lengths[()].scale == 8     # max length
    kept = reports[("percentages",)]
    kept.assert_close(rtol=1e-10)
    assert "inputs kept in their own dtype (keep_dtype): percentages (float32)" in kept.notes
    assert not any("cast" in n for n in kept.notes)                  # x is float64 already
    assert any("percentages (was float32)" in n for n in reports[()].notes)
    with pytest.raises(ValueError, match=r"keep_dtype names \['lengths'\], which are not keys"):
        compare_models(TorchPercent(), JaxPercent(nnx.Rngs(1)), batch, torch_loss=loss,
                       jax_loss=loss, keep_dtype=["lengths"])
    with pytest.raises(TypeError, match=r"keep_dtype=\('percentages',\)"):
        compare_models(TorchPercent(), JaxPercent(nnx.Rngs(1)), batch, torch_loss=loss,
                       jax_loss=loss, keep_dtype="percentages")


class TorchCaching(nn.Module):
    """A decoder that keeps the memory of its last call (a tensor with autograd history)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(F, F)
        self.memory = None
        self.history = []

    def forward(self, x):
        self.memory = self.lin(x)
        self.history = [self.memory * 2]
        return self.memory


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_port_built_with_eval_shape_is_compared_without_a_random_init(dtype):
    """``nnx.eval_shape(build)`` leaves abstract variables: the compared copy keeps them abstract
    in the compared dtype and the load fills them, so the report equals the concrete port's; an
    abstract model is left untouched. An RNG stream (no key survives ``eval_shape``) is named
    with the fix."""
    torch_model, concrete = _models()
    abstract = nnx.eval_shape(lambda: JaxScaler(nnx.Rngs(0)))

    def torch_loss(m, b):
        return (m(b["inputs"]) ** 2).sum()

    def jax_loss(m, b):
        return (m(b["inputs"]) ** 2).sum()

    got = compare_models(torch_model, abstract, _batch(), torch_loss=torch_loss,
                         jax_loss=jax_loss, dtype=dtype)
    want = compare_models(torch_model, concrete, _batch(), torch_loss=torch_loss,
                          jax_loss=jax_loss, dtype=dtype)
    got.assert_close(rtol=1e-10 if dtype == "float64" else 1e-5)
    assert [(e.kind, e.name, e.shape) for e in got.entries] == [
        (e.kind, e.name, e.shape) for e in want.entries]
    assert [(e.max_abs, e.scale) for e in got.entries] == [
        (e.max_abs, e.scale) for e in want.entries]                  # the same computation
    assert isinstance(abstract.lin.kernel.get_value(), jax.ShapeDtypeStruct)  # not modified

    class WithDropout(JaxScaler):
        def __init__(self, rngs: nnx.Rngs):
            super().__init__(rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

    with pytest.raises(ValueError, match=r"RNG streams without a key.*nnx\.reseed"):
        compare_models(torch_model, nnx.eval_shape(lambda: WithDropout(nnx.Rngs(0))), _batch(),
                       torch_loss=torch_loss, jax_loss=jax_loss)


def test_a_torch_model_caching_tensors_with_history_is_copied_and_named():
    torch.manual_seed(2)
    torch_model = TorchCaching()
    torch_model(torch.ones(B, F))                          # now holds non-leaf tensors
    assert not torch_model.memory.is_leaf
    report = compare_models(torch_model, nnx.Dict(lin=nnx.Linear(F, F, rngs=nnx.Rngs(2))),
                            {"x": np.ones((B, F))}, torch_loss=lambda m, b: m(b["x"]).sum(),
                            jax_loss=lambda m, b: m["lin"](b["x"]).sum())
    report.assert_close(rtol=1e-12)
    (note,) = [n for n in report.notes if "autograd history" in n]
    assert note.endswith("memory, history[0]")
    assert not torch_model.memory.is_leaf                  # the user's model is untouched


class _Unpicklable:
    def __deepcopy__(self, memo):
        raise RuntimeError("cannot copy a file handle")


def test_a_torch_model_that_cannot_be_copied_names_the_cause():
    torch_model = TorchScaler()
    torch_model.handle = _Unpicklable()
    with pytest.raises(TypeError, match=r"copy\.deepcopy, which failed: RuntimeError: cannot copy "
                                         r"a file handle\. Remove the attribute"):
        compare_models(torch_model, JaxScaler(nnx.Rngs(0)), {"x": np.ones((B, F))},
                       torch_loss=lambda m, b: m(b["x"]).sum(),
                       jax_loss=lambda m, b: m(b["x"]).sum())


def _scale_helper(x):
    return x


class JaxPort(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(F, F, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.lin(_scale_helper(x)))


def test_a_compilation_is_not_reused_after_the_port_code_changes(monkeypatch):
    """Editing the port in place (a method replaced, a helper it calls by name monkeypatched)
    compiles again under ``jit=True``: the error shows the change at once."""
    torch_model = _models()[0]
    port = JaxPort(nnx.Rngs(0))
    run = lambda: compare_models(torch_model, port, {"x": np.ones((B, F))},  # noqa: E731
                                 torch_loss=lambda m, b: m(b["x"]).sum(),
                                 jax_loss=_jax_port_loss)
    assert run().worst() < 1e-12
    monkeypatch.setattr(JaxPort, "__call__", lambda self, x: jnp.tanh(self.lin(x)) * 1.5)
    assert run().entry("loss", "loss").relative == pytest.approx(0.5)
    monkeypatch.undo()
    assert run().worst() < 1e-12
    monkeypatch.setattr(sys.modules[__name__], "_scale_helper", lambda x: 0.0 * x)
    assert run().entry("grad", "lin.weight").relative == 1.0          # JAX: all zeros now


def _jax_port_loss(m, b):
    return m(b["x"]).sum()


class TorchAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(F, F)

    def forward(self, x, lengths):                               # x [B, F] -> weights [B, F]
        scores = self.lin(x)
        return scores.masked_fill(torch.arange(F) >= lengths[:, None], -torch.inf).softmax(-1)


_jitted = jax.jit(lambda x: x)


class JaxAttention(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(F, F, rngs=rngs)

    def __call__(self, x, lengths):
        scores = (lambda: _scale_helper(_jitted(self.lin(x))))()   # helpers inside a lambda
        return jaxseq.attention_weights(scores, lengths)           # a module's attribute


def _squares(m, b):
    return (m(b["x"], b["lengths"]) ** 2).sum()


def test_a_compilation_is_not_reused_after_a_module_attribute_or_code_changes(monkeypatch):
    """The code key follows ``jaxseq.attention_weights`` (a function reached as a module's
    attribute), names read inside a lambda of a method, the function a ``jax.jit`` wraps, and
    code objects edited in place (as IPython's autoreload does): each change compiles again under
    ``jit=True``."""
    torch.manual_seed(0)
    batch = {"x": np.random.default_rng(1).standard_normal((B, F)),
             "lengths": np.array([3, 2, 1, 3])}
    torch_model, port = TorchAttention(), JaxAttention(nnx.Rngs(0))
    run = lambda: compare_models(torch_model, port, batch, torch_loss=_squares,  # noqa: E731
                                 jax_loss=_squares).entry("loss", "loss").relative
    assert run() < 1e-12
    monkeypatch.setattr(jaxseq, "attention_weights", lambda s, n: jax.nn.softmax(s, -1))
    assert run() > 1e-3                                          # the mask forgotten
    monkeypatch.undo()
    assert run() < 1e-12                                         # the first compilation again
    monkeypatch.setattr(sys.modules[__name__], "_scale_helper", lambda x: 2.0 * x)
    assert run() > 1e-3
    monkeypatch.undo()
    monkeypatch.setattr(sys.modules[__name__], "_jitted", jax.jit(lambda x: 2.0 * x))
    assert run() > 1e-3
    monkeypatch.undo()
    edited = lambda self, x, lengths: jaxseq.attention_weights(2.0 * self.lin(x), lengths)  # noqa: E731
    monkeypatch.setattr(JaxAttention.__call__, "__code__", edited.__code__)
    assert run() > 1e-3
