"""``jaxseq.Embedding`` against ``torch.nn.Embedding`` with ``padding_idx``.

* construction: torch's attributes (read-only, ``padding_idx`` normalised), ``N(0, 1)`` init with
  the padding row zero, torch's errors for a bad ``padding_idx``;
* forward and the gradient of ``weight`` in float64, exactly torch's, with pad ids at real
  positions (where ``nnx.Embed`` gives the padding row a gradient torch never gives), NaN output
  gradients at pad positions included;
* ``nn.Embedding``'s state_dict both ways (bit-exact, strict torch load), ``compare_models`` on a
  model with ``nn.Embedding(padding_idx=0)`` (passes with ``jaxseq.Embedding``, fails with
  ``nnx.Embed``), ``EmbeddingDropout`` wrapping it (torch's ``embedded_dropout``), ``attend`` as a
  tied output layer;
* ids outside the table: an error when concrete or under ``jaxseq.checked``, NaN rows under ``jit``
  (never a wrapped row); eager calls compile once per shape.
"""
from __future__ import annotations

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
from torch_ref.dropout import embedded_dropout

N, E = 9, 4


def _ids(rng: np.random.Generator, shape=(3, 7), pad: int = 0) -> np.ndarray:
    """Ids with every row present, ``pad`` at real positions and repeated ids."""
    ids = rng.integers(0, N, shape)
    ids.flat[:N] = rng.permutation(N)
    ids.flat[[1, 5, 11]] = pad
    return ids


def _pair(padding_idx, seed: int = 0, dtype=torch.float64):
    """A torch embedding with a random table (the padding row non-zero too: a loaded or trained
    value is returned as it is) and the jaxseq one loaded from it."""
    torch.manual_seed(seed)
    torch_emb = nn.Embedding(N, E, padding_idx=padding_idx).to(dtype)
    with torch.no_grad():
        torch_emb.weight.normal_()
    param_dtype = jnp.float64 if dtype == torch.float64 else jnp.float32
    emb = jaxseq.Embedding(N, E, padding_idx, rngs=nnx.Rngs(seed), param_dtype=param_dtype)
    return torch_emb, jaxseq.load_torch_state_dict(emb, torch_emb.state_dict())


def _torch_grad(torch_emb, ids, upstream):
    torch_emb.zero_grad()
    out = torch_emb(torch.from_numpy(ids))
    (out * torch.from_numpy(upstream)).sum().backward()
    return out.detach().numpy(), torch_emb.weight.grad.numpy()


def _jax_grad(module, ids, upstream):
    out = module(ids)
    grad = nnx.grad(lambda m: (m(ids) * upstream).sum())(module)
    return np.asarray(out), grad


@pytest.mark.parametrize("padding_idx", [None, 0, 5, -1])
def test_attributes_and_init_are_torchs(padding_idx):
    torch_emb = nn.Embedding(N, E, padding_idx=padding_idx)
    emb = jaxseq.Embedding(N, E, padding_idx, rngs=nnx.Rngs(0))
    for name in ("num_embeddings", "embedding_dim", "padding_idx"):
        assert getattr(emb, name) == getattr(torch_emb, name), name
        with pytest.raises(AttributeError):
            setattr(emb, name, 1)
    assert emb.weight.shape == (N, E) and emb.weight.dtype == jnp.float32
    assert repr(emb) == repr(torch_emb)
    pad = torch_emb.padding_idx
    assert (pad is None) == bool(np.all(np.asarray(emb.weight[...]) != 0))
    if pad is not None:
        assert not np.any(np.asarray(emb.weight[pad]))


def test_init_is_standard_normal_with_the_padding_row_zero():
    drawn = jax.random.normal(nnx.Rngs(1).params(), (N, E), jnp.float32)   # the module's key
    weight = jaxseq.Embedding(N, E, padding_idx=2, rngs=nnx.Rngs(1)).weight[...]
    np.testing.assert_array_equal(weight, drawn.at[2].set(0))


