"""One prepared device check of jaxseq's fused cuDNN LSTM (``impl="cudnn"``): correctness first,
timing last, everything recorded as it comes.

On the GPU machine (CUDA jax and torch installed, no install step, no network), from the root of
the checkout, with the results copied back from ``$OUT``::

    PYTHONPATH=. timeout 480 python -m benchmarks.gpu_check --budget 420 --out "$OUT/gpu"

Dry run on a CPU (jax's pure-JAX reference kernel in place of cuDNN, smaller shapes where the GPU
shapes would take too long; a few minutes on 2 cores)::

    python -m benchmarks.gpu_check --emulate --budget 240 --out /tmp/gpu_dry

Checks, in this order (cheapest first; each prints one ``PASS|FAIL|INFO|SKIP|ERROR name: ...``
line and appends one JSON line to ``OUT/gpu_check.jsonl``, flushed at once, so a run cut short
still reports):

1. ``environment``: backend, devices, jax/jaxlib/torch/flax versions, CUDA and cuDNN versions
   (at least 8.8), matmul precision settings.
2. ``layout``: the raw kernel on jaxseq's flat weights (1 layer uni, 2 layers bi, full lengths)
   against jaxseq's scan in float64: outputs, states, every gradient <= 1e-5 (relative to max).
3. ``raw_ragged``: the raw kernel, ragged lengths >= 1, 2 layers bi, random ``hx``; ``y`` exactly 0
   at padding.
4. ``fast_path``: ``impl="cudnn"`` with zero-length rows and NaN padding: <= 1e-5, ``h_n``/``c_n``
   equal to ``hx`` bitwise on empty rows, ``y`` and ``dx`` exactly 0 at padding, all finite.
5. ``weight_drop_and_split``: weight drop and dropout masks against the scan given the same masks;
   the per-layer split (all-ones masks) against one fused call.
6. ``jit_compiles``: a jitted training step, two length patterns: one compilation; eager calls do
   not recompile.
7. ``precision``: FP32 (``"highest"``) <= 1e-5; TF32, unset and ``"bfloat16"`` settings and the
   scan's default precision reported.
8. ``determinism``: 4 runs bitwise equal (otherwise again in a subprocess with
   ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).
9. ``refusals``: float16/bfloat16/float64 refused with a clear error (call and construction);
   ``export_model`` of an ``impl="cudnn"`` model routed to the scan. Then the deliberately failing
   probes, each in its own subprocess (a failed cuDNN call can poison the CUDA context): raw zero
   lengths (forward with one empty row, backward with one, forward with all) and raw float64.
10. ``torch_cudnn``: torch's cuDNN LSTM on a packed batch, TF32 off on both sides: <= 1e-5.
11. ``large_shape``: B256 T500 I512 H256, 2 layers bi, forward and backward (subprocess): finite.
12. ``parity`` (``python -m jaxseq.parity``), ``pytest_fused`` (``parity_tests/test_fused.py``)
    and ``pytest_parity`` (a few parity tests), each a subprocess with a timeout from the budget.
    They and the probes run beside checks 2-11 (the GPU machine has 16 cores); all of them end
    before the timing.
13. ``timing``, alone and last: ``python -m benchmarks.run --gpu --json OUT/bench.jsonl --budget S``
    (its rows are appended to ``OUT/bench.jsonl`` as they come).

Subprocess logs go to ``OUT/logs/``. TF32 is off on both sides in this process
(``jax_default_matmul_precision="highest"``, torch's ``allow_tf32`` flags) except where check 7
measures it, and in every subprocess (plus ``NVIDIA_TF32_OVERRIDE=0``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Optional
from unittest import mock

# Before jax is imported: several processes share the GPU (no 75% preallocation each).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if "--emulate" in sys.argv:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5                  # float32 kernel against the float64 scan (GPU.md: 2.7e-7 .. 1e-6 seen)
MIN_CUDNN = 8800            # jax-ml/jax#16138: known wrong RNN outputs before cuDNN 8.8
PROBES = ("raw_zero_length_forward", "raw_zero_length_backward", "raw_all_zero_lengths",
          "raw_float64")


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    time: int
    input_size: int
    hidden_size: int


#: GPU.md's float32 accuracy shape (cheap on a CPU too: compilation dominates there).
SMALL = Shape(batch=16, time=64, input_size=32, hidden_size=64)
#: The workspace-overflow shape of the issue threads; its CPU stand-in.
LARGE = {False: Shape(batch=256, time=500, input_size=512, hidden_size=256),
         True: Shape(batch=16, time=50, input_size=64, hidden_size=32)}


# ---------------------------------------------------------------------------------------------
# Cases and the two computations under test (jaxseq's layer, the raw kernel)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """One batch: float64 torch-named ``params``, ``x [B, T, I]`` (padding filled), ``lengths``,
    ``hx = (h_0, c_0)`` each ``[D*L, B, H]`` and cotangents ``(dy, (dh_n, dc_n))``."""

    params: dict[str, np.ndarray]
    x: np.ndarray
    lengths: np.ndarray
    hx: tuple[np.ndarray, np.ndarray]
    cots: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]

    @property
    def padding(self) -> np.ndarray:
        """``bool [B, T]``: padded steps."""
        return np.arange(self.x.shape[1])[None, :] >= self.lengths[:, None]


def make_case(seed: int, shape: Shape, num_layers: int, bidirectional: bool, *, ragged: bool = True,
              zero_rows: int = 0, nan_padding: bool = False, bias: bool = True) -> Case:
    """A random batch; ragged lengths include 1 and ``T`` (then ``zero_rows`` rows of length 0)."""
    from jaxseq import init
    from jaxseq.parity.harness import random_lengths

    rng = np.random.default_rng(seed)
    B, T, H = shape.batch, shape.time, shape.hidden_size
    params = init.torch_default(jax.random.key(seed), "LSTM", shape.input_size, H, num_layers,
                                bias, bidirectional, dtype=jnp.float64)
    lengths = (random_lengths(rng, B, T, zero_rows) if ragged else np.full(B, T)).astype(np.int32)
    x = rng.standard_normal((B, T, shape.input_size))
    x[np.arange(T)[None, :] >= lengths[:, None]] = np.nan if nan_padding else 0.0
    states = (2 if bidirectional else 1) * num_layers, B, H
    hx = (rng.standard_normal(states), rng.standard_normal(states))
    cots = (rng.standard_normal((B, T, states[0] // num_layers * H)),
            (rng.standard_normal(states), rng.standard_normal(states)))
    return Case({k: np.asarray(v) for k, v in params.items()}, x, lengths, hx, cots)


def _cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves of ``tree`` as ``dtype`` device arrays (integer leaves kept)."""
    def leaf(a: Any) -> Any:
        a = np.asarray(a)
        return jnp.asarray(a, dtype if np.issubdtype(a.dtype, np.floating) else a.dtype)
    return jax.tree.map(leaf, tree)


