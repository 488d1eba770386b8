"""Robust exchange of parameters with torch ``state_dict``\\ s.

What is really exercised here, on a CPU-only machine:

* files written by ``torch.save`` and read back with ``torch.load(weights_only=True)``;
* non-contiguous tensors (transposed views, strided slices of a larger buffer), parameters that
  require grad, bfloat16 tensors;
* CUDA tensors only through a stand-in (:class:`FakeCudaTensor`) that behaves like a CUDA tensor
  for the calls the loader makes (``.detach()``, ``.cpu()``, ``.numpy()`` / ``__array__`` refusing
  to run before ``.cpu()``); a real CUDA tensor is loaded only when torch sees a GPU;
* bit-exact round trips jaxseq -> torch -> jaxseq and torch -> jaxseq -> torch in float32 and
  float64 (and bfloat16 for a bfloat16 module);
* ``prefix=`` picking one submodule out of a larger torch model;
* atomicity: a failing load writes nothing;
* a model built with ``nnx.eval_shape`` (no random init) filled by the load.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq
from jaxseq.interop import load_torch_state_dict, torch_state_dict


def _torch_lstm(dtype=torch.float32) -> torch.nn.LSTM:
    torch.manual_seed(0)
    return torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2).to(dtype)


def _jax_lstm(dtype="float32", seed=1) -> jaxseq.LSTM:
    return jaxseq.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2,
                       param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(seed))


def _assert_params_equal(module, state_dict):
    """Every parameter of ``module`` equals the matching torch tensor bit for bit (same dtype)."""
    got = torch_state_dict(module)
    assert list(got) == list(state_dict)
    for name, tensor in state_dict.items():
        want = tensor.detach().cpu().numpy()
        assert got[name].dtype == want.dtype, name
        assert np.array_equal(got[name], want), name


def test_torch_save_then_weights_only_load(tmp_path):
    path = tmp_path / "lstm.pt"
    torch.save(_torch_lstm().state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    module = load_torch_state_dict(_jax_lstm(), loaded)
    _assert_params_equal(module, loaded)


def _non_contiguous(tensor: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as ``tensor`` in a non-contiguous layout."""
    if how == "transposed":                 # a column-major view of a 2-D weight
        return tensor.t().contiguous().t() if tensor.ndim == 2 else tensor.flip(0).contiguous().flip(0)
    big = torch.zeros((2 * tensor.shape[0],) + tuple(tensor.shape[1:]), dtype=tensor.dtype)
    big[::2] = tensor                      # every other row of a larger buffer
    return big[::2]


@pytest.mark.parametrize("how", ["transposed", "strided slice"])
def test_non_contiguous_tensors(how):
    sd = _torch_lstm().state_dict()
    odd = {k: _non_contiguous(v, how) for k, v in sd.items()}
    weights = [v for k, v in odd.items() if k.startswith("weight")]
    assert all(not v.is_contiguous() for v in weights)
    assert all(torch.equal(odd[k], sd[k]) for k in sd)
    _assert_params_equal(load_torch_state_dict(_jax_lstm(), odd), sd)


def test_parameters_that_require_grad():
    model = _torch_lstm()
    params = dict(model.named_parameters())
    assert all(p.requires_grad for p in params.values())
    _assert_params_equal(load_torch_state_dict(_jax_lstm(), params), model.state_dict())


class FakeCudaTensor:
    """Stand-in for a CUDA tensor: host conversion fails until ``.cpu()``, as with real ones."""

    def __init__(self, cpu_tensor: torch.Tensor):
        self._cpu = cpu_tensor
        self.calls: list[str] = []
        self.dtype, self.shape, self.device = cpu_tensor.dtype, cpu_tensor.shape, "cuda:0"

    def detach(self) -> "FakeCudaTensor":
        self.calls.append("detach")
        return self

    def cpu(self) -> torch.Tensor:
        self.calls.append("cpu")
        return self._cpu

    def numpy(self):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy "
                        "the tensor to host memory first.")

    __array__ = numpy


