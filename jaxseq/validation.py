"""Input validation shared by every public entry point, and length checks under ``jit``.

Checks run on concrete (non-traced) values before any computation and raise ``ValueError`` /
``TypeError`` with a message naming the argument, what was expected and what was received.

Under ``jax.jit`` (or ``grad``, ``vmap``...) ``lengths`` is a tracer: its dtype and shape are still
checked, but its values cannot be read on the host. By default traced values are not checked (no
cost, no host sync). To check them, wrap the step in :func:`checked`, which runs it under
``jax.experimental.checkify`` and raises a ``ValueError`` (``checkify.JaxRuntimeError``) naming the
bad entry when the step returns:

>>> import jax, jax.numpy as jnp
>>> from jaxseq import functional, init
>>> params = init.torch_default(jax.random.key(0), "GRU", 2, 3)
>>> def loss(params, x, lengths):
...     return functional.gru(params, x, lengths)[0].sum()
>>> step = checked(jax.grad(loss))                     # jitted + checkified
>>> grads = step(params, jnp.ones((4, 2, 2)), jnp.array([4, 1]))
>>> step(params, jnp.ones((4, 2, 2)), jnp.array([4, 5]))
Traceback (most recent call last):
...
jax...JaxRuntimeError: `lengths` must satisfy 0 <= lengths[b] <= T=4, but found lengths[1] = 5 ...
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import numbers
from collections.abc import Callable, Iterator
from typing import Any, Literal, Optional, TypeVar, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

#: What :func:`check_lengths` does with traced values: ``"skip"`` (dtype/shape only) or
#: ``"checkify"`` (emit ``checkify.check``; the caller must be under ``checkify.checkify``).
TracedPolicy = Literal["skip", "checkify"]
_TRACED_POLICIES = get_args(TracedPolicy)
_traced_policy: contextvars.ContextVar[str] = contextvars.ContextVar("jaxseq_traced_lengths",
                                                                     default="skip")


_F = TypeVar("_F", bound=Callable[..., Any])


def is_torch_tensor(x: Any) -> bool:
    """True for a ``torch.Tensor`` (or ``nn.Parameter``...), told by its type's module: jaxseq never
    imports torch."""
    cls = type(x)
    return cls.__module__.startswith("torch") and any(
        c.__name__ == "Tensor" and c.__module__ == "torch" for c in cls.__mro__)


def _torch_keys(value: Any) -> Optional[list]:
    """The keys leading to the first torch tensor in ``value`` and the lists, tuples and dicts it
    holds (``[]``: ``value`` itself), or ``None``."""
    if is_torch_tensor(value):
        return []
    if isinstance(value, (list, tuple)):
        items: Any = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return None
    for key, item in items:
        found = _torch_keys(item)
        if found is not None:
            return [key, *found]
    return None


def reject_torch(value: Any, name: str) -> None:
    """Raise ``TypeError`` if ``value`` is, or holds (in lists, tuples, dicts), a torch tensor.

    jaxseq takes JAX or numpy arrays; the message names the conversion. (Why not convert silently:
    ``jax.jit`` refuses torch tensors anyway, so code that relied on it would break once jitted; a
    silent conversion would also hide a device-to-host copy per call and drop ``requires_grad``.)

    >>> reject_torch([np.zeros(2)], "sequences")          # numpy, lists of arrays: fine
    """
    keys = _torch_keys(value)
    if keys is not None:
        path = name + "".join(f"[{key!r}]" for key in keys)
        raise TypeError(
            f"`{path}` is a torch.Tensor: jaxseq takes JAX or numpy arrays. Convert it once, where "
            f"the data enters: `jnp.asarray({path}.detach().cpu().numpy())` (a CPU tensor "
            f"without gradient: `{path}.numpy()`)"
            + ("; a torch state_dict goes in with jaxseq.load_torch_state_dict"
               if name == "params" else ""))


def rejects_torch(fn: _F) -> _F:
    """Decorate a public entry point: every argument is checked with :func:`reject_torch` first.

    The one choke point for torch tensors: a torch tensor anywhere jaxseq takes an array (and in
    the lists, tuples and dicts it takes, such as ``hx`` or ``params``) raises a ``TypeError``
    naming the argument and the conversion, before any computation.
    """
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def checked_call(*args: Any, **kwargs: Any) -> Any:
        for i, value in enumerate(args):
            reject_torch(value, names[i] if i < len(names) else f"args[{i}]")
        for name, value in kwargs.items():
            reject_torch(value, name)
        return fn(*args, **kwargs)

    return checked_call  # type: ignore[return-value]


def is_concrete(x: Any) -> bool:
    """True when ``x``'s contents can be read on this host now: not a jit tracer, and not a global
    array with shards on other processes' devices (multi-process ``jax.distributed`` runs), whose
    values no single host holds. jaxseq treats both like traced values (no host checks, no
    staircase)."""
    if isinstance(x, jax.core.Tracer):
        return False
    return not (isinstance(x, jax.Array) and not x.is_fully_addressable)


def host_array(x: Any, name: str) -> np.ndarray:
    """``np.asarray(x)`` for host-side helpers, with a clear error for a global array.

    Raises:
      ValueError: ``x`` is a jit tracer or a global array that spans other processes' devices.
    """
    if isinstance(x, jax.core.Tracer):
        raise ValueError(f"`{name}` must be concrete (host) values here, got a traced array: call "
                         "this outside jit")
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        raise ValueError(f"`{name}` is a global array spanning devices of other processes: its "
                         "values cannot be read on this host. Use this process's own (local) "
                         "values, before they become a global array, or leave the lengths traced "
                         "(under jit jaxseq does not read them)")
    return np.asarray(x)


def check_size(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum`` (torch's constructor checks).

    Python and numpy integers are accepted; ``bool`` is not.

    Raises:
      TypeError: ``value`` is not an integer (e.g. ``2.0``, ``True``, ``"3"``).
      ValueError: ``value < minimum``.

    >>> check_size(np.int64(4), "hidden_size")
    4
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_floating(dtype: Any, what: str) -> None:
    """Raise ``TypeError`` unless ``dtype`` is a floating dtype (bfloat16 and float16 included).

    >>> check_floating(jnp.bfloat16, "x")
    >>> check_floating(np.int32, "x")
    Traceback (most recent call last):
    ...
    TypeError: x must have a floating dtype, got int32
    """
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{what} must have a floating dtype, got {np.dtype(dtype).name}")


def _range_message(name: str, max_len: int) -> str:
    """Message for an out-of-range length; ``{}`` slots take the index and the value."""
    return f"`{name}` must satisfy 0 <= {name}[b] <= T={max_len}, but found {name}[{{}}] = {{}}"


def traced_policy() -> str:
    """The current policy for traced values: ``"checkify"`` inside :func:`checked`, else ``"skip"``."""
    return _traced_policy.get()


def _resolve_policy(traced: Optional[TracedPolicy]) -> str:
    policy = _traced_policy.get() if traced is None else traced
    if policy not in _TRACED_POLICIES:
        raise ValueError(f"traced must be one of {_TRACED_POLICIES} or None, got {traced!r}")
    return policy


def layout_hint(batch_first: Optional[bool]) -> str:
    """The sentences added to a shape error whose numbers fit the input with its batch and time
    axes swapped: they name ``batch_first`` and the value that reads the data as it is shaped
    (``None``: the caller has no layout option)."""
    if batch_first is None:
        return " The numbers fit the input with its batch and time axes swapped: check its layout."
    now, other = ("[B, T, ...]", "[T, B, ...]") if batch_first else ("[T, B, ...]", "[B, T, ...]")
    return (f" The numbers fit the other layout: with batch_first={batch_first} the input is read "
            f"as {now}; data shaped {other} needs batch_first={not batch_first} (a layer takes it "
            f"at construction, e.g. LSTM(..., batch_first={not batch_first})).")


@rejects_torch
def check_lengths(lengths: Any, max_len: int, batch_size: int | None = None,
                  *, name: str = "lengths", traced: Optional[TracedPolicy] = None,
                  batch_first: Optional[bool] = None) -> jax.Array:
    """Validate a ``[B]`` integer array of sequence lengths and return it as ``int32``.

    Args:
      lengths: integer array-like ``[B]`` (jax/numpy array, list) with
        ``0 <= lengths[b] <= max_len``.
      max_len: the padded time extent ``T``.
      batch_size: expected ``B``; ``None`` skips that check.
      name: argument name used in error messages.
      traced: what to do when ``lengths`` is a tracer (under ``jit``): ``"skip"`` checks dtype and
        shape only; ``"checkify"`` also emits ``checkify.check(0 <= lengths <= max_len)``, so the
        enclosing function must be run under ``jax.experimental.checkify.checkify`` (outside it JAX
        refuses to stage the check). ``None`` (default) means ``"checkify"`` inside a function
        wrapped by :func:`checked` and ``"skip"`` elsewhere.
      batch_first: the caller's layout, if it has one: when ``len(lengths)`` is not ``batch_size``
        but ``max_len`` (the numbers fit the input in the other layout), the message says so and
        names the ``batch_first`` that fits; ``None``: a layout-free hint.

    Returns:
      ``jnp.int32`` array ``[B]``.

    Raises:
      TypeError: ``lengths`` is not of an integer dtype, or is a torch tensor.
      ValueError: wrong rank, ``B`` mismatch, or (when concrete) a value ``< 0`` or ``> max_len``;
        nothing is ever silently truncated or clamped.

    >>> check_lengths([3, 0], max_len=3)
    Array([3, 0], dtype=int32)
    >>> check_lengths([3, 4], max_len=3)
    Traceback (most recent call last):
    ...
    ValueError: `lengths` must satisfy 0 <= lengths[b] <= T=3, but found lengths[1] = 4
    """
    policy = _resolve_policy(traced)
    if not isinstance(lengths, jax.Array):  # lists, numpy arrays
        lengths = np.asarray(lengths)
    if lengths.size and not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype, got {lengths.dtype}")
    if lengths.ndim != 1:
        raise ValueError(f"`{name}` must have shape [B], got shape {tuple(lengths.shape)}")
    if batch_size is not None and lengths.shape[0] != batch_size:
        hint = (f". {max_len} is the time extent T of the input." + layout_hint(batch_first)
                if lengths.shape[0] == max_len else "")
        raise ValueError(f"Expected len({name}) to be equal to batch_size, but got "
                         f"{lengths.shape[0]} (batch_size={batch_size}){hint}")
    if is_concrete(lengths) and lengths.size:
        host = np.asarray(lengths)
        bad = np.flatnonzero((host < 0) | (host > max_len))
        if bad.size:
            raise ValueError(_range_message(name, max_len).format(int(bad[0]), int(host[bad[0]])))
    elif not is_concrete(lengths) and policy == "checkify":
        bad = (lengths < 0) | (lengths > max_len)
        first = jnp.argmax(bad)
        checkify.check(~jnp.any(bad), _range_message(name, max_len), first, lengths[first])
    if isinstance(lengths, np.ndarray):   # host values: convert on the host (no device op)
        return jax.device_put(lengths.astype(np.int32, copy=False))   # jnp.asarray compiles
    return jnp.asarray(lengths, dtype=jnp.int32)


@contextlib.contextmanager
def _traced_checks(policy: TracedPolicy) -> Iterator[None]:
    token = _traced_policy.set(policy)
    try:
        yield
    finally:
        _traced_policy.reset(token)


def checked(fn: Callable, *, errors: frozenset = checkify.user_checks) -> Callable:
    """``jax.jit`` ``fn`` with jaxseq's length checks switched on for traced ``lengths``.

    Every jaxseq call that ``fn`` makes (layers, :mod:`jaxseq.functional`, :func:`last_valid`,
    :func:`reverse_padded`, :func:`length_mask`, pooling...) checks ``0 <= lengths[b] <= T`` on the
    device with ``jax.experimental.checkify``. The returned function runs the compiled, checkified
    ``fn`` and, if a check failed, raises ``checkify.JaxRuntimeError`` (a ``ValueError``) naming the
    first bad entry instead of returning; otherwise it returns ``fn``'s result.

    Args:
      fn: the function to check, e.g. a training step ``(params, batch) -> (loss, grads)``. Pass the
        plain function, not one already wrapped in ``jax.jit`` / ``nnx.jit``: an inner jit keeps
        its own trace cache, which does not know whether checks are on. Its arguments must be JAX
        pytrees (use ``nnx.split`` / ``nnx.merge`` for NNX modules); bind static (Python) arguments
        with ``functools.partial`` first, since every argument is traced.
      errors: the ``checkify`` error set; the default ``checkify.user_checks`` holds jaxseq's checks,
        add e.g. ``checkify.nan_checks`` to check more.

    Returns:
      A function with ``fn``'s signature and result. Each call syncs the error flag to the host.

    Cost: a reduction over ``[B]`` per checked call, and the host sync of the error flag.
    Without :func:`checked`, traced lengths are not range-checked and the results for a length
    outside ``[0, T]`` are unspecified (no error, possibly wrong or NaN values). Concrete lengths
    are always checked.

    >>> from jaxseq import last_valid
    >>> pick = checked(last_valid)
    >>> pick(jnp.ones((3, 2, 1)), jnp.array([-1, 2]))
    Traceback (most recent call last):
    ...
    jax...JaxRuntimeError: `lengths` must satisfy 0 <= lengths[b] <= T=3, but found lengths[0] = -1 ...
    """

    def with_checks(*args: Any, **kwargs: Any) -> Any:
        with _traced_checks("checkify"):
            return fn(*args, **kwargs)

    compiled = jax.jit(checkify.checkify(with_checks, errors=errors))

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        error, result = compiled(*args, **kwargs)
        error.throw()
        return result

    return run