def _results(out: Any, grads: Any) -> dict[str, np.ndarray]:
    (y, (h_n, c_n)), (g_params, g_x, (g_h0, g_c0)) = out, grads
    named = {"y": y, "h_n": h_n, "c_n": c_n, "dx": g_x, "dh0": g_h0, "dc0": g_c0}
    named.update({f"d{k}": v for k, v in g_params.items()})
    return {k: np.asarray(v) for k, v in named.items()}


@partial(jax.jit, static_argnames=("impl",))
def _layer_vjp(params, x, lengths, hx, cots, masks, *, impl):
    from jaxseq import functional as F

    def forward(p, xx, h):
        return F.lstm(p, xx, lengths, h, batch_first=True, impl=impl,
                      dropout_masks=masks["dropout"], weight_hh_masks=masks["weight_hh"])

    out, vjp = jax.vjp(forward, params, x, hx)
    return out, vjp(cots)


def layer_run(case: Case, dtype: Any, impl: str, masks: Optional[dict] = None
              ) -> dict[str, np.ndarray]:
    """jaxseq's LSTM (``batch_first``, traced lengths) and its VJP: outputs and gradients."""
    masks = masks or {"dropout": None, "weight_hh": None}
    out, grads = _layer_vjp(_cast(case.params, dtype), _cast(case.x, dtype),
                            jnp.asarray(case.lengths), _cast(case.hx, dtype),
                            _cast(case.cots, dtype), _cast(masks, dtype), impl=impl)
    return _results(out, grads)


