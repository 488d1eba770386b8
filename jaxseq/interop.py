"""Exchange parameters and buffers with torch ``state_dict``\\ s: a jaxseq layer, or a whole model.

Values may be torch tensors (any device, contiguous or not, any float dtype including bfloat16) or
numpy arrays; torch is never imported here. Loading casts to the variables' dtype (as
``torch.nn.Module.load_state_dict`` copies into existing tensors); torch -> jaxseq -> torch is
bit-exact when the dtypes agree.

Keys. Every ``nnx.Param`` (a torch parameter) and ``nnx.BatchStat`` (a torch buffer) of the model
gets the torch key of the module path that holds it (attribute names and list indices joined by
``.``, as torch names submodules) plus its torch name; Flax layers rename and re-lay-out theirs:

=====================================  ============================================================
jaxseq ``LSTM`` / ``GRU`` / ``RNN``    torch names as they are (``weight_ih_l0``, ``bias_hh_l1_reverse``)
jaxseq ``LSTMCell`` / ...              ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``
:class:`jaxseq.BatchNorm`              ``weight``, ``bias``, ``running_mean``, ``running_var``,
                                       ``num_batches_tracked`` (``nn.BatchNorm1d/2d`` keys as they are)
``nnx.Linear``                         ``kernel [in, out]`` <-> ``weight [out, in]``, ``bias``
``nnx.Conv`` (1-D, 2-D, 3-D)           ``kernel [*window, in/groups, out]`` <-> ``weight [out,
                                       in/groups, *window]``, ``bias`` (``nn.Conv1d/2d/3d``)
``nnx.Embed``                          ``embedding`` <-> ``weight``
:class:`jaxseq.Embedding`              ``weight`` (``nn.Embedding``'s, ``padding_idx`` honoured)
``nnx.LayerNorm``, ``nnx.GroupNorm``   ``scale`` <-> ``weight``, ``bias``
``nnx.BatchNorm``                      ``scale`` <-> ``weight``, ``bias``, ``mean`` <->
                                       ``running_mean``, ``var`` <-> ``running_var``
``nnx.Sequential``                     its ``layers`` level is left out: ``layers[i]`` is ``i``
                                       (``nn.Sequential``'s keys ``0.weight``, ``3.bias``)
a custom module's own Param/BatchStat  its attribute name, as is
=====================================  ============================================================

so ``model.encoder.lstm.weight_ih_l0`` is ``encoder.lstm.weight_ih_l0``,
``model.layers[1].kernel`` (an ``nnx.List`` called ``layers``) is ``layers.1.weight`` and
``model.postnet.layers[3].kernel`` (an ``nnx.Sequential`` called ``postnet``) is
``postnet.3.weight``. torch's ``nn.Sequential`` counts its parameterless modules (``nn.ReLU``,
``nn.Dropout``) as indices too: put callables (``nnx.relu``, an ``nnx.Dropout``) at the same
positions of the ``nnx.Sequential``; when the indices or one level differ, the error pairs the
keys that nearly match. Before 0.4.0 an ``nnx.Sequential`` kept its ``layers`` level
(``postnet.layers.3.weight``): a state_dict with those keys still loads, with a
``FutureWarning``, until 0.5.0. The whole ``torch_model.state_dict()`` (parameters and buffers) loads
without hand copying. Other Flax layers with variables (``nnx.ConvTranspose``, attention...) have
no rule and raise. Torch keys that are named differently (AWD-LSTM's ``WeightDrop`` renames
``weight_hh_l0`` to ``module.weight_hh_l0_raw``; a tied decoder repeats the embedding) are mapped
with ``rename=`` (:func:`key_renamer` shows where a key goes).

``num_batches_tracked``. torch's batch norms count their training batches in an ``int64`` buffer.
:class:`jaxseq.BatchNorm` keeps it (``momentum=None`` needs it) and exchanges it. ``nnx.BatchNorm``
has no counter: on load the key is accepted and ignored; on export it is left out, and torch's
strict ``load_state_dict`` accepts a plain dict without it (torch then keeps the module's own
count). Integer values are accepted only for integer variables (the counters): an integer tensor
for a floating parameter or buffer raises a ``TypeError`` naming the key. Exported integers are
``int64``.

Layouts. torch convolutions take ``[B, C, *spatial]``, Flax ones ``[B, *spatial, C]`` (transpose
the input, not the weights); stride, padding (torch ``padding=p`` is Flax ``padding=[(p, p)] *
ndim``), dilation (``kernel_dilation``) and groups (``feature_group_count``) do not change the
weight layout. ``nnx.BatchNorm`` differs from torch's in momentum, running variance and the dtype
of its statistics (float32 whatever ``param_dtype``: float64 buffers load rounded); see
:mod:`jaxseq.batch_norm`, whose :class:`jaxseq.BatchNorm` is torch's.

Gradients and optimizer moments. :func:`torch_state_dict` also takes an ``nnx.State`` that mirrors
the model (``nnx.grad`` results, ``optimizer.opt_state[0].mu``): give ``like=model`` for the exact
map, or let the Flax attribute names (``kernel``, ``embedding``, ``scale``, ``mean``, ``var``)
stand for their layers (a State has no module types: without ``like`` an ``nnx.Sequential``'s
``layers`` level stays in the keys).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseq.batch_norm import BatchNorm
from jaxseq.cells import CellBase
from jaxseq.embedding import Embedding
from jaxseq.layout import check_shapes, describe
from jaxseq.recurrent import RecurrentBase

#: ``rename``: a callable ``torch key -> new key or None`` (``None`` drops the key), or
#: ``(pattern, replacement)`` pairs (a mapping or a sequence) applied in order with ``re.sub``
#: to every key they match (``re.search``); a ``None`` replacement drops a matching key.
Rename = Union[Callable[[str], Optional[str]], Mapping[str, Optional[str]],
               Iterable[tuple[str, Optional[str]]]]


class Layout(NamedTuple):
    """How a Flax array's axes map onto its torch twin's: ``torch = transpose(flax, axes(ndim))``."""

    name: str
    axes: Callable[[int], tuple[int, ...]]

    def torch_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[i] for i in self.axes(len(shape)))

    def to_torch(self, value: np.ndarray) -> np.ndarray:
        return np.transpose(value, self.axes(value.ndim)).copy(order="C")   # 0-d stays 0-d

    def from_torch(self, value: np.ndarray) -> np.ndarray:
        return np.transpose(value, np.argsort(self.axes(value.ndim)))


AS_IS = Layout("as is", lambda ndim: tuple(range(ndim)))
#: Flax kernels keep the output features last: ``nnx.Linear [in, out]`` and ``nnx.Conv
#: [*window, in/groups, out]`` are torch's ``[out, in]`` and ``[out, in/groups, *window]``.
KERNEL = Layout("kernel", lambda ndim: (ndim - 1, ndim - 2, *range(ndim - 2)))

_AFFINE = {"scale": ("weight", AS_IS), "bias": ("bias", AS_IS)}
#: Flax layer (and jaxseq's BatchNorm) -> {attribute: (torch name, layout)}: every Param /
#: BatchStat such a layer holds, in torch's ``state_dict`` order.
RULES: dict[type, dict[str, tuple[str, Layout]]] = {
    nnx.Linear: {"kernel": ("weight", KERNEL), "bias": ("bias", AS_IS)},
    nnx.Conv: {"kernel": ("weight", KERNEL), "bias": ("bias", AS_IS)},
    nnx.Embed: {"embedding": ("weight", AS_IS)},
    nnx.LayerNorm: _AFFINE,
    nnx.GroupNorm: _AFFINE,
    nnx.BatchNorm: {**_AFFINE, "mean": ("running_mean", AS_IS), "var": ("running_var", AS_IS)},
    BatchNorm: {name: (name, AS_IS) for name in BatchNorm.TORCH_NAMES},     # torch's names, order
    Embedding: {"weight": ("weight", AS_IS)},
}
#: torch keys a Flax layer accepts on load and ignores (state it does not keep).
IGNORED_ON_LOAD: dict[type, tuple[str, ...]] = {nnx.BatchNorm: ("num_batches_tracked",)}
#: The variable kinds that have torch counterparts: parameters and buffers.
TORCH_KINDS = (nnx.Param, nnx.BatchStat)


def _rules_by_name() -> dict[str, tuple[str, Layout]]:
    """``{Flax attribute: (torch name, layout)}`` over :data:`RULES`, for a State without a model.
    Every attribute name means one thing across the table (checked here)."""
    by_name: dict[str, tuple[str, Layout]] = {}
    for rule in RULES.values():
        for attribute, target in rule.items():
            if by_name.setdefault(attribute, target) != target:
                raise AssertionError(f"RULES map {attribute!r} two ways")
    return by_name


BY_NAME = _rules_by_name()


class _Slot(NamedTuple):
    variable: nnx.Variable
    layout: Layout

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return self.layout.torch_shape(tuple(self.variable.shape))


class _Mapping(NamedTuple):
    """Where every torch key of a model lives."""

    slots: dict[str, _Slot]        # {torch key: slot}, in model order
    paths: dict[tuple, str]        # {graph path of a variable (every path of a shared one): key}
    ignored: set[str]              # keys accepted on load and dropped
    modules: dict[tuple, str]      # {graph path of a module walked (every path): torch name}
    before_0_4: dict[str, str]     # {key before 0.4.0 (nnx.Sequential's `layers` kept): key}


def _torch_named(module: nnx.Module) -> Optional[list[str]]:
    """The torch names of a jaxseq layer's or cell's parameters, in torch's order (else None)."""
    return list(module.param_shapes()) if isinstance(module, (RecurrentBase, CellBase)) else None


