"""The ``lax.scan`` under jaxseq's decoding loops: a step whose NNX modules keep state across steps.

:func:`jaxseq.teacher_forcing`, :func:`jaxseq.greedy_decode` and :func:`jaxseq.beam_search` run
a user's step with :func:`scan_steps`. The step may be

* a function of ``(carry, x)`` that only *reads* NNX modules it reaches through a closure
  (parameters): the modules' values enter the scan as constants;
* an ``nnx.Module`` (its ``__call__``) or a bound method of one (``model.decoder_step``);
* a function ``step(modules, carry, x)`` with ``modules=`` given (any NNX graph node: a module, a
  list or dict of modules).

In the last two forms the modules' state other than their ``nnx.Param``\\ s (the RNG streams an
``nnx.Dropout`` or a jaxseq dropout draws from, batch statistics...) is carried through the scan:
at each step the modules are rebuilt from the carried state (``nnx.merge``), the step runs on
them, and their new state (``nnx.split``) is carried to the next step; after the loop the given
modules hold the final state (``nnx.update``). A stream drawn once per step therefore gives the
keys an unrolled Python loop would (``fold_in`` of its key with counts ``n, n + 1, ...``), and the
results equal that loop's. Parameters are read, not carried (the same ``nnx.Param`` objects at
every step): a step that assigns one raises.

A function that *changes* module state through a closure cannot be carried (the scan traces the
step at a new level, where NNX refuses the write): :func:`scan_steps` raises a ``ValueError``
naming the two forms above instead of Flax's ``TraceContextError``.

Observers installed with :func:`jaxseq.hooks.observing` take part in every step
(:class:`jaxseq.hooks.Loop`).
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Optional

import jax
from flax import errors as flax_errors
from flax import nnx
from jax import lax

from jaxseq import hooks

#: ``body(call, loop_carry, x) -> (loop_carry, y)``: a loop's scan body around the user's step,
#: which it runs as ``call(carry, x)``.
Body = Callable[[Callable[[Any, Any], Any], Any, Any], tuple[Any, Any]]


def bind_step(step: Callable, modules: Any, who: str) -> tuple[Callable[[Any, Any, Any], Any], Any]:
    """``(call(modules, carry, x), modules)`` for the three forms of the module docs; ``modules``
    is ``None`` for a plain function (nothing carried)."""
    if modules is not None:
        if not callable(step):
            raise TypeError(f"{who}: step must be callable, got {type(step).__name__}")
        return step, modules
    if isinstance(step, nnx.Module):
        if not callable(step):
            raise TypeError(f"{who}: the module {type(step).__name__} given as step has no __call__")
        return (lambda m, carry, x: m(carry, x)), step
    if inspect.ismethod(step) and isinstance(step.__self__, nnx.Module):
        func = step.__func__
        return (lambda m, carry, x: func(m, carry, x)), step.__self__
    if not callable(step):
        raise TypeError(f"{who}: step must be callable, got {type(step).__name__}")
    return (lambda _, carry, x: step(carry, x)), None


def _split(modules: Any) -> tuple[Any, Any, Any]:
    """``(graphdef, parameters, the rest of the state)`` of ``modules``."""
    graphdef, params, state = nnx.split(modules, nnx.Param, ...)  # type: ignore[misc]
    return graphdef, params, state


class _Carried:
    """The modules of a step split into their graph, their parameters (read as constants) and the
    rest of their state (carried)."""

    def __init__(self, modules: Any, who: str):
        self.modules, self.who = modules, who
        self.graphdef: Any = None
        self.params: Any = None
        self.state: Any = None
        if modules is not None:
            self.graphdef, self.params, self.state = _split(modules)

    def run(self, call: Callable[[Any, Any, Any], Any], state: Any, fn: Callable) -> tuple[Any, Any]:
        """``(fn(step_call), new state)``, ``step_call(carry, x)`` running the step on the
        modules rebuilt from ``state``."""
        if self.modules is None:
            return fn(lambda carry, x: call(None, carry, x)), None
        modules = nnx.merge(self.graphdef, self.params, state)
        hooks.rebuilt(self.modules, modules)
        result = fn(lambda carry, x: call(modules, carry, x))
        graphdef, _, new_state = _split(modules)
        if graphdef != self.graphdef:
            raise ValueError(f"{self.who}: the step changed the structure of its modules (a new "
                             "attribute, a sown value...); a scanned step may only update the "
                             "values of existing variables")
        return result, new_state

    def update(self, state: Any) -> None:
        if self.modules is not None:
            nnx.update(self.modules, state)


def _call_step(call: Callable[[Any, Any], Any], carry: Any, x: Any) -> tuple[Any, Any]:
    return call(carry, x)


def _first(xs: Any) -> Any:
    """The abstract value of one step's slice of ``xs`` (leading axis removed)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)


