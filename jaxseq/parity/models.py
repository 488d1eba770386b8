"""Model-level parity: a user's torch model against their JAX (Flax NNX) port, by torch names.

:func:`compare_models` copies the torch weights into the JAX model, runs a loss on both sides in
one dtype, backpropagates, and compares the loss, named outputs, the gradient of every torch
parameter and the buffers after the call; :class:`ModelReport` prints the table and checks
tolerances. Needs torch (the ``torch`` extra); ``import jaxseq`` does not import this module.

Relative error, as in :mod:`jaxseq.parity.harness`: ``max |jax - torch| / max |torch|`` over the
entries of one quantity (0 when both are exactly equal, ``inf`` when torch is all zeros and JAX
is not). An entry passes ``assert_close(rtol, atol)`` when ``max |jax - torch| <= atol + rtol *
max |torch|`` (NaN never passes).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from jaxseq.interop import Rename, key_renamer, load_torch_state_dict, torch_state_dict

#: ``dtype=`` of :func:`compare_models` -> (torch dtype, numpy dtype).
DTYPES = {"float64": (torch.float64, np.float64), "float32": (torch.float32, np.float32)}
#: Default ``rtol`` of :meth:`ModelReport.assert_close` per dtype (the parity suite's tolerances).
DEFAULT_RTOL = {"float64": 1e-10, "float32": 1e-5}
#: Entry kinds, in the order the table counts them.
KINDS = ("loss", "output", "grad", "buffer")
_PLURAL = {"loss": "loss", "output": "outputs", "grad": "gradients", "buffer": "buffers"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One compared quantity of a :class:`ModelReport`.

    Attributes:
      kind: ``"loss"``, ``"output"`` (a named output), ``"grad"`` (the gradient of a torch
        parameter, or of a JAX parameter without one) or ``"buffer"`` (a torch buffer and its JAX
        counterpart after the call: BatchNorm running statistics in training mode).
      name: the output's name, or the torch key (a JAX-only gradient: the torch key it was loaded
        from, else its JAX key).
      shape: torch's shape (JAX's when torch has none).
      max_abs: ``max |jax - torch|`` (``nan`` when not compared).
      scale: ``max |torch|`` (``nan`` when not compared).
      problem: why the entry could not be compared (a missing gradient...); ``""`` when compared.
    """

    kind: str
    name: str
    shape: tuple[int, ...]
    max_abs: float
    scale: float
    problem: str = ""

    @property
    def relative(self) -> float:
        """``max_abs / scale``: 0 when both sides are equal, ``inf`` when torch is all zeros and
        JAX is not or when the entry has a problem, ``nan`` when either side holds NaN."""
        if self.problem:
            return math.inf
        if math.isnan(self.max_abs) or math.isnan(self.scale):
            return math.nan
        if self.max_abs == 0:
            return 0.0
        return self.max_abs / self.scale if self.scale > 0 else math.inf

    def passes(self, rtol: float, atol: float = 0.0) -> bool:
        """``max_abs <= atol + rtol * scale`` and no problem (NaN fails)."""
        return not self.problem and bool(self.max_abs <= atol + rtol * self.scale)

    def label(self) -> str:
        return f"{self.kind} {self.name}"


