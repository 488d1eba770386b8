"""Dropout replay for :func:`jaxseq.parity.compare_models` (``dropout="replay"``): torch's dropout
draws during ``torch_loss`` are recorded, and the JAX side's draws take the same masks in the same
order, so that a model compares in training mode, dropout included.

torch (:class:`TorchDraws`, patches for the duration of ``torch_loss`` only):

* covered: ``F.dropout`` / ``nn.Dropout`` and ``torch.dropout`` (element-wise), ``F.dropout1d/2d/3d``
  / ``nn.Dropout1d/2d/3d`` (one draw per channel, a channels-first mask ``[N, C, 1...]``),
  dropout that stays on in ``eval()`` (``F.dropout(x, p, training=True)``), raw keep draws
  ``Tensor.bernoulli_(q)``, ``Tensor.bernoulli()`` and ``torch.bernoulli(probs)`` with one
  probability ``q = 1 - rate`` (AWD-LSTM's ``LockedDropout`` and ``embedded_dropout``), and the
  inter-layer dropout of a training-mode ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with
  ``num_layers > 1``: it happens inside torch's C++ kernel, so such a module is run one layer at a
  time (torch's own kernel, its parameters shared) with a recorded ``F.dropout`` between layers,
  on a ``PackedSequence`` too; that mask is recorded in the padded layout of the output (1 at
  padding);
* refused with a ``ValueError`` when they draw: ``F.alpha_dropout``, ``F.feature_alpha_dropout``
  (no JAX twin), ``F.scaled_dot_product_attention(dropout_p > 0)`` (drawn inside the kernel), a
  ``bernoulli`` with varying probabilities (not a dropout), an unbatched input to such an RNN.
  The functional forms are caught again one level down (``torch._VF.dropout`` /
  ``feature_dropout``, which they call), so a name bound before the call (``from
  torch.nn.functional import dropout``) is recorded too. A draw that goes through none of these
  (``torch.rand(...) < q``) is not seen: the counts then differ.
  A draw with rate 0 or 1 is not a draw on either side.

JAX (:class:`JaxReplay`, while the loss is traced): ``jax.random.bernoulli`` is replaced, so every
keep mask drawn through it takes the next recorded mask: ``nnx.Dropout`` (from its own stream or
an ``rngs=`` key given at the call; ``broadcast_dims``), :func:`jaxseq.keep_mask` and so jaxseq's
``LockedDropout``, ``EmbeddingDropout`` / ``embedding_dropout``, the layers' ``dropout=``,
``weight_drop=`` and ``recurrent_dropout=`` masks (drawn outside their compiled helper while an
observer is installed), a port's own ``jax.random.bernoulli`` dropout. Each JAX draw must match
the next torch draw in rate and shape: the same shape, or torch's channels-first mask moved
channels last (preferred when torch's dropout input came from a channels-first layer, see
:mod:`jaxseq.parity.capture`), or an RNN mask whose time axis is padded (with keeps) to JAX's
length. Otherwise (or when one side draws more) a ``ValueError`` lists both sides' draws (where:
module path and function, shape, rate) up to the first difference.

Loops: inside jaxseq's decoding loops (:func:`jaxseq.teacher_forcing`, ...) each step takes its
own masks: the step is traced once abstractly to count its draws (``k``), the next ``T * k``
recorded masks are taken off the tape (step by step, in torch's order) and fed to the ``lax.scan``
as per-step inputs (:mod:`jaxseq.hooks`). A draw inside any other JAX transformation (a user's own
``lax.scan``, ``nnx.scan``, ``vmap``, ``remat``) cannot get a mask per iteration and raises a
``ValueError``: run such a loop with ``jaxseq.teacher_forcing(step, carry, xs,
batch_first=False)`` (which is ``lax.scan(step, carry, xs)`` with the hooks). A ``jax.jit``
function of the user's that draws inside ``jax_loss`` is traced only once: its draws are not seen
after the first trace.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from jaxseq import hooks
from jaxseq.parity.capture import INSIDE_A_TRANSFORMATION, JaxCalls, TorchModules, trace_state
from jaxseq.parity.jax_side import Instrument
from jaxseq.parity.patching import patched

#: Keep probabilities closer than this are the same rate.
_RATE_TOLERANCE = 1e-12


@dataclasses.dataclass(frozen=True)
class Draw:
    """One dropout draw: where (module path), what drew it, the mask's shape and rate.

    ``channels_first``: torch's mask is in channels-first layout (a channel-wise dropout, or a
    dropout of a channels-first layer's output); ``time_axis``: an RNN's inter-layer mask, padded
    to its longest sequence along that axis (JAX's may be longer)."""

    where: str
    fn: str
    shape: tuple[int, ...]
    rate: float
    channels_first: bool = False
    time_axis: Optional[int] = None

    def describe(self) -> str:
        return f"{self.where}: {self.fn} {list(self.shape)} rate {self.rate:g}"


def _fit(torch_draw: Draw, shape: tuple[int, ...], rate: float
         ) -> Optional[Callable[[Any], Any]]:
    """How to turn torch's keep mask into the JAX draw's (``None``: it does not fit)."""
    if abs(torch_draw.rate - rate) > _RATE_TOLERANCE:
        return None
    have = torch_draw.shape
    moved = have[:1] + have[2:] + have[1:2] if len(have) >= 3 else None
    if torch_draw.channels_first and moved == shape:
        return lambda a: jnp.moveaxis(a, 1, -1)
    if have == shape:
        return lambda a: a
    if moved == shape:
        return lambda a: jnp.moveaxis(a, 1, -1)
    axis = torch_draw.time_axis
    if (axis is not None and len(have) == len(shape) and have[axis] <= shape[axis]
            and all(h == s for i, (h, s) in enumerate(zip(have, shape)) if i != axis)):
        pad = [(0, s - h) for h, s in zip(have, shape)]
        return lambda a: jnp.pad(a, pad, constant_values=True)
    return None


def mismatch(torch_draws: Sequence[Draw], jax_draws: Sequence[Draw], why: str) -> ValueError:
    """The ``ValueError`` of a replay mismatch: both sides' draws up to the first difference."""
    n = len(jax_draws)
    lines = [f"dropout replay: {why}. torch drew {len(torch_draws)} mask(s); the draws up to the "
             "first difference (index: where: function [mask shape] rate):"]
    lines.append("  torch:")
    lines += [f"    {i}: {d.describe()}" for i, d in enumerate(torch_draws[:n])] or ["    (none)"]
    lines.append("  JAX:")
    lines += [f"    {i}: {d.describe()}" for i, d in enumerate(jax_draws[:n])] or ["    (none)"]
    return ValueError("\n".join(lines))


# ------------------------------------------------------------------------------------------------
# torch: recording
# ------------------------------------------------------------------------------------------------
_RNN_CLASSES = (nn.LSTM, nn.GRU, nn.RNN)


class TorchDraws:
    """The torch side's draws during ``torch_loss``: ``draws`` (:class:`Draw`) and ``keeps``
    (boolean keep masks, torch layout). A context of the torch run (see the module docs)."""

    def __init__(self, modules: TorchModules):
        self.modules = modules
        self.draws: list[Draw] = []
        self.keeps: list[np.ndarray] = []
        self._bernoulli_: Callable[..., torch.Tensor] = torch.Tensor.bernoulli_
        self._depth = 0                   # inside our own draw: raw bernoulli calls not recorded

    def _record(self, fn: str, keep: torch.Tensor, rate: float, *, channels_first: bool = False,
                time_axis: Optional[int] = None, where: Optional[str] = None) -> None:
        self.draws.append(Draw(where or self.modules.where(), fn, tuple(keep.shape), rate,
                               channels_first, time_axis))
        self.keeps.append(keep.detach().cpu().numpy().astype(bool))

    def _keep(self, shape: Sequence[int], rate: float, like: torch.Tensor) -> torch.Tensor:
        self._depth += 1
        try:
            return self._bernoulli_(torch.empty(tuple(shape), dtype=like.dtype, device=like.device),
                                    1.0 - rate).bool()
        finally:
            self._depth -= 1

    def dropout(self, fn: str, x: torch.Tensor, p: float, training: bool, inplace: bool,
                mask_shape: Sequence[int], channels_first: bool) -> torch.Tensor:
        """A recorded dropout of ``x`` with a keep mask of ``mask_shape`` (broadcast to ``x``)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        if not training or p == 0.0:
            return x
        if p == 1.0:
            return x.mul_(0.0) if inplace else x * 0.0
        keep = self._keep(mask_shape, p, x)
        self._record(fn, keep, p, channels_first=channels_first)
        scale = keep.to(x.dtype).div_(1.0 - p)
        return x.mul_(scale) if inplace else x * scale

    # -- the patched functions ----------------------------------------------------------------
    def _feature(self, name: str, batched_ndim: int) -> Callable[..., torch.Tensor]:
        def drop(input: torch.Tensor, p: float = 0.5, training: bool = True,
                 inplace: bool = False) -> torch.Tensor:
            if input.dim() not in (batched_ndim - 1, batched_ndim):           # torch's checks
                raise ValueError(f"{name}: expected a {batched_ndim - 1}-D or {batched_ndim}-D "
                                 f"input, got {tuple(input.shape)} (not replayed)")
            lead = 2 if input.dim() == batched_ndim or name == "dropout2d" else 1   # torch: a
            # 3-D input to dropout2d is (N, C, L), one draw per channel
            shape = tuple(input.shape[:lead]) + (1,) * (input.dim() - lead)
            return self.dropout(f"F.{name}", input, p, training, inplace, shape, lead == 2)
        return drop

    def _vf(self, name: str, *, feature: bool, inplace: bool) -> Callable[..., torch.Tensor]:
        """``(input, p, train)`` dropout: ``torch.dropout``, and ``torch._VF.(feature_)dropout(_)``,
        what torch's own ``F.dropout*`` call (so ``F.dropout`` / ``nn.Dropout`` are recorded here,
        also when bound by name before the patches; ``F.dropout1d/2d/3d`` are patched themselves,
        for their names and unbatched shapes, and reach this only when bound by name); feature
        dropout gets its input batched, ``[N, C, ...]``: one draw per channel."""
        def drop(input: torch.Tensor, p: float, train: bool) -> torch.Tensor:
            if feature:
                shape = tuple(input.shape[:2]) + (1,) * (input.dim() - 2)
                return self.dropout(name, input, p, train, inplace, shape, True)
            return self.dropout(name, input, p, train, inplace, input.shape,
                                self.modules.channels_first(input))
        return drop

    def _refused(self, name: str, why: str, draws: Callable[..., bool]) -> Callable[..., Any]:
        original = _lookup(name)

        def refused(*args: Any, **kwargs: Any) -> Any:
            if draws(*args, **kwargs):
                raise ValueError(f"dropout replay: {name} draws {why}; it cannot be replayed "
                                 f"(at {self.modules.where()}). Compare with dropout='off' in "
                                 "eval(), or use a dropout that replay covers (see "
                                 "jaxseq.parity.replay)")
            return original(*args, **kwargs)
        return refused

    def _tensor_bernoulli_(self, tensor: torch.Tensor, p: Any = 0.5, *args: Any, **kwargs: Any
                           ) -> torch.Tensor:
        result = self._bernoulli_(tensor, p, *args, **kwargs)
        if self._depth == 0:
            self._raw("Tensor.bernoulli_", result, p)
        return result

    def _raw(self, fn: str, result: torch.Tensor, probs: Any) -> None:
        """A raw keep draw with probability ``probs`` (a number or a constant tensor)."""
        if isinstance(probs, torch.Tensor):
            values = torch.unique(probs.detach())
            if values.numel() != 1:
                raise ValueError(f"dropout replay: {fn} at {self.modules.where()} draws with "
                                 "varying probabilities: not a dropout, cannot be replayed")
            probs = float(values)
        q = float(probs)
        if 0.0 < q < 1.0:
            self._record(fn, result != 0, 1.0 - q)

    def _torch_bernoulli(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = _ORIGINAL_BERNOULLI(input, *args, **kwargs)
        if self._depth == 0:
            p = kwargs.get("p", args[0] if args and not isinstance(args[0], torch.Generator)
                           else None)
            self._raw("torch.bernoulli", result, input if p is None else p)
        return result

    def _rnn_forward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(rnn: nn.RNNBase, input: Any, hx: Any = None) -> Any:
            if not (rnn.training and rnn.dropout > 0 and rnn.num_layers > 1):
                return original(rnn, input, hx)
            return self._rnn_by_layer(rnn, input, hx)
        return forward

    def _rnn_by_layer(self, rnn: nn.RNNBase, input: Any, hx: Any) -> Any:
        """``rnn`` one layer at a time (single-layer modules sharing its parameters, so torch's
        own kernel), with a recorded dropout between layers."""
        packed = isinstance(input, nn.utils.rnn.PackedSequence)
        if not packed and input.dim() != 3:
            raise ValueError(f"dropout replay: {rnn} in training mode got an unbatched input "
                             f"{tuple(input.shape)}; add a batch axis to replay its dropout")
        where = self.modules.where()
        D, L = 2 if rnn.bidirectional else 1, rnn.num_layers
        lstm = isinstance(rnn, nn.LSTM)
        states = (list(hx) if lstm else [hx]) if hx is not None else None
        layer_in, finals = input, []
        for layer in range(L):
            single = _single_layer(rnn, layer)
            part = None if states is None else [s[layer * D:(layer + 1) * D] for s in states]
            layer_in, state = single(layer_in, None if part is None else
                                     (tuple(part) if lstm else part[0]))
            finals.append(list(state) if lstm else [state])
            if layer < L - 1:
                layer_in = self._between_layers(rnn, layer_in, f"{where}: inter-layer dropout "
                                                f"after layer {layer}")
        h_n = [torch.cat([f[i] for f in finals]) for i in range(len(finals[0]))]
        return layer_in, (tuple(h_n) if lstm else h_n[0])

    def _between_layers(self, rnn: nn.RNNBase, out: Any, where: str) -> Any:
        p = float(rnn.dropout)
        if not isinstance(out, nn.utils.rnn.PackedSequence):
            keep = self._keep(out.shape, p, out)
            self._record(f"{type(rnn).__name__} dropout", keep, p, where=where)
            return out * keep.to(out.dtype).div_(1.0 - p)
        keep = self._keep(out.data.shape, p, out.data)
        padded, _ = nn.utils.rnn.pad_packed_sequence(
            nn.utils.rnn.PackedSequence(keep.to(out.data.dtype), out.batch_sizes,
                                        out.sorted_indices, out.unsorted_indices),
            batch_first=rnn.batch_first, padding_value=1.0)
        self._record(f"{type(rnn).__name__} dropout", padded != 0, p, where=where,
                     time_axis=1 if rnn.batch_first else 0)
        return nn.utils.rnn.PackedSequence(out.data * keep.to(out.data.dtype).div_(1.0 - p),
                                           out.batch_sizes, out.sorted_indices,
                                           out.unsorted_indices)

    @contextlib.contextmanager
    def __call__(self, model: nn.Module) -> Iterator[None]:
        alpha = self._refused("F.alpha_dropout", "an alpha-dropout mask (no JAX twin)",
                              lambda x, p=0.5, training=False, inplace=False: training and p > 0)
        feature_alpha = self._refused(
            "F.feature_alpha_dropout", "an alpha-dropout mask (no JAX twin)",
            lambda x, p=0.5, training=False, inplace=False: training and p > 0)
        sdpa = self._refused("F.scaled_dot_product_attention", "its mask inside the kernel",
                             lambda *a, dropout_p=0.0, **k: (a[4] if len(a) > 4 else dropout_p) > 0)
        patches: list[tuple[Any, str, Any]] = [
            (F, "dropout1d", self._feature("dropout1d", 3)),
            (F, "dropout2d", self._feature("dropout2d", 4)),
            (F, "dropout3d", self._feature("dropout3d", 5)),
            (torch, "dropout", self._vf("torch.dropout", feature=False, inplace=False)),
            (F, "alpha_dropout", alpha), (F, "feature_alpha_dropout", feature_alpha),
            (F, "scaled_dot_product_attention", sdpa),
            (torch.Tensor, "bernoulli_", lambda t, *a, **k: self._tensor_bernoulli_(t, *a, **k)),
            (torch.Tensor, "bernoulli", lambda t, *a, **k: self._torch_bernoulli(t, *a, **k)),
            (torch, "bernoulli", self._torch_bernoulli),
        ]
        patches += [(torch._VF, f"{kind}dropout{inplace * '_'}",
                     self._vf(f"F.{kind}dropout", feature=kind == "feature_", inplace=inplace))
                    for kind in ("", "feature_") for inplace in (False, True)]
        patches += [(cls, "forward", self._rnn_forward(cls.forward)) for cls in _RNN_CLASSES]
        with patched(patches):
            yield


_ORIGINAL_BERNOULLI = torch.bernoulli


def _lookup(name: str) -> Callable[..., Any]:
    """The current ``F.<name>`` (before patching)."""
    return getattr(F, name.removeprefix("F."))


def _single_layer(rnn: nn.RNNBase, layer: int) -> nn.RNNBase:
    """A one-layer module of ``rnn``'s kind whose parameters are ``rnn``'s layer ``layer``."""
    cls = next(c for c in _RNN_CLASSES if isinstance(rnn, c))
    D = 2 if rnn.bidirectional else 1
    size = rnn.input_size if layer == 0 else D * (getattr(rnn, "proj_size", 0) or rnn.hidden_size)
    kwargs: dict[str, Any] = dict(num_layers=1, bias=rnn.bias, batch_first=rnn.batch_first,
                                  bidirectional=rnn.bidirectional)
    if cls is nn.LSTM:
        kwargs["proj_size"] = rnn.proj_size
    if cls is nn.RNN:
        kwargs["nonlinearity"] = rnn.nonlinearity
    ref = rnn.weight_ih_l0
    single = cls(size, rnn.hidden_size, **kwargs, device=ref.device, dtype=ref.dtype)
    for name in single._flat_weights_names:
        setattr(single, name, getattr(rnn, name.replace("_l0", f"_l{layer}")))
    single.train(rnn.training)
    return single


# ------------------------------------------------------------------------------------------------
# JAX: replaying
# ------------------------------------------------------------------------------------------------
class _Source:
    """Where the next draw's mask comes from."""

    def __init__(self, replay: JaxReplay, checks_trace: bool = True):
        self.replay = replay
        self.trace = trace_state() if checks_trace else None

    def take(self, draw: Draw) -> Any:
        raise NotImplementedError