def _where(path: tuple) -> str:
    return ".".join(map(str, path)) or "the top"


def _children(node: Any) -> list[tuple[tuple, Any]]:
    """``(graph path suffix, child)`` of a module, list or dict. An ``nnx.Sequential``'s
    ``layers`` list is a level of the graph but not of torch's names (see :func:`_mapping`)."""
    if isinstance(node, (list, tuple, nnx.List)):
        return [((i,), child) for i, child in enumerate(node)]
    if isinstance(node, dict):
        return [((name,), child) for name, child in sorted(node.items())]
    if not isinstance(node, nnx.Module):
        return []
    children: list[tuple[tuple, Any]] = []
    for name, child in vars(node).items():
        if isinstance(node, nnx.Sequential) and name == "layers":   # torch's names: 0, 1, ...
            children.extend((("layers", i), layer) for i, layer in enumerate(child))
        else:
            children.append(((name,), child))
    return children


def _mapping(model: nnx.Module) -> _Mapping:
    """The :class:`_Mapping` of every Param / BatchStat reachable from ``model``, in model order.

    A variable's torch key is its graph path, with two changes: a Flax layer's attribute takes its
    torch name (:data:`RULES`), and the ``layers`` level of an ``nnx.Sequential`` is left out, so
    ``model.postnet.layers[3].kernel`` is ``postnet.3.weight``, as in torch's ``nn.Sequential``
    (whose parameterless modules count as indices too: put ``nnx.relu`` or an ``nnx.Dropout`` at
    the same positions). A module's torch name is its path's the same way (``postnet.3``: what
    torch's ``named_modules`` calls it). Before 0.4.0 a key was the graph path with the torch
    attribute name (``postnet.layers.3.weight``): ``before_0_4`` maps those that differ.
    """
    found = _Mapping({}, {}, set(), {}, {})
    seen: dict[int, str] = {}     # id -> torch key (a variable) or name (a module, list, dict)

    def add(variable: Optional[nnx.Variable], path: tuple, names: tuple, suffix: tuple,
            torch_name: str, layout: Layout) -> None:
        """``variable`` (at graph path ``path + suffix``) of the node at ``path`` named ``names``
        is torch's ``torch_name`` there (``None``: a key accepted on load and ignored)."""
        key = ".".join(map(str, names + (torch_name,)))
        before = ".".join(map(str, path + (torch_name,)))     # 0.3: the graph path
        if before != key:
            found.before_0_4[before] = key
        if variable is None:
            found.ignored.add(key)
            return
        seen[id(variable)] = key
        found.slots[key] = _Slot(variable, layout)
        found.paths[path + suffix] = key

    def visit(node: Any, path: tuple, names: tuple) -> None:
        """``path``: the graph path of ``node``; ``names``: its torch name, as parts."""
        shared = id(node) in seen       # shared submodules / variables: first path wins (as torch)
        if not shared:
            seen[id(node)] = ".".join(map(str, names))
        if isinstance(node, nnx.Module):
            found.modules[path] = seen[id(node)]
        if shared:
            return
        torch_names = _torch_named(node) if isinstance(node, nnx.Module) else None
        if torch_names is not None:
            for name in torch_names:
                add(getattr(node, name), path, names, (name,), name, AS_IS)
            return
        rule = RULES.get(type(node))
        for name in IGNORED_ON_LOAD.get(type(node), ()):
            add(None, path, names, (), name, AS_IS)
        children = _children(node)
        if rule is not None:        # a Flax layer's variables in its rule's (torch's) order
            children.sort(key=lambda item: list(rule).index(item[0][-1])
                          if item[0][-1] in rule else -1)
        for suffix, child in children:
            name = suffix[-1]
            if isinstance(child, TORCH_KINDS):
                if id(child) in seen:
                    found.paths[path + suffix] = seen[id(child)]
                    continue
                if rule is not None:
                    if name not in rule:
                        raise TypeError(f"no torch name for {type(child).__name__} {name!r} of "
                                        f"{type(node).__name__} at {_where(path)!r}")
                    torch_name, layout = rule[name]
                    add(child, path, names, suffix, torch_name, layout)
                elif type(node).__module__.startswith("flax.nnx.nn."):   # ConvTranspose...
                    supported = ", ".join(f"nnx.{cls.__name__}" for cls in RULES
                                          if cls.__module__.startswith("flax."))
                    raise TypeError(f"{type(node).__name__} at {_where(path)!r} has no torch "
                                    f"mapping (supported: jaxseq layers and cells, {supported}, "
                                    "custom modules' own Params and BatchStats)")
                else:
                    add(child, path, names, suffix, str(name), AS_IS)
            elif isinstance(child, (nnx.Module, list, tuple, dict)):
                visit(child, path + suffix, names + (name,))

    visit(model, (), ())
    return found