def _severity(entry: Entry) -> tuple[int, float]:
    """Sort key, worst first: problems, then NaN, then by relative error."""
    rel = entry.relative
    return (0 if entry.problem else 1 if math.isnan(rel) else 2,
            0.0 if math.isnan(rel) else -rel)


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """What :func:`compare_models` measured; ``print(report)`` shows the table, worst first.

    Attributes:
      dtype: ``"float64"`` or ``"float32"``.
      entries: every :class:`Entry`, worst first.
      notes: remarks on the run (e.g. a side whose loss came out in another dtype).
    """

    dtype: str
    entries: tuple[Entry, ...]
    notes: tuple[str, ...] = ()

    def worst(self, kind: Optional[str] = None, atol: float = 0.0) -> float:
        """The largest relative error over the entries of ``kind`` (all kinds when ``None``);
        ``inf`` if one of them has a problem, else ``nan`` if one holds NaN; 0.0 when there is
        none of that kind.

        ``atol``: an entry that is zero on both sides within ``atol`` (``max|torch| <= atol`` and
        ``max|jax - torch| <= atol``: a gradient that is exactly 0 in exact arithmetic, computed as
        rounding noise by both) counts as 0 instead of its meaningless relative error.
        """
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
        rels = [0.0 if not e.problem and e.max_abs <= atol and e.scale <= atol else e.relative
                for e in self.entries if kind in (None, e.kind)]
        return max(rels, default=0.0, key=lambda r: (math.isinf(r), math.isnan(r), r))

    def entry(self, kind: str, name: str) -> Entry:
        """The entry of ``kind`` named ``name`` (``KeyError`` if there is none)."""
        for e in self.entries:
            if (e.kind, e.name) == (kind, name):
                return e
        raise KeyError(f"no {kind} entry named {name!r}")

    def failures(self, rtol: Optional[float] = None, atol: float = 0.0) -> list[Entry]:
        """The entries that do not pass (worst first); ``rtol`` defaults to
        :data:`DEFAULT_RTOL` of the report's dtype."""
        rtol = DEFAULT_RTOL[self.dtype] if rtol is None else rtol
        return [e for e in self.entries if not e.passes(rtol, atol)]

    def assert_close(self, rtol: Optional[float] = None, atol: float = 0.0, *,
                     show: int = 5) -> None:
        """Raise ``AssertionError`` naming the ``show`` worst entries that fail
        ``max |jax - torch| <= atol + rtol * max |torch|`` or have a problem (missing gradients...).

        ``rtol`` defaults to 1e-10 for float64 and 1e-5 for float32.
        """
        rtol = DEFAULT_RTOL[self.dtype] if rtol is None else rtol
        failed = self.failures(rtol, atol)
        if not failed:
            return
        described = [f"{e.label()}: {e.problem}" if e.problem else
                     f"{e.label()}: relative {e.relative:.3g}, max abs {e.max_abs:.3g}"
                     for e in failed[:show]]
        more = f"; and {len(failed) - show} more" if len(failed) > show else ""
        raise AssertionError(f"compare_models ({self.dtype}): {len(failed)} of {len(self.entries)} "
                             f"entries fail rtol={rtol:g}, atol={atol:g}: "
                             + "; ".join(described) + more)

    def __str__(self) -> str:
        counts = ", ".join(f"{sum(e.kind == k for e in self.entries)} {_PLURAL[k]}" for k in KINDS)
        problems = sum(bool(e.problem) for e in self.entries)
        lines = [f"compare_models ({self.dtype}): {counts}; {problems} problem(s); "
                 f"relative = max|jax - torch| / max|torch|"]
        lines += [f"note: {n}" for n in self.notes]
        width = max([len(e.name) for e in self.entries] + [4])
        header = (f"{'kind':6s}  {'name':{width}s}  {'shape':14s}  {'max|torch|':>10s}  "
                  f"{'max abs err':>11s}  {'relative':>9s}")
        lines += [header, "-" * len(header)]
        for e in self.entries:
            shape = str(e.shape)
            if e.problem:
                lines.append(f"{e.kind:6s}  {e.name:{width}s}  {shape:14s}  {e.problem}")
            else:
                lines.append(f"{e.kind:6s}  {e.name:{width}s}  {shape:14s}  {e.scale:10.3e}  "
                             f"{e.max_abs:11.3e}  {e.relative:9.2e}")
        return "\n".join(lines)


