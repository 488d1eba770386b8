"""``compare_models(..., dropout="replay")``: torch's dropout draws recorded and taken by the JAX
side in order, so that models compare in training mode: a packed multi-layer LSTM's inter-layer
dropout, AWD-LSTM's raw ``bernoulli_`` masks and weight drop, a decoder loop whose dropout stays
on in ``eval()``, channels-first masks; mismatches and refused draws raise with both sides'
draws."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn
from torch.nn.functional import dropout as bound_dropout
from torch.nn.functional import dropout1d as bound_dropout1d

import jaxseq
from jaxseq.parity import compare_models
from parity_tests.compiles import count_compiles
from torch_ref.awd import RNNModel

V, E, H, B, T = 10, 4, 5, 3, 6
LENGTHS = np.array([5, 2, 4])


def _tokens():
    return {"tokens": np.random.default_rng(0).integers(0, V, (B, T)), "lengths": LENGTHS}


class TorchStack(nn.Module):
    """nn.Dropout -> packed 3-layer BiLSTM with dropout 0.4 -> a dropout on in eval too."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.drop = nn.Dropout(0.3)
        self.lstm = nn.LSTM(E, H, num_layers=3, dropout=0.4, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * H, 2)

    def forward(self, tokens, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.emb(tokens)), lengths,
                                                   batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                                  total_length=T)
        return self.head(F.dropout(out, 0.2, training=True))


