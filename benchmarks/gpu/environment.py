"""Device check 1, ``environment``: backend, devices, jax/jaxlib/torch/flax versions, CUDA and
cuDNN versions (at least 8.8), matmul precision settings.
"""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from typing import Any

import jax
import numpy as np

from benchmarks.gpu.cases import MIN_CUDNN, ROOT, Kernel
from benchmarks.gpu.record import Result, verdict


def check(kernel: Kernel) -> Result:
    import flax
    import jaxlib
    import torch

    import jaxseq
    from jaxseq import fused

    info: dict[str, Any] = {
        "python": platform.python_version(), "jax": jax.__version__,
        "jaxlib": jaxlib.__version__, "flax": flax.__version__, "torch": torch.__version__,
        "numpy": np.__version__, "jaxseq": getattr(jaxseq, "__version__", "?"),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "platform_version": getattr(jax.devices()[0].client, "platform_version", "?"),
        "kernels": fused.describe_kernels(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "x64": jax.config.jax_enable_x64,
        "torch_cuda": torch.cuda.is_available(), "torch_cuda_version": torch.version.cuda,
        "torch_cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "torch_allow_tf32": [torch.backends.cuda.matmul.allow_tf32,
                             torch.backends.cudnn.allow_tf32],
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "CUBLAS_WORKSPACE_CONFIG",
                                               "XLA_PYTHON_CLIENT_PREALLOCATE",
                                               "NVIDIA_TF32_OVERRIDE", "JAX_PLATFORMS")},
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["torch_device"] = torch.cuda.get_device_name()
    with contextlib.suppress(Exception):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        info["nvidia_smi"] = smi.stdout.strip()
    with contextlib.suppress(Exception):
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        info["commit"] = git.stdout.strip()
    kernels = info["kernels"]
    line = (f"backend {kernels['backend']}, cuda {kernels['cuda']}, cudnn {kernels['cudnn']}, "
            f"torch cudnn {info['torch_cudnn']}, {info['device_kind']}, jax {jax.__version__},"
            f" torch {torch.__version__}")
    if kernel.emulate:
        return verdict(kernels["backend"] == "cpu", "emulated (reference kernel): " + line,
                       **info)
    problems = []
    if kernels["backend"] != "gpu" or not kernels["cuda"]:
        problems.append("no CUDA backend")
    if not kernels["cudnn"] or kernels["cudnn"] < MIN_CUDNN:
        problems.append(f"cuDNN {kernels['cudnn']} (need >= {MIN_CUDNN})")
    if not torch.cuda.is_available():
        problems.append("torch sees no GPU")
    return verdict(not problems, line + ("; " + ", ".join(problems) if problems else ""),
                   **info)
