"""Attributes replaced for the duration of a ``with`` block and restored afterwards: how
:mod:`jaxseq.parity` sees into a run without changing the user's code (torch's dropout functions
and RNN ``forward``\\ s, the ``__call__`` of the port's module classes, ``jax.random.bernoulli``,
torch's TF32 switches)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

_MISSING = object()


@contextlib.contextmanager
def patched(patches: Sequence[tuple[Any, str, Any]]) -> Iterator[None]:
    """``setattr(owner, name, value)`` for every ``(owner, name, value)`` of ``patches``, in order,
    for the block; afterwards (also on an error) every attribute is what it was, restored in
    reverse order. An attribute a class inherited is deleted from it again (so that it inherits
    it again), not frozen as the class's own."""
    saved = [(owner, name, owner.__dict__.get(name, _MISSING) if isinstance(owner, type)
              else getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
