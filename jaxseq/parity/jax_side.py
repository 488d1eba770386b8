"""The JAX side of :func:`jaxseq.parity.compare_models`: the port in the compared dtype with the
torch weights, and one function that returns the loss, the named outputs, the gradient of every
``nnx.Param`` and of every floating batch leaf, the model state after the call and whatever the
instruments (per-module capture, dropout replay) collect. Needs JAX and Flax only.

Compilation. With ``jit=True`` that function is lowered and compiled once per *key* and kept in a
small cache (:data:`CACHE_SIZE` entries, the least recently used dropped): the model's graph
(structure, and static attributes such as a conv's ``padding`` or a function stored on a module),
the shapes, dtypes and weak types of every input, the static batch leaves, the instruments'
settings (``modules``, ``dropout``), x64 mode, and the code it runs (:func:`code_key`): function
objects, each with its code object. Followed:

* ``jax_loss`` (a bound method's function, a callable object's ``__call__``) and every function
  of every class of the model's modules, over their MRO (methods, static and class methods,
  property getters and setters);
* from each followed function outside the libraries (``jax``, ``flax``, ``numpy``, ``torch``,
  ``optax``, the standard library: :data:`_LIBRARIES`), recursively, each once: a function that a
  global name of its code holds (names read in its body and in the lambdas, functions and
  comprehensions defined in it); a function in its closure; a function that is an attribute of a
  Python module held by such a name or closure, when the attribute's name appears in that code
  (``helpers.f``, ``jaxseq.attention_weights``; ``pkg.sub.f`` through the submodule; library
  modules are not entered); and the function a decorator wraps (``__wrapped__``: ``jax.jit``,
  ``functools.wraps``) in any of these places.

Not followed: a function reached any other way (from a dict, list or other container,
``ACTIVATIONS[name]``; as an attribute of an object that is neither a Python module nor one of
the model's modules, ``self.config.activation``, ``helper_object.f``; passed as an argument or a
default value; a ``functools.partial``), the methods of a class that is not one of the model's
module classes (a helper class the code instantiates), global values that are not functions (a
constant, an array, a dict), and the code of the libraries. So a compilation is reused when the
key is equal: the same model structure and static attributes, inputs of the same shapes and
dtypes, and the same followed function objects with the same code objects. Redefining a followed
function (a port's method replaced on its class, ``jaxseq.attention_weights`` or a helper the
model calls by name monkeypatched) or replacing its ``__code__`` (IPython's ``autoreload``)
compiles again; a change to anything not followed does not, and the old behaviour is measured:
pass ``jit=False`` after such a change (it traces the current code on every call). Computing the
key costs about 3 ms of CPU per call on the 2-core AMD EPYC (the Tacotron-style
``examples/port_tts.py`` model: 339 functions, half of the time walking the model's graph),
against about 0.15 s for a call that reuses its compilation.

Where the time goes (``python -m benchmarks.compare_models_time``: an attention decoder of 40
``LSTMCell`` steps after a packed BiLSTM encoder, float64; process CPU seconds on the 2-core AMD
EPYC, busy with other jobs, so read them as proportions). Tracing and lowering the loss and its
gradient take 0.3 s with the loop in :func:`jaxseq.teacher_forcing`, 1.4 s with a Python loop;
XLA compilation is the rest of the first call: 3.5 s / 27.6 s with XLA's default options, of
which the gradient is about two thirds (the loss alone: 0.6 s / 1.8 s). The program runs once, so
it is compiled with XLA's backend optimisation level 0 (:data:`COMPILER_OPTIONS`): 1.7 s /
12.3 s, results equal to rounding (1.7e-16 here), the run a few times slower (milliseconds). A
decoder loop written as a Python loop is unrolled into the program (60,000 HLO instructions
against 2,200 for the scan): write it with :func:`jaxseq.teacher_forcing`. A cached call costs the
torch side's time plus about 0.15 s. A :class:`jaxseq.LSTMCell` and the same cell in plain ``jnp``
compile alike (12.3 s and 12.3 s in the Python loop; 62,312 and 59,431 HLO instructions).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import types
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseq.interop import Rename, load_torch_state_dict, torch_state_dict
from jaxseq.parity.inputs import Batch, Leaf

#: Compiled functions kept (least recently used dropped first).
CACHE_SIZE = 16
#: XLA options of the one-shot compilation (see the module docs).
COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0}
#: Module attributes that fix a computation dtype: set to the compared dtype in the copy
#: (``nnx.Embed`` computes in its ``param_dtype`` unless told otherwise, ``nnx.Linear(...,
#: dtype=jnp.float32)``...); jaxseq's mixed-precision ``compute_dtype`` is switched off (``None``).
_DTYPE_ATTRIBUTE = "dtype"
#: Top-level packages whose functions the code key does not follow.
_LIBRARIES = frozenset({"jax", "jaxlib", "flax", "numpy", "torch", "optax", "builtins", "typing",
                        "functools", "collections", "abc", "dataclasses", "math", "treescope",
                        "contextlib", "operator", "itertools", "inspect", "re", "numbers",
                        "warnings", "types", "enum", "copy"})


class Instrument:
    """Something that takes part in the traced loss (the base does nothing).

    ``key``: its settings, part of the compilation key; ``inputs``: arrays given to the compiled
    function; :meth:`tracing` is active while ``jax_loss`` is traced (given the inputs as traced
    there) and may record *facts* (Python values learned while tracing, kept with the compiled
    function and given back by :meth:`receive` on every call; given the model ``jax_loss`` runs,
    rebuilt in the trace); :meth:`outputs` (called inside
    :meth:`tracing`, after ``jax_loss``) are arrays returned by the compiled function.
    """

    key: Hashable = None
    inputs: Any = None

    def tracing(self, model: nnx.Module, inputs: Any) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def outputs(self) -> Any:
        return None

    def facts(self) -> Any:
        return None

    def receive(self, outputs: Any, facts: Any) -> None:
        """After the call: the concrete :meth:`outputs` and the facts of the trace."""


def _is_float_dtype(value: Any) -> bool:
    try:
        return value is not None and jnp.issubdtype(np.dtype(value), jnp.floating)
    except TypeError:
        return False


def cast_clone(model: nnx.Module, np_dtype: Any) -> tuple[nnx.Module, list[str]]:
    """A copy of ``model`` with every floating variable (parameters, batch statistics...) cast and
    every computation dtype set to ``np_dtype``; also the ``module.attribute (was ...)`` changed.
    Abstract variables (a model built with ``nnx.eval_shape``) stay abstract, with the new dtype,
    for :func:`jaxseq.load_torch_state_dict` to fill."""
    graphdef, state = nnx.split(model)

    def cast(x: Any) -> Any:             # on the host: no compilation per shape
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):   # built with nnx.eval_shape: filled by loading
            return jax.ShapeDtypeStruct(x.shape, np_dtype)
        return jax.device_put(np.asarray(x).astype(np_dtype))

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


# ------------------------------------------------------------------------------------------------
# The code a compiled function depends on
# ------------------------------------------------------------------------------------------------
def _is_library(function: Any) -> bool:
    return (getattr(function, "__module__", None) or "builtins").split(".")[0] in _LIBRARIES


def _functions(value: Any) -> list[Any]:
    """The functions a class attribute holds (methods, static/class methods, properties)."""
    if isinstance(value, (staticmethod, classmethod)):
        return [value.__func__]
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset) if f is not None]
    return [value] if isinstance(value, types.FunctionType) else []


def _names(code: types.CodeType) -> dict[str, None]:
    """The global and attribute names ``code`` reads, in order, with those of the functions,
    lambdas and comprehensions defined in it (nested code objects)."""
    names = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_names(const))
    return names


def code_key(model: nnx.Module, loss_fn: Callable) -> tuple[Any, ...]:
    """``((function, its code object), ...)``: the functions the loss of ``model`` may run, in a
    stable order; the module docs say exactly what is followed and what is not."""
    found: dict[int, Any] = {}

    def reached(value: Any, names: dict[str, None], modules: set[int]) -> None:
        """A value that code reads by a global name, a closure or a module attribute."""
        if isinstance(value, types.FunctionType):
            add(value)
        elif isinstance(value, types.ModuleType):
            if id(value) in modules or value.__name__.split(".")[0] in _LIBRARIES:
                return
            modules.add(id(value))                      # a cycle of modules ends here
            attributes = vars(value)                    # no module __getattr__ (lazy imports)
            for name in names:
                if name in attributes:
                    reached(attributes[name], names, modules)
        elif callable(value) and not isinstance(value, type) and isinstance(
                wrapped := getattr(value, "__wrapped__", None), types.FunctionType):
            add(wrapped)                                # jax.jit, functools.wraps...

    def add(function: Any) -> None:
        if id(function) in found:
            return
        found[id(function)] = function
        code = getattr(function, "__code__", None)
        if code is None or _is_library(function):
            return
        names = _names(code)
        for name in names:
            if name in function.__globals__:
                reached(function.__globals__[name], names, set())
        for cell in function.__closure__ or ():
            with contextlib.suppress(ValueError):                  # an empty cell
                reached(cell.cell_contents, names, set())

    classes = {type(node) for _, node in nnx.iter_graph(model)
               if not isinstance(node, nnx.Variable)}
    for cls in sorted(classes, key=lambda c: (c.__module__, c.__qualname__)):
        for klass in cls.__mro__[:-1]:
            for value in vars(klass).values():
                for function in _functions(value):
                    add(function)
    add(loss_fn if isinstance(loss_fn, types.FunctionType) else type(loss_fn).__call__)
    if isinstance(loss_fn, types.MethodType):
        add(loss_fn.__func__)
    return tuple((f, getattr(f, "__code__", None)) for f in found.values())


def _signature(tree: Any) -> tuple[Any, ...]:
    """The structure and every leaf's shape, dtype and weak type of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, *((tuple(a.shape), jnp.dtype(a.dtype) if not jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else str(a.dtype), bool(getattr(a, "weak_type", False)))
        for a in leaves))


