"""The probes: deliberately bad or heavy inputs straight into the kernel, one per subprocess
(``python -m benchmarks.gpu_check --probe NAME``; a failed cuDNN call can poison the CUDA context),
each printing one JSON line: raw zero lengths (forward with one empty row, backward with one,
forward with all), raw float64, the large shape, and the determinism check again (under another
``CUBLAS_WORKSPACE_CONFIG``)."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from benchmarks.gpu import determinism
from benchmarks.gpu.cases import (
    Kernel,
    Shape,
    cast,
    layer_run,
    make_case,
    raw_run,
    rel_errors,
    structure,
    summarize,
)

#: The raw-kernel probes, reported after check 9 (``refusals``).
PROBES = ("raw_zero_length_forward", "raw_zero_length_backward", "raw_all_zero_lengths",
          "raw_float64")
#: The workspace-overflow shape of the issue threads; its CPU stand-in.
LARGE = {False: Shape(batch=256, time=500, input_size=512, hidden_size=256),
         True: Shape(batch=16, time=50, input_size=64, hidden_size=32)}


def run_probe(name: str, emulate: bool) -> dict:
    """Deliberately bad or heavy inputs straight into the kernel; report what happens."""
    from jaxseq import fused

    kernel = Kernel(emulate)
    outcome: dict[str, Any] = {"probe": name}
    try:
        with kernel.context():
            if name.startswith("raw_") and "zero" in name:
                case = make_case(9, Shape(8, 16, 4, 8), 2, True,
                                 zero_rows=8 if name == "raw_all_zero_lengths" else 1)
                if name == "raw_zero_length_backward":
                    got = raw_run(case, jnp.float32, kernel.name)
                else:
                    out = fused.KERNELS[kernel.name](
                        *cast((case.x, *case.hx), jnp.float32),
                        fused.flat_weights(cast(case.params, jnp.float32),
                                           structure(case.params), range(2), [None, None]),
                        jnp.asarray(case.lengths, jnp.int32), input_size=4, hidden_size=8,
                        num_layers=2, dropout=0.0, bidirectional=True)
                    got = dict(zip(("y", "h_n", "c_n"), (np.asarray(a) for a in out)))
                empty = case.lengths == 0
                outcome["finite"] = {k: bool(np.isfinite(v).all()) for k, v in got.items()}
                outcome["h_n_minus_hx_on_empty_rows"] = float(np.max(np.abs(
                    got["h_n"][:, empty] - case.hx[0][:, empty].astype(np.float32))))
            elif name == "raw_float64":
                case = make_case(9, Shape(8, 16, 4, 8), 2, True)
                errors = rel_errors(raw_run(case, jnp.float64, kernel.name),
                                    layer_run(case, jnp.float64, "scan"))
                outcome["errors_vs_float64_scan"] = summarize(errors)
            elif name == "large":
                case = make_case(10, LARGE[emulate], 2, True, zero_rows=2)
                start = time.perf_counter()
                got = layer_run(case, jnp.float32, "cudnn")
                outcome["first_call_s"] = time.perf_counter() - start
                start = time.perf_counter()
                layer_run(case, jnp.float32, "cudnn")
                outcome["step_s"] = time.perf_counter() - start
                outcome["finite"] = all(bool(np.isfinite(v).all()) for v in got.values())
                outcome["errors_vs_float32_scan"] = summarize(
                    rel_errors(got, layer_run(case, jnp.float32, "scan")))
            elif name == "determinism":
                outcome["result"] = dataclasses.asdict(determinism.check(kernel))
            else:
                raise ValueError(f"unknown probe {name!r}")
            outcome["raised"] = None
    except Exception as err:
        outcome["raised"] = f"{type(err).__name__}: {err}"[:1000]
    return outcome

