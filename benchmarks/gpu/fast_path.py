"""Device check 4, ``fast_path``: ``impl="cudnn"`` with zero-length rows and NaN padding: <= 1e-5,
``h_n``/``c_n`` equal to ``hx`` bitwise on empty rows, ``y`` and ``dx`` exactly 0 at padding, all
finite.
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
    rel_errors,
    summarize,
)
from benchmarks.gpu.record import Result, verdict


def check(kernel: Kernel) -> Result:
    case = make_case(3, SMALL, 2, True, zero_rows=3, nan_padding=True)
    got = layer_run(case, jnp.float32, "cudnn")
    errors = summarize(rel_errors(got, layer_run(case, jnp.float64, "scan")))
    empty, pad = case.lengths == 0, case.padding
    hx32 = [h.astype(np.float32) for h in case.hx]
    states_kept = all(np.array_equal(got[k][:, empty], h[:, empty])
                      for k, h in zip(("h_n", "c_n"), hx32))
    grads_identity = all(np.array_equal(got[k][:, empty], c.astype(np.float32)[:, empty])
                         for k, c in zip(("dh0", "dc0"), case.cots[1]))
    pad_nonzero = int(np.count_nonzero(got["y"][pad])) + int(np.count_nonzero(got["dx"][pad]))
    finite = all(np.isfinite(v).all() for v in got.values())
    ok = max(errors.values()) <= TOL and states_kept and grads_identity and pad_nonzero == 0 \
        and finite
    return verdict(ok, f"{fmt_errors(errors)}; empty rows keep hx bitwise: {states_kept}; "
                       f"identity grad there: {grads_identity}; y/dx nonzero at padding: "
                       f"{pad_nonzero}; finite: {finite}",
                   errors=errors, empty_rows_keep_hx=states_kept,
                   empty_rows_identity_grad=grads_identity, nonzero_at_padding=pad_nonzero,
                   finite=finite, lengths=case.lengths)