def _compared(kind: str, name: str, got: Any, want: Any) -> Entry:
    """An entry for ``got`` (JAX) against ``want`` (torch); the shapes must agree."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return Entry(kind, name, want.shape, math.nan, math.nan,
                     f"shape mismatch: torch {want.shape}, JAX {got.shape}")
    diff = np.where(got == want, 0.0, np.abs(got - want))        # equal infinities count as equal
    max_abs = float(np.max(diff)) if diff.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return Entry(kind, name, want.shape, max_abs, scale)


def _missing(kind: str, name: str, shape: tuple[int, ...], problem: str) -> Entry:
    return Entry(kind, name, tuple(shape), math.nan, math.nan, problem)


# ------------------------------------------------------------------------------------------------
# The two sides
# ------------------------------------------------------------------------------------------------
def _split_result(result: Any, who: str) -> tuple[Any, dict[str, Any]]:
    """``loss`` or ``(loss, {name: output})`` -> ``(loss, outputs)``."""
    if isinstance(result, (tuple, list)):
        if len(result) != 2 or not isinstance(result[1], Mapping):
            raise TypeError(f"{who} must return a loss or (loss, {{name: output}}), got a "
                            f"{type(result).__name__} of length {len(result)}")
        loss, outputs = result
        bad = [k for k in outputs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{who}: output names must be strings, got {bad!r}")
        return loss, dict(outputs)
    return result, {}


def _check_scalar(loss: Any, who: str, floating: bool) -> None:
    """``loss`` must be a 0-d floating array (``floating``: its dtype is floating)."""
    shape = tuple(getattr(loss, "shape", ()))
    if not hasattr(loss, "dtype") or shape != ():
        got = f"shape {shape}" if hasattr(loss, "shape") else f"a {type(loss).__name__}"
        raise ValueError(f"{who} must return a scalar loss (shape ()), got {got}")
    if not floating:
        raise TypeError(f"{who} must return a floating-point loss, got dtype {loss.dtype}")


def _batch_leaves(batch: Any, convert: Callable[[np.ndarray], Any], np_dtype: Any) -> Any:
    """``batch`` with every array leaf converted (floating leaves cast to ``np_dtype``)."""
    def leaf(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            raise TypeError("batch leaves must be numpy arrays (given to both sides), got a "
                            "torch.Tensor")
        if not isinstance(x, (np.ndarray, np.generic, jax.Array)):
            return x                           # Python scalars, strings...: passed as they are
        array = np.asarray(x)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np_dtype)
        return convert(np.array(array, copy=True))

    return jax.tree.map(leaf, batch)


@contextlib.contextmanager
def _torch_full_precision() -> Iterator[None]:
    """TF32 off for the call (it matters on GPUs only), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclasses.dataclass
class _TorchRun:
    state_dict: dict[str, torch.Tensor]         # the cast weights and buffers before the call
    loss: np.ndarray
    outputs: dict[str, np.ndarray]
    grads: dict[str, tuple[tuple[int, ...], Optional[np.ndarray], bool]]  # (shape, grad, requires)
    buffers: dict[str, np.ndarray]              # after the call
    loss_dtype: str


def _run_torch(torch_model: torch.nn.Module, batch: Any, torch_loss: Callable, dtype: str
               ) -> _TorchRun:
    t_dtype, np_dtype = DTYPES[dtype]
    model = copy.deepcopy(torch_model).to(t_dtype)
    for p in model.parameters():
        p.grad = None
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device = next(iter(state_dict.values())).device if state_dict else torch.device("cpu")
    tbatch = _batch_leaves(batch, lambda a: torch.from_numpy(a).to(device), np_dtype)
    with _torch_full_precision():
        loss, outputs = _split_result(torch_loss(model, tbatch), "torch_loss")
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"torch_loss must return a torch.Tensor loss, got "
                            f"{type(loss).__name__}")
        _check_scalar(loss, "torch_loss", loss.is_floating_point())
        if not loss.requires_grad:
            raise ValueError("torch_loss returned a loss that does not require grad (computed "
                             "under torch.no_grad(), or from no parameter)")
        loss.backward()
    for name, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"torch_loss: output {name!r} must be a torch.Tensor, got "
                            f"{type(value).__name__}")
    return _TorchRun(
        state_dict=state_dict,
        loss=loss.detach().cpu().numpy(),
        outputs={k: v.detach().cpu().numpy() for k, v in outputs.items()},
        grads={k: (tuple(p.shape), None if p.grad is None else p.grad.detach().cpu().numpy(),
                   p.requires_grad) for k, p in model.named_parameters()},
        buffers={k: b.detach().cpu().numpy() for k, b in model.named_buffers()},
        loss_dtype=str(loss.dtype).replace("torch.", ""))