@partial(jax.jit, static_argnames=("kernel",))
def _raw_vjp(params, x, lengths, hx, cots, *, kernel):
    from jaxseq import fused
    from jaxseq.layout import infer_structure

    s = infer_structure("LSTM", params)
    layers = range(s.num_layers)

    def forward(p, xx, h):
        w = fused.flat_weights(p, s, layers, [None] * s.num_layers)
        y, h_n, c_n = fused.KERNELS[kernel](xx, h[0], h[1], w, lengths, input_size=s.input_size,
                                            hidden_size=s.hidden_size, num_layers=s.num_layers,
                                            dropout=0.0, bidirectional=s.bidirectional)
        return y, (h_n, c_n)

    out, vjp = jax.vjp(forward, params, x, hx)
    return out, vjp(cots)


def raw_run(case: Case, dtype: Any, kernel: str) -> dict[str, np.ndarray]:
    """The kernel itself (``jax.experimental.rnn.lstm`` or its reference) on jaxseq's flat weights."""
    out, grads = _raw_vjp(_cast(case.params, dtype), _cast(case.x, dtype),
                          jnp.asarray(case.lengths, jnp.int32), _cast(case.hx, dtype),
                          _cast(case.cots, dtype), kernel=kernel)
    return _results(out, grads)


def rel_errors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    """``max |got - want| / max |want|`` per quantity (``inf`` where ``got`` is not finite)."""
    errors = {}
    for k, w in want.items():
        g, w = np.asarray(got[k], np.float64), np.asarray(w, np.float64)
        ok = np.isfinite(g).all() and g.shape == w.shape
        errors[k] = float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30)) if ok else math.inf
    return errors


def summarize(errors: dict[str, float]) -> dict[str, float]:
    """Worst error of outputs, states and gradients (``dW``: every parameter)."""
    groups = {"y": ["y"], "states": ["h_n", "c_n"], "dx_dhx": ["dx", "dh0", "dc0"],
              "dW": [k for k in errors if k.startswith(("dweight", "dbias"))]}
    return {g: max(errors[k] for k in keys) for g, keys in groups.items() if keys}


def _fmt(errors: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1e}" for k, v in errors.items())


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    status: str                       # "pass", "fail", "info"
    summary: str
    metrics: dict = dataclasses.field(default_factory=dict)


def verdict(ok: bool, summary: str, **metrics: Any) -> Result:
    return Result("pass" if ok else "fail", summary, metrics)