def key_renamer(rename: Optional[Rename]) -> Callable[[str], Optional[str]]:
    """The function ``torch key -> new key or None`` that ``rename=`` stands for (see
    :data:`Rename`): what :func:`load_torch_state_dict` and ``jaxseq.parity.compare_models`` apply
    to every torch key (after ``prefix``) before matching it with the model's keys, ``None``
    dropping the key. Use it to see where a key goes, or to rename a state_dict (or a dict of torch
    gradients) the same way.

    Args:
      rename: ``None`` (keys unchanged); a callable (returned as it is); or ``(pattern,
        replacement)`` pairs, a mapping or a sequence, applied in order: each pattern that matches
        (``re.search``) rewrites the key with ``re.sub`` (``\\1`` groups allowed), a ``None``
        replacement drops it.

    Returns:
      ``renamer(key) -> str | None``.

    Raises:
      TypeError: ``rename`` is none of these (a string, pairs that are not ``(str, str | None)``).
      re.error: a pattern that is not a regular expression.

    >>> awd = key_renamer([(r"\\.module\\.", "."), (r"_raw$", ""), (r"^decoder\\.weight$", None)])
    >>> awd("rnns.0.module.weight_hh_l0_raw"), awd("decoder.weight"), awd("decoder.bias")
    ('rnns.0.weight_hh_l0', None, 'decoder.bias')
    >>> key_renamer({r"^encoder\\.": "enc."})("encoder.conv.0.weight")
    'enc.conv.0.weight'
    """
    if rename is None:
        return lambda key: key
    if callable(rename):
        return rename
    items = list(rename.items() if isinstance(rename, Mapping) else
                 () if isinstance(rename, (str, bytes)) else rename)
    if isinstance(rename, (str, bytes)) or not all(
            isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
            and (item[1] is None or isinstance(item[1], str)) for item in items):
        raise TypeError(f"rename must be a callable, a mapping {{pattern: replacement or None}} or "
                        f"(pattern, replacement) pairs, got {rename!r}")
    pairs = [(re.compile(p), r) for p, r in items]

    def apply(key: str) -> Optional[str]:
        for pattern, replacement in pairs:
            if pattern.search(key):
                if replacement is None:
                    return None
                key = pattern.sub(replacement, key)
        return key

    return apply


