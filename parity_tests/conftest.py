"""Suite-wide set-up: float64 available, full-precision matmuls (no TF32) on both sides."""
import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)              # tests pass explicit dtypes everywhere
jax.config.update("jax_default_matmul_precision", "highest")

try:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(1)  # tiny reference ops: thread start-up dominates on small machines
except ImportError:  # pragma: no cover - torch is required by the parity suite
    torch = None


def pytest_report_header(config):
    devices = ", ".join(str(d) for d in jax.devices())
    line = f"jaxseq parity: jax {jax.__version__} backend={jax.default_backend()} devices=[{devices}]"
    if torch is not None:
        line += f"; torch {torch.__version__} cuda={torch.cuda.is_available()}"
    return line


def pytest_collection_modifyitems(config, items):
    """`slow` tests run only with `-m slow` or JAXSEQ_SLOW=1."""
    if os.environ.get("JAXSEQ_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow sweep: run with -m slow or JAXSEQ_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