def test_cuda_tensors_are_copied_to_host_first():
    sd = _torch_lstm().state_dict()
    fake = {k: FakeCudaTensor(v) for k, v in sd.items()}
    _assert_params_equal(load_torch_state_dict(_jax_lstm(), fake), sd)
    assert all(f.calls == ["detach", "cpu"] for f in fake.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
def test_real_cuda_tensors():
    sd = _torch_lstm().state_dict()
    _assert_params_equal(load_torch_state_dict(_jax_lstm(), {k: v.cuda() for k, v in sd.items()}), sd)


def test_bfloat16_tensors_into_float32_module():
    sd = _torch_lstm(torch.bfloat16).state_dict()
    module = load_torch_state_dict(_jax_lstm(), sd)
    _assert_params_equal(module, {k: v.float() for k, v in sd.items()})   # widening is exact


def test_bfloat16_round_trip_through_bfloat16_module():
    sd = _torch_lstm(torch.bfloat16).state_dict()
    exported = torch_state_dict(load_torch_state_dict(_jax_lstm("bfloat16"), sd))
    for name, tensor in sd.items():
        assert str(exported[name].dtype) == "bfloat16"
        back = torch.from_numpy(exported[name].astype(np.float32)).bfloat16()
        assert torch.equal(back, tensor), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_import_is_bit_exact(dtype):
    """jaxseq -> torch.nn.LSTM.load_state_dict -> state_dict -> a second jaxseq module."""
    source = _jax_lstm(dtype, seed=3)
    exported = torch_state_dict(source)
    model = _torch_lstm(getattr(torch, dtype))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()})
    target = load_torch_state_dict(_jax_lstm(dtype, seed=4), model.state_dict())
    again = torch_state_dict(target)
    assert list(again) == list(exported)
    for name, value in exported.items():
        assert again[name].dtype == np.dtype(dtype) and np.array_equal(again[name], value), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_import_export_is_bit_exact(dtype):
    sd = _torch_lstm(getattr(torch, dtype)).state_dict()
    exported = torch_state_dict(load_torch_state_dict(_jax_lstm(dtype), sd))
    assert all(torch.equal(torch.from_numpy(exported[k]), v) for k, v in sd.items())