class _Tape(_Source):
    """torch's recorded masks, in order."""

    def __init__(self, replay: JaxReplay, arrays: Sequence[Any]):
        super().__init__(replay)
        self.arrays, self.pos = list(arrays), 0

    def take(self, draw: Draw) -> Any:
        torch_draws, log = self.replay.torch_draws, self.replay.log
        log.append(draw)
        if self.pos >= len(torch_draws):
            raise mismatch(torch_draws, log, f"the JAX side draws more masks than torch's "
                           f"{len(torch_draws)}")
        fit = _fit(torch_draws[self.pos], draw.shape, draw.rate)
        if fit is None:
            raise mismatch(torch_draws[:self.pos + 1], log, f"draw {self.pos} differs in shape or "
                           "rate")
        self.pos += 1
        return fit(self.arrays[self.pos - 1])


class _Count(_Source):
    """A step traced abstractly: its draws are counted, each given a dummy mask."""

    def __init__(self, replay: JaxReplay):
        super().__init__(replay, checks_trace=False)
        self.draws: list[Draw] = []

    def take(self, draw: Draw) -> Any:
        self.draws.append(draw)
        return jnp.zeros(draw.shape, bool)


class _Step(_Source):
    """One step of a decoding loop: the masks taken for it, in order."""

    def __init__(self, replay: JaxReplay, arrays: Sequence[Any], draws: Sequence[Draw]):
        super().__init__(replay)
        self.arrays, self.draws, self.pos = list(arrays), draws, 0

    def take(self, draw: Draw) -> Any:
        if (self.pos >= len(self.draws) or draw.shape != self.draws[self.pos].shape
                or draw.rate != self.draws[self.pos].rate):
            raise ValueError(f"dropout replay: a decoding loop's step drew {draw.describe()} as "
                             f"draw {self.pos}; its abstract trace drew "
                             f"{[d.describe() for d in self.draws]} (a step whose draws depend "
                             "on traced values cannot be replayed)")
        self.pos += 1
        return self.arrays[self.pos - 1]


