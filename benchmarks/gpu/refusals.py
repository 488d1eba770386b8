"""Device check 9, ``refusals``: float16/bfloat16/float64 refused with a clear error (call and
construction); ``export_model`` of an ``impl="cudnn"`` model routed to the scan. (The deliberately
failing raw probes run in subprocesses: :mod:`benchmarks.gpu.probes`.)
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp

from benchmarks.gpu.cases import Kernel, Shape, cast, make_case
from benchmarks.gpu.record import Result, verdict


def check(kernel: Kernel) -> Result:
    from flax import nnx

    import jaxseq
    from jaxseq import functional as F
    from jaxseq import fused
    from jaxseq.export import export_model

    case = make_case(7, Shape(3, 5, 4, 6), 1, False)
    outcomes: dict[str, str] = {}

    def refused(label: str, make: Callable[[], Any], needle: str) -> None:
        try:
            make()
        except ValueError as err:
            outcomes[label] = ("ok: " if needle in str(err) else "wrong message: ") + str(err)
        else:
            outcomes[label] = "NOT refused"

    # float64 is served by the reference kernel only: check it as on a CUDA backend.
    cuda = (mock.patch.object(fused, "cuda_available", lambda: True) if kernel.emulate
            else contextlib.nullcontext())
    with cuda:
        for dtype in (jnp.float16, jnp.bfloat16, jnp.float64):
            name = jnp.dtype(dtype).name
            refused(f"call {name}", lambda d=dtype: F.lstm(
                cast(case.params, d), cast(case.x, d), case.lengths, batch_first=True,
                impl="cudnn"), f"dtype {name}")
            refused(f"construct {name}", lambda d=dtype: jaxseq.LSTM(
                4, 6, param_dtype=d, impl="cudnn", rngs=nnx.Rngs(0)), f"dtype {name}")
    model = jaxseq.LSTM(4, 6, batch_first=True, impl="cudnn", rngs=nnx.Rngs(0))
    twin = jaxseq.LSTM(4, 6, batch_first=True, rngs=nnx.Rngs(0))
    x, lengths = cast(case.x, jnp.float32), jnp.asarray(case.lengths)
    with kernel.context():
        exported = export_model(model, jax.ShapeDtypeStruct(x.shape, x.dtype),
                                jax.ShapeDtypeStruct(lengths.shape, lengths.dtype))
    out = exported.call(x, lengths)[0]
    export_err = float(jnp.max(jnp.abs(out - twin(x, lengths)[0])))
    no_custom_call = "cudnn" not in exported.mlir_module().lower()
    ok = all(v.startswith("ok") for v in outcomes.values()) and export_err <= 1e-6 \
        and no_custom_call
    return verdict(ok, f"{sum(v.startswith('ok') for v in outcomes.values())}/{len(outcomes)}"
                       f" refused with the dtype named; export routed to the scan: "
                       f"max diff {export_err:.1e}, no cuDNN custom call: {no_custom_call}",
                   refusals=outcomes, export_max_diff=export_err,
                   export_without_cudnn=no_custom_call)
