"""``jaxseq.parity.compare_models``: whole torch models against their JAX ports, by torch name.

Two real ports pass in float64 (1e-10) and float32 (1e-5): (a) ``torch_ref.models.WordClassifier``
(embedding, packed BiLSTM, ``cat(h_n[-2], h_n[-1])``, linear) and (b) a packed BiGRU with a
linear head on every step. Then planted errors (a perturbed weight, a detached parameter, a
transposed layer) must fail ``assert_close`` and be named; missing and extra gradients must be
reported; the user's models must come out unchanged; ``import jaxseq`` must not import torch.
"""
from __future__ import annotations

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

import jaxseq
from jaxseq.parity import compare_models
from parity_tests.compiles import count_compiles
from torch_ref.dropout import LockedDropout
from torch_ref.models import WordClassifier
from torch_ref.packed import run_packed

V, E, H, C, B, T = 12, 4, 5, 3, 5, 7
LENGTHS = np.array([7, 1, 4, 6, 2])


def _tokens(rng: np.random.Generator) -> np.ndarray:
    tokens = rng.integers(1, V, (B, T))
    tokens[np.arange(T)[None] >= LENGTHS[:, None]] = 0              # PAD = 0 at padding
    return tokens


# -- (a) embedding -> packed BiLSTM -> linear classifier (torch_ref.models.WordClassifier) ------
class JaxClassifier(nnx.Module):
    """The JAX port of :class:`torch_ref.models.WordClassifier` (submodules named as in torch)."""

    def __init__(self, *, transposed_head: bool = False, rngs: nnx.Rngs):
        self.embedding = nnx.Embed(V, E, rngs=rngs)
        self.lstm = jaxseq.LSTM(E, H, batch_first=True, bidirectional=True, rngs=rngs)
        self.classifier = nnx.Linear(2 * H, C, rngs=rngs)
        self.transposed_head = transposed_head

    def __call__(self, tokens, lengths, mask=None):
        x = self.embedding(tokens)
        if mask is not None:                                        # an injected dropout mask
            x = x * mask
        _, (h_n, _) = self.lstm(x, lengths)
        return self.classifier(jnp.concatenate([h_n[-2], h_n[-1]], -1))


def torch_classifier_loss(model, batch):
    logits = model(batch["tokens"], batch["lengths"])
    return F.cross_entropy(logits, batch["labels"]), {"logits": logits}


def jax_classifier_loss(model, batch):
    logits = model(batch["tokens"], batch["lengths"])
    return jaxseq.masked_cross_entropy(logits, batch["labels"]), {"logits": logits}


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = {"tokens": _tokens(rng), "lengths": LENGTHS, "labels": rng.integers(0, C, B)}
    torch_model = WordClassifier(V, C, embed_dim=E, hidden_size=H).eval()
    return torch_model, JaxClassifier(rngs=nnx.Rngs(0)), batch


# -- (b) packed BiGRU + linear on every step, masked MSE ----------------------------------
F_IN, F_OUT = 3, 2


class TorchGRURegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(F_IN, H, bidirectional=True)
        self.head = nn.Linear(2 * H, F_OUT)

    def forward(self, x, lengths):                                  # x [T, B, F_IN]
        output, _ = run_packed(self.gru, x, lengths)                # [T, B, 2H], 0 at padding
        return self.head(output)


class JaxGRURegressor(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.gru = jaxseq.GRU(F_IN, H, bidirectional=True, rngs=rngs)
        self.head = nnx.Linear(2 * H, F_OUT, rngs=rngs)

    def __call__(self, x, lengths):
        output, _ = self.gru(x, lengths)
        return self.head(output)


def torch_gru_loss(model, batch):
    pred = model(batch["x"], batch["lengths"])
    valid = torch.arange(T)[:, None] < batch["lengths"][None]           # [T, B]
    return F.mse_loss(pred[valid], batch["y"][valid]), {"pred": pred}


def jax_gru_loss(model, batch):
    pred = model(batch["x"], batch["lengths"])
    valid = jaxseq.length_mask(batch["lengths"], T).T                   # [T, B]
    return jaxseq.masked_mse(pred, batch["y"], valid[..., None]), {"pred": pred}


@pytest.fixture(scope="module")
def regressor():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, F_IN)).astype(np.float32)
    x[np.arange(T)[:, None] >= LENGTHS[None]] = np.nan                  # padding never matters
    batch = {"x": x, "lengths": LENGTHS, "y": rng.standard_normal((T, B, F_OUT)).astype(np.float32)}
    return TorchGRURegressor().eval(), JaxGRURegressor(rngs=nnx.Rngs(1)), batch


