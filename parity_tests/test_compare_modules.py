"""``compare_models(..., modules=True)``: every submodule's output on both sides, by module path,
in torch's order of finished calls, with no change to either model; per-step entries inside
``jaxseq.teacher_forcing``; ``first_divergence()`` names the submodule where a port goes wrong."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import jaxseq
from benchmarks.compare_models_time import (
    JaxDecoderModel,
    TorchDecoderModel,
    jax_loss,
    make_batch,
    torch_loss,
)
from jaxseq.parity import compare_models

STEPS = 3


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return TorchDecoderModel(), make_batch(STEPS)


class BuggyQuery(JaxDecoderModel):
    """A port whose attention query reads the cell's ``c`` instead of ``h``."""

    def step(self, carry, frame):
        (h, c), context, memory, lengths = carry
        x = jax.nn.relu(self.prenet(frame))
        h, c = self.cell(jnp.concatenate([x, context], -1), (h, c))
        context, _ = jaxseq.dot_attention(self.query(c), memory, memory, lengths)
        return ((h, c), context, memory, lengths), self.out(jnp.concatenate([h, context], -1))


def test_decoder_loop_gives_one_entry_per_step_in_torch_order(decoder):
    """The cell inside ``teacher_forcing``'s scan (the step a bound method of the model) against
    torch's Python loop: one entry per call and output array, step after step."""
    torch_model, batch = decoder
    report = compare_models(torch_model, JaxDecoderModel(cell="jaxseq", loop="scan",
                                                         rngs=nnx.Rngs(0)),
                            batch, torch_loss=torch_loss, jax_loss=jax_loss, modules=True)
    report.assert_close(rtol=1e-10)
    assert report.first_divergence() is None
    order = [e.name for e in report.modules()]
    per_step = lambda t: [f"prenet[{t}]", f"cell[{t}]:0", f"cell[{t}]:1", f"query[{t}]",  # noqa: E731
                          f"out[{t}]"]
    assert order == ["embedding", "encoder:0", "encoder:1", "encoder:2",
                     *per_step(0), *per_step(1), *per_step(2)]
    assert report.entry("module", "encoder:0").shape == (4, 12, 64)         # padded PackedSequence
    assert not [n for n in report.notes if "modules" in n]           # everything matched
    assert str(report).splitlines()[3] == "first divergence (rtol 1e-10): none"


def test_first_divergence_names_the_submodule_where_the_port_goes_wrong(decoder):
    torch_model, batch = decoder
    report = compare_models(torch_model, BuggyQuery(cell="jaxseq", loop="scan", rngs=nnx.Rngs(0)),
                            batch, torch_loss=torch_loss, jax_loss=jax_loss, modules=True)
    first = report.first_divergence()
    assert first.name == "query[0]" and first.relative > 1e-3
    assert report.entry("module", "cell[0]:0").passes(1e-10)     # before the bug: equal
    assert "first divergence (rtol 1e-10): module query[0], relative" in str(report)


B, T, F_IN, C, H, K = 3, 6, 2, 4, 5, 3
LENGTHS = np.array([5, 3, 4])                  # the longest is shorter than T


