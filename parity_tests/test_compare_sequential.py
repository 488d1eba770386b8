"""The porting pieces together: a torch model with an ``nn.Sequential`` postnet and an
``nn.Embedding(padding_idx)`` against a port with ``nnx.Sequential`` and ``jaxseq.Embedding``,
compared with ``modules=True`` and ``dropout="replay"`` in training mode (the Dropout inside the
Sequential). Module entries are named by torch's paths (``postnet.0``, ``embedding``), as the
state_dict keys are."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import jaxseq
from jaxseq.parity import compare_models

B, T, V, E, C = 3, 7, 11, 4, 5
PAD = 0


class TorchTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(V, E, padding_idx=PAD)
        self.postnet = nn.Sequential(nn.Conv1d(E, C, 5, padding=2), nn.BatchNorm1d(C), nn.Tanh(),
                                     nn.Dropout(0.5), nn.Conv1d(C, E, 3, padding=1))

    def forward(self, ids):                                       # ids [B, T] -> [B, T, E]
        x = self.embedding(ids)
        return x + self.postnet(x.transpose(1, 2)).transpose(1, 2)


class JaxTagger(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embedding = jaxseq.Embedding(V, E, padding_idx=PAD, rngs=rngs)
        self.postnet = nnx.Sequential(nnx.Conv(E, C, 5, padding=[(2, 2)], rngs=rngs),
                                      jaxseq.BatchNorm(C), jnp.tanh, nnx.Dropout(0.5, rngs=rngs),
                                      nnx.Conv(C, E, 3, padding=[(1, 1)], rngs=rngs))

    def __call__(self, ids):
        x = self.embedding(ids)
        return x + self.postnet(x)


def _loss(model, batch):
    return (model(batch["ids"]) ** 2).mean()


def test_sequential_and_padding_idx_by_module_with_dropout_replayed_in_train_mode():
    torch.manual_seed(5)
    ids = np.random.default_rng(5).integers(1, V, (B, T))
    ids[0, 2] = ids[1, -2:] = PAD                  # pad ids at real positions too
    jax_model = JaxTagger(nnx.Rngs(5))
    jax_model.train()                              # jaxseq.BatchNorm: batch statistics
    report = compare_models(TorchTagger().train(), jax_model, {"ids": ids},
                            torch_loss=_loss, jax_loss=_loss, modules=True, dropout="replay")
    # the first conv's bias feeds a train-mode batch norm: its gradient is rounding noise
    report.assert_close(rtol=1e-10, atol=1e-15)
    order = [e.name for e in report.modules()]
    assert order == ["embedding", "postnet.0", "postnet.1", "postnet.3", "postnet.4", "postnet"]
    assert report.entry("module", "postnet.3").shape == (B, T, C)        # channels moved last
    assert report.entry("module", "postnet.3").scale > 0
    assert report.entry("grad", "embedding.weight").scale > 0
    notes = "\n".join(report.notes)
    assert ("torch modules without parameters and no JAX module, not compared (usual where the "
            "port calls a function: jnp.tanh, nnx.relu): postnet.2 (Tanh, 1 call)") in notes
    assert "dropout replayed: 1 mask(s)" in notes
    assert not [n for n in report.notes if n.startswith("JAX module")]


def test_a_replay_mismatch_names_the_dropout_in_the_sequential_by_torch_path():
    """Both sides' draws are listed under torch's module path (``postnet.3``, not
    ``postnet.layers.3``)."""
    torch.manual_seed(5)
    jax_model = JaxTagger(nnx.Rngs(5))
    jax_model.postnet.layers[3].rate = 0.25
    with pytest.raises(ValueError, match=r"(?s)torch:\n    0: postnet\.3: F\.dropout \[3, 5, 7\] "
                                         r"rate 0\.5\n  JAX:\n    0: postnet\.3: Dropout\.__call__ "
                                         r"\[3, 7, 5\] rate 0\.25"):
        compare_models(TorchTagger().train(), jax_model, {"ids": np.ones((B, T), np.int64)},
                       torch_loss=_loss, jax_loss=_loss, dropout="replay")


def test_a_model_that_is_an_nn_sequential_by_module():
    """The port is an ``nnx.Sequential`` itself (no parameter outside it): entries ``0``, ``2``."""
    torch.manual_seed(6)
    torch_mlp = nn.Sequential(nn.Linear(E, C), nn.ReLU(), nn.Linear(C, E))
    mlp = nnx.Sequential(nnx.Linear(E, C, rngs=nnx.Rngs(6)), nnx.relu,
                         nnx.Linear(C, E, rngs=nnx.Rngs(6)))
    report = compare_models(torch_mlp, mlp, {"x": np.random.default_rng(6).standard_normal((B, E))},
                            torch_loss=lambda m, b: m(b["x"]).sum(),
                            jax_loss=lambda m, b: m(b["x"]).sum(), modules=True)
    report.assert_close(rtol=1e-10)
    assert sorted(e.name for e in report.entries if e.kind == "module") == ["0", "2"]