# -- the two ports pass --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_bilstm_classifier_matches(classifier, dtype, rtol):
    torch_model, jax_model, batch = classifier
    report = compare_models(torch_model, jax_model, batch, torch_loss=torch_classifier_loss,
                            jax_loss=jax_classifier_loss, dtype=dtype)
    print(report)
    report.assert_close(rtol=rtol)
    names = {e.name for e in report.entries if e.kind == "grad"}
    assert names == {n for n, _ in torch_model.named_parameters()}          # every parameter
    assert {e.label() for e in report.entries if e.kind != "grad"} == {"loss loss", "output logits"}
    assert report.entry("grad", "embedding.weight").scale > 0
    assert report.entries == tuple(sorted(report.entries, key=lambda e: -e.relative))
    # the table names every entry, worst first
    table = str(report).splitlines()
    assert table[0].startswith(f"compare_models ({dtype})") and "max abs err" in str(report)
    assert all(any(e.name in line for line in table) for e in report.entries)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_bigru_regressor_matches(regressor, dtype, rtol):
    torch_model, jax_model, batch = regressor
    report = compare_models(torch_model, jax_model, batch, torch_loss=torch_gru_loss,
                            jax_loss=jax_gru_loss, dtype=dtype)
    report.assert_close(rtol=rtol)
    assert len([e for e in report.entries if e.kind == "grad"]) == 10       # 8 GRU + 2 linear
    assert report.entry("output", "pred").shape == (T, B, F_OUT)


def test_injected_dropout_masks_in_training_mode(classifier):
    """Dropout in training mode compares exactly when both sides get the same mask."""
    torch_model, jax_model, batch = classifier
    torch_model = WordClassifier(V, C, embed_dim=E, hidden_size=H, dropout=0.5).train()
    mask = (np.random.default_rng(2).random((B, 1, E)) > 0.5) / 0.5         # one mask per word

    def torch_loss(model, b):
        assert isinstance(model.embed_dropout, LockedDropout) and model.training
        x = model.embed_dropout(model.embedding(b["tokens"]), mask=b["mask"])
        _, (h_n, _) = model.lstm(nn.utils.rnn.pack_padded_sequence(
            x, b["lengths"], batch_first=True, enforce_sorted=False))
        features = torch.cat([h_n[-2], h_n[-1]], -1)       # (no head dropout on either side)
        return F.cross_entropy(model.classifier(features), b["labels"])

    def jax_loss(model, b):
        return jaxseq.masked_cross_entropy(model(b["tokens"], b["lengths"], b["mask"]), b["labels"])

    report = compare_models(torch_model, jax_model, {**batch, "mask": mask},
                            torch_loss=torch_loss, jax_loss=jax_loss)
    report.assert_close(rtol=1e-10)


# -- planted errors are caught and named -----------------------------------------------------------
@pytest.fixture(scope="module")
def mlp():
    """``Linear -> tanh -> Linear``; the JAX port keys its second layer ``1.`` (torch: ``2.``)."""
    torch.manual_seed(3)
    torch_model = nn.Sequential(nn.Linear(F_IN, F_IN), nn.Tanh(), nn.Linear(F_IN, F_OUT))
    jax_model = nnx.List([nnx.Linear(F_IN, F_IN, rngs=nnx.Rngs(0)),
                          nnx.Linear(F_IN, F_OUT, rngs=nnx.Rngs(0))])
    batch = {"x": np.random.default_rng(3).standard_normal((B, F_IN))}
    return torch_model, jax_model, batch


