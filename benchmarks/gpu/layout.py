"""Device check 2, ``layout``: the raw kernel on jaxseq's flat weights (1 layer uni, 2 layers bi,
full lengths) against jaxseq's scan in float64: outputs, states, every gradient <= 1e-5 (relative
to max).
"""
from __future__ import annotations

import jax.numpy as jnp

from benchmarks.gpu.cases import (
    SMALL,
    TOL,
    Kernel,
    fmt_errors,
    layer_run,
    make_case,
    raw_run,
    rel_errors,
    summarize,
)
from benchmarks.gpu.record import Result, verdict


def check(kernel: Kernel) -> Result:
    metrics, ok = {}, True
    for layers, bi in [(1, False), (2, True)]:
        case = make_case(1, SMALL, layers, bi, ragged=False)
        errors = summarize(rel_errors(raw_run(case, jnp.float32, kernel.name),
                                      layer_run(case, jnp.float64, "scan")))
        metrics[f"L{layers}{'bi' if bi else 'uni'}"] = errors
        ok &= max(errors.values()) <= TOL
    return verdict(ok, " ; ".join(f"{k}: {fmt_errors(v)}" for k, v in metrics.items()), **metrics)
