"""Per-module capture for :func:`jaxseq.parity.compare_models` (``modules=True``): the forward
output of every submodule call on both sides, matched by module path, without changes to the
user's code.

* torch: a forward hook on every named submodule of the model copy (:class:`TorchModules`); a
  ``PackedSequence`` output is recorded padded; ``Conv*``, ``BatchNorm*``, ``InstanceNorm*`` and
  pooling layers of ``torch.nn`` (their own ``forward``) give channels-first outputs, recorded
  channels last, and so are the same-shape outputs of modules fed such an output (an activation
  or a dropout after a conv).
* JAX: while the loss is traced, the ``__call__`` of every module class of the model is wrapped
  (and restored afterwards); a call of one of the model's modules records its output
  (:class:`JaxCalls`). ``nnx.capture(..., method_outputs=...)`` (Flax 0.12) is not used: it wraps
  only the methods a class defines itself (``jaxseq.LSTM`` inherits its ``__call__``) and sows into
  module variables, which cannot leave a ``lax.scan``. This works with every Flax version jaxseq
  supports (>= 0.10).
* Inside jaxseq's decoding loops (:func:`jaxseq.teacher_forcing`, ...) the loop cooperates through
  :mod:`jaxseq.hooks`: the outputs of one step's calls leave the ``lax.scan`` as per-step outputs
  and become one call per step (``cell[0]``, ``cell[1]``...), in step order. A module called
  inside any other JAX transformation (a user's ``lax.scan``, ``nnx.scan``, ``vmap``,
  ``remat``) cannot be recorded (its values do not exist outside it): the notes say so.

Matching (:func:`module_entries`): a torch module path goes through ``prefix`` and ``rename`` as
the ``state_dict`` keys do, and meets the JAX module that :func:`jaxseq.load_torch_state_dict`
names the same (:func:`torch_names`: an ``nnx.Sequential``'s ``postnet.layers[3]`` is torch's
``postnet.3``, with or without parameters). The ``i``-th call of a path on one side meets the
``i``-th on the other. Entries come in torch's order of finished calls (a child before its
parent); a path called more than once is named ``path[i]``; an output of several arrays (an
LSTM's ``output, (h_n, c_n)``) gives one entry per array, ``path:k`` (flattened order). What
cannot be matched is listed in the notes with the reason.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Optional

import jax
import jax.extend.core as jax_core
import numpy as np
import torch
from flax import nnx
from torch import nn

from jaxseq import hooks
from jaxseq.interop import _mapping
from jaxseq.parity.comparison import Entry, compared, missing
from jaxseq.parity.jax_side import Instrument
from jaxseq.parity.patching import patched

Path = tuple[Any, ...]     # a module's graph path

# ------------------------------------------------------------------------------------------------
# torch
# ------------------------------------------------------------------------------------------------
#: torch layers whose outputs are channels first (``[B, C, *spatial]``) when their own
#: ``forward`` runs (a subclass that overrides it, as a features-last batch norm, is not).
CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
                  nn.modules.instancenorm._InstanceNorm, nn.modules.pooling._MaxPoolNd,
                  nn.modules.pooling._AvgPoolNd)


def _channels_first(module: nn.Module) -> bool:
    forward = type(module).forward
    return isinstance(module, CHANNELS_FIRST) and forward.__module__.startswith("torch.nn")


@dataclasses.dataclass
class TorchLeaf:
    value: np.ndarray
    moved: bool          # channels first, moved last
    time_axis: Optional[int] = None   # from a PackedSequence: padded to its longest sequence


@dataclasses.dataclass
class TorchCall:
    path: str
    kind: str            # the module's class name
    leaves: list[TorchLeaf]
    parameterless: bool  # no parameter nor buffer (nn.ReLU, nn.Dropout...)


class TorchModules:
    """Forward hooks on every named submodule of a torch model (the copy ``compare_models``
    runs), as a context of the torch run: which module is running (:meth:`where`), which
    tensors are channels first (:meth:`channels_first`) and, with ``record``, ``calls``: every
    call's output in the order the calls finish."""

    def __init__(self, record: bool):
        self.record = record
        self.calls: list[TorchCall] = []
        self.stack: list[str] = []
        # channels-first outputs by id, held weakly: a freed tensor's id, reused by a new tensor,
        # must not mark the new one
        self._first: weakref.WeakValueDictionary[int, torch.Tensor] = \
            weakref.WeakValueDictionary()

    def where(self) -> str:
        return self.stack[-1] if self.stack else "(outside the model's submodules)"

    def channels_first(self, tensor: torch.Tensor) -> bool:
        """``tensor`` is the output of a channels-first layer (or of a module after one that kept
        its shape)."""
        return self._first.get(id(tensor)) is tensor

    def _leaves(self, module: nn.Module, args: tuple, output: Any) -> list[TorchLeaf]:
        first_in = next((a for a in args if isinstance(a, torch.Tensor)), None)
        follows = first_in is not None and self.channels_first(first_in)
        leaves: list[TorchLeaf] = []

        def visit(value: Any) -> None:
            if isinstance(value, nn.utils.rnn.PackedSequence):
                batch_first = bool(getattr(module, "batch_first", False))
                padded, _ = nn.utils.rnn.pad_packed_sequence(value, batch_first=batch_first)
                leaves.append(TorchLeaf(padded.detach().cpu().numpy(), False,
                                        1 if batch_first else 0))
            elif isinstance(value, torch.Tensor):
                first = value.dim() >= 3 and (_channels_first(module) or (
                    follows and first_in is not None and value.shape == first_in.shape))
                if first:
                    self._first[id(value)] = value
                if self.record:
                    array = value.detach().cpu().numpy()
                    leaves.append(TorchLeaf(np.moveaxis(array, 1, -1) if first else array, first))
            elif isinstance(value, (tuple, list)):
                for item in value:
                    visit(item)
            elif isinstance(value, dict):
                for key in sorted(value):
                    visit(value[key])

        visit(output)
        return leaves

    @contextlib.contextmanager
    def __call__(self, model: nn.Module) -> Iterator[None]:
        handles = []
        for path, module in model.named_modules():
            if not path:
                continue
            parameterless = not any(True for _ in itertools.chain(module.parameters(),
                                                                  module.buffers()))

            def enter(module: nn.Module, args: tuple, path: str = path) -> None:
                self.stack.append(path)

            def leave(module: nn.Module, args: tuple, output: Any, path: str = path,
                      parameterless: bool = parameterless) -> None:
                self.stack.pop()
                leaves = self._leaves(module, args, output)
                if self.record:
                    self.calls.append(TorchCall(path, type(module).__name__, leaves,
                                                parameterless))

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


