"""The hook point through which a tool observes a jaxseq computation while it is traced.

``jaxseq.parity.compare_models`` uses it for its per-module capture (``modules=True``) and its
dropout replay (``dropout="replay"``); nothing here imports torch, and nothing happens unless an
:class:`Observer` is installed with :func:`observing` (then only while JAX traces).

jaxseq calls the hooks at three places:

* its decoding loops (:func:`jaxseq.teacher_forcing`, :func:`jaxseq.greedy_decode`,
  :func:`jaxseq.beam_search`, through :func:`jaxseq.loop.scan_steps`) ask every observer for a
  :class:`LoopScope` before their ``lax.scan``: a scope may feed per-step inputs to the scan
  (``inputs``, leading axis ``length``: e.g. one replayed dropout mask per step), is active while
  the step is traced (:meth:`LoopScope.step`), may return per-step outputs (stacked by the scan:
  e.g. the outputs of the modules the step called) and sees them after the loop
  (:meth:`LoopScope.finish`). To decide, an observer may trace one step abstractly
  (``probe()``, a ``jax.eval_shape``; :func:`probing` is true meanwhile);
* the same loops rebuild a step's modules from their carried state at every step
  (:func:`jaxseq.loop.scan_steps`) and say so (:meth:`Observer.rebuilt`), so that an observer
  that knows the original modules knows the copies;
* jaxseq's dropouts draw their keep masks from ``jax.random.bernoulli`` outside any compiled
  helper while an observer is installed (:func:`active`), so an observer that wraps
  ``jax.random.bernoulli`` sees every draw.

A ``lax.scan`` the user writes is not a jaxseq loop: observers cannot reach into its body (a
value traced there cannot leave it). Run such a loop with ``jaxseq.teacher_forcing(step, carry,
xs, batch_first=False)``, which is ``lax.scan(step, carry, xs)`` with the hooks.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional


class LoopScope:
    """One observer's part in one decoding loop (see the module docs); the base does nothing."""

    #: Per-step inputs: a pytree of arrays with leading axis ``length`` (``None``: none).
    inputs: Any = None

    @contextlib.contextmanager
    def step(self, inputs_t: Any) -> Iterator[None]:
        """Active while one step is traced inside the scan; ``inputs_t`` is ``inputs[t]``."""
        yield

    def step_outputs(self) -> Any:
        """Called inside :meth:`step` after the step ran: a pytree of per-step values."""
        return None

    def finish(self, outputs: Any) -> None:
        """After the scan: :meth:`step_outputs` stacked over the ``length`` steps."""


class Observer:
    """Base class of observers: the hooks of a tool (``jaxseq.parity``); the base does nothing."""

    def loop(self, length: int, probe: Callable[[], Any]) -> Optional[LoopScope]:
        """A decoding loop of ``length`` steps starts: its :class:`LoopScope`, or ``None``.
        ``probe()`` traces one step abstractly (with :func:`probing` true)."""
        return None

    def rebuilt(self, original: Any, copy: Any) -> None:
        """``copy`` (an NNX graph: modules, lists...) was rebuilt from ``original``'s state:
        the same structure, node for node (``nnx.iter_graph`` order)."""


_OBSERVERS: contextvars.ContextVar[tuple[Observer, ...]] = contextvars.ContextVar(
    "jaxseq_observers", default=())
_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxseq_probing", default=False)


@contextlib.contextmanager
def observing(*observers: Observer) -> Iterator[None]:
    """Install ``observers`` (after any already installed) for the ``with`` block."""
    token = _OBSERVERS.set(_OBSERVERS.get() + observers)
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def active() -> bool:
    """Whether an observer is installed."""
    return bool(_OBSERVERS.get())


def rebuilt(original: Any, copy: Any) -> None:
    """Tell every observer that ``copy`` was rebuilt from ``original`` (see
    :meth:`Observer.rebuilt`)."""
    for observer in _OBSERVERS.get():
        observer.rebuilt(original, copy)


def probing() -> bool:
    """Whether a loop's ``probe()`` (an abstract trace of one step) is running."""
    return _PROBING.get()


class Loop:
    """The scopes of every installed observer for one decoding loop (used by
    :func:`jaxseq.loop.scan_steps`)."""

    def __init__(self, length: int, probe: Callable[[], Any]):
        def probe_once() -> Any:
            token = _PROBING.set(True)
            try:
                return probe()
            finally:
                _PROBING.reset(token)

        found = [o.loop(length, probe_once) for o in _OBSERVERS.get()]
        self.scopes: Sequence[LoopScope] = [s for s in found if s is not None]

    @property
    def inputs(self) -> Any:
        """Every scope's per-step inputs (a tuple; empty when nothing observes)."""
        return tuple(s.inputs for s in self.scopes)

    def run_step(self, inputs_t: Any, fn: Callable[[], Any]) -> tuple[Any, Any]:
        """``(fn(), per-step outputs)`` with every scope's :meth:`LoopScope.step` active."""
        with contextlib.ExitStack() as stack:
            for scope, x in zip(self.scopes, inputs_t):
                stack.enter_context(scope.step(x))
            result = fn()
            outputs = tuple(s.step_outputs() for s in self.scopes)
        return result, outputs

    def finish(self, outputs: Any) -> None:
        for scope, y in zip(self.scopes, outputs):
            scope.finish(y)
