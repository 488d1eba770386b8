"""Checks shared by the example tests: a JAX model and its torch twin hold the same weights."""
from __future__ import annotations

import numpy as np
import torch
from flax import nnx

import jaxseq


def assert_same_weights(jax_model: nnx.Module, torch_model: torch.nn.Module, *,
                        rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """Every entry of ``torch_model.state_dict()`` (parameters and buffers) equals the JAX model's
    entry of the same torch name, within ``rtol`` / ``atol``; the message names the entry."""
    ours = jaxseq.torch_state_dict(jax_model)
    for name, value in torch_model.state_dict().items():
        np.testing.assert_allclose(ours[name], value.numpy(), rtol=rtol, atol=atol, err_msg=name)