@dataclasses.dataclass
class _Compiled:
    call: Callable[..., Any]
    facts: list[Any]


#: ``[(key, compiled)]``, most recently used last; keys are compared with ``==`` (a graph's
#: static attributes may be unhashable, e.g. a dict).
_CACHE: list[tuple[Any, _Compiled]] = []


def _cached(key: Any, build: Callable[[], _Compiled]) -> _Compiled:
    for i, (known, entry) in enumerate(_CACHE):
        if known == key:
            _CACHE.append(_CACHE.pop(i))
            return entry
    entry = build()
    _CACHE.append((key, entry))
    del _CACHE[:-CACHE_SIZE]
    return entry


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class JaxRun:
    loss: np.ndarray
    outputs: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]                # {JAX key: gradient}, torch layout
    input_grads: dict[str, np.ndarray]          # {leaf name: gradient}
    after: dict[str, np.ndarray]                # torch_state_dict of the model after the call
    loss_dtype: str
    changed: list[str]                          # computation dtypes set in the copy
    reaches: Callable[[Sequence[str]], dict[str, bool]]   # does the loss reach these leaves?


class _Loss:
    """``jax_loss`` as a function of ``(params, floating leaves)`` for a model and batch split
    into arrays, with the instruments active while it runs."""

    def __init__(self, graphdef: Any, batch: Batch, loss_fn: Callable,
                 instruments: Sequence[Instrument], split_result: Callable, check: Callable):
        self.graphdef, self.batch, self.loss_fn = graphdef, batch, loss_fn
        self.instruments, self.split_result, self.check = instruments, split_result, check

    def values(self, diff: Sequence[Any], others: Sequence[Any]) -> list[Any]:
        diff_it, other_it = iter(diff), iter(others)
        return [next(diff_it) if leaf.floating else next(other_it) if _passed(leaf) else leaf.value
                for leaf in self.batch.leaves]

    def __call__(self, params: Any, diff: Any, rest: Any, others: Any, inputs: Any
                 ) -> tuple[Any, Any]:
        model = _merge_fresh(self.graphdef, params, rest)
        with contextlib.ExitStack() as stack:
            for instrument, x in zip(self.instruments, inputs):
                stack.enter_context(instrument.tracing(model, x))
            result = self.loss_fn(model, self.batch.rebuild(self.values(diff, others)))
            loss, outputs = self.split_result(result, "jax_loss")
            self.check(loss, "jax_loss", bool(jnp.issubdtype(loss.dtype, jnp.floating)))
            observed = tuple(i.outputs() for i in self.instruments)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
        return loss, (outputs, new_rest, observed)

    def step(self, params: Any, rest: Any, diff: Any, others: Any, inputs: Any) -> Any:
        (loss, (outputs, new_rest, observed)), (g_params, g_diff) = jax.value_and_grad(
            self, argnums=(0, 1), has_aux=True)(params, diff, rest, others, inputs)
        return loss, outputs, g_params, g_diff, new_rest, observed