def scan_steps(body: Optional[Body], step: Callable, carry: Any, xs: Any, *,
               length: Optional[int] = None, modules: Any = None,
               who: str = "scan_steps") -> tuple[Any, Any]:
    """``lax.scan`` of ``body`` over ``xs`` (leading axis) with the user's ``step`` bound as the
    module docs describe: returns ``(final loop carry, stacked ys)``.

    A plain function with no observer installed runs as ``lax.scan(step, carry, xs)`` itself when
    ``body`` is ``None`` (so eager calls with the same step reuse the compiled scan).

    Args:
      body: ``body(call, loop_carry, x) -> (loop_carry, y)``; ``call(carry, x)`` runs the step;
        ``None``: the step is the body.
      step: the user's step (a function, an ``nnx.Module``, a bound method, or with ``modules``
        a function of ``(modules, carry, x)``).
      carry: the initial loop carry.
      xs: per-step inputs (a pytree with leading axis ``length``) or ``None``.
      length: the number of steps (needed when ``xs`` is ``None``).
      modules: the modules a ``step(modules, carry, x)`` runs on.
      who: the caller's name, for errors.

    Raises:
      ValueError: the step changes module state through a closure, assigns a parameter or
        changes its modules' structure.
    """
    call, bound = bind_step(step, modules, who)
    with _explained(who, bound):
        if body is None and bound is None and not hooks.active():
            return lax.scan(step, carry, xs, length=length)
        return _scan_carried(body or _call_step, call, bound, carry, xs, length, who)


@contextlib.contextmanager
def _explained(who: str, bound: Any) -> Iterator[None]:
    """Flax's ``TraceContextError`` from a step, as a ``ValueError`` naming the fix."""
    try:
        yield
    except flax_errors.TraceContextError as error:
        if bound is not None and "mutate Param " in str(error):
            raise ValueError(f"{who}: the step assigns an nnx.Param; parameters are read, not "
                             "carried, inside a decoding loop") from error
        raise ValueError(
            f"{who}: the step changes the state of an NNX module it reaches through a closure "
            "(an RNG stream an nnx.Dropout or a jaxseq dropout draws from, batch statistics...), "
            "which lax.scan cannot carry. Pass the module so that its state is carried: "
            f"{who}(module, ...) (its __call__), {who}(module.method, ...), or "
            f"{who}(fn, ..., modules=module) with fn(module, carry, x)") from error


def _scan_carried(body: Body, call: Callable[[Any, Any, Any], Any], bound: Any, carry: Any,
                  xs: Any, length: Optional[int], who: str) -> tuple[Any, Any]:
    """:func:`scan_steps` with the modules' state carried and the observers' hooks."""
    carried = _Carried(bound, who)
    steps = length if length is not None else jax.tree.leaves(xs)[0].shape[0]

    def probe() -> Any:
        return jax.eval_shape(lambda s, c, x: carried.run(call, s, lambda run: body(run, c, x)),
                              carried.state, carry, _first(xs))

    loop = hooks.Loop(steps, probe)

    def scan_body(loop_carry: tuple[Any, Any], inputs: tuple[Any, Any]) -> tuple[Any, Any]:
        (c, state), (x, observed) = loop_carry, inputs
        ((c, y), state), outputs = loop.run_step(
            observed, lambda: carried.run(call, state, lambda run: body(run, c, x)))
        return (c, state), (y, outputs)

    (carry, state), (ys, observed) = lax.scan(scan_body, (carry, carried.state),
                                              (xs, loop.inputs), length=length)
    carried.update(state)
    loop.finish(observed)
    return carry, ys


def eval_step(step: Callable, carry: Any, x: Any, *, modules: Any = None,
              who: str = "eval_step") -> Any:
    """The abstract output (``jax.eval_shape``) of one call of ``step`` (any form of the module
    docs) on ``(carry, x)``; the modules' state is not changed."""
    call, bound = bind_step(step, modules, who)
    carried = _Carried(bound, who)
    with _explained(who, bound):
        return jax.eval_shape(lambda s, c, xx: carried.run(call, s, lambda run: run(c, xx))[0],
                              carried.state, carry, x)
