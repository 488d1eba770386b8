"""The fused cuDNN LSTM behind ``impl="cudnn"`` / ``impl="auto"`` (``jax.experimental.rnn.lstm``).

jaxseq's masked scan runs anywhere; on a CUDA GPU a ``lax.scan`` RNN is launch-bound and loses to
cuDNN's fused kernel (``../docs/benchmarks.md``). This module puts that kernel behind jaxseq's API
with the same semantics as the scan:

* torch's flat weight layout: for every pseudo-layer ``p = layer * D + direction``, ``W_ih`` then
  ``W_hh`` (row-major), then for every ``p`` ``b_ih`` then ``b_hh``; gates ``i, f, g, o`` as torch,
  so the torch-named parameters are concatenated as they are and autodiff maps the gradient of
  the flat vector back to torch names (``bias=False``: zero bias blocks);
* padding: the input is zeroed at padded steps before the kernel (NaN there reaches nothing), the
  output is zeroed there after it;
* rows of length 0 (which cuDNN cannot take, jax-ml/jax#17966) run with length 1 on a zero input,
  then get their ``hx`` back as ``h_n``/``c_n`` and zero outputs (so the gradient w.r.t. ``hx`` is
  the identity there);
* inter-layer dropout: cuDNN's own dropout has no key, so the kernel gets ``dropout=0`` and, when
  ``dropout_masks`` are given, one call per layer with jaxseq's masks applied between the calls;
  weight drop multiplies ``W_hh`` before flattening (one fused call);
* float64 never reaches the kernel (it would read it as float32): only float32 parameters without
  ``compute_dtype`` are served.

What the kernel cannot serve (:func:`cudnn_problem`): GRU and RNN, ``proj_size``, dtypes other than
float32, ``compute_dtype``, packed rows (``segment_ids``), recurrent-state masks, ``forward_mode``
(the kernel has a custom VJP only), ``remat`` (the kernel saves every step's activations), and
any backend but CUDA. ``impl="cudnn"`` raises a
``ValueError`` naming the first of these; ``impl="auto"`` runs the scan instead. Neither can see
transformations applied from outside: under ``vmap`` or ``jax.export`` use ``impl="scan"``
(``jaxseq.export.export_model`` always does). Matmul precision follows
``jax_default_matmul_precision`` as the scan's does (``"highest"``: FP32; unset: TF32 allowed;
the kernel has no bfloat16 mode, so ``"bfloat16"``/``"default"`` give TF32: :func:`kernel_precision`).

On a machine without a GPU the kernel cannot even be traced; :func:`use_reference_kernel` swaps
in ``jax.experimental.rnn.lstm_ref``, jax's pure-JAX statement of what the kernel computes, so the
whole wrapper (layout, per-layer split, masks, zero-length guard, ``hx``) is tested on CPU.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxseq.layout import Structure, param_name
from jaxseq.scan import ScanOptions

#: The ``impl=`` values: the masked scan, the fused kernel, or the kernel where it applies.
IMPLS = ("scan", "cudnn", "auto")
#: Resolved implementations (the jitted core's static key): the kernel, or its CPU stand-in.
KERNEL, REFERENCE = "cudnn", "cudnn-reference"

Kernel = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
_reference: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxseq_reference_kernel",
                                                                  default=False)
_scan_only: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxseq_scan_only", default=False)


def reference_kernel(x: jax.Array, h_0: jax.Array, c_0: jax.Array, weights: jax.Array,
                     seq_lengths: jax.Array, input_size: int, hidden_size: int, num_layers: int,
                     dropout: float, bidirectional: bool, precision: Any = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``jax.experimental.rnn.lstm``'s call computed by ``lstm_ref`` from the same flat weights.

    ``x [B, T, I]``, ``h_0``/``c_0 [D*L, B, H]``, ``weights [N]`` (the cuDNN layout),
    ``seq_lengths int32 [B]`` (``>= 1``) -> ``(y [B, T, D*H], h_n, c_n)``. Known differences from
    the kernel (``GPU.md``): a zero length returns the carry after ``T`` steps, NaN in the padding
    gives NaN gradients (jaxseq never passes either), ``precision`` is ignored.
    """
    from jax.experimental import rnn

    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers,
                                                     bidirectional)
    return rnn.lstm_ref(x, h_0, c_0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size,
                        num_layers, dropout, bidirectional)


#: ``jax_default_matmul_precision`` values that ask for float32 accuracy: the kernel runs FP32.
FP32_PRECISIONS = frozenset({"highest", "float32", "F32_F32_F32", "F64_F64_F64", "TF32_TF32_F32_X3",
                             "BF16_BF16_F32_X6", "BF16_BF16_F32_X9"})