def _loss_and_grads(model: nnx.Module, batch: Any, loss_fn: Callable) -> tuple[Any, Any, Any]:
    """``(loss, outputs, grads)`` of ``loss_fn(model, batch)``; ``grads`` an ``nnx.State`` of the
    gradient of every ``nnx.Param``. State updates (batch statistics) land in ``model``."""
    def loss_and_outputs(m: nnx.Module) -> tuple[Any, dict[str, Any]]:
        loss, outputs = _split_result(loss_fn(m, batch), "jax_loss")
        _check_scalar(loss, "jax_loss", bool(jnp.issubdtype(loss.dtype, jnp.floating)))
        return loss, outputs

    (loss, outputs), grads = nnx.value_and_grad(loss_and_outputs, has_aux=True)(model)
    return loss, outputs, grads


#: One compilation per (model structure, batch shapes and dtypes, loss function).
_jit_loss_and_grads = nnx.jit(_loss_and_grads, static_argnames="loss_fn")


#: Module attributes that fix a computation dtype: set to the compared dtype in the copy
#: (``nnx.Embed`` computes in its ``param_dtype`` unless told otherwise, ``nnx.Linear(...,
#: dtype=jnp.float32)``...); jaxseq's mixed-precision ``compute_dtype`` is switched off (``None``).
_DTYPE_ATTRIBUTE = "dtype"


def _is_float_dtype(value: Any) -> bool:
    try:
        return value is not None and jnp.issubdtype(np.dtype(value), jnp.floating)
    except TypeError:
        return False


def _cast_clone(model: nnx.Module, np_dtype: Any) -> tuple[nnx.Module, list[str]]:
    """A copy of ``model`` with every floating variable (parameters, batch statistics...) cast and
    every computation dtype set to ``np_dtype``; also the ``module.attribute (was ...)`` changed."""
    graphdef, state = nnx.split(model)
    cast = lambda x: x.astype(np_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    clone = nnx.merge(graphdef, jax.tree.map(cast, state))
    changed = []
    for path, node in nnx.iter_graph(clone):
        if not isinstance(node, nnx.Module):
            continue
        where = ".".join(map(str, path)) or "the model"
        value = getattr(node, _DTYPE_ATTRIBUTE, None)
        if _is_float_dtype(value) and np.dtype(value) != np.dtype(np_dtype):
            setattr(node, _DTYPE_ATTRIBUTE, np_dtype)
            changed.append(f"{where}.{_DTYPE_ATTRIBUTE} (was {np.dtype(value).name})")
        compute_dtype = getattr(node, "compute_dtype", None)
        if compute_dtype is not None:
            changed.append(f"{where}.compute_dtype (was {np.dtype(compute_dtype).name})")
            setattr(node, "compute_dtype", None)  # noqa: B010  (any module's attribute)
    return clone, changed


@dataclasses.dataclass
class _JaxRun:
    loss: np.ndarray
    outputs: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]                # {JAX key: gradient}, torch layout
    after: dict[str, np.ndarray]                # torch_state_dict of the model after the call
    loss_dtype: str
    changed: list[str]                          # computation dtypes set in the copy


def _run_jax(jax_model: nnx.Module, batch: Any, jax_loss: Callable, state_dict: Mapping[str, Any],
             *, dtype: str, prefix: str, rename: Optional[Rename], jit: bool) -> _JaxRun:
    np_dtype = DTYPES[dtype][1]
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with x64, jax.default_matmul_precision("highest"):
        model, changed = _cast_clone(jax_model, np_dtype)
        load_torch_state_dict(model, state_dict, prefix=prefix, rename=rename)
        jbatch = _batch_leaves(batch, jnp.asarray, np_dtype)
        run = _jit_loss_and_grads if jit else _loss_and_grads
        loss, outputs, grads = run(model, jbatch, loss_fn=jax_loss)
        return _JaxRun(loss=np.asarray(loss),
                       outputs={k: np.asarray(v) for k, v in outputs.items()},
                       grads=torch_state_dict(grads, like=model),
                       after=torch_state_dict(model),
                       loss_dtype=str(loss.dtype), changed=changed)