def torch_mlp_loss(model, b):
    out = model(b["x"])
    return (out ** 2).sum(), {"out": out}


def jax_mlp_loss(model, b):
    out = model[1](jnp.tanh(model[0](b["x"])))
    return (out ** 2).sum(), {"out": out}


MLP_RENAME = {r"^2\.": "1."}


def test_a_perturbed_weight_fails_and_a_loose_tolerance_passes(mlp):
    torch_model, jax_model, batch = mlp
    initial = np.array(jax_model[1].kernel[...])
    compare_models(torch_model, jax_model, batch, torch_loss=torch_mlp_loss,
                   jax_loss=jax_mlp_loss, rename=MLP_RENAME).assert_close(rtol=1e-12)

    def perturbed(model, b):            # a port off by 1e-7 in one weight, after loading
        w = model[1].kernel
        w[...] = w[...].at[0, 1].add(1e-7)
        return jax_mlp_loss(model, b)

    report = compare_models(torch_model, jax_model, batch, torch_loss=torch_mlp_loss,
                            jax_loss=perturbed, rename=MLP_RENAME)
    with pytest.raises(AssertionError, match=r"compare_models \(float64\): \d+ of 7 entries") as err:
        report.assert_close(rtol=1e-10)
    worst = report.entries[0]
    assert worst.relative > 1e-8 and str(err.value).index(worst.label()) > 0
    assert {"loss loss", "output out", "grad 2.weight"} <= {e.label() for e in report.failures()}
    report.assert_close(rtol=1e-5)                              # within a loose tolerance
    assert np.array_equal(jax_model[1].kernel[...], initial)   # the user's model is untouched


def test_a_detached_parameter_is_the_only_failure(mlp):
    """A port that cuts the gradient of one parameter: exactly that gradient is named."""
    torch_model, jax_model, batch = mlp

    def detached(model, b):
        model[0].bias[...] = jax.lax.stop_gradient(model[0].bias[...])
        return jax_mlp_loss(model, b)

    report = compare_models(torch_model, jax_model, batch, torch_loss=torch_mlp_loss,
                            jax_loss=detached, rename=MLP_RENAME)
    assert [e.label() for e in report.failures()] == ["grad 0.bias"]
    assert report.entry("grad", "0.bias").relative == pytest.approx(1.0)
    with pytest.raises(AssertionError, match=r"1 of 7 entries .*: grad 0\.bias: relative 1,"):
        report.assert_close()


def test_a_transposed_layer_is_caught(mlp):
    """A wrong port: the square first layer applied with its kernel transposed."""
    torch_model, jax_model, batch = mlp

    def wrong_port(model, b):
        hidden = jnp.tanh(b["x"] @ model[0].kernel[...].T + model[0].bias[...])
        out = model[1](hidden)
        return (out ** 2).sum(), {"out": out}

    report = compare_models(torch_model, jax_model, batch, torch_loss=torch_mlp_loss,
                            jax_loss=wrong_port, rename=MLP_RENAME)
    assert {"loss loss", "output out", "grad 0.weight"} <= {e.label() for e in report.failures()}
    assert report.entry("output", "out").relative > 1e-2
    with pytest.raises(AssertionError, match=report.entries[0].label()):
        report.assert_close()