class TorchConvTagger(nn.Module):
    """Conv1d -> BatchNorm1d -> ReLU (channels first) -> packed LSTM -> a head called twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(F_IN, C, 3, padding=1)
        self.norm = nn.BatchNorm1d(C)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.3)                            # eval: identity; no JAX twin
        self.lstm = nn.LSTM(C, H, batch_first=True)
        self.head = nn.Linear(H, K)

    def forward(self, x, lengths):                              # x [B, T, F]
        y = self.drop(self.act(self.norm(self.conv(x.transpose(1, 2)))))     # [B, C, T]
        packed = nn.utils.rnn.pack_padded_sequence(y.transpose(1, 2), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                                  total_length=x.shape[1])
        return self.head(out) + self.head(out.flip(1))


class ReLU(nnx.Module):
    def __call__(self, x):
        return jax.nn.relu(x)


class JaxConvTagger(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, scan_head: bool = False):
        self.conv = nnx.Conv(F_IN, C, 3, padding=[(1, 1)], rngs=rngs)
        self.norm = nnx.BatchNorm(C, use_running_average=True, rngs=rngs)
        self.act = ReLU()
        self.lstm = jaxseq.LSTM(C, H, batch_first=True, rngs=rngs)
        self.head = nnx.Linear(H, K, rngs=rngs)
        self.extra = ReLU()                                     # no torch twin
        self.scan_head = scan_head

    def __call__(self, x, lengths):
        y = self.act(self.norm(self.conv(x)))                   # [B, T, C]
        out, _ = self.lstm(self.extra(y), lengths)
        if self.scan_head:                                      # the user's own lax.scan
            heads = jax.lax.scan(lambda c, o: (c, self.head(o)), 0, jnp.stack([out, out[:, ::-1]]))
            return heads[1][0] + heads[1][1]
        return self.head(out) + self.head(out[:, ::-1])


def _tagger_batch():
    x = np.random.default_rng(3).standard_normal((B, T, F_IN))
    x[np.arange(T)[None] >= LENGTHS[:, None]] = 0.0
    return {"x": x, "lengths": LENGTHS}


def _tagger_loss(m, b):
    return (m(b["x"], b["lengths"]) ** 2).sum()


@pytest.mark.parametrize("scan_head", [False, True])
def test_layouts_packed_outputs_repeated_calls_and_unmatched_modules(scan_head):
    """Conv / batch-norm outputs (and the ReLU after them) moved channels last; the LSTM's
    PackedSequence padded to JAX's length; ``head[0]``, ``head[1]``; a torch module without a
    JAX twin, a JAX-only module and calls inside the user's own ``lax.scan`` in the notes."""
    torch.manual_seed(3)
    torch_model = TorchConvTagger().eval()
    with torch.no_grad():                                        # non-trivial running statistics
        torch_model.norm.running_mean.uniform_(-0.5, 0.5)
        torch_model.norm.running_var.uniform_(0.5, 2.0)
    report = compare_models(torch_model, JaxConvTagger(nnx.Rngs(3), scan_head), _tagger_batch(),
                            torch_loss=_tagger_loss, jax_loss=_tagger_loss, modules=True)
    modules = {e.name: e for e in report.entries if e.kind == "module"}
    notes = "\n".join(report.notes)
    # parameterless modules with no twin: one short note per side, each module with its calls
    assert ("torch modules without parameters and no JAX module, not compared (usual where the "
            "port calls a function: jnp.tanh, nnx.relu): drop (Dropout, 1 call)") in report.notes
    assert ("JAX modules without parameters and no torch module, not compared (usual where torch "
            "calls a function: F.dropout, F.relu): extra (ReLU, 1 call)") in report.notes
    for name in ("conv", "norm", "act", "lstm:0", "lstm:1", "lstm:2"):
        assert modules[name].passes(1e-10) and modules[name].scale > 0, name
    assert modules["conv"].shape == (B, T, C) and modules["lstm:0"].shape == (B, T, H)
    if not scan_head:
        assert {"head[0]", "head[1]"} <= set(modules)
        report.assert_close(rtol=1e-10)
    else:                                                        # named, not silently skipped
        assert ("torch module head (Linear, 2 calls) not compared: JAX's 'head' was called inside "
                "a JAX transformation that is not a jaxseq decoding loop") in notes
    assert len(report.notes) == 2 + scan_head                    # nothing else to say


def test_a_new_tensor_with_a_freed_channels_first_outputs_id_is_not_channels_first():
    """Channels-first outputs are tracked by identity, not by ``id`` alone: CPython gives a freed
    tensor's address to the next one, which must not be taken for channels first (in the
    Tacotron-style example it was, depending on memory layout: a ``[B, S, E]`` memory through a
    Linear was compared moved, as ``[B, E, S]``)."""
    from jaxseq.parity.capture import TorchModules

    model = nn.Sequential(nn.Conv1d(2, 2, 1))
    modules = TorchModules(record=False)
    with modules(model):
        out = model(torch.ones(1, 2, 3))
        assert modules.channels_first(out)
        freed = id(out)
        del out
        fresh = [torch.zeros(1, 3, 2) for _ in range(20)]
        reused = [t for t in fresh if id(t) == freed]
        assert reused                                   # the freed address, given again
        assert not modules.channels_first(reused[0])