def _key_mapper(prefix: str, rename: Optional[Rename]) -> Callable[[str], Optional[str]]:
    """``torch key -> model key or None``, as :func:`load_torch_state_dict` reads a key:
    ``prefix`` stripped (``None`` outside it), then ``rename`` (:func:`key_renamer`)."""
    renamer = key_renamer(rename)
    return lambda key: renamer(key[len(prefix):]) if key.startswith(prefix) else None


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16: widen exactly
            value = value.float()
        value = value.numpy()
    # A private copy: jnp.asarray may alias host memory, and the caller's tensor may later be
    # updated in place (optimizer.step()), which must not reach the jaxseq module.
    return np.array(value, copy=True)


def _check_kind(key: str, value: np.ndarray, variable: nnx.Variable) -> None:
    """A floating variable takes floating values, an integer one (a counter) integer values."""
    integer = jnp.issubdtype(variable.dtype, jnp.integer)
    if integer and not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"state_dict[{key!r}] must have an integer dtype (a counter such as "
                        f"num_batches_tracked), got {value.dtype.name}")
    if not integer and not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"state_dict[{key!r}] must have a floating dtype, got {value.dtype.name} "
                        "(only integer counters such as num_batches_tracked may be integer)")


def _unindexed(key: str) -> str:
    return ".".join("#" if part.isdigit() else part for part in key.split("."))


