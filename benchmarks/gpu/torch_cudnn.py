"""Device check 10, ``torch_cudnn``: torch's cuDNN LSTM on a packed batch, TF32 off on both sides:
<= 1e-5.
"""
from __future__ import annotations

from functools import partial

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
    import torch

    from torch_ref.packed import run_packed

    device = "cpu" if kernel.emulate else "cuda"
    case = make_case(8, SMALL, 2, True, nan_padding=True)        # torch rejects length 0
    tmod = torch.nn.LSTM(SMALL.input_size, SMALL.hidden_size, num_layers=2, bidirectional=True,
                         batch_first=True).to(device)
    tmod.load_state_dict({k: torch.tensor(v, dtype=torch.float32)
                          for k, v in case.params.items()})
    tensor = partial(torch.tensor, dtype=torch.float32, device=device)
    tx = tensor(case.x, requires_grad=True)
    thx = tuple(tensor(h, requires_grad=True) for h in case.hx)
    t_out, (t_h, t_c) = run_packed(tmod, tx, case.lengths, thx)
    total = (t_out * tensor(case.cots[0])).sum() + (t_h * tensor(case.cots[1][0])).sum() \
        + (t_c * tensor(case.cots[1][1])).sum()
    total.backward()
    cpu = lambda t: t.detach().cpu().numpy()   # noqa: E731
    want = {"y": cpu(t_out), "h_n": cpu(t_h), "c_n": cpu(t_c), "dx": np.nan_to_num(cpu(tx.grad)),
            "dh0": cpu(thx[0].grad), "dc0": cpu(thx[1].grad)}
    want.update({f"d{k}": cpu(p.grad) for k, p in tmod.named_parameters()})
    got = layer_run(case, jnp.float32, "cudnn")
    errors = summarize(rel_errors(got, want))
    used_cudnn = device == "cuda" and torch.backends.cudnn.is_available()
    return verdict(max(errors.values()) <= TOL, f"{fmt_errors(errors)} (torch on {device}, cuDNN "
                                                f"{used_cudnn})", errors=errors)
