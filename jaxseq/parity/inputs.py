"""The batch of :func:`jaxseq.parity.compare_models`: its leaves named by key path, cast to the
compared dtype (or kept), and handed to each side. Needs numpy and JAX only.

A leaf's name is its key path in the batch, parts joined by ``/`` (``inputs``, ``targets/mel``,
``pair/0``). Floating arrays are cast to the compared dtype unless their top-level key is in
``keep_dtype``; every floating array (cast or kept) is differentiated on both sides (entries of
kind ``"input_grad"``). Integer and boolean arrays pass as they are; Python numbers become arrays
on the JAX side (traced under ``jit``, as with ``jax.jit``) and stay numbers for torch; any other
leaf (a string...) is given to both sides as it is (a static value under ``jit``).
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np


def key_name(path: tuple) -> str:
    """``targets/mel`` for the key path of ``batch["targets"]["mel"]``."""
    parts = []
    for key in path:
        for attribute in ("key", "idx", "name"):       # DictKey, SequenceKey, GetAttrKey
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One leaf of the batch.

    Attributes:
      name: its key path (see the module docs).
      value: a numpy array (cast or kept), or the leaf as given when it is not an array.
      floating: a floating array: differentiated on both sides.
      number: a Python number (an array on the JAX side only).
    """

    name: str
    value: Any
    floating: bool
    number: bool = False


@dataclasses.dataclass(frozen=True)
class Batch:
    """The batch as leaves: ``treedef`` rebuilds it; ``cast`` and ``kept`` say what happened to
    the floating arrays (``(name, original dtype)``)."""

    treedef: Any
    leaves: tuple[Leaf, ...]
    cast: tuple[tuple[str, str], ...]
    kept: tuple[tuple[str, str], ...]

    def rebuild(self, values: Iterable[Any]) -> Any:
        return jax.tree.unflatten(self.treedef, list(values))

    @property
    def floating(self) -> list[Leaf]:
        return [leaf for leaf in self.leaves if leaf.floating]

    def notes(self, dtype: str) -> list[str]:
        """The report's lines about the inputs."""
        notes = []
        if self.cast:
            notes.append(f"inputs cast to {dtype}: "
                         + ", ".join(f"{n} (was {d})" for n, d in self.cast))
        if self.kept:
            notes.append("inputs kept in their own dtype (keep_dtype): "
                         + ", ".join(f"{n} ({d})" for n, d in self.kept))
        return notes


def prepare(batch: Any, np_dtype: Any, keep_dtype: Iterable[str], is_torch: Any) -> Batch:
    """:class:`Batch` of ``batch`` with floating arrays cast to ``np_dtype`` except under the
    top-level keys ``keep_dtype``; ``is_torch(leaf)`` says whether a leaf is a torch tensor
    (refused: the batch is given to both sides).

    Raises:
      TypeError: a torch tensor leaf; ``keep_dtype`` given for a batch that is not a mapping.
      ValueError: a ``keep_dtype`` key that is not a top-level key of the batch.
    """
    keep = set(keep_dtype)
    if isinstance(keep_dtype, str):
        raise TypeError(f"keep_dtype must be a collection of batch keys, got the string "
                        f"{keep_dtype!r} (write keep_dtype=({keep_dtype!r},))")
    if keep:
        if not isinstance(batch, Mapping):
            raise TypeError(f"keep_dtype names top-level batch keys, but the batch is a "
                            f"{type(batch).__name__}, not a mapping")
        unknown = sorted(map(str, keep - set(batch)))
        if unknown:
            raise ValueError(f"keep_dtype names {unknown}, which are not keys of the batch "
                             f"(keys: {sorted(map(str, batch))})")
    flat, treedef = jax.tree_util.tree_flatten_with_path(batch)
    leaves, cast, kept = [], [], []
    for path, value in flat:
        name = key_name(path)
        if is_torch(value):
            raise TypeError(f"batch leaves must be numpy arrays (given to both sides), got a "
                            f"torch.Tensor at {name!r}")
        if isinstance(value, (bool, numbers.Number)) and not isinstance(value, np.generic):
            leaves.append(Leaf(name, value, False, number=True))
            continue
        if not isinstance(value, (np.ndarray, np.generic, jax.Array)):
            leaves.append(Leaf(name, value, False))
            continue
        array = np.array(value, copy=True)
        floating = bool(np.issubdtype(array.dtype, np.floating))
        top = getattr(path[0], "key", None) if path else None
        if floating and top in keep:
            kept.append((name, array.dtype.name))
        elif floating and array.dtype != np.dtype(np_dtype):
            cast.append((name, array.dtype.name))
            array = array.astype(np_dtype)
        leaves.append(Leaf(name, array, floating))
    return Batch(treedef, tuple(leaves), tuple(cast), tuple(kept))