def _one_level_apart(a: str, b: str) -> bool:
    """``b`` is ``a`` with one more dotted level (``layers.0.weight`` vs ``0.weight``)."""
    short, long = a.split("."), b.split(".")
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short
                                               for i in range(len(long)))


def _near_misses(expected: Collection[str], given: Collection[str]) -> str:
    """A hint pairing the state_dict's unexpected keys with the model's missing ones when they
    differ only in list indices (torch's ``nn.Sequential`` counts its parameterless modules) or
    by one level (an ``nnx.Sequential``'s ``layers``, a wrapper module); empty when none do."""
    expected_set, given_set = set(expected), set(given)
    missing = [k for k in expected if k not in given_set]
    unexpected = [k for k in given if k not in expected_set]
    pairs, why = [], {}
    for wrong in unexpected:
        for right in missing:
            if _unindexed(right) == _unindexed(wrong):
                why["index"] = ("torch's nn.Sequential counts its parameterless modules (nn.ReLU, "
                                "nn.Dropout...) as indices: put callables (nnx.relu, "
                                "nnx.Dropout...) at the same positions of the nnx.Sequential")
            elif _one_level_apart(right, wrong) or _one_level_apart(wrong, right):
                why["level"] = ("one level apart: an nnx.Sequential is torch's nn.Sequential "
                                "(its 'layers' level is not in the keys), an nnx.List named "
                                "'layers' is not; or map the keys with rename=")
            else:
                continue
            missing.remove(right)
            pairs.append(f"{wrong!r} -> {right!r}")
            break
    if not pairs:
        return ""
    shown = ", ".join(pairs[:4]) + (", ..." if len(pairs) > 4 else "")
    return f"near misses (state_dict key -> model key): {shown} ({'; '.join(why.values())})"


#: The release in which the keys jaxseq gave an ``nnx.Sequential`` before 0.4.0 stop loading.
OLD_SEQUENTIAL_KEYS_UNTIL = "0.5.0"


def _upgraded(given: dict[str, Any], found: _Mapping) -> dict[str, Any]:
    """``given`` with the keys jaxseq gave an ``nnx.Sequential``'s variables before 0.4.0
    (``postnet.layers.0.weight``) renamed to torch's (``postnet.0.weight``), with a
    ``FutureWarning``, when that makes the keys exactly the model's; else ``given`` as it is (the
    key check then raises and pairs the near misses): nothing is guessed."""
    old = [k for k in given if k in found.before_0_4 and k not in found.slots]
    if not old:
        return given
    upgraded = {found.before_0_4.get(k, k): v for k, v in given.items()}
    if len(upgraded) != len(given) or set(upgraded) - found.ignored != set(found.slots):
        return given
    warnings.warn(
        f"load_torch_state_dict: {len(old)} key(s) in the form jaxseq gave an nnx.Sequential "
        f"before 0.4.0 ({old[0]!r}), loaded as torch nn.Sequential's keys "
        f"({found.before_0_4[old[0]]!r}), which an nnx.Sequential has since 0.4.0. The old form "
        f"stops loading in jaxseq {OLD_SEQUENTIAL_KEYS_UNTIL}. Migration: save the state_dict "
        "again with jaxseq.torch_state_dict(model) after this load (a torch model that keeps "
        "these layers in an nn.ModuleList named 'layers': hold them in an nnx.List attribute "
        "named 'layers' in the port)", FutureWarning, stacklevel=3)
    return upgraded