# ------------------------------------------------------------------------------------------------
# JAX
# ------------------------------------------------------------------------------------------------
def trace_state() -> Any:
    """JAX's current trace (NNX's convention): a value traced inside another one (a scan's body,
    ``vmap``...) cannot leave it."""
    return jax_core.get_opaque_trace_state(convention="nnx")


#: Where a module's output cannot be recorded nor a dropout draw replayed.
INSIDE_A_TRANSFORMATION = ("inside a JAX transformation that is not a jaxseq decoding loop (a "
                           "lax.scan, nnx.scan, vmap, remat, an inner jit...)")


def _arrays(output: Any) -> list[Any]:
    return [leaf for leaf in jax.tree.leaves(output) if isinstance(leaf, jax.Array)]


@dataclasses.dataclass
class _Scope:
    """Where calls are recorded: the traced loss, or one step of a decoding loop."""

    trace: Any
    records: list[tuple[str, list[Any]]] = dataclasses.field(default_factory=list)


class _LoopScope(hooks.LoopScope):
    """One decoding loop: each step's records leave the scan as per-step outputs."""

    def __init__(self, owner: JaxCalls, length: int):
        self.owner, self.length = owner, length
        self.parent = owner.scopes[-1]
        self.paths: list[tuple[str, int]] = []

    @contextlib.contextmanager
    def step(self, inputs_t: Any) -> Iterator[None]:
        self.owner.scopes.append(_Scope(trace_state()))
        try:
            yield
        finally:
            self.owner.scopes.pop()

    def step_outputs(self) -> Any:
        records = self.owner.scopes[-1].records
        self.paths = [(path, len(leaves)) for path, leaves in records]
        return [leaves for _, leaves in records]

    def finish(self, outputs: Any) -> None:
        for t in range(self.length):
            for (path, _), leaves in zip(self.paths, outputs):
                self.parent.records.append((path, [leaf[t] for leaf in leaves]))