@pytest.mark.parametrize("padding_idx", [N, -N - 1])
def test_bad_padding_idx_raises_as_torch(padding_idx):
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        nn.Embedding(N, E, padding_idx=padding_idx)
    with pytest.raises(ValueError, match=f"padding_idx must be within num_embeddings.*got "
                                         f"{padding_idx}"):
        jaxseq.Embedding(N, E, padding_idx, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="padding_idx must be an int"):
        jaxseq.Embedding(N, E, 1.0, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("padding_idx", [None, 0, 5, -1])
def test_forward_and_weight_gradient_equal_torchs_float64(padding_idx):
    """Pad ids at real positions: torch's backward skips them, so the padding row's gradient is 0;
    every other row's gradient is the sum over its positions, bit for bit."""
    torch_emb, emb = _pair(padding_idx)
    rng = np.random.default_rng(1)
    pad = 0 if padding_idx is None else torch_emb.padding_idx
    ids = _ids(rng, pad=pad)
    upstream = rng.standard_normal(ids.shape + (E,))
    out_t, grad_t = _torch_grad(torch_emb, ids, upstream)
    out, grads = _jax_grad(emb, ids, upstream)
    np.testing.assert_array_equal(out, out_t)
    np.testing.assert_array_equal(np.asarray(grads["weight"][...]), grad_t)
    if padding_idx is not None:
        assert not np.any(grad_t[pad]) and np.any(out_t[ids == pad])   # a real row, no gradient
    if padding_idx == 0:
        flax = nnx.Embed(N, E, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        flax.embedding[...] = emb.weight[...]
        flax_grad = nnx.grad(lambda m: (m(ids) * upstream).sum())(flax)["embedding"][...]
        assert np.abs(np.asarray(flax_grad)[pad]).max() > 0.1     # what nnx.Embed gets wrong


def test_nan_output_gradient_at_pad_positions_reaches_nothing():
    torch_emb, emb = _pair(0)
    rng = np.random.default_rng(2)
    ids = _ids(rng)
    upstream = rng.standard_normal(ids.shape + (E,))
    upstream[ids == 0] = np.nan
    _, grad_t = _torch_grad(torch_emb, ids, upstream)
    _, grads = _jax_grad(emb, ids, upstream)
    assert np.isfinite(grad_t).all()
    np.testing.assert_array_equal(np.asarray(grads["weight"][...]), grad_t)


def test_float32_matches_torch():
    torch_emb, emb = _pair(2, dtype=torch.float32)
    rng = np.random.default_rng(3)
    ids = _ids(rng, shape=(16, 40), pad=2)
    upstream = rng.standard_normal(ids.shape + (E,)).astype(np.float32)
    out_t, grad_t = _torch_grad(torch_emb, ids, upstream)
    out, grads = _jax_grad(emb, ids, upstream)
    np.testing.assert_array_equal(out, out_t)
    assert not np.any(grad_t[2]) and not np.any(np.asarray(grads["weight"][2]))
    np.testing.assert_allclose(np.asarray(grads["weight"][...]), grad_t, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_is_bit_exact():
    torch_emb, emb = _pair(3)
    back = jaxseq.torch_state_dict(emb)
    assert list(back) == ["weight"]
    np.testing.assert_array_equal(back["weight"], torch_emb.weight.detach().numpy())
    fresh = nn.Embedding(N, E, padding_idx=3).double()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})    # strict
    assert torch.equal(fresh.weight, torch_emb.weight)
    with pytest.raises(ValueError, match=r"Embedding\(9, 4, padding_idx=3\).*'weight': expected "
                                         r"shape \(9, 4\), got \(8, 4\)"):
        jaxseq.load_torch_state_dict(emb, {"weight": np.zeros((8, E))})


def test_ids_outside_the_table():
    emb = jaxseq.Embedding(N, E, 0, rngs=nnx.Rngs(0))
    for bad in ([[1, N]], [[-1, 2]]):
        with pytest.raises(ValueError, match=r"0 <= id < num_embeddings=9.*ids.flat\[\d\] = "):
            emb(np.array(bad))
    with pytest.raises(TypeError, match="ids must have an integer dtype"):
        emb(np.array([1.0]))
    looked_up = nnx.jit(lambda m, i: m(i))(emb, jnp.array([1, N, -1]))       # traced: no check
    assert np.isnan(np.asarray(looked_up[1:])).all()                         # never wrapped
    np.testing.assert_array_equal(looked_up[0], emb.weight[1])
    weight = emb.weight[...]
    checked = jaxseq.checked(lambda w, i: jaxseq.embedding_lookup(w, i, padding_idx=0))
    with pytest.raises(ValueError, match=r"ids.flat\[1\] = 9"):
        checked(weight, jnp.array([1, N]))
    np.testing.assert_array_equal(checked(weight, jnp.array([1, 2])), weight[jnp.array([1, 2])])


def test_eager_calls_compile_once_per_shape():
    emb = jaxseq.Embedding(N, E, 0, rngs=nnx.Rngs(0))
    emb(np.zeros((2, 3), np.int32)).block_until_ready()
    with count_compiles() as again:
        for seed in (1, 2):
            emb(np.random.default_rng(seed).integers(0, N, (2, 3)).astype(np.int32))
    assert again.count == 0, again.names


# -- compare_models: the port whose pad ids sit at real positions ------------------------------
class TorchBag(nn.Module):
    """Mean of the embeddings of every position (id 0 is a real token here, e.g. a blank), then a
    linear layer: pad ids at real positions reach the loss."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(N, E, padding_idx=0)
        self.head = nn.Linear(E, 3)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(1))


class JaxBag(nnx.Module):
    def __init__(self, embedding: nnx.Module, *, rngs: nnx.Rngs):
        self.embedding = embedding
        self.head = nnx.Linear(E, 3, rngs=rngs)

    def __call__(self, ids):
        return self.head(self.embedding(ids).mean(1))


def _bag_loss_torch(model, batch):
    return F.cross_entropy(model(batch["ids"]), batch["labels"])


def _bag_loss_jax(model, batch):
    return jaxseq.masked_cross_entropy(model(batch["ids"]), batch["labels"])


def test_compare_models_passes_with_embedding_and_fails_with_nnx_embed():
    torch.manual_seed(0)
    torch_model = TorchBag()
    rng = np.random.default_rng(4)
    batch = {"ids": _ids(rng, shape=(4, 6)), "labels": rng.integers(0, 3, 4)}
    ours = JaxBag(jaxseq.Embedding(N, E, padding_idx=0, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
    report = compare_models(torch_model, ours, batch, torch_loss=_bag_loss_torch,
                            jax_loss=_bag_loss_jax)
    report.assert_close(rtol=1e-12)
    flax = JaxBag(nnx.Embed(N, E, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
    report = compare_models(torch_model, flax, batch, torch_loss=_bag_loss_torch,
                            jax_loss=_bag_loss_jax)
    assert [e.label() for e in report.failures()] == ["grad embedding.weight"]


def test_embedding_dropout_wraps_it_as_torchs_embedded_dropout():
    """The same row mask on both sides: forward and gradient (padding row: none) are torch's (to
    the last bit but the rounding of where the mask is applied: before or after summing)."""
    torch_emb, emb = _pair(0)
    rng = np.random.default_rng(5)
    ids = _ids(rng)
    mask = (rng.random((N, 1)) > 0.4) / 0.6
    upstream = rng.standard_normal(ids.shape + (E,))
    out_t = embedded_dropout(torch_emb, torch.from_numpy(ids), 0.4, mask=torch.from_numpy(mask))
    (out_t * torch.from_numpy(upstream)).sum().backward()
    layer = jaxseq.EmbeddingDropout(emb, 0.4, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(layer(ids, mask=mask), out_t.detach().numpy())
    grads = nnx.grad(lambda m: (m(ids, mask=mask) * upstream).sum())(layer)
    np.testing.assert_allclose(np.asarray(grads["embed"]["weight"][...]),    # mask x sum order
                               torch_emb.weight.grad.numpy(), rtol=1e-15, atol=1e-15)
    assert not np.any(np.asarray(grads["embed"]["weight"][0]))
    assert jaxseq.torch_state_dict(layer).keys() == {"embed.weight"}
    layer.train()                                           # a drawn mask: whole rows dropped
    drawn = np.asarray(layer(np.arange(N)[None].repeat(2, 0)))
    np.testing.assert_array_equal(drawn[0], drawn[1])
    assert {bool(np.any(row)) for row in drawn[0, 1:]} == {True, False}


def test_attend_is_torchs_tied_linear():
    """A tied output layer: the padding row gets its gradient there (only the lookup skips it)."""
    torch_emb, emb = _pair(0)
    rng = np.random.default_rng(6)
    ids, query = _ids(rng), rng.standard_normal((5, E))
    logits_t = F.linear(torch.from_numpy(query), torch_emb.weight)
    (logits_t.sum() + torch_emb(torch.from_numpy(ids)).sum()).backward()
    np.testing.assert_allclose(emb.attend(query), logits_t.detach().numpy(), rtol=1e-14,
                               atol=1e-14)
    grads = nnx.grad(lambda m: m.attend(query).sum() + m(ids).sum())(emb)
    np.testing.assert_allclose(np.asarray(grads["weight"][...]), torch_emb.weight.grad.numpy(),
                               rtol=1e-14, atol=1e-14)
    assert np.any(torch_emb.weight.grad.numpy()[0])
    with pytest.raises(ValueError, match="query must be"):
        emb.attend(np.ones((2, E + 1)))


def test_embedding_lookup_is_jittable_and_transformable():
    weight = jax.random.normal(jax.random.key(0), (N, E), jnp.float64)
    ids = jnp.array([[0, 3, 0], [2, 2, 8]])
    direct = jaxseq.embedding_lookup(weight, ids, padding_idx=0)
    np.testing.assert_array_equal(jax.jit(jaxseq.embedding_lookup, static_argnums=2)(
        weight, ids, 0), direct)
    per_row = jax.vmap(lambda i: jaxseq.embedding_lookup(weight, i, 0))(ids)
    np.testing.assert_array_equal(per_row, direct)
    with pytest.raises(ValueError, match=r"weight must be a table \[N, E\]"):
        jaxseq.embedding_lookup(weight[0], ids)