def _described(model: nnx.Module) -> str:
    if isinstance(model, RecurrentBase):
        return describe(model.structure)
    if isinstance(model, (CellBase, BatchNorm, Embedding)):
        return repr(model)
    return f"the {type(model).__name__} model"


def _value(variable: nnx.Variable) -> Any:
    """A variable's value (Flax >= 0.12 ``get_value``; ``.value`` before, which 0.12 deprecates)."""
    get = getattr(variable, "get_value", None)
    return get() if get is not None else variable.value


def _abstract(variable: nnx.Variable) -> bool:
    """The variable holds a ``jax.ShapeDtypeStruct``: built under ``nnx.eval_shape``."""
    return isinstance(_value(variable), jax.ShapeDtypeStruct)


def _write(variable: nnx.Variable, value: jax.Array) -> None:
    """Fill ``variable`` with ``value`` (checked: its shape and dtype), abstract or not."""
    if not _abstract(variable):
        variable[...] = value
    elif hasattr(variable, "set_value"):        # Flax >= 0.12
        variable.set_value(value)
    else:
        variable.value = value


def _check_filled(module: nnx.Module, found: _Mapping) -> None:
    """Raise if ``module`` holds abstract variables (``nnx.eval_shape``) that no torch key fills:
    RNG streams (their seed did not survive ``eval_shape``) and variables without torch keys."""
    filled = {id(slot.variable) for slot in found.slots.values()}
    streams: dict[str, dict[str, None]] = {}          # {tag: {stream path: None}}
    others = []
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Variable) or id(node) in filled or not _abstract(node):
            continue
        if isinstance(node, nnx.RngState):
            streams.setdefault(str(getattr(node, "tag", "?")), {})[_where(tuple(path[:-1]))] = None
        else:
            value = _value(node)
            others.append(f"{_where(tuple(path))} ({type(node).__name__} "
                          f"{list(value.shape)} {np.dtype(value.dtype).name})")
    if not streams and not others:
        return
    problems = []
    if streams:
        listed = "; ".join(f"{tag!r}: {', '.join(list(paths)[:3])}"
                           + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
                           for tag, paths in streams.items())
        seeds = ", ".join(f"{tag}=SEED" for tag in streams)
        problems.append(f"RNG streams without a key ({listed}): nnx.eval_shape does not keep the "
                        f"seed and a state_dict holds none; give them keys first with "
                        f"nnx.reseed(model, {seeds}).")
    if others:
        problems.append(f"Variables without a torch key: {', '.join(others)}; build the model "
                        "without nnx.eval_shape, or set them first (variable.set_value(...)).")
    raise ValueError("load_torch_state_dict: the model was built with nnx.eval_shape and the "
                     "state_dict does not fill all its variables. " + " ".join(problems)
                     + " Nothing was written.")