# ------------------------------------------------------------------------------------------------
# compare_models
# ------------------------------------------------------------------------------------------------
def _gradient_entries(t: _TorchRun, j: _JaxRun, jax_key: Callable[[str], Optional[str]]
                      ) -> list[Entry]:
    entries, matched = [], set()
    for name, (shape, grad, requires_grad) in t.grads.items():
        key = jax_key(name)
        if key is None:
            entries.append(_missing("grad", name, shape, "no JAX counterpart (outside prefix, "
                                    "or dropped by rename)"))
        elif key not in j.grads:
            entries.append(_missing("grad", name, shape, f"no JAX gradient (JAX key {key!r} is "
                                    "not an nnx.Param)"))
        elif grad is None:
            matched.add(key)
            why = "requires_grad=False" if not requires_grad else "the loss does not reach it"
            entries.append(_missing("grad", name, shape, f"torch .grad is None ({why})"))
        else:
            matched.add(key)
            entries.append(_compared("grad", name, j.grads[key], grad))
    loaded_from = {jax_key(k): k for k in t.state_dict}
    for key, grad in j.grads.items():
        if key not in matched:
            source = loaded_from.get(key)
            name = source if source is not None else key
            why = (f"loaded from torch key {source!r}, which is not a torch parameter (a buffer, "
                   "or a tied duplicate)" if source is not None else "not loaded from torch")
            entries.append(_missing("grad", name, np.shape(grad), f"JAX parameter with no torch "
                                    f"parameter ({why})"))
    return entries