class JaxStack(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.emb = nnx.Embed(V, E, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.lstm = jaxseq.LSTM(E, H, num_layers=3, dropout=0.4, batch_first=True,
                                bidirectional=True, rngs=rngs)
        self.head = nnx.Linear(2 * H, 2, rngs=rngs)

    def __call__(self, tokens, lengths, key=None):
        out, _ = self.lstm(self.drop(self.emb(tokens)), lengths)
        return self.head(nnx.Dropout(0.2)(out, rngs=key))   # a key given at the call


def _stack_loss(m, b):
    return (m(b["tokens"], b["lengths"]) ** 2).sum()


def _jax_stack_loss(m, b):
    return (m(b["tokens"], b["lengths"], jax.random.key(7)) ** 2).sum()


def test_packed_lstm_stack_in_training_mode():
    """nn.Dropout, the LSTM's two inter-layer masks (drawn on the PackedSequence, recorded
    padded to the longest row, which is shorter than T) and F.dropout(training=True)."""
    torch.manual_seed(0)
    jax_model = JaxStack(nnx.Rngs(0))
    jax_model.train()
    report = compare_models(TorchStack().train(), jax_model, _tokens(), torch_loss=_stack_loss,
                            jax_loss=_jax_stack_loss, dropout="replay")
    report.assert_close(rtol=1e-10)
    assert report.notes[-1].startswith("dropout replayed: 4 mask(s)")
    assert report.entry("grad", "lstm.weight_ih_l2").scale > 0


class AWDPort(nnx.Module):
    """recipe 13's AWD-LSTM port with its embedding dropout (``EmbeddingDropout``)."""

    def __init__(self, rngs: nnx.Rngs, rates=(0.65, 0.3, 0.3, 0.4)):
        self.encoder = jaxseq.EmbeddingDropout(nnx.Embed(V, E, rngs=rngs), 0.1, rngs=rngs)
        sizes = [E, H, H, E]
        self.rnns = nnx.List([jaxseq.LSTM(sizes[i], sizes[i + 1], batch_first=True,
                                          weight_drop={"weight_hh_l0": 0.5}, rngs=rngs)
                              for i in range(3)])
        self.decoder = nnx.Module()
        self.decoder.bias = nnx.Param(jnp.zeros(V))
        self.lockdrop = jaxseq.LockedDropout(0.0, batch_first=True, rngs=rngs)
        self.rates = rates

    def __call__(self, tokens, lengths):
        x = self.encoder(tokens)
        for rnn, rate in zip(self.rnns, self.rates):
            x, _ = rnn(self.lockdrop(x, rate=rate), lengths)
        x = self.lockdrop(x, rate=self.rates[-1])
        return self.encoder.embed.attend(x) + self.decoder.bias[...]


AWD_RENAME = [(r"^encoder\.", "encoder.embed."), (r"\.module\.", "."), (r"_raw$", ""),
              (r"^decoder\.weight$", None)]


def _torch_awd_loss(m, b):
    valid = torch.arange(T)[None] < b["lengths"][:, None]
    return (m(b["tokens"], b["lengths"]).log_softmax(-1)[..., 0] * valid).sum()


def _jax_awd_loss(m, b):
    valid = jnp.arange(T)[None] < b["lengths"][:, None]
    return (jax.nn.log_softmax(m(b["tokens"], b["lengths"]), -1)[..., 0] * valid).sum()


@pytest.fixture(scope="module")
def awd():
    torch.manual_seed(1)
    torch_model = RNNModel(V, E, H, num_layers=3).train()
    torch_model(torch.as_tensor(_tokens()["tokens"]), LENGTHS)   # WeightDrop keeps W_hh with history
    jax_model = AWDPort(nnx.Rngs(1))
    jax_model.train()
    return torch_model, jax_model


def test_awd_lstm_in_training_mode(awd):
    """embedded_dropout and LockedDropout draw with raw ``bernoulli_``, WeightDrop with
    F.dropout on ``W_hh``; jaxseq's EmbeddingDropout, LockedDropout and weight_drop take them."""
    torch_model, jax_model = awd
    report = compare_models(torch_model, jax_model, _tokens(), torch_loss=_torch_awd_loss,
                            jax_loss=_jax_awd_loss, rename=AWD_RENAME, dropout="replay")
    report.assert_close(rtol=1e-10)
    assert report.notes[-1].startswith("dropout replayed: 8 mask(s)")     # 1 + 4 locked + 3 W_hh
    assert any("copied detached" in n for n in report.notes)


def test_a_mismatch_lists_both_sides_draws(awd):
    torch_model, _ = awd
    port = AWDPort(nnx.Rngs(1), rates=(0.65, 0.3, 0.5, 0.4))            # a wrong rate at layer 2
    port.train()
    with pytest.raises(ValueError) as error:
        compare_models(torch_model, port, _tokens(), torch_loss=_torch_awd_loss,
                       jax_loss=_jax_awd_loss, rename=AWD_RENAME, dropout="replay")
    lines = str(error.value).splitlines()
    assert lines[0].startswith("dropout replay: draw 5 differs in shape or rate. torch drew 6")
    assert lines[1:4] == ["  torch:",
                          "    0: (outside the model's submodules): Tensor.bernoulli_ [10, 1] "
                          "rate 0.1",
                          "    1: lockdrop: Tensor.bernoulli_ [3, 1, 4] rate 0.65"]
    assert lines[4] == "    2: rnns.0: F.dropout [20, 5] rate 0.5"
    assert lines[7:10] == ["    5: lockdrop: Tensor.bernoulli_ [3, 1, 5] rate 0.3", "  JAX:",
                           "    0: encoder: keep_mask <- _embedding_mask <- "
                           "EmbeddingDropout.__call__ [10, 1] rate 0.1"]
    assert lines[11] == ("    2: rnns.0: keep_mask <- _draw_masks <- RecurrentBase._draw_masks "
                         "<- RecurrentBase.__call__ [20, 5] rate 0.5")
    assert lines[14] == "    5: lockdrop: keep_mask <- LockedDropout.__call__ [3, 1, 5] rate 0.5"


class TorchDecoder(nn.Module):
    """A prenet whose dropout stays on in eval(), in a Python loop of LSTMCell steps."""

    def __init__(self):
        super().__init__()
        self.prenet = nn.Linear(E, H)
        self.cell = nn.LSTMCell(H, H)

    def forward(self, frames):                                   # [B, T, E]
        h = c = frames.new_zeros(frames.shape[0], H)
        outs = []
        for t in range(frames.shape[1]):
            h, c = self.cell(F.dropout(torch.relu(self.prenet(frames[:, t])), 0.5, training=True),
                             (h, c))
            outs.append(h)
        return torch.stack(outs, 1)


class JaxDecoder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, loop: str = "teacher_forcing"):
        self.prenet = nnx.Linear(E, H, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.cell = jaxseq.LSTMCell(H, H, rngs=rngs)
        self.loop = loop

    def step(self, carry, frame):                               # the dropout is on in eval too
        carry = self.cell(self.drop(jax.nn.relu(self.prenet(frame)), deterministic=False), carry)
        return carry, carry[0]

    def __call__(self, frames):
        zeros = jnp.zeros((frames.shape[0], H), frames.dtype)
        if self.loop == "lax.scan":                               # the user's own loop
            xs, keys = jnp.swapaxes(frames, 0, 1), jax.random.split(jax.random.key(0), T)

            def step(carry, inputs):
                frame, key = inputs
                carry = self.cell(self.drop(jax.nn.relu(self.prenet(frame)), deterministic=False,
                                            rngs=key), carry)
                return carry, carry[0]

            return jnp.swapaxes(jax.lax.scan(step, (zeros, zeros), (xs, keys))[1], 0, 1)
        if self.loop == "time-major":      # the user's own loop run by teacher_forcing
            xs = jnp.swapaxes(frames, 0, 1)
            _, ys = jaxseq.teacher_forcing(self.step, (zeros, zeros), xs, batch_first=False)
            return jnp.swapaxes(ys, 0, 1)
        return jaxseq.teacher_forcing(self.step, (zeros, zeros), frames)[1]


def _decoder_loss(m, b):
    return (m(b["frames"]) ** 2).sum()


def _frames():
    return {"frames": np.random.default_rng(2).standard_normal((B, T, E))}


def test_decoder_loop_takes_one_mask_per_step_with_modules():
    """The dropout inside ``teacher_forcing``'s step (its own stream, on in eval) takes torch's
    mask of each step; with ``modules=True`` in the same compilation, every step's entries (the
    casts and transfers around it compile nothing)."""
    torch.manual_seed(2)
    torch_model = TorchDecoder().eval()
    jax_model = JaxDecoder(nnx.Rngs(2))
    jax_model.eval()
    with count_compiles() as compiles:          # captures and masks: one compilation with the grads
        report = compare_models(torch_model, jax_model, _frames(), torch_loss=_decoder_loss,
                                jax_loss=_decoder_loss, dropout="replay", modules=True)
    assert compiles.names == ["jit(step)"]
    report.assert_close(rtol=1e-10)
    assert report.notes[-1].startswith(f"dropout replayed: {T} mask(s)")
    assert {f"cell[{t}]:0" for t in range(T)} <= {e.name for e in report.entries}


def test_a_loop_of_your_own_takes_part_through_teacher_forcing_only():
    """A draw inside the user's own ``lax.scan`` is refused with the fix; the same loop run as
    ``teacher_forcing(step, carry, xs, batch_first=False)`` replays."""
    torch.manual_seed(2)
    torch_model = TorchDecoder().eval()
    with pytest.raises(ValueError, match=r"drawn inside a JAX transformation that is not a jaxseq "
                                         r"decoding loop.*batch_first=False"):
        compare_models(torch_model, JaxDecoder(nnx.Rngs(2), "lax.scan"), _frames(),
                       torch_loss=_decoder_loss, jax_loss=_decoder_loss, dropout="replay")
    compare_models(torch_model, JaxDecoder(nnx.Rngs(2), "time-major"), _frames(),
                   torch_loss=_decoder_loss, jax_loss=_decoder_loss,
                   dropout="replay").assert_close(rtol=1e-10)


C = 4                                                   # channels == frames: shapes are ambiguous


class TorchConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(E, C, 3, padding=1)
        self.drop = nn.Dropout(0.3)                     # element-wise, on [B, C, L]
        self.channel_drop = nn.Dropout1d(0.4)           # one draw per channel: [B, C, 1]

    def forward(self, x):                               # [B, L, E]
        return self.channel_drop(self.drop(self.conv(x.transpose(1, 2)))).transpose(1, 2)


class JaxConv(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(E, C, 3, padding=[(1, 1)], rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.channel_drop = nnx.Dropout(0.4, broadcast_dims=(1,), rngs=rngs)   # [B, 1, C]

    def __call__(self, x):
        return self.channel_drop(self.drop(self.conv(x)))


def test_channels_first_masks_are_moved_last_even_when_shapes_agree():
    torch.manual_seed(4)
    x = np.random.default_rng(4).standard_normal((B, C, E))            # L == C
    report = compare_models(TorchConv().train(), JaxConv(nnx.Rngs(4)), {"x": x},
                            torch_loss=lambda m, b: (m(b["x"]) ** 3).sum(),
                            jax_loss=lambda m, b: (m(b["x"]) ** 3).sum(), dropout="replay")
    report.assert_close(rtol=1e-10)


class TorchBound(TorchConv):
    """The functional dropouts bound by name at import, before compare_models patches ``F``."""

    def forward(self, x):                               # [B, L, E]
        y = bound_dropout(self.conv(x.transpose(1, 2)), 0.3, training=True)
        return bound_dropout1d(y, 0.4, training=True, inplace=True).transpose(1, 2)


def test_dropout_bound_by_name_before_the_call_is_recorded():
    torch.manual_seed(5)
    x = np.random.default_rng(5).standard_normal((B, C, E))
    report = compare_models(TorchBound().train(), JaxConv(nnx.Rngs(5)), {"x": x},
                            torch_loss=lambda m, b: (m(b["x"]) ** 3).sum(),
                            jax_loss=lambda m, b: (m(b["x"]) ** 3).sum(), dropout="replay")
    report.assert_close(rtol=1e-10)
    assert torch._VF.dropout(torch.ones(2), 0.5, False).tolist() == [1.0, 1.0]   # restored


def test_refused_draws_and_bad_arguments():
    torch_model = nn.Linear(E, E)
    batch = {"x": np.ones((B, E))}
    with pytest.raises(ValueError, match=r"F\.alpha_dropout draws an alpha-dropout mask"):
        compare_models(torch_model, nnx.Linear(E, E, rngs=nnx.Rngs(0)), batch,
                       torch_loss=lambda m, b: F.alpha_dropout(m(b["x"]), 0.2, True).sum(),
                       jax_loss=lambda m, b: m(b["x"]).sum(), dropout="replay")
    with pytest.raises(ValueError, match=r"dropout must be 'off' or 'replay', got 'on'"):
        compare_models(torch_model, nnx.Linear(E, E, rngs=nnx.Rngs(0)), batch,
                       torch_loss=lambda m, b: m(b["x"]).sum(),
                       jax_loss=lambda m, b: m(b["x"]).sum(), dropout="on")