def _merge_fresh(graphdef: Any, *states: Any) -> Any:
    """``nnx.merge`` with new variables, created in the current trace (Flax >= 0.12 reuses the
    State's variables unless asked to copy; older versions always create them)."""
    if "copy" in inspect.signature(nnx.merge).parameters:
        return nnx.merge(graphdef, *states, copy=True)
    return nnx.merge(graphdef, *states)


def _passed(leaf: Leaf) -> bool:
    """A non-floating leaf given to the compiled function as an array (else closed over)."""
    return isinstance(leaf.value, np.ndarray) or leaf.number


def run(jax_model: nnx.Module, batch: Batch, jax_loss: Callable, state_dict: Mapping[str, Any],
        *, np_dtype: Any, prefix: str, rename: Optional[Rename], jit: bool,
        instruments: Sequence[Instrument], split_result: Callable, check: Callable) -> JaxRun:
    """Run the port (see the module docs) with the torch weights ``state_dict``."""
    model, changed = cast_clone(jax_model, np_dtype)
    load_torch_state_dict(model, state_dict, prefix=prefix, rename=rename)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    diff = [jax.device_put(leaf.value) for leaf in batch.leaves if leaf.floating]
    others = [jnp.asarray(leaf.value) if leaf.number else jax.device_put(leaf.value)  # weak type
              for leaf in batch.leaves if not leaf.floating and _passed(leaf)]
    inputs = tuple(i.inputs for i in instruments)
    loss_fn = _Loss(graphdef, batch, jax_loss, instruments, split_result, check)
    args = (params, rest, diff, others, inputs)
    if jit:
        static = tuple(leaf.value for leaf in batch.leaves if not leaf.floating and not _passed(leaf))
        key = (graphdef, batch.treedef, static, _signature(args), code_key(jax_model, jax_loss),
               tuple(i.key for i in instruments), bool(jax.config.read("jax_enable_x64")))

        def build() -> _Compiled:
            compiled = jax.jit(loss_fn.step).lower(*args).compile(COMPILER_OPTIONS)
            return _Compiled(compiled, [i.facts() for i in instruments])

        entry = _cached(key, build)
        loss, outputs, g_params, g_diff, new_rest, observed = entry.call(*args)
        facts = entry.facts
    else:
        loss, outputs, g_params, g_diff, new_rest, observed = loss_fn.step(*args)
        facts = [i.facts() for i in instruments]
    for instrument, out, fact in zip(instruments, observed, facts):
        instrument.receive(out, fact)
    nnx.update(model, new_rest)
    names = [leaf.name for leaf in batch.leaves if leaf.floating]

    def reaches(wanted: Sequence[str]) -> dict[str, bool]:
        return _reaches(loss_fn, args, names, wanted, loss.dtype)

    return JaxRun(loss=np.asarray(loss), outputs={k: np.asarray(v) for k, v in outputs.items()},
                  grads=torch_state_dict(g_params, like=model),
                  input_grads={n: np.asarray(g) for n, g in zip(names, g_diff)},
                  after=torch_state_dict(model), loss_dtype=str(loss.dtype), changed=changed,
                  reaches=reaches)


def _reaches(loss_fn: _Loss, args: tuple[Any, ...], names: list[str], wanted: Sequence[str],
             loss_dtype: Any) -> dict[str, bool]:
    """Whether the gradient of the loss with respect to each leaf in ``wanted`` depends on the
    loss's cotangent: the backward pass traced once more (no compilation) and pruned with JAX's
    dead-code elimination (``stop_gradient``, integer casts... cut the dependence)."""
    from jax._src.interpreters import partial_eval as pe  # dce_jaxpr: no public twin

    params, rest, diff, others, inputs = args

    def backward(params: Any, diff: Any, cotangent: Any) -> Any:
        _, vjp, _ = jax.vjp(lambda p, d: loss_fn(p, d, rest, others, inputs), params, diff,
                            has_aux=True)
        return vjp(cotangent)[1]

    closed = jax.make_jaxpr(backward)(params, diff, jnp.ones((), loss_dtype))
    found = {}
    for name in wanted:
        used = [n == name for n in names]
        _, used_inputs = pe.dce_jaxpr(closed.jaxpr, used, instantiate=False)
        found[name] = bool(used_inputs[-1])
    return found
