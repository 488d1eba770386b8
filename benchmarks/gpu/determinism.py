"""Device check 8, ``determinism``: 4 runs bitwise equal (otherwise the check script runs it again
in a subprocess with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from benchmarks.gpu.cases import SMALL, Kernel, layer_run, make_case
from benchmarks.gpu.record import Result


def check(kernel: Kernel) -> Result:
    case = make_case(6, SMALL, 2, True, zero_rows=2)
    runs = [layer_run(case, jnp.float32, "cudnn") for _ in range(4)]
    differ = sorted({k for r in runs[1:] for k in r if not np.array_equal(r[k], runs[0][k])})
    return Result("pass" if not differ else "fail",
                  "4 runs bitwise equal" if not differ else f"differ in {differ}",
                  {"differ": differ})