def _jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats as strings, numpy scalars and arrays as Python values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Recorder:
    """Appends one JSON line per result to ``out/gpu_check.jsonl`` (flushed) and prints a line."""

    def __init__(self, out: Path, budget: float, emulate: bool):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_check.jsonl"
        self.t0 = time.monotonic()
        self.budget = budget
        self.emulate = emulate
        self.run = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def write(self, check: str, status: str, summary: str, metrics: Optional[dict] = None,
              seconds: float = 0.0) -> None:
        line = {"run": self.run, "emulate": self.emulate, "check": check, "status": status,
                "summary": summary, "seconds": round(seconds, 2),
                "elapsed": round(self.elapsed(), 1), "metrics": _jsonable(metrics or {})}
        with self._lock:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.counts[status] = self.counts.get(status, 0) + 1
        print(f"{status.upper():5s} {check}: {summary} ({seconds:.1f}s)", flush=True)

    def check(self, name: str, fn: Callable[[], Result], min_left: float = 10.0) -> Optional[Result]:
        """Run one in-process check unless less than ``min_left`` seconds are left; record it."""
        if self.left() < min_left:
            self.write(name, "skip", f"budget: {self.left():.0f}s left")
            return None
        start = time.monotonic()
        try:
            result = fn()
        except Exception as err:  # one broken check must not end the run
            self.write(name, "error", f"{type(err).__name__}: {err}"[:400],
                       {"traceback": traceback.format_exc()[-4000:]}, time.monotonic() - start)
            return None
        self.write(name, result.status, result.summary, result.metrics, time.monotonic() - start)
        return result

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------------------------
# Subprocesses (probes, tests, timing): own process groups, logs under out/logs, hard timeouts
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Job:
    name: str
    argv: list[str]
    timeout: float
    env: dict[str, str]
    log: Path
    proc: Optional[subprocess.Popen] = None
    started: Optional[float] = None
    seconds: float = 0.0
    rc: Optional[int] = None
    timed_out: bool = False
    skipped: str = ""

    def done(self) -> bool:
        return self.rc is not None or bool(self.skipped)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def child_env(emulate: bool, **extra: str) -> dict[str, str]:
    """This process's environment for a child: the checkout importable, TF32 off, the GPU
    shared, no slow tests (the emulated check runs inside a slow test), CPU when emulating."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "")
                                                       .split(os.pathsep) if p])
    env.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", JAX_DEFAULT_MATMUL_PRECISION="highest",
               NVIDIA_TF32_OVERRIDE="0", PYTHONUNBUFFERED="1")
    env.pop("JAXSEQ_SLOW", None)
    if emulate:
        env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


class Jobs:
    """Run subprocesses beside the in-process checks: at most ``parallel`` at a time, in the
    order added, none started or left running after ``deadline`` (monotonic seconds)."""

    def __init__(self, out: Path, parallel: int, deadline: float):
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.parallel = parallel
        self.deadline = deadline
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def add(self, name: str, argv: Sequence[str], timeout: float, env: dict[str, str]) -> Job:
        job = Job(name, list(argv), timeout, env, self.logs / f"{name}.log")
        with self._lock:
            self.jobs[name] = job
        return job

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._tick()
            time.sleep(0.2)

    def _tick(self) -> None:
        now = time.monotonic()
        running = [j for j in self.jobs.values() if j.proc is not None and j.rc is None]
        for job in running:
            assert job.proc is not None and job.started is not None
            job.seconds = now - job.started
            rc = job.proc.poll()
            if rc is not None:
                job.rc = rc
            elif job.seconds > job.timeout or now > self.deadline:
                job.timed_out = True
                _kill(job.proc)
                job.rc = job.proc.wait()
        free = self.parallel - sum(1 for j in self.jobs.values() if j.proc is not None and j.rc is None)
        for job in self.jobs.values():
            if free <= 0:
                break
            if job.proc is None and not job.skipped:
                left = self.deadline - now
                if left < 5:
                    job.skipped = f"budget: {max(left, 0):.0f}s left for subprocesses"
                    continue
                job.timeout = min(job.timeout, left)
                job.started = now
                with open(job.log, "w") as log:
                    job.proc = subprocess.Popen(job.argv, cwd=ROOT, env=job.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
                free -= 1

    def wait(self, name: str) -> Job:
        """Block until job ``name`` has ended (or been skipped)."""
        job = self.jobs[name]
        while not job.done():
            time.sleep(0.2)
        return job

    def stop(self) -> None:
        """End every job still running, skip every job not started."""
        with self._lock:
            for job in self.jobs.values():
                if job.proc is not None and job.rc is None:
                    job.timed_out = True
                    _kill(job.proc)
                    job.rc = job.proc.wait()
                elif job.proc is None and not job.skipped:
                    job.skipped = "stopped before it started"
        self._stop.set()


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)   # the group this script started for the job


def run_now(job: Job) -> Job:
    """Run ``job`` in the foreground with its timeout."""
    job.started = time.monotonic()
    with open(job.log, "w") as log:
        job.proc = subprocess.Popen(job.argv, cwd=ROOT, env=job.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            job.rc = job.proc.wait(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            job.timed_out = True
            _kill(job.proc)
            job.rc = job.proc.wait()
    job.seconds = time.monotonic() - job.started
    return job


def record_job(rec: Recorder, job: Job, keep: str = r".") -> None:
    """One line for a finished job: pass when it exited 0, its key output lines as the summary."""
    if job.skipped:
        rec.write(job.name, "skip", job.skipped)
        return
    text = job.output()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    key = [ln for ln in lines if re.search(keep, ln)] or lines[-1:]
    status = "error" if job.timed_out else "pass" if job.rc == 0 else "fail"
    head = f"timed out after {job.seconds:.0f}s; " if job.timed_out else f"rc {job.rc}; "
    rec.write(job.name, status, head + " | ".join(key[-3:])[:500],
              {"argv": job.argv[1:], "rc": job.rc, "log": str(job.log), "tail": lines[-40:]},
              job.seconds)


def probe_result(job: Job) -> dict:
    """The JSON line a probe printed last, or what is known of its end."""
    for line in reversed(job.output().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line)
    return {"ended_without_result": True, "rc": job.rc, "timed_out": job.timed_out,
            "tail": job.output().splitlines()[-15:]}


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------
class Checks:
    """Checks 1-11; ``kernel`` is the raw kernel's name in :data:`jaxseq.fused.KERNELS`."""

    def __init__(self, emulate: bool):
        from jaxseq import fused

        self.emulate = emulate
        self.kernel = fused.REFERENCE if emulate else fused.KERNEL

    @contextlib.contextmanager
    def kernel_context(self) -> Iterator[None]:
        from jaxseq import fused

        with fused.use_reference_kernel() if self.emulate else contextlib.nullcontext():
            yield

    # 1 -------------------------------------------------------------------------------------
    def environment(self) -> Result:
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
        if self.emulate:
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

    # 2 -------------------------------------------------------------------------------------
    def layout(self) -> Result:
        metrics, ok = {}, True
        for layers, bi in [(1, False), (2, True)]:
            case = make_case(1, SMALL, layers, bi, ragged=False)
            errors = summarize(rel_errors(raw_run(case, jnp.float32, self.kernel),
                                          layer_run(case, jnp.float64, "scan")))
            metrics[f"L{layers}{'bi' if bi else 'uni'}"] = errors
            ok &= max(errors.values()) <= TOL
        return verdict(ok, " ; ".join(f"{k}: {_fmt(v)}" for k, v in metrics.items()), **metrics)

    # 3 -------------------------------------------------------------------------------------
    def raw_ragged(self) -> Result:
        case = make_case(2, SMALL, 2, True)
        got = raw_run(case, jnp.float32, self.kernel)
        errors = summarize(rel_errors(got, layer_run(case, jnp.float64, "scan")))
        pad = case.padding
        y_pad = int(np.count_nonzero(got["y"][pad]))
        dx_pad = float(np.max(np.abs(got["dx"][pad]), initial=0.0))
        ok = max(errors.values()) <= TOL and y_pad == 0
        return verdict(ok, f"{_fmt(errors)}; y nonzero at padding: {y_pad}; max|dx| at padding "
                           f"{dx_pad:.1e} (info)", errors=errors, y_nonzero_at_padding=y_pad,
                       dx_max_at_padding=dx_pad, lengths=case.lengths)

    # 4 -------------------------------------------------------------------------------------
    def fast_path(self) -> Result:
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
        return verdict(ok, f"{_fmt(errors)}; empty rows keep hx bitwise: {states_kept}; "
                           f"identity grad there: {grads_identity}; y/dx nonzero at padding: "
                           f"{pad_nonzero}; finite: {finite}",
                       errors=errors, empty_rows_keep_hx=states_kept,
                       empty_rows_identity_grad=grads_identity, nonzero_at_padding=pad_nonzero,
                       finite=finite, lengths=case.lengths)

    # 5 -------------------------------------------------------------------------------------
    def weight_drop_and_split(self) -> Result:
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
        return verdict(ok, f"masks vs scan: {_fmt(errors)}; split vs one call: "
                           f"{_fmt(split_errors)} (bitwise {bitwise})",
                       masks_vs_scan=errors, split_vs_fused=split_errors, split_bitwise=bitwise)

    # 6 -------------------------------------------------------------------------------------
    def jit_compiles(self) -> Result:
        from jaxseq import functional as F
        from parity_tests.compiles import count_compiles

        case = make_case(5, SMALL, 2, True, zero_rows=1)
        params, x, hx = (_cast(v, jnp.float32) for v in (case.params, case.x, case.hx))
        other = np.roll(case.lengths, 3)
        lengths = [jnp.asarray(case.lengths), jnp.asarray(other)]

        @jax.jit
        def step(p, xx, ll):
            def loss(q):
                out, _ = F.lstm(q, xx, ll, hx, batch_first=True, impl="cudnn")
                return jnp.sum(out ** 2)
            return jax.value_and_grad(loss)(p)

        with count_compiles() as first:
            a = jax.block_until_ready(step(params, x, lengths[0]))
        with count_compiles() as second:
            b = jax.block_until_ready(step(params, x, lengths[1]))
        scan = F.lstm(params, x, lengths[1], hx, batch_first=True, impl="scan")[0]
        loss_err = abs(float(b[0]) - float(jnp.sum(scan ** 2))) / float(jnp.sum(scan ** 2))
        eager = [F.lstm(params, x, ll, hx, batch_first=True, impl="cudnn") for ll in lengths[:1]]
        with count_compiles() as eager_again:
            eager.append(F.lstm(params, x, lengths[1], hx, batch_first=True, impl="cudnn"))
            jax.block_until_ready(eager)
        ok = (first.count == 1 and second.count == 0 and eager_again.count == 0
              and loss_err <= TOL and float(a[0]) != float(b[0]))
        return verdict(ok, f"jit: {first.count} compile(s) for pattern 1, {second.count} for "
                           f"pattern 2; eager: {eager_again.count} for new lengths; loss vs scan "
                           f"{loss_err:.1e}", first=first.names, second=second.names,
                       eager_again=eager_again.names, loss_rel_err=loss_err)

    # 7 -------------------------------------------------------------------------------------
    def precision(self) -> Result:
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

    # 8 -------------------------------------------------------------------------------------
    def determinism(self) -> Result:
        case = make_case(6, SMALL, 2, True, zero_rows=2)
        runs = [layer_run(case, jnp.float32, "cudnn") for _ in range(4)]
        differ = sorted({k for r in runs[1:] for k in r if not np.array_equal(r[k], runs[0][k])})
        return Result("pass" if not differ else "fail",
                      "4 runs bitwise equal" if not differ else f"differ in {differ}",
                      {"differ": differ})

    # 9 -------------------------------------------------------------------------------------
    def refusals(self) -> Result:
        from flax import nnx

        import jaxseq
        from jaxseq import functional as F
        from jaxseq import fused
        from jaxseq.export import export_model

        case = make_case(7, Shape(3, 5, 4, 6), 1, False)
        outcomes: dict[str, str] = {}

        def refused(label: str, make: Callable[[], Any], needle: str) -> None:
            try:
                make()
            except ValueError as err:
                outcomes[label] = ("ok: " if needle in str(err) else "wrong message: ") + str(err)
            else:
                outcomes[label] = "NOT refused"

        # float64 is served by the reference kernel only: check it as on a CUDA backend.
        cuda = (mock.patch.object(fused, "cuda_available", lambda: True) if self.emulate
                else contextlib.nullcontext())
        with cuda:
            for dtype in (jnp.float16, jnp.bfloat16, jnp.float64):
                name = jnp.dtype(dtype).name
                refused(f"call {name}", lambda d=dtype: F.lstm(
                    _cast(case.params, d), _cast(case.x, d), case.lengths, batch_first=True,
                    impl="cudnn"), f"dtype {name}")
                refused(f"construct {name}", lambda d=dtype: jaxseq.LSTM(
                    4, 6, param_dtype=d, impl="cudnn", rngs=nnx.Rngs(0)), f"dtype {name}")
        model = jaxseq.LSTM(4, 6, batch_first=True, impl="cudnn", rngs=nnx.Rngs(0))
        twin = jaxseq.LSTM(4, 6, batch_first=True, rngs=nnx.Rngs(0))
        x, lengths = _cast(case.x, jnp.float32), jnp.asarray(case.lengths)
        with self.kernel_context():
            exported = export_model(model, jax.ShapeDtypeStruct(x.shape, x.dtype),
                                    jax.ShapeDtypeStruct(lengths.shape, lengths.dtype))
        out = exported.call(x, lengths)[0]
        export_err = float(jnp.max(jnp.abs(out - twin(x, lengths)[0])))
        no_custom_call = "cudnn" not in exported.mlir_module().lower()
        ok = all(v.startswith("ok") for v in outcomes.values()) and export_err <= 1e-6 \
            and no_custom_call
        return verdict(ok, f"{sum(v.startswith('ok') for v in outcomes.values())}/{len(outcomes)}"
                           f" refused with the dtype named; export routed to the scan: "
                           f"max diff {export_err:.1e}, no cuDNN custom call: {no_custom_call}",
                       refusals=outcomes, export_max_diff=export_err,
                       export_without_cudnn=no_custom_call)

    # 10 ------------------------------------------------------------------------------------
    def torch_cudnn(self) -> Result:
        import torch

        from torch_ref.packed import run_packed

        device = "cpu" if self.emulate else "cuda"
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
        return verdict(max(errors.values()) <= TOL, f"{_fmt(errors)} (torch on {device}, cuDNN "
                                                    f"{used_cudnn})", errors=errors)