# -- missing and extra gradients, and bad input ----------------------------------------------------
class TorchTied(nn.Module):
    """An embedding tied to the output layer, an unused layer, a frozen one and a float buffer."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(V, E)
        self.frozen = nn.Linear(E, E)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(E, 1)
        self.decoder = nn.Linear(E, V)
        self.decoder.weight = self.embedding.weight                   # tied
        self.register_buffer("temperature", torch.tensor([2.0]))

    def forward(self, tokens):
        return self.decoder(self.frozen(self.embedding(tokens))) / self.temperature


class JaxUntied(nnx.Module):
    """A port that unties the decoder and makes the buffer a parameter (two extra gradients)."""

    def __init__(self, rngs: nnx.Rngs):
        self.embedding = nnx.Embed(V, E, rngs=rngs)
        self.frozen = nnx.Linear(E, E, rngs=rngs)
        self.unused = nnx.Linear(E, 1, rngs=rngs)
        self.decoder = nnx.Linear(E, V, rngs=rngs)
        self.temperature = nnx.Param(jnp.ones(1))

    def __call__(self, tokens):
        return self.decoder(self.frozen(self.embedding(tokens))) / self.temperature[...]


def test_missing_and_extra_gradients_are_reported():
    torch.manual_seed(4)
    tokens = np.random.default_rng(4).integers(0, V, (B, T))
    report = compare_models(
        TorchTied(), JaxUntied(nnx.Rngs(4)), {"tokens": tokens},
        torch_loss=lambda m, b: m(b["tokens"]).logsumexp(-1).mean(),
        jax_loss=lambda m, b: jax.nn.logsumexp(m(b["tokens"]), -1).mean())
    problems = {e.name: e.problem for e in report.entries if e.problem}
    assert set(problems) == {"frozen.weight", "frozen.bias", "unused.weight", "unused.bias",
                             "decoder.weight", "temperature"}
    assert all("requires_grad=False" in problems[f"frozen.{n}"] for n in ("weight", "bias"))
    assert all("does not reach it" in problems[f"unused.{n}"] for n in ("weight", "bias"))
    assert "tied duplicate" in problems["decoder.weight"] and "JAX parameter" in problems["temperature"]
    assert report.entries[0].problem and math.isinf(report.worst("grad"))
    assert "decoder.weight" in str(report) and "requires_grad=False" in str(report)
    with pytest.raises(AssertionError, match="6 of"):
        report.assert_close(rtol=1.0, atol=1.0)                  # problems fail at any tolerance
    # the tied torch weight gets both uses' gradient; the untied JAX embedding only one: caught
    assert not report.entry("grad", "embedding.weight").passes(1e-10)


def test_batch_norm_buffers_are_compared_after_the_call():
    """Training mode: the updated running statistics are compared (``nnx.BatchNorm`` with torch's
    momentum still updates ``running_var`` with the biased variance: caught); evaluation mode:
    they are the loaded ones. ``nnx.BatchNorm`` has no ``num_batches_tracked``: not compared."""
    torch.manual_seed(6)
    torch_model = nn.Sequential(nn.Linear(F_IN, 4, bias=False), nn.BatchNorm1d(4))
    jax_model = nnx.List([nnx.Linear(F_IN, 4, use_bias=False, rngs=nnx.Rngs(6)),
                          nnx.BatchNorm(4, momentum=0.9, use_fast_variance=False, rngs=nnx.Rngs(6))])
    batch = {"x": np.random.default_rng(6).standard_normal((B, F_IN))}

    def jax_loss(model, b):
        return (model[1](model[0](b["x"])) ** 3).mean()

    def torch_loss(model, b):
        return (model(b["x"]) ** 3).mean()

    reports = {}
    for mode in ("train", "eval"):
        torch_model.train(mode == "train")
        if mode == "train":
            jax_model.train()
        else:
            jax_model.eval()
        reports[mode] = compare_models(torch_model, jax_model, batch, torch_loss=torch_loss,
                                       jax_loss=jax_loss)
    buffers = {e.name for e in reports["train"].entries if e.kind == "buffer"}
    assert buffers == {"1.running_mean", "1.running_var"}
    assert [e.label() for e in reports["train"].failures()] == ["buffer 1.running_var"]
    # torch adds 0.1 * var * B / (B - 1), Flax 0.1 * var: a real difference, not rounding
    assert reports["train"].entry("buffer", "1.running_var").relative > 1e-3
    assert reports["eval"].failures() == [] and reports["eval"].worst("buffer") == 0.0
    assert torch_model[1].num_batches_tracked == 0                    # the copies were trained


def test_torch_parameters_without_a_jax_counterpart():
    """Keys dropped by ``rename`` (or outside ``prefix``) leave a torch gradient unmatched."""
    torch.manual_seed(5)
    torch_model = nn.Sequential(nn.Linear(F_IN, F_OUT), nn.Linear(F_OUT, 1))
    jax_model = nnx.Linear(F_IN, F_OUT, rngs=nnx.Rngs(5))
    batch = {"x": np.ones((B, F_IN))}
    report = compare_models(torch_model, jax_model, batch,
                            torch_loss=lambda m, b: m[0](b["x"]).sum(),
                            jax_loss=lambda m, b: m(b["x"]).sum(), prefix="0.")
    assert {e.name for e in report.failures()} == {"1.weight", "1.bias"}
    assert "no JAX counterpart" in report.entry("grad", "1.weight").problem


def test_bad_input_errors(mlp):
    torch_model, jax_model, batch = mlp
    run = lambda **kw: compare_models(torch_model, jax_model, batch, **{  # noqa: E731
        "torch_loss": torch_mlp_loss, "jax_loss": jax_mlp_loss, "rename": MLP_RENAME, **kw})
    with pytest.raises(ValueError, match="dtype must be one of"):
        run(dtype="bfloat16")
    with pytest.raises(TypeError, match=r"torch_model must be a torch\.nn\.Module"):
        compare_models(jax_model, jax_model, batch, torch_loss=torch_mlp_loss, jax_loss=jax_mlp_loss)
    with pytest.raises(TypeError, match="jax_model must be an NNX module"):
        compare_models(torch_model, torch_model, batch, torch_loss=torch_mlp_loss,
                       jax_loss=jax_mlp_loss)
    with pytest.raises(TypeError, match="jax_loss must be callable"):
        run(jax_loss=None)

    class Unhashable:
        __eq__ = object.__eq__
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, m, b):
            return jax_mlp_loss(m, b)

    run(jax_loss=Unhashable()).assert_close(rtol=1e-12)        # compiled: need not be hashable
    run(jax_loss=Unhashable(), jit=False).assert_close(rtol=1e-12)
    with pytest.raises(ValueError, match=r"torch_loss must return a scalar loss \(shape \(\)\), "
                                         r"got shape \(5, 2\)"):
        run(torch_loss=lambda m, b: m(b["x"]))
    with pytest.raises(ValueError, match=r"jax_loss must return a scalar loss .* got shape \(5, 2\)"):
        run(jax_loss=lambda m, b: jax_mlp_loss(m, b)[1]["out"])
    with pytest.raises(ValueError, match=r"different outputs: only in torch \['out'\], only in "
                                         r"JAX \['output'\]"):
        run(jax_loss=lambda m, b: (jax_mlp_loss(m, b)[0], {"output": jax_mlp_loss(m, b)[1]["out"]}))
    with pytest.raises(TypeError, match=r"must return a loss or \(loss, \{name: output\}\)"):
        run(torch_loss=lambda m, b: (torch_mlp_loss(m, b)[0], 1, 2))
    with pytest.raises(ValueError, match="does not require grad"):
        run(torch_loss=lambda m, b: torch.tensor(0.0, dtype=torch.float64))
    with pytest.raises(TypeError, match="batch leaves must be numpy arrays"):
        compare_models(torch_model, jax_model, {"x": torch.zeros(B, F_IN)},
                       torch_loss=torch_mlp_loss, jax_loss=jax_mlp_loss, rename=MLP_RENAME)
    with pytest.raises(ValueError, match="missing keys"):           # load errors, as loading
        run(rename=None)
    # an output of another shape is an entry that fails, with both shapes
    swapped = run(jax_loss=lambda m, b: (jax_mlp_loss(m, b)[0], {"out": jax_mlp_loss(m, b)[1]["out"].T}))
    assert swapped.entry("output", "out").problem == "shape mismatch: torch (5, 2), JAX (2, 5)"
    with pytest.raises(AssertionError, match="output out: shape mismatch"):
        swapped.assert_close()


def test_nan_is_reported_first_and_fails(mlp):
    torch_model, jax_model, batch = mlp

    def nan_output(model, b):
        loss, outputs = jax_mlp_loss(model, b)
        return loss, {"out": outputs["out"].at[0, 0].set(jnp.nan)}

    report = compare_models(torch_model, jax_model, batch, torch_loss=torch_mlp_loss,
                            jax_loss=nan_output, rename=MLP_RENAME)
    assert report.entries[0].label() == "output out" and math.isnan(report.entries[0].relative)
    assert math.isnan(report.worst()) and [e.label() for e in report.failures()] == ["output out"]
    lines = str(report).splitlines()
    assert lines[1] == "first divergence (rtol 1e-10): output out, relative nan"
    assert report.first_divergence() == report.entries[0]          # no module entries: worst
    assert lines[4].startswith("loss") and "nan" in lines[5]       # grouped by kind


def test_eager_mode_gives_the_jitted_results(mlp):
    torch_model, jax_model, batch = mlp
    jitted, eager = (compare_models(torch_model, jax_model, batch, torch_loss=torch_mlp_loss,
                                    jax_loss=jax_mlp_loss, rename=MLP_RENAME, jit=jit)
                     for jit in (True, False))
    eager.assert_close(rtol=1e-12)
    assert {e.label() for e in eager.entries} == {e.label() for e in jitted.entries}


# -- the user's models, the config, compilations ----------------------------------------------------
def _snapshot(torch_model, jax_model):
    torch_side = {k: (v.dtype, v.clone()) for k, v in torch_model.state_dict().items()}
    jax_side = jax.tree.map(lambda a: np.array(a), nnx.state(jax_model))
    return torch_side, jax_side


def test_user_models_are_unchanged_and_jit_compiles_once(classifier):
    torch_model, jax_model, batch = classifier
    torch_before, jax_before = _snapshot(torch_model, jax_model)
    for dtype in ("float64", "float32"):
        compare_models(torch_model, jax_model, batch, torch_loss=torch_classifier_loss,
                       jax_loss=jax_classifier_loss, dtype=dtype)
    torch_after, jax_after = _snapshot(torch_model, jax_model)
    assert all(p.grad is None for p in torch_model.parameters()) and not torch_model.training
    for k, (dtype, value) in torch_before.items():
        assert torch_after[k][0] == dtype == torch.float32 and torch.equal(torch_after[k][1], value)
    for before, after in zip(jax.tree.leaves(jax_before), jax.tree.leaves(jax_after)):
        assert before.dtype == after.dtype and np.array_equal(before, after)
    assert jax_model.embedding.dtype == jax_model.embedding.embedding.dtype == jnp.float32
    with count_compiles() as compiles:                 # the same shapes and functions: cached
        compare_models(torch_model, jax_model, batch, torch_loss=torch_classifier_loss,
                       jax_loss=jax_classifier_loss)
    assert compiles.count == 0, compiles.names


def test_nnx_embed_compute_dtype_is_raised_and_noted(classifier):
    """``nnx.Embed`` computes in its ``param_dtype`` (float32) by default: the copy is switched to
    float64 (else the embedding gradient would be float32-accurate) and the report says so."""
    torch_model, jax_model, batch = classifier
    report = compare_models(torch_model, jax_model, batch, torch_loss=torch_classifier_loss,
                            jax_loss=jax_classifier_loss)
    assert any("embedding.dtype (was float32)" in note for note in report.notes)
    assert "note: computation dtype set to float64" in str(report)


def test_import_jaxseq_does_not_import_torch():
    code = ("import sys, jaxseq, jaxseq.parity; print('torch' in sys.modules); "
            "jaxseq.parity.compare_models; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_float64_without_global_x64_and_the_flag_is_restored(mlp):
    torch_model, jax_model, batch = mlp
    jax.config.update("jax_enable_x64", False)          # the suite runs with x64 on
    try:
        report = compare_models(torch_model, jax_model, batch, torch_loss=torch_mlp_loss,
                                jax_loss=jax_mlp_loss, rename=MLP_RENAME)
        assert not jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", True)
    report.assert_close(rtol=1e-13)
    assert report.entry("grad", "0.weight").scale > 0