def kernel_precision() -> str:
    """The kernel's ``precision`` for the current ``jax_default_matmul_precision``.

    ``"highest"`` (FP32) for the values in :data:`FP32_PRECISIONS`, ``"high"`` (TF32 allowed, the
    kernel's fastest) for every other value and when unset. The kernel takes only those two:
    passed on as they are, ``"default"`` / ``"bfloat16"`` would raise ``NotImplementedError`` and
    algorithm presets such as ``"F32_F32_F32"`` would silently allow TF32.

    >>> import jax
    >>> with jax.default_matmul_precision("float32"):
    ...     print(kernel_precision())
    highest
    >>> with jax.default_matmul_precision("bfloat16"):
    ...     print(kernel_precision())
    high
    """
    setting = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
    return "highest" if setting in FP32_PRECISIONS else "high"


def _cuda_kernel(*args: Any, **kwargs: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    from jax.experimental import rnn

    return rnn.lstm(*args, precision=kernel_precision(), **kwargs)


KERNELS: dict[str, Kernel] = {KERNEL: _cuda_kernel, REFERENCE: reference_kernel}


@contextlib.contextmanager
def use_reference_kernel() -> Iterator[None]:
    """Inside this block ``impl="cudnn"`` / ``"auto"`` run :func:`reference_kernel` in place of
    cuDNN, on any backend (for tests and ``benchmarks/gpu_check.py --emulate`` on a CPU).

    The choice is made when a call is traced: eager calls follow the block, but a function you
    ``jax.jit`` keeps the kernel of its first trace when called later outside (or inside) the
    block; jit it afresh to switch. The same holds for :func:`scan_only`.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxseq
    >>> lstm = jaxseq.LSTM(3, 4, impl="cudnn", rngs=nnx.Rngs(0))
    >>> with use_reference_kernel():
    ...     out, (h, c) = lstm(jnp.ones((5, 2, 3)), jnp.array([5, 0]))
    >>> out.shape, bool((out[:, 1] == 0).all()), bool((h[:, 1] == 0).all())
    ((5, 2, 4), True, True)
    """
    token = _reference.set(True)
    try:
        yield
    finally:
        _reference.reset(token)


@contextlib.contextmanager
def scan_only() -> Iterator[None]:
    """Inside this block every ``impl`` runs the masked scan (used by
    :func:`jaxseq.export.export_model`: the kernel's custom call does not export)."""
    token = _scan_only.set(True)
    try:
        yield
    finally:
        _scan_only.reset(token)


def cuda_available() -> bool:
    """Whether JAX's default backend is a CUDA GPU (ROCm's MIOpen wants another gate order)."""
    try:
        if jax.default_backend() != "gpu":
            return False
        return "cuda" in jax.devices()[0].client.platform_version.lower()
    except Exception:   # pragma: no cover - an unusual plugin backend
        return False


def cudnn_problem(s: Structure, dtype: Any, options: ScanOptions, *, packed: bool,
                  state_masks: bool, backend: bool = True) -> Optional[str]:
    """The first condition of a call the fused kernel cannot serve, or ``None`` if it can.

    Decided on static facts before any tracing: the backend (skipped under
    :func:`use_reference_kernel`, or with ``backend=False`` for a module's construction), the
    cell, ``proj_size``, the parameter dtype, ``compute_dtype``, packed rows, recurrent-state
    masks, ``forward_mode`` and ``remat``.
    """
    if backend and not _reference.get() and not cuda_available():
        return f"no CUDA backend (JAX's default backend is {jax.default_backend()!r})"
    if s.mode != "LSTM":
        return f"{s.mode} has no cuDNN path (only LSTM)"
    if s.proj_size:
        return "proj_size > 0 (cuDNN's LSTM has no projection)"
    # The reference kernel also takes float64 (CPU tests to ~1e-12); float64 never reaches cuDNN.
    served = (jnp.float32, jnp.float64) if _reference.get() else (jnp.float32,)
    if jnp.dtype(dtype) not in served:
        return f"parameters of dtype {jnp.dtype(dtype).name} (the kernel takes float32 only)"
    if options.compute_dtype is not None:
        return f"compute_dtype={options.compute_dtype.name} (the kernel computes in float32)"
    if packed:
        return "packed rows (segment_ids): the kernel cannot reset the state mid-row"
    if state_masks:
        return "recurrent-state masks (recurrent_dropout / state_masks): no per-step state mask"
    if options.forward_mode:
        return "forward_mode=True (the kernel has a custom VJP only)"
    if options.remat is not None:
        return (f"remat={options.remat} (the kernel saves every step's activations; it cannot "
                "recompute chunks)")
    return None


def resolve_impl(impl: str, s: Structure, dtype: Any, options: ScanOptions, *, packed: bool,
                 state_masks: bool) -> str:
    """``"scan"``, :data:`KERNEL` or :data:`REFERENCE` for a call with ``impl=``.

    Raises:
      ValueError: an unknown ``impl``, or ``impl="cudnn"`` for a call the kernel cannot serve
        (naming the first condition), before any computation.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "scan" or _scan_only.get():
        return "scan"
    problem = cudnn_problem(s, dtype, options, packed=packed, state_masks=state_masks)
    if problem is None:
        return REFERENCE if _reference.get() else KERNEL
    if impl == "cudnn":
        raise ValueError(f"impl='cudnn' cannot serve this call: {problem}. Use impl='scan' (or "
                         "impl='auto', which falls back to the scan)")
    return "scan"


def flat_weights(params: Mapping[str, jax.Array], s: Structure, layers: Sequence[int],
                 weight_hh_masks: Sequence[Optional[jax.Array]]) -> jax.Array:
    """The cuDNN weight vector ``[N]`` of ``layers`` (torch names, weight drop applied to ``W_hh``).

    ``weight_hh_masks[layer]`` is broadcastable to ``[D, 4H, H]`` or ``None``.
    """
    D, G = s.num_directions, 4 * s.hidden_size
    matrices, biases = [], []
    for layer in layers:
        for d in range(D):
            w_hh = params[param_name("weight_hh", layer, d)]
            mask = weight_hh_masks[layer]
            if mask is not None:   # in W_hh's dtype: a float64 mask must not promote the kernel's
                w_hh = w_hh * jnp.broadcast_to(mask, (D,) + w_hh.shape)[d].astype(w_hh.dtype)
            matrices += [params[param_name("weight_ih", layer, d)].ravel(), w_hh.ravel()]
            for kind in ("bias_ih", "bias_hh"):
                name = param_name(kind, layer, d)
                biases.append(params[name] if name in params else jnp.zeros((G,), w_hh.dtype))
    return jnp.concatenate(matrices + biases)


def fused_lstm(params: Mapping[str, jax.Array], s: Structure, x: jax.Array, lengths: jax.Array,
               state: Sequence[jax.Array], dropout_masks: Sequence[Optional[jax.Array]],
               weight_hh_masks: Sequence[Optional[jax.Array]], kernel: Kernel
               ) -> tuple[jax.Array, list[jax.Array]]:
    """An LSTM stack through the fused kernel, with jaxseq's semantics (see the module docs).

    Args:
      params: torch-named float32 parameters of ``s`` (an LSTM without projection).
      s: the stack's structure.
      x: ``[T, B, I]``, already zero at padded steps.
      lengths: ``int32 [B]``, ``0 <= lengths[b] <= T``.
      state: ``[h_0, c_0]``, each ``[D*L, B, H]``.
      dropout_masks: ``L-1`` multipliers (``None`` entries: none) on the outputs of layers
        ``0..L-2``, in the time-major layout ``[T, B, D*H]`` (broadcastable).
      weight_hh_masks: ``L`` multipliers broadcastable to ``[D, 4H, H]`` (``None``: none).
      kernel: ``jax.experimental.rnn.lstm``'s signature (:data:`KERNELS`).

    Returns:
      ``(output [T, B, D*H], [h_n, c_n])``, output exactly 0 at padding; rows of length 0 return
      ``state`` and zero outputs.
    """
    T = x.shape[0]
    D, L = s.num_directions, s.num_layers
    valid = jnp.arange(T)[:, None] < lengths[None, :]                        # [T, B]
    seq_lengths = jnp.maximum(lengths, 1).astype(jnp.int32)
    split = any(m is not None for m in dropout_masks)
    groups = [[layer] for layer in range(L)] if split else [list(range(L))]
    y = jnp.swapaxes(x, 0, 1)                                                 # [B, T, F]
    finals: list[tuple[jax.Array, jax.Array]] = []
    for layers in groups:
        rows = slice(layers[0] * D, (layers[-1] + 1) * D)
        y, h_last, c_last = kernel(y, state[0][rows], state[1][rows],
                             flat_weights(params, s, layers, weight_hh_masks), seq_lengths,
                             input_size=y.shape[-1], hidden_size=s.hidden_size,
                             num_layers=len(layers), dropout=0.0, bidirectional=s.bidirectional)
        finals.append((h_last, c_last))
        last = layers[-1]
        drop = dropout_masks[last] if last < L - 1 else None
        if drop is not None:   # in y's dtype: a float64 mask must not promote the next kernel call
            mask = jnp.broadcast_to(drop, (T,) + y.shape[:1] + y.shape[2:])
            y = y * jnp.swapaxes(mask, 0, 1).astype(y.dtype)
    output = jnp.where(valid[..., None], jnp.swapaxes(y, 0, 1), jnp.zeros((), y.dtype))
    ran = (lengths > 0)[None, :, None]                                        # [1, B, 1]
    h_n = [jnp.where(ran, jnp.concatenate([f[i] for f in finals]), h0)
           for i, h0 in enumerate(state)]
    return output, h_n


def describe_kernels() -> dict[str, Any]:
    """What this process can run: CUDA availability and the cuDNN version (for reports)."""
    info: dict[str, Any] = {"backend": jax.default_backend(), "cuda": cuda_available()}
    try:
        from jax._src.lib import cuda_versions

        info["cudnn"] = cuda_versions.cudnn_get_version() if cuda_versions else None
    except Exception:   # pragma: no cover - CPU-only jaxlib
        info["cudnn"] = None
    return info