class Seq2Vec(torch.nn.Module):
    """A torch model with an RNN nested two levels deep, among other parameters."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 3)
        self.encoder = torch.nn.ModuleDict({"rnn": torch.nn.GRU(3, 5, batch_first=True),
                                            "norm": torch.nn.LayerNorm(5)})
        self.head = torch.nn.Linear(5, 2)


def test_prefix_selects_a_submodule():
    torch.manual_seed(0)
    model = Seq2Vec()
    gru = load_torch_state_dict(jaxseq.GRU(3, 5, batch_first=True, rngs=nnx.Rngs(0)),
                                model.state_dict(), prefix="encoder.rnn.")
    _assert_params_equal(gru, model.encoder["rnn"].state_dict())


def test_wrong_prefix_names_the_missing_keys():
    with pytest.raises(ValueError, match=r"state_dict \(prefix 'encoder\.'\) does not match GRU\(3, 5\)"
                                         r": missing keys 'weight_ih_l0'"):
        load_torch_state_dict(jaxseq.GRU(3, 5, rngs=nnx.Rngs(0)), Seq2Vec().state_dict(),
                              prefix="encoder.")


@pytest.mark.parametrize("spoil, exc, phrase", [
    (lambda sd: sd.update(weight_hr_l1_reverse=torch.ones(2, 7)), ValueError,
     "'weight_hr_l1_reverse': expected shape (2, 6), got (2, 7)"),
    (lambda sd: sd.update(weight_hr_l2=torch.ones(2, 6)), ValueError, "unexpected keys 'weight_hr_l2'"),
    (lambda sd: sd.pop("bias_hh_l1_reverse"), ValueError, "missing keys 'bias_hh_l1_reverse'"),
    (lambda sd: sd.update(bias_hh_l1_reverse=torch.ones(24, dtype=torch.int32)), TypeError,
     "state_dict['bias_hh_l1_reverse'] must have a floating dtype, got int32"),
], ids=["mis-shaped", "unknown", "missing", "integer"])
def test_failed_load_writes_nothing(spoil, exc, phrase):
    """Every other entry is valid (and differs from the module's values); the bad one comes late in
    torch's key order, after entries a non-atomic loader would already have written."""
    module = _jax_lstm()
    before = torch_state_dict(module)
    sd = {k: torch.full(v.shape, 0.5) for k, v in _torch_lstm().state_dict().items()}
    spoil(sd)
    with pytest.raises(exc) as info:
        load_torch_state_dict(module, sd)
    assert phrase in str(info.value)
    after = torch_state_dict(module)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_exported_arrays_are_writable_copies():
    module = _jax_lstm()
    exported = torch_state_dict(module)
    assert all(v.flags.writeable for v in exported.values())
    exported["weight_ih_l0"][...] = 7.0
    assert not np.any(np.asarray(module.weight_ih_l0[...]) == 7.0)


def test_loaded_parameters_do_not_alias_torch_memory():
    """An in-place update of the torch tensor after loading must not change the jaxseq module."""
    tmod = torch.nn.LSTM(3, 4)
    jmod = jaxseq.LSTM(3, 4, rngs=nnx.Rngs(0))
    jaxseq.load_torch_state_dict(jmod, tmod.state_dict())
    before = np.array(jmod.weight_ih_l0[...])
    with torch.no_grad():
        tmod.weight_ih_l0.add_(1.0)
    np.testing.assert_array_equal(np.asarray(jmod.weight_ih_l0[...]), before)


def _abstract(module) -> list[str]:
    return [".".join(map(str, path)) for path, node in nnx.iter_graph(module)
            if isinstance(node, nnx.Variable) and isinstance(node.get_value(), jax.ShapeDtypeStruct)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_model_built_with_eval_shape_loads_without_a_random_init(dtype):
    """``nnx.eval_shape`` leaves ``ShapeDtypeStruct``s; the load fills them in the abstract dtype
    (float64 torch values into a float32 model are cast), as it fills a concrete model."""
    sd = _torch_lstm(torch.float64).state_dict()
    abstract = nnx.eval_shape(lambda: _jax_lstm(dtype))
    assert len(_abstract(abstract)) == len(sd)
    load_torch_state_dict(abstract, sd)
    assert not _abstract(abstract)
    concrete = load_torch_state_dict(_jax_lstm(dtype), sd)
    want = {k: torch.from_numpy(v) for k, v in torch_state_dict(concrete).items()}
    _assert_params_equal(abstract, want)                         # target dtype, bit for bit
    assert nnx.graphdef(abstract) == nnx.graphdef(concrete)
    with pytest.raises(ValueError, match=r"'weight_hr_l1_reverse': expected shape \(2, 6\)"):
        load_torch_state_dict(nnx.eval_shape(lambda: _jax_lstm(dtype)),
                              {**sd, "weight_hr_l1_reverse": torch.ones(2, 7)})


def test_eval_shape_rng_streams_and_variables_without_torch_keys_are_named():
    """An RNG stream's key is not in a state_dict and its seed does not survive ``eval_shape``:
    the error names the streams and the fix (``nnx.reseed``), and writes nothing; after the reseed
    the load fills the rest. A variable with no torch key is named too."""
    sd = _torch_lstm().state_dict()
    build = lambda: jaxseq.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2,  # noqa: E731
                                dropout=0.25, rngs=nnx.Rngs(params=0, dropout=3))
    model = nnx.eval_shape(build)
    with pytest.raises(ValueError, match=r"RNG streams without a key \('dropout': rngs\): nnx\."
                                         r"eval_shape does not keep the seed.*nnx\.reseed\(model, "
                                         r"dropout=SEED\)\. Nothing was written\."):
        load_torch_state_dict(model, sd)
    assert len(_abstract(model)) == len(sd) + 2                      # nothing written
    nnx.reseed(model, dropout=3)
    _assert_params_equal(load_torch_state_dict(model, sd), sd)
    assert not _abstract(model)

    class WithCache(nnx.Module):
        def __init__(self):
            self.rnn = jaxseq.GRU(3, 5, rngs=nnx.Rngs(0))
            self.cache = nnx.Cache(jnp.zeros((2, 5), jnp.float32))

    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"Variables without a torch key: cache \(Cache \[2, 5\] "
                                         r"float32\); build the model without nnx\.eval_shape"):
        load_torch_state_dict(nnx.eval_shape(WithCache), torch.nn.GRU(3, 5).state_dict(),
                              rename=lambda k: "rnn." + k)