# ---------------------------------------------------------------------------------------------
# Probes: one per subprocess (``--probe NAME``), printing one JSON line
# ---------------------------------------------------------------------------------------------
def run_probe(name: str, emulate: bool) -> dict:
    """Deliberately bad or heavy inputs straight into the kernel; report what happens."""
    from jaxseq import fused

    checks = Checks(emulate)
    outcome: dict[str, Any] = {"probe": name}
    try:
        with checks.kernel_context():
            if name.startswith("raw_") and "zero" in name:
                case = make_case(9, Shape(8, 16, 4, 8), 2, True,
                                 zero_rows=8 if name == "raw_all_zero_lengths" else 1)
                if name == "raw_zero_length_backward":
                    got = raw_run(case, jnp.float32, checks.kernel)
                else:
                    out = fused.KERNELS[checks.kernel](
                        *_cast((case.x, *case.hx), jnp.float32),
                        fused.flat_weights(_cast(case.params, jnp.float32),
                                           _structure(case.params), range(2), [None, None]),
                        jnp.asarray(case.lengths, jnp.int32), input_size=4, hidden_size=8,
                        num_layers=2, dropout=0.0, bidirectional=True)
                    got = dict(zip(("y", "h_n", "c_n"), (np.asarray(a) for a in out)))
                empty = case.lengths == 0
                outcome["finite"] = {k: bool(np.isfinite(v).all()) for k, v in got.items()}
                outcome["h_n_minus_hx_on_empty_rows"] = float(np.max(np.abs(
                    got["h_n"][:, empty] - case.hx[0][:, empty].astype(np.float32))))
            elif name == "raw_float64":
                case = make_case(9, Shape(8, 16, 4, 8), 2, True)
                errors = rel_errors(raw_run(case, jnp.float64, checks.kernel),
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
                outcome["result"] = dataclasses.asdict(checks.determinism())
            else:
                raise ValueError(f"unknown probe {name!r}")
            outcome["raised"] = None
    except Exception as err:
        outcome["raised"] = f"{type(err).__name__}: {err}"[:1000]
    return outcome


def _structure(params: dict) -> Any:
    from jaxseq.layout import infer_structure

    return infer_structure("LSTM", params)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def configure() -> None:
    """float64 for the reference scan; TF32 off on both sides (check 7 turns it on locally)."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def plan_jobs(jobs: Jobs, args: argparse.Namespace, budget_for_jobs: float) -> None:
    """Queue the probes (short, needed by checks 9 and 11) first, then the test stages."""
    py, emu = sys.executable, ["--emulate"] if args.emulate else []
    env = child_env(args.emulate)
    me = [py, "-m", "benchmarks.gpu_check", "--out", str(args.out)] + emu
    for name in PROBES:
        jobs.add(name, me + ["--probe", name], 90, env)
    jobs.add("large_shape", me + ["--probe", "large"], 180, env)
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    jobs.add("pytest_fused", pytest + ["parity_tests/test_fused.py"], 0.5 * budget_for_jobs, env)
    jobs.add("parity", [py, "-m", "jaxseq.parity"] + (["--dtype", "float32"] if args.emulate
                                                      else []), 0.5 * budget_for_jobs, env)
    jobs.add("pytest_parity", pytest + ["parity_tests/test_recurrent_parity.py", "-k",
                                        "zero_length_rows or edge_shapes or forward_mode_path"],
             0.4 * budget_for_jobs, env)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for gpu_check.jsonl, bench.jsonl and logs/ (e.g. $OUT/gpu)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for the whole run (default 420: under 8 minutes in all)")
    parser.add_argument("--emulate", action="store_true",
                        help="CPU dry run: jax's reference kernel in place of cuDNN, small shapes")
    parser.add_argument("--parallel", type=int, default=None,
                        help="subprocesses beside the checks (default: 4 on a GPU, 1 emulated)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)   # internal: one probe, one JSON line
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    configure()
    if args.probe:
        print(json.dumps(_jsonable(run_probe(args.probe, args.emulate))), flush=True)
        return 0

    rec = Recorder(args.out, args.budget, args.emulate)
    # The timing runs alone at the end: the subprocesses beside the checks end before it.
    timing_reserve = (0.25 if args.emulate else 0.4) * args.budget
    jobs_deadline = rec.t0 + args.budget - timing_reserve
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # `timeout`: still end the jobs
    jobs: Optional[Jobs] = None
    try:
        checks = Checks(args.emulate)
        env = rec.check("environment", checks.environment, min_left=-math.inf)   # always
        from jaxseq import fused

        if not args.emulate and env is not None and jax.default_backend() == "gpu" \
                and not fused.cuda_available():   # keep testing the kernel; the line says why
            rec.write("cuda_available_forced", "fail", "fused.cuda_available() is False on a GPU "
                      "backend; forced True for the rest of the run")
            fused.cuda_available = lambda: True
        jobs = Jobs(args.out, args.parallel or (1 if args.emulate else 4), jobs_deadline)
        plan_jobs(jobs, args, jobs_deadline - time.monotonic())
        with checks.kernel_context():
            for name in ("layout", "raw_ragged", "fast_path", "weight_drop_and_split",
                         "jit_compiles", "precision", "determinism"):
                result = rec.check(name, getattr(checks, name))
                if name == "determinism" and result is not None and result.status == "fail":
                    redo = jobs.add("determinism_cublas", [sys.executable, "-m",
                                    "benchmarks.gpu_check", "--out", str(args.out), "--probe",
                                    "determinism"], 120,
                                    child_env(args.emulate, CUBLAS_WORKSPACE_CONFIG=":4096:8"))
                    rec.write(redo.name, "info", json.dumps(probe_result(jobs.wait(redo.name))))
        rec.check("refusals", checks.refusals)
        for name in PROBES:
            job = jobs.wait(name)
            if job.skipped:
                rec.write(name, "skip", job.skipped)
                continue
            outcome = probe_result(job)
            rec.write(name, "info", json.dumps(outcome)[:400], outcome, job.seconds)
        with checks.kernel_context():
            rec.check("torch_cudnn", checks.torch_cudnn)
        job = jobs.wait("large_shape")
        if job.skipped:
            rec.write(job.name, "skip", job.skipped)
        else:
            outcome = probe_result(job)
            ok = outcome.get("raised") is None and outcome.get("finite") is True
            rec.write(job.name, "pass" if ok else "fail", json.dumps(outcome)[:400], outcome,
                      job.seconds)
        for name, keep in [("pytest_fused", r"passed|failed|error"),
                           ("parity", r"worst relative error|passed, \d+ failed"),
                           ("pytest_parity", r"passed|failed|error")]:
            record_job(rec, jobs.wait(name), keep)
        jobs.stop()
        run_timing(rec, args)
    finally:
        if jobs is not None:
            jobs.stop()
        counts = ", ".join(f"{v} {k}" for k, v in sorted(rec.counts.items()))
        rec.write("summary", "info", f"{counts} in {rec.elapsed():.0f}s (budget "
                  f"{args.budget:.0f}s); lines in {rec.path}", dict(rec.counts))
        rec.close()
    return 0 if not (rec.counts.get("fail") or rec.counts.get("error")) else 1


def _ms(value: Any) -> str:
    return f"{value:.1f}ms" if isinstance(value, (int, float)) else str(value)


def run_timing(rec: Recorder, args: argparse.Namespace) -> None:
    """Last: the benchmark harness alone, its rows appended to ``out/bench.jsonl`` as they come."""
    timeout = rec.left() - 5
    if timeout < 20:
        rec.write("timing", "skip", f"budget: {rec.left():.0f}s left")
        return
    bench = args.out / "bench.jsonl"
    before = len(bench.read_text().splitlines()) if bench.exists() else 0
    # Start no new config once less than a config's worth of time is left.
    start_new = max(0.0, timeout - (30 if args.emulate else 90))
    argv = [sys.executable, "-m", "benchmarks.run", "--gpu", "--json", str(bench),
            "--budget", f"{start_new:.0f}"] + (["--quick", "--emulate"] if args.emulate else [])
    job = run_now(Job("timing", argv, timeout, child_env(args.emulate),
                      args.out / "logs" / "timing.log"))
    rows = []
    if bench.exists():
        for line in bench.read_text().splitlines()[before:]:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    status = "error" if job.timed_out and not rows else "pass" if job.rc == 0 or rows else "fail"
    lines = [ln for ln in job.output().splitlines() if ln.strip()]
    short = [f"{r.get('config')}/{r.get('contender')} {_ms(r.get('ms'))}" for r in rows
             if isinstance(r, dict)]
    rec.write("timing", status, f"rc {job.rc}{' (timed out)' if job.timed_out else ''}; "
              f"{len(rows)} rows: " + ", ".join(short)[:300] + ("" if rows else
                                                                " | " + " | ".join(lines[-2:])),
              {"argv": argv[1:], "rc": job.rc, "rows": rows, "tail": lines[-40:]}, job.seconds)


if __name__ == "__main__":
    sys.exit(main())