class _ReplayLoop(hooks.LoopScope):
    def __init__(self, replay: JaxReplay, inputs: tuple[Any, ...], draws: list[Draw]):
        self.replay, self.inputs, self.draws = replay, inputs, draws

    @contextlib.contextmanager
    def step(self, inputs_t: Any) -> Iterator[None]:
        source = _Step(self.replay, inputs_t, self.draws)
        self.replay.sources.append(source)
        try:
            yield
        finally:
            self.replay.sources.pop()


def _caller() -> str:
    """Who drew: the first public function above ``jax.random.bernoulli`` and the helpers on the
    way (``keep_mask <- LockedDropout.__call__``)."""
    frame: Any = sys._getframe(2)
    names: list[str] = []
    while frame is not None and len(names) < 4:
        module = frame.f_globals.get("__name__", "")
        if module != "jax" and not module.startswith(("jax.", "jaxseq.parity")):
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name).split(".<locals>")[0]
            if not names or names[-1] != name:
                names.append(name)
            last = name.rsplit(".", 1)[-1]
            if last != "keep_mask" and not (last.startswith("_") and not last.endswith("__")):
                break
        frame = frame.f_back
    return " <- ".join(names) or "jax.random.bernoulli"


class JaxReplay(Instrument, hooks.Observer):
    """The JAX side's draws take torch's recorded masks (see the module docs). An
    :class:`~jaxseq.parity.jax_side.Instrument` of the JAX run (its inputs: the masks)."""

    def __init__(self, draws: Sequence[Draw], keeps: Sequence[np.ndarray], calls: JaxCalls):
        self.torch_draws = list(draws)
        self.key = ("replay", tuple(self.torch_draws))
        self.inputs = tuple(jax.device_put(k) for k in keeps)
        self.calls = calls
        self.sources: list[_Source] = []
        self.log: list[Draw] = []

    def _bernoulli(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def bernoulli(key: Any, p: Any = 0.5, shape: Any = None, *args: Any, **kwargs: Any) -> Any:
            if not self.sources:
                return original(key, p, shape, *args, **kwargs)
            try:
                q = float(p)
            except (TypeError, jax.errors.ConcretizationTypeError):
                raise ValueError(f"dropout replay: a draw at {self.calls.where()} has a traced "
                                 "keep probability; replay needs a Python number") from None
            shape = tuple(np.shape(p) if shape is None else shape)
            draw = Draw(self.calls.where(), _caller(), shape, 1.0 - q)
            source = self.sources[-1]
            if source.trace is not None and source.trace != trace_state():
                raise ValueError(
                    f"dropout replay: {draw.describe()} is drawn {INSIDE_A_TRANSFORMATION}, "
                    "where it cannot get one mask per iteration. Run the loop with "
                    "jaxseq.teacher_forcing(step, carry, xs, batch_first=False), which is "
                    "lax.scan(step, carry, xs) with the hooks replay needs")
            return source.take(draw)
        return bernoulli

    # -- hooks.Observer -----------------------------------------------------------------------
    def loop(self, length: int, probe: Callable[[], Any]) -> Optional[hooks.LoopScope]:
        if not self.sources:
            return None
        counter = _Count(self)
        self.sources.append(counter)
        try:
            probe()
        finally:
            self.sources.pop()
        if not counter.draws:
            return None
        parent = self.sources[-1]
        taken = [[parent.take(d) for d in counter.draws] for _ in range(length)]
        inputs = tuple(jnp.stack([taken[t][j] for t in range(length)])
                       for j in range(len(counter.draws)))
        return _ReplayLoop(self, inputs, counter.draws)

    # -- Instrument ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def tracing(self, model: nnx.Module, inputs: Any) -> Iterator[None]:
        tape = _Tape(self, inputs)
        self.sources, self.log = [tape], []
        try:
            with patched([(jax.random, "bernoulli", self._bernoulli(jax.random.bernoulli))]), \
                    hooks.observing(self):
                yield
        finally:
            self.sources = []
        if tape.pos != len(self.torch_draws):
            raise mismatch(self.torch_draws, self.log + [Draw("(none)", "no more draws", (), 0.0)],
                           f"the JAX side draws {tape.pos} mask(s), torch {len(self.torch_draws)}")
