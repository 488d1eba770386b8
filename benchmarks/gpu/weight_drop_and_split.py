"""Device check 5, ``weight_drop_and_split``: weight drop and dropout masks against the scan given
the same masks; the per-layer split (all-ones masks) against one fused call.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.gpu.cases import (
    SMALL,
    TOL,
    Kernel,
    fmt_errors,
    layer_run,
    make_case,
    rel_errors,
    summarize,
)
from benchmarks.gpu.record import Result, verdict


def check(kernel: Kernel) -> Result:
    from jaxseq.dropout import keep_mask

    case = make_case(4, SMALL, 2, True, zero_rows=1, nan_padding=True)
    B, T, H = SMALL.batch, SMALL.time, SMALL.hidden_size
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    masks = {"dropout": [np.asarray(keep_mask(k1, 0.3, (B, T, 2 * H), jnp.float64))],
             "weight_hh": [np.asarray(keep_mask(k, 0.25, (2, 4 * H, H), jnp.float64))
                           for k in (k2, k3)]}
    errors = summarize(rel_errors(layer_run(case, jnp.float32, "cudnn", masks),
                                  layer_run(case, jnp.float64, "scan", masks)))
    ones = {"dropout": [np.ones((B, T, 2 * H))], "weight_hh": None}
    split, fused_once = (layer_run(case, jnp.float32, "cudnn", m) for m in (ones, None))
    split_errors = summarize(rel_errors(split, fused_once))
    bitwise = all(np.array_equal(split[k], fused_once[k]) for k in split)
    ok = max(errors.values()) <= TOL and max(split_errors.values()) <= TOL
    return verdict(ok, f"masks vs scan: {fmt_errors(errors)}; split vs one call: "
                       f"{fmt_errors(split_errors)} (bitwise {bitwise})",
                   masks_vs_scan=errors, split_vs_fused=split_errors, split_bitwise=bitwise)