class JaxCalls(Instrument, hooks.Observer):
    """Which of the model's modules is running while ``jax_loss`` is traced (:meth:`where`, for
    dropout replay's messages), and with ``record`` the output of every call (see the module
    docs). Modules are named as torch names them (:func:`torch_names`). An
    :class:`~jaxseq.parity.jax_side.Instrument` of the JAX run."""

    def __init__(self, record: bool):
        self.key = ("modules", record)
        self.record = record
        self.ids: dict[int, str] = {}             # {id of a module: its torch-style name}
        self.stack: list[tuple[Any, str]] = []
        self.scopes: list[_Scope] = []
        self.skipped: dict[str, str] = {}
        self.kinds: dict[str, tuple[str, bool]] = {}   # {name: (class name, parameterless)}
        self.calls: list[tuple[str, list[np.ndarray]]] = []

    def where(self) -> str:
        """The torch-style name of the innermost running submodule."""
        return self.stack[-1][1] if self.stack else "(outside the model's submodules)"

    # -- hooks.Observer -----------------------------------------------------------------------
    def loop(self, length: int, probe: Callable[[], Any]) -> Optional[hooks.LoopScope]:
        if not self.record or hooks.probing() or not self.scopes:
            return None
        return _LoopScope(self, length)

    def rebuilt(self, original: Any, copy: Any) -> None:
        for (_, a), (_, b) in zip(nnx.iter_graph(original), nnx.iter_graph(copy)):
            if id(a) in self.ids:
                self.ids[id(b)] = self.ids[id(a)]

    # -- the wrapped __call__ ------------------------------------------------------------------
    def _called(self, original: Callable, module: Any, args: tuple, kwargs: dict) -> Any:
        name = self.ids.get(id(module))
        if name is None or (self.stack and self.stack[-1][0] is module):   # super().__call__
            return original(module, *args, **kwargs)
        self.stack.append((module, name))
        try:
            output = original(module, *args, **kwargs)
        finally:
            self.stack.pop()
        if self.record and not hooks.probing() and self.scopes:
            scope = self.scopes[-1]
            if scope.trace == trace_state():
                scope.records.append((name, _arrays(output)))
            else:
                self.skipped.setdefault(name, f"called {INSIDE_A_TRANSFORMATION}, where its "
                                              "outputs cannot be recorded")
        return output

    def _wrapped(self, classes: Sequence[type]) -> AbstractContextManager[None]:
        """Every class's ``__call__`` (its own or inherited) replaced by one that goes through
        :meth:`_called`, for the block."""
        patches = []
        for cls in classes:
            if not any("__call__" in vars(klass) for klass in cls.__mro__):
                continue                                  # instances are not callable

            def wrapper(module: Any, *args: Any, __original: Callable = cls.__call__,
                        **kwargs: Any) -> Any:
                return self._called(__original, module, args, kwargs)

            patches.append((cls, "__call__", functools.update_wrapper(wrapper, cls.__call__)))
        return patched(patches)

    # -- Instrument ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def tracing(self, model: nnx.Module, inputs: Any) -> Iterator[None]:
        modules = [(tuple(path), node) for path, node in nnx.iter_graph(model)
                   if isinstance(node, nnx.Module)]
        names = torch_names(model)
        self.ids = {id(node): names[path] for path, node in modules if path}   # not the model
        held = [tuple(path) for path, node in nnx.iter_graph(model)
                if isinstance(node, (nnx.Param, nnx.BatchStat))]
        self.kinds = {names[path]: (type(node).__name__,
                                    not any(p[:len(path)] == path for p in held))
                      for path, node in modules if path}
        self.stack, self.skipped = [], {}
        self.scopes = [_Scope(trace_state())]
        classes = sorted({type(node) for _, node in modules}, key=lambda c: len(c.__mro__))
        with self._wrapped(classes), hooks.observing(self):
            yield

    def outputs(self) -> Any:
        return [leaves for _, leaves in self.scopes[0].records]

    def facts(self) -> Any:
        return ([(name, len(leaves)) for name, leaves in self.scopes[0].records],
                dict(self.skipped), dict(self.kinds))

    def receive(self, outputs: Any, facts: Any) -> None:
        names, self.skipped, self.kinds = facts
        self.calls = [(name, [np.asarray(a) for a in leaves])
                      for (name, _), leaves in zip(names, outputs or [])]


