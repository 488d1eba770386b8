"""Device check 3, ``raw_ragged``: the raw kernel, ragged lengths >= 1, 2 layers bi, random ``hx``;
``y`` exactly 0 at padding.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

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
    case = make_case(2, SMALL, 2, True)
    got = raw_run(case, jnp.float32, kernel.name)
    errors = summarize(rel_errors(got, layer_run(case, jnp.float64, "scan")))
    pad = case.padding
    y_pad = int(np.count_nonzero(got["y"][pad]))
    dx_pad = float(np.max(np.abs(got["dx"][pad]), initial=0.0))
    ok = max(errors.values()) <= TOL and y_pad == 0
    return verdict(ok, f"{fmt_errors(errors)}; y nonzero at padding: {y_pad}; max|dx| at padding "
                       f"{dx_pad:.1e} (info)", errors=errors, y_nonzero_at_padding=y_pad,
                   dx_max_at_padding=dx_pad, lengths=case.lengths)
