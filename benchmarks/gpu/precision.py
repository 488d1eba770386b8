"""Device check 7, ``precision``: FP32 (``"highest"``) <= 1e-5; TF32, unset and ``"bfloat16"``
settings and the scan's default precision reported.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.gpu.cases import SMALL, TOL, Kernel, layer_run, make_case, rel_errors, summarize
from benchmarks.gpu.record import Result, verdict


def check(kernel: Kernel) -> Result:
    case = make_case(3, SMALL, 2, True, zero_rows=3, nan_padding=True)
    truth = layer_run(case, jnp.float64, "scan")
    metrics: dict[str, Any] = {}
    for label, setting, impl in [("cudnn_highest", "highest", "cudnn"),
                                 ("cudnn_tensorfloat32", "tensorfloat32", "cudnn"),
                                 ("cudnn_unset", None, "cudnn"),
                                 ("cudnn_bfloat16_setting", "bfloat16", "cudnn"),
                                 ("scan_highest", "highest", "scan"),
                                 ("scan_unset", None, "scan")]:
        try:
            with jax.default_matmul_precision(setting):
                metrics[label] = summarize(rel_errors(layer_run(case, jnp.float32, impl),
                                                      truth))
        except Exception as err:
            metrics[label] = f"{type(err).__name__}: {err}"[:300]
    fp32 = metrics["cudnn_highest"]
    ok = isinstance(fp32, dict) and max(fp32.values()) <= TOL
    short = {k: (max(v.values()) if isinstance(v, dict) else v) for k, v in metrics.items()}
    return verdict(ok, "worst vs float64 scan: " + ", ".join(
        f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in short.items()),
        **metrics)