def load_torch_state_dict(module: nnx.Module, state_dict: Mapping[str, Any], *,
                          prefix: str = "", rename: Optional[Rename] = None) -> nnx.Module:
    """Copy a torch ``state_dict`` (parameters and buffers) into ``module`` in place; return it.

    ``module`` may be built with ``nnx.eval_shape`` (shapes and dtypes only, no random
    initialisation to overwrite): its abstract variables (``jax.ShapeDtypeStruct`` values) are
    filled with the loaded arrays, checked and cast to their dtype as concrete ones are. An
    abstract variable that no key fills raises: an RNG stream (``nnx.eval_shape`` keeps no key;
    call ``nnx.reseed(model, dropout=SEED)`` for each stream first) or a variable without a torch
    key (an ``nnx.Cache``...).

    Args:
      module: a jaxseq layer (:class:`jaxseq.LSTM` / ``GRU`` / ``RNN``), cell
        (:class:`jaxseq.LSTMCell` / ...), :class:`jaxseq.BatchNorm` or :class:`jaxseq.Embedding`,
        or any NNX model built from them, ``nnx.Linear``, ``nnx.Conv``, ``nnx.Embed``,
        ``nnx.LayerNorm``, ``nnx.GroupNorm``, ``nnx.BatchNorm``, ``nnx.Sequential`` (torch's
        ``nn.Sequential`` keys) and custom modules (keys as in the module docs).
      state_dict: ``{torch key: tensor or array}``, e.g. ``torch_model.state_dict()``.
      prefix: read only keys starting with ``prefix`` (e.g. ``"encoder.lstm."`` for a submodule of a
        larger torch model), with the prefix stripped; other keys are ignored.
      rename: maps torch keys (after ``prefix``) to jaxseq keys, or drops them (see :data:`Rename`):
        e.g. ``[(r"\\.module\\.", "."), (r"_raw$", "")]`` for AWD-LSTM's ``WeightDrop`` names,
        ``{r"^decoder\\.weight$": None}`` for a decoder tied to the embedding.

    Raises:
      ValueError: keys on either side without a counterpart (all of them listed, with shapes, and
        the pairs that differ only in list indices or by one level named together), a shape
        mismatch (naming the key and both shapes, in torch's layout), or abstract variables
        (``nnx.eval_shape``) that the state_dict does not fill (named, with the fix).
      TypeError: ``state_dict`` is not a mapping, a value's dtype does not fit its variable
        (an integer tensor for a parameter or a floating buffer, a floating one for a counter), or
        a Flax layer of the model has no torch mapping.

    Warns:
      FutureWarning: the keys are those jaxseq gave an ``nnx.Sequential`` before 0.4.0
        (``postnet.layers.0.weight``, now ``postnet.0.weight``) and are loaded as such; only when
        that makes every key the model's. The old form stops loading in 0.5.0.

    Nothing is written unless every entry checks out. ``num_batches_tracked`` of an
    ``nnx.BatchNorm`` (which has no counter) is accepted and ignored.

    >>> import numpy as np
    >>> from flax import nnx
    >>> from jaxseq import GRU
    >>> gru = GRU(2, 3, rngs=nnx.Rngs(0))
    >>> sd = {k: np.zeros_like(v) for k, v in torch_state_dict(gru).items()}
    >>> float(load_torch_state_dict(gru, sd).weight_hh_l0[...].sum())
    0.0
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be an NNX module (a jaxseq layer or cell, or a model built "
                        f"from them), got {type(module).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping {{torch name: tensor}}, got "
                        f"{type(state_dict).__name__}")
    found = _mapping(module)
    model_key = _key_mapper(prefix, rename)
    given: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = model_key(key)
        if new is not None:
            given[new] = value
    arrays = {key: _to_numpy(value) for key, value in _upgraded(given, found).items()
              if key not in found.ignored}
    for key, array in arrays.items():
        if key in found.slots:
            _check_kind(prefix + key, array, found.slots[key].variable)
    what = f"state_dict{f' (prefix {prefix!r})' if prefix else ''}"
    check_shapes({k: s.torch_shape for k, s in found.slots.items()},
                 {k: a.shape for k, a in arrays.items()}, what, _described(module),
                 _near_misses(found.slots, arrays))
    _check_filled(module, found)
    for key, slot in found.slots.items():
        _write(slot.variable, jnp.asarray(slot.layout.from_torch(arrays[key]),
                                          dtype=slot.variable.dtype))
    return module


def _exported(value: Any, layout: Layout) -> np.ndarray:
    array = np.array(value[...] if isinstance(value, nnx.Variable) else value)
    if jnp.issubdtype(array.dtype, jnp.integer):
        array = array.astype(np.int64)      # torch's counters are int64 (jax: int32 without x64)
    return layout.to_torch(array)


def _state_entries(state: nnx.State, like: Optional[nnx.Module]
                   ) -> list[tuple[str, Any, Layout]]:
    """``(torch key, leaf, layout)`` for every leaf of ``state`` but RNG state."""
    leaves = [(tuple(path), leaf) for path, leaf in nnx.to_flat_state(state)
              if not isinstance(leaf, nnx.RngState)]
    if like is None:
        entries = []
        for path, leaf in leaves:
            torch_name, layout = BY_NAME.get(str(path[-1]), (str(path[-1]), AS_IS))
            entries.append((".".join(map(str, path[:-1] + (torch_name,))), leaf, layout))
        keys = [key for key, _, _ in entries]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"the State's paths map to the torch keys {twice} more than once (a "
                             "custom module's own variable named like a Flax layer's?): pass "
                             "like=model for the exact map")
        return entries
    if not isinstance(like, nnx.Module):
        raise TypeError(f"like must be the NNX model the State mirrors, got {type(like).__name__}")
    found = _mapping(like)
    by_key: dict[str, tuple[Any, Layout]] = {}
    for path, leaf in leaves:
        if path not in found.paths:
            raise ValueError(f"State path {_where(path)!r} is not a parameter or buffer of "
                             f"{_described(like)} (like=)")
        key = found.paths[path]
        slot = found.slots[key]
        if tuple(np.shape(leaf)) != tuple(slot.variable.shape):
            raise ValueError(f"State path {_where(path)!r} ({key!r}): expected shape "
                             f"{tuple(slot.variable.shape)}, got {tuple(np.shape(leaf))}")
        by_key[key] = (leaf, slot.layout)
    return [(key, *by_key[key]) for key in found.slots if key in by_key]


def torch_state_dict(module_or_state: Union[nnx.Module, nnx.State], *,
                     like: Optional[nnx.Module] = None) -> dict[str, np.ndarray]:
    """``{torch key: numpy array}``: the reverse of :func:`load_torch_state_dict` (same keys and
    layouts), for a model's parameters and buffers, or for an ``nnx.State`` that mirrors a model.

    Args:
      module_or_state: an NNX model (every Param and BatchStat is exported), or an ``nnx.State``
        whose paths are the model's: gradients from ``nnx.grad(loss)(model)``, optimizer moments
        such as ``optimizer.opt_state[0].mu`` of ``nnx.Optimizer(model, optax.adam(...))``, or
        ``nnx.state(model, ...)``. RNG state in it is skipped.
      like: for a State, the model it mirrors: keys, layouts and torch order then come from the
        model exactly. Without it, keys come from the State's paths: a leaf named like a Flax
        layer's attribute in :data:`RULES` (``kernel``, ``embedding``, ``scale``, ``mean``,
        ``var``) is renamed and re-laid-out as that layer's (``kernel`` transposed to torch's
        ``weight``), every other leaf keeps its name. That is exact for models of jaxseq layers,
        Flax layers and custom modules whose own variables have other names; give ``like`` when a
        custom module's own variable is called ``kernel``, ``scale``..., and for an
        ``nnx.Sequential`` (without ``like`` its ``layers`` level stays: ``layers.0.weight``).

    Returns:
      Writable copies (``torch.from_numpy`` accepts them without a warning, and writing to them
      does not touch the module), floating arrays in their own dtype, integer counters as
      ``int64``. For a module, and for a State with ``like``, each layer's keys come in torch's
      ``state_dict`` order, submodules in attribute order (which NNX transforms re-sort
      alphabetically: compare a whole model's keys as sets); for a State alone, in the State's
      (sorted) order.

    Raises:
      TypeError: not an NNX module or State; a Flax layer without a torch mapping.
      ValueError: (State) two leaves map to one key without ``like``; with ``like``, a path that is
        not a variable of ``like`` or a leaf whose shape differs from it.

    Load the result into torch with
    ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`` (for bfloat16,
    convert with ``torch.from_numpy(v.astype(np.float32)).bfloat16()``); a tied torch weight (e.g.
    a decoder sharing the embedding) is one parameter here, so add its second key before a strict
    load.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxseq import LSTM
    >>> sorted(torch_state_dict(LSTM(2, 3, bias=False, rngs=nnx.Rngs(0))))
    ['weight_hh_l0', 'weight_ih_l0']
    >>> head = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> grads = nnx.grad(lambda m: m(jnp.ones((4, 3))).sum())(head)
    >>> {k: v.shape for k, v in torch_state_dict(grads).items()}      # torch's [out, in]
    {'bias': (2,), 'weight': (2, 3)}
    """
    if isinstance(module_or_state, nnx.State):
        return {key: _exported(leaf, layout)
                for key, leaf, layout in _state_entries(module_or_state, like)}
    if not isinstance(module_or_state, nnx.Module):
        raise TypeError(f"module_or_state must be an NNX module or an nnx.State, got "
                        f"{type(module_or_state).__name__}")
    if like is not None:
        raise TypeError("like= is for an nnx.State; a module is its own map")
    return {key: _exported(slot.variable, slot.layout)
            for key, slot in _mapping(module_or_state).slots.items()}
