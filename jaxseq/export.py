"""Export a trained model for serving: a ``jax.export`` artifact with symbolic batch and time.

torch cannot export packed LSTMs (ONNX: pytorch/pytorch#49936, #62240; ``torch.export``: #171978).
jaxseq models are plain JAX functions of arrays, so ``jax.export`` serialises them to a StableHLO
artifact that any process with ``jax`` (no jaxseq, no flax) loads and runs at any batch size and
sequence length:

>>> import jax, jax.numpy as jnp
>>> from flax import nnx
>>> import jaxseq
>>> model = jaxseq.GRU(3, 4, batch_first=True, rngs=nnx.Rngs(0))
>>> b, t = jax.export.symbolic_shape("b, t")
>>> exported = export_model(model, jax.ShapeDtypeStruct((b, t, 3), jnp.float32),
...                         jax.ShapeDtypeStruct((b,), jnp.int32))
>>> blob = exported.serialize()                       # bytes: write them to a file
>>> served = jax.export.deserialize(blob)             # elsewhere: needs only jax
>>> out, h_n = served.call(jnp.ones((2, 7, 3)), jnp.array([7, 3]))
>>> out.shape, h_n.shape
((2, 7, 4), (1, 2, 4))

The parameters are constants of the artifact (its size is about the parameters' bytes plus the
program). Export in evaluation mode: training-mode dropout draws from a stateful RNG stream. Host
(concrete) lengths and the staircase schedule cannot be exported (lengths are traced there, so the
plain masked scan runs); ``max_segments`` of packed rows is baked in. :func:`jaxseq.checked`
(checkify) does not export: check lengths before calling the artifact. Layers with
``impl="cudnn"`` or ``"auto"`` export their masked scan (the fused kernel's custom call is not
exportable).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
from flax import nnx

from jaxseq.fused import scan_only


def export_model(model: nnx.Module | Callable[..., Any], *args_spec: Any,
                 platforms: Optional[Sequence[str]] = None, **call_kwargs: Any
                 ) -> jax.export.Exported:
    """Export ``model(*args, **call_kwargs)`` with its parameters baked in.

    Args:
      model: an NNX model (any module containing jaxseq layers and cells; it must be in evaluation
        mode) or a plain function of arrays.
      *args_spec: one ``jax.ShapeDtypeStruct`` per positional argument (or a pytree of them);
        dimensions may be symbolic (``jax.export.symbolic_shape("b, t")``), sharing names where
        they must agree (``x [b, t, I]`` and ``lengths [b]``).
      platforms: the platforms the artifact may run on (default: the current backend), e.g.
        ``("cpu", "cuda")``.
      **call_kwargs: static keyword arguments of the call (e.g. ``max_segments=8``).

    Returns:
      A ``jax.export.Exported``: ``.serialize()`` gives the bytes to save;
      ``jax.export.deserialize(data).call(*args)`` runs it.

    Raises:
      ValueError: an NNX model in training mode (dropout would be frozen at export time).
    """
    if isinstance(model, nnx.Module):
        training = [path for path, m in nnx.iter_modules(model)
                    if getattr(m, "deterministic", True) is False]
        if training:
            where = ".".join(map(str, training[0])) or "the model"
            raise ValueError(f"export in evaluation mode: {where} is in training mode (call "
                             "model.eval() first)")
        graphdef, state = nnx.split(model)

        def fn(*args: Any) -> Any:
            return nnx.merge(graphdef, state)(*args, **call_kwargs)
    else:
        def fn(*args: Any) -> Any:
            return model(*args, **call_kwargs)
    with scan_only():   # the cuDNN custom call is not on jax.export's list of stable calls
        return jax.export.export(jax.jit(fn), platforms=platforms)(*args_spec)