def compare_models(torch_model: torch.nn.Module, jax_model: nnx.Module, batch: Any, *,
                   torch_loss: Callable, jax_loss: Callable, rename: Optional[Rename] = None,
                   prefix: str = "", dtype: str = "float64", jit: bool = True) -> ModelReport:
    """Compare a torch model and its JAX port: loss, named outputs, every parameter's gradient.

    Copies of both models are made (``copy.deepcopy`` / ``nnx.split``-``merge``) and cast to
    ``dtype`` (every floating parameter and buffer / batch statistic); the torch copy's weights
    and buffers are loaded into the JAX copy with :func:`jaxseq.load_torch_state_dict`
    (``prefix`` / ``rename`` as there). Both losses are differentiated (torch ``backward()``, JAX
    ``nnx.value_and_grad`` over every ``nnx.Param``, named by torch key with
    :func:`jaxseq.torch_state_dict`). The models passed in are never modified.

    Args:
      torch_model: a ``torch.nn.Module``, in the mode (``train()`` / ``eval()``) to compare.
      jax_model: its Flax NNX port, in the matching mode (``model.train()`` / ``model.eval()``);
        its submodules named like the torch ones (or mapped with ``rename``).
      batch: a pytree of numpy arrays given to both sides: to ``torch_loss`` as torch tensors (on
        the torch model's device), to ``jax_loss`` as JAX arrays; floating arrays are cast to
        ``dtype``, integer ones kept. Other leaves pass as they are (under ``jit``, Python
        numbers arrive traced, as with ``jax.jit``: close over static values in ``jax_loss``).
      torch_loss: ``torch_loss(model, batch) -> loss`` or ``(loss, {name: output})``; ``loss`` a
        scalar tensor (compare_models calls ``backward()``).
      jax_loss: ``jax_loss(model, batch)``, the same on the JAX side with the same output names;
        with ``jit=True`` it is compiled once per model structure, batch shapes and function (so
        it must be hashable, as functions are).
      rename: as :func:`jaxseq.load_torch_state_dict`.
      prefix: as :func:`jaxseq.load_torch_state_dict`.
      dtype: ``"float64"`` (default; JAX's x64 mode is switched on for the call and restored) or
        ``"float32"``.
      jit: run ``jax_loss`` and its gradient under ``nnx.jit`` (default); ``False`` runs it
        eagerly (for code that reads concrete values).

    Returns:
      A :class:`ModelReport`: ``print`` it; ``report.assert_close(rtol=..., atol=...)``.

    What is compared:

    * ``loss`` and every named output (the names must agree; the outputs are compared in full,
      so give torch's in JAX's layout, e.g. ``output.transpose(1, 2)``);
    * the gradient of every torch parameter (``named_parameters()``, tied weights once), by torch
      name. Reported as problems (they fail ``assert_close``): a torch parameter with no JAX
      counterpart or whose ``.grad`` is ``None`` (frozen, or not reached by the loss), and a JAX
      parameter with no torch parameter (loaded from a buffer or from a tied duplicate);
    * every torch buffer that the JAX model also has (:func:`jaxseq.torch_state_dict` of the JAX
      copy), after the call: in training mode BatchNorm's updated running statistics.

    Dropout: compare in evaluation mode (``eval()`` on both sides), or inject the same masks on
    both sides (jaxseq's layers take ``dropout_masks=``..., ``torch_ref.dropout`` has the torch
    twins); torch's and JAX's random streams never agree.

    Computation dtypes: in the JAX copy every module's floating ``dtype`` attribute (Flax layers'
    computation dtype: ``nnx.Embed`` defaults it to its ``param_dtype``, float32) is set to
    ``dtype`` and jaxseq's mixed-precision ``compute_dtype`` is switched off; the report's notes
    list what was changed, and flag a loss that still comes out in another dtype (a module that
    computes in a fixed dtype).

    Raises:
      TypeError: a model of the wrong type, a loss function that is not callable (or, with
        ``jit``, not hashable) or returns something else than documented, a torch tensor in
        ``batch``.
      ValueError: an unknown ``dtype``, a non-scalar loss, output names that differ between the
        sides, a torch loss that does not require grad; errors of
        :func:`jaxseq.load_torch_state_dict` (missing, unknown or mis-shaped keys).

    >>> import numpy as np, torch
    >>> from flax import nnx
    >>> torch_lin = torch.nn.Linear(3, 2)
    >>> batch = {"x": np.ones((4, 3))}
    >>> report = compare_models(torch_lin, nnx.Linear(3, 2, rngs=nnx.Rngs(0)), batch,
    ...                         torch_loss=lambda m, b: (m(b["x"]) ** 2).sum(),
    ...                         jax_loss=lambda m, b: (m(b["x"]) ** 2).sum())
    >>> sorted(e.label() for e in report.entries)
    ['grad bias', 'grad weight', 'loss loss']
    >>> report.assert_close(rtol=1e-12)
    """
    if not isinstance(torch_model, torch.nn.Module):
        raise TypeError(f"torch_model must be a torch.nn.Module, got {type(torch_model).__name__}")
    if not isinstance(jax_model, nnx.Module):
        raise TypeError(f"jax_model must be an NNX module, got {type(jax_model).__name__}")
    for what, fn in (("torch_loss", torch_loss), ("jax_loss", jax_loss)):
        if not callable(fn):
            raise TypeError(f"{what} must be callable (model, batch) -> loss, got "
                            f"{type(fn).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if jit:
        try:
            hash(jax_loss)
        except TypeError:
            raise TypeError("jax_loss must be hashable with jit=True (it is a static argument of "
                            "the compiled step; a function is): pass a function, or jit=False"
                            ) from None

    t = _run_torch(torch_model, batch, torch_loss, dtype)
    j = _run_jax(jax_model, batch, jax_loss, t.state_dict, dtype=dtype, prefix=prefix,
                 rename=rename, jit=jit)
    if set(t.outputs) != set(j.outputs):
        raise ValueError("torch_loss and jax_loss return different outputs: only in torch "
                         f"{sorted(set(t.outputs) - set(j.outputs))}, only in JAX "
                         f"{sorted(set(j.outputs) - set(t.outputs))}")

    renamer = key_renamer(rename)
    jax_key = lambda name: renamer(name[len(prefix):]) if name.startswith(prefix) else None  # noqa: E731
    entries = [_compared("loss", "loss", j.loss, t.loss)]
    entries += [_compared("output", name, j.outputs[name], t.outputs[name]) for name in t.outputs]
    entries += _gradient_entries(t, j, jax_key)
    for name, value in t.buffers.items():
        key = jax_key(name)
        if key is not None and key in j.after and key not in j.grads:
            entries.append(_compared("buffer", name, j.after[key], value))
    notes = [f"{who} loss is {got}, not {dtype}: a module computes in another dtype"
             for who, got in (("torch", t.loss_dtype), ("JAX", j.loss_dtype)) if got != dtype]
    if j.changed:
        notes.append(f"computation dtype set to {dtype} in the JAX copy: {', '.join(j.changed)}")
    return ModelReport(dtype, tuple(sorted(entries, key=_severity)), tuple(notes))


__all__ = ["DEFAULT_RTOL", "Entry", "ModelReport", "compare_models"]
