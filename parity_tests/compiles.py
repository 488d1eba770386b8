"""Count XLA compilations: the regression check for eager (un-jitted) calls that recompile.

>>> with count_compiles() as compiles:
...     run_twice()
>>> assert compiles.count == 1, compiles.names
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from jax import monitoring

#: Recorded by JAX once per backend (XLA) compilation, with the compiled function's name.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass
class Compiles:
    """What :func:`count_compiles` saw: the names of the functions XLA compiled, in order."""

    names: list[str] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.names)


@contextlib.contextmanager
def count_compiles() -> Iterator[Compiles]:
    """Record every XLA compilation in the ``with`` block (cache hits are not compilations)."""
    seen = Compiles()

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            seen.names.append(str(kwargs.get("fun_name", "?")))

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        monitoring.unregister_event_duration_listener(listener)