# ------------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------------
def torch_names(model: nnx.Module) -> dict[Path, str]:
    """``{module graph path: torch-style name}``: the name :func:`jaxseq.load_torch_state_dict`
    gives every module it walks (``postnet.layers[3]`` is ``postnet.3``; a shared module: its
    first path's); a module inside a jaxseq layer (not walked): its parent's name and its own
    attribute."""
    names = dict(_mapping(model).modules)
    for path, node in sorted(nnx.iter_graph(model), key=lambda item: len(item[0])):
        path = tuple(path)
        if isinstance(node, nnx.Module) and path not in names:
            parent = names.get(path[:-1], ".".join(map(str, path[:-1])))
            names[path] = ".".join(p for p in (parent, str(path[-1])) if p)
    return names


def _jax_name(torch_path: str, jax_key: Callable[[str], Optional[str]], prefix: str
              ) -> tuple[Optional[str], str]:
    """``(the torch-style JAX name, "")`` for a torch module path (mapped as a key that starts
    with it), or ``(None, why)``."""
    dotted = torch_path + "."
    renamed = jax_key(dotted)
    if renamed is None:
        return None, "dropped by rename" if dotted.startswith(prefix) else \
            f"outside prefix {prefix!r}"
    return renamed.rstrip("."), ""


def _as_jax_layout(leaf: TorchLeaf, want: tuple[int, ...]) -> np.ndarray:
    """torch's array in JAX's layout where a known difference explains the shapes: a
    PackedSequence's time axis padded with zeros to JAX's length, or channels moved last."""
    value = leaf.value
    if value.shape == want:
        return value
    if leaf.time_axis is not None and value.ndim == len(want):
        pad = [(0, w - s) if i == leaf.time_axis else (0, 0)
               for i, (s, w) in enumerate(zip(value.shape, want))]
        if all(p >= 0 for _, p in pad) and all(p == 0 for i, (_, p) in enumerate(pad)
                                               if i != leaf.time_axis):
            return np.pad(value, pad)
    if not leaf.moved and value.ndim >= 3 and np.moveaxis(value, 1, -1).shape == want:
        return np.moveaxis(value, 1, -1)
    return value


def _calls(count: int) -> str:
    return f"{count} call{'s' if count != 1 else ''}"


def module_entries(torch_calls: Sequence[TorchCall], jax: JaxCalls,
                   jax_key: Callable[[str], Optional[str]], prefix: str
                   ) -> tuple[list[Entry], list[str]]:
    """The ``"module"`` entries (``Entry.order``: torch's order of finished calls) and notes;
    ``jax_key``: torch key -> JAX key (``prefix`` stripped, ``rename`` applied).

    Notes: one per module that is not compared, with its class, call count and why; modules
    without parameters or buffers that have no module of that name on the other side (an
    ``nnx.Dropout`` where torch calls ``F.dropout``, an ``nn.Tanh`` where the port calls
    ``jnp.tanh``: the usual case, not a fault) are listed together, one note per side."""
    by_name: dict[str, list[list[np.ndarray]]] = collections.defaultdict(list)
    for called, leaves in jax.calls:
        by_name[called].append(leaves)
    skipped = dict(jax.skipped)
    torch_count = collections.Counter(c.path for c in torch_calls)
    seen: collections.Counter[str] = collections.Counter()
    entries: list[Entry] = []
    unmatched: dict[str, str] = {}          # {torch path: why}
    usual: dict[str, list[str]] = {"torch": [], "JAX": []}     # parameterless, no twin
    matched_names: collections.Counter[str] = collections.Counter()   # torch calls per JAX name
    for call in torch_calls:
        index = seen[call.path]
        seen[call.path] += 1
        name, why = _jax_name(call.path, jax_key, prefix)
        if name is None or name not in by_name:
            if call.path in unmatched or call.path in usual["torch"]:
                continue
            if name in skipped:
                why = f"JAX's {name!r} was {skipped.pop(name)}"
            elif not why and call.parameterless:
                usual["torch"].append(call.path)
                continue
            unmatched[call.path] = why or f"no JAX module named {name!r} was called"
            continue
        matched_names[name] += 1
        jax_calls = by_name[name]
        several = max(torch_count[call.path], len(jax_calls)) > 1
        label = f"{call.path}[{index}]" if several else call.path
        order = len(entries)
        if index >= len(jax_calls):
            shape = call.leaves[0].value.shape if call.leaves else ()
            entries.append(missing("module", label, shape, f"torch call {index}: JAX called "
                                   f"{name!r} {len(jax_calls)} time(s)", order=order))
            continue
        got = jax_calls[index]
        if len(got) != len(call.leaves):
            entries.append(missing("module", label, (), f"torch returns {len(call.leaves)} "
                                   f"array(s), JAX {len(got)}", order=order))
            continue
        for k, (leaf, value) in enumerate(zip(call.leaves, got)):
            want = tuple(np.shape(value))
            suffix = f":{k}" if len(got) > 1 else ""
            entries.append(compared("module", label + suffix, value, _as_jax_layout(leaf, want),
                                    order=len(entries)))
    kinds = {c.path: c.kind for c in torch_calls}
    notes = [f"torch module {path} ({kinds[path]}, {_calls(torch_count[path])}) not compared: "
             f"{why}" for path, why in unmatched.items()]
    for name, calls in by_name.items():
        kind, parameterless = jax.kinds[name]
        if name in matched_names:
            if len(calls) > matched_names[name]:
                notes.append(f"JAX module {name} ({kind}) called {len(calls)} times, torch "
                             f"{matched_names[name]}: the extra JAX calls are not compared")
        elif parameterless:
            usual["JAX"].append(name)
        else:
            notes.append(f"JAX module {name} ({kind}, {_calls(len(calls))}) not compared: no "
                         "torch module of that name was called (named otherwise: rename=)")
    notes += [f"JAX module {name} not compared: {why}" for name, why in skipped.items()]
    if usual["torch"]:
        notes.append("torch modules without parameters and no JAX module, not compared (usual "
                     "where the port calls a function: jnp.tanh, nnx.relu): " + ", ".join(
                         f"{p} ({kinds[p]}, {_calls(torch_count[p])})" for p in usual["torch"]))
    if usual["JAX"]:
        notes.append("JAX modules without parameters and no torch module, not compared (usual "
                     "where torch calls a function: F.dropout, F.relu): " + ", ".join(
                         f"{n} ({jax.kinds[n][0]}, {_calls(len(by_name[n]))})"
                         for n in usual["JAX"]))
    return entries, notes
