"""What :func:`jaxseq.parity.compare_models` reports: one :class:`Entry` per compared quantity,
gathered in a :class:`ModelReport` that prints a table and checks tolerances. Needs numpy only.

Relative error, as in :mod:`jaxseq.parity.harness`: ``max |jax - torch| / max |torch|`` over the
entries of one quantity (0 when both are exactly equal, ``inf`` when torch is all zeros and JAX
is not). An entry passes ``assert_close(rtol, atol)`` when ``max |jax - torch| <= atol + rtol *
max |torch|`` (NaN never passes).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

#: Default ``rtol`` of :meth:`ModelReport.assert_close` per dtype (the parity suite's tolerances).
DEFAULT_RTOL = {"float64": 1e-10, "float32": 1e-5}
#: Entry kinds, in the order the table counts them.
KINDS = ("loss", "output", "input_grad", "grad", "buffer", "module")
_PLURAL = {"loss": "loss", "output": "outputs", "input_grad": "input gradients",
           "grad": "gradients", "buffer": "buffers", "module": "module outputs"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One compared quantity of a :class:`ModelReport`.

    Attributes:
      kind: ``"loss"``, ``"output"`` (a named output), ``"input_grad"`` (the gradient of a
        floating batch leaf), ``"grad"`` (the gradient of a torch parameter, or of a JAX
        parameter without one), ``"buffer"`` (a torch buffer and its JAX counterpart after the
        call: BatchNorm running statistics in training mode) or ``"module"`` (the output of one
        call of a submodule, ``modules=True``).
      name: the output's name, the batch leaf's key path (``targets/mel``), or the torch key (a
        JAX-only gradient: the torch key it was loaded from, else its JAX key).
      shape: torch's shape (JAX's when torch has none).
      max_abs: ``max |jax - torch|`` (``nan`` when not compared).
      scale: ``max |torch|`` (``nan`` when not compared).
      problem: why the entry could not be compared (a missing gradient...); ``""`` when compared.
      order: a ``"module"`` entry's position in torch's order of finished calls (-1 for the
        other kinds).
    """

    kind: str
    name: str
    shape: tuple[int, ...]
    max_abs: float
    scale: float
    problem: str = ""
    order: int = -1

    @property
    def relative(self) -> float:
        """``max_abs / scale``: 0 when both sides are equal, ``inf`` when torch is all zeros and
        JAX is not or when the entry has a problem, ``nan`` when either side holds NaN."""
        if self.problem:
            return math.inf
        if math.isnan(self.max_abs) or math.isnan(self.scale):
            return math.nan
        if self.max_abs == 0:
            return 0.0
        return self.max_abs / self.scale if self.scale > 0 else math.inf

    def passes(self, rtol: float, atol: float = 0.0) -> bool:
        """``max_abs <= atol + rtol * scale`` and no problem (NaN fails)."""
        return not self.problem and bool(self.max_abs <= atol + rtol * self.scale)

    def label(self) -> str:
        return f"{self.kind} {self.name}"


def severity(entry: Entry) -> tuple[int, float]:
    """Sort key, worst first: problems, then NaN, then by relative error."""
    rel = entry.relative
    return (0 if entry.problem else 1 if math.isnan(rel) else 2,
            0.0 if math.isnan(rel) else -rel)


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """What :func:`compare_models` measured; ``print(report)`` shows the table, worst first.

    Attributes:
      dtype: ``"float64"`` or ``"float32"``.
      entries: every :class:`Entry`, worst first; :meth:`modules` gives the ``"module"`` entries
        in torch's call order.
      notes: remarks on the run (e.g. a side whose loss came out in another dtype).
    """

    dtype: str
    entries: tuple[Entry, ...]
    notes: tuple[str, ...] = ()

    def worst(self, kind: Optional[str] = None, atol: float = 0.0) -> float:
        """The largest relative error over the entries of ``kind`` (all kinds when ``None``);
        ``inf`` if one of them has a problem, else ``nan`` if one holds NaN; 0.0 when there is
        none of that kind.

        ``atol``: an entry that is zero on both sides within ``atol`` (``max|torch| <= atol`` and
        ``max|jax - torch| <= atol``: a gradient that is exactly 0 in exact arithmetic, computed as
        rounding noise by both) counts as 0 instead of its meaningless relative error.
        """
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
        rels = [0.0 if not e.problem and e.max_abs <= atol and e.scale <= atol else e.relative
                for e in self.entries if kind in (None, e.kind)]
        return max(rels, default=0.0, key=lambda r: (math.isinf(r), math.isnan(r), r))

    def entry(self, kind: str, name: str) -> Entry:
        """The entry of ``kind`` named ``name`` (``KeyError`` if there is none)."""
        for e in self.entries:
            if (e.kind, e.name) == (kind, name):
                return e
        raise KeyError(f"no {kind} entry named {name!r}")

    def modules(self) -> list[Entry]:
        """The ``"module"`` entries (``modules=True``) in torch's order of finished calls, as
        ``Entry.order`` numbers them: a child's call before its parent's, the steps of a loop one
        after the other (``cell[0]``, ``cell[1]``...), the arrays of one output together
        (``rnn:0``, ``rnn:1``); empty without ``modules=True``. :attr:`entries` is worst first."""
        return sorted((e for e in self.entries if e.kind == "module"), key=lambda e: e.order)

    def failures(self, rtol: Optional[float] = None, atol: float = 0.0) -> list[Entry]:
        """The entries that do not pass (worst first); ``rtol`` defaults to
        :data:`DEFAULT_RTOL` of the report's dtype."""
        rtol = DEFAULT_RTOL[self.dtype] if rtol is None else rtol
        return [e for e in self.entries if not e.passes(rtol, atol)]

    def first_divergence(self, rtol: Optional[float] = None, atol: float = 0.0
                         ) -> Optional[Entry]:
        """The earliest ``"module"`` entry (torch's order of finished calls) that fails
        ``max |jax - torch| <= atol + rtol * max |torch|`` or has a problem, else the worst failing
        entry of any kind, else ``None``. ``rtol`` defaults to :data:`DEFAULT_RTOL` of the
        report's dtype. With ``modules=True`` this names the first submodule whose output differs:
        where a port starts to diverge."""
        rtol = DEFAULT_RTOL[self.dtype] if rtol is None else rtol
        first = next((e for e in self.modules() if not e.passes(rtol, atol)), None)
        failed = self.failures(rtol, atol)
        return first if first is not None else failed[0] if failed else None

    def assert_close(self, rtol: Optional[float] = None, atol: float = 0.0, *,
                     show: int = 5) -> None:
        """Raise ``AssertionError`` naming the ``show`` worst entries that fail
        ``max |jax - torch| <= atol + rtol * max |torch|`` or have a problem (missing gradients...).

        ``rtol`` defaults to 1e-10 for float64 and 1e-5 for float32.
        """
        rtol = DEFAULT_RTOL[self.dtype] if rtol is None else rtol
        failed = self.failures(rtol, atol)
        if not failed:
            return
        described = [f"{e.label()}: {e.problem}" if e.problem else
                     f"{e.label()}: relative {e.relative:.3g}, max abs {e.max_abs:.3g}"
                     for e in failed[:show]]
        more = f"; and {len(failed) - show} more" if len(failed) > show else ""
        raise AssertionError(f"compare_models ({self.dtype}): {len(failed)} of {len(self.entries)} "
                             f"entries fail rtol={rtol:g}, atol={atol:g}: "
                             + "; ".join(described) + more)

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {_PLURAL[k]}" for k in KINDS
                           if (n := sum(e.kind == k for e in self.entries)) or k != "module")
        problems = sum(bool(e.problem) for e in self.entries)
        lines = [f"compare_models ({self.dtype}): {counts}; {problems} problem(s); "
                 f"relative = max|jax - torch| / max|torch|"]
        lines += [f"note: {n}" for n in self.notes]
        first = self.first_divergence()
        lines.append(f"first divergence (rtol {DEFAULT_RTOL[self.dtype]:g}): "
                     + (first.label() + (f": {first.problem}" if first.problem else
                                         f", relative {first.relative:.2e}")
                        if first is not None else "none"))
        width = max([len(e.name) for e in self.entries] + [4])
        header = (f"{'kind':10s}  {'name':{width}s}  {'shape':14s}  {'max|torch|':>10s}  "
                  f"{'max abs err':>11s}  {'relative':>9s}")
        lines += [header, "-" * len(header)]
        for kind in KINDS:                  # grouped by kind: worst first, modules in call order
            group = self.modules() if kind == "module" else [e for e in self.entries
                                                             if e.kind == kind]
            for e in group:
                shape = str(e.shape)
                if e.problem:
                    lines.append(f"{e.kind:10s}  {e.name:{width}s}  {shape:14s}  {e.problem}")
                else:
                    lines.append(f"{e.kind:10s}  {e.name:{width}s}  {shape:14s}  "
                                 f"{e.scale:10.3e}  {e.max_abs:11.3e}  {e.relative:9.2e}")
        return "\n".join(lines)


def compared(kind: str, name: str, got: Any, want: Any, order: int = -1) -> Entry:
    """An entry for ``got`` (JAX) against ``want`` (torch); the shapes must agree."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return Entry(kind, name, want.shape, math.nan, math.nan,
                     f"shape mismatch: torch {want.shape}, JAX {got.shape}", order)
    diff = np.where(got == want, 0.0, np.abs(got - want))        # equal infinities count as equal
    max_abs = float(np.max(diff)) if diff.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return Entry(kind, name, want.shape, max_abs, scale, order=order)


def missing(kind: str, name: str, shape: tuple[int, ...], problem: str, order: int = -1) -> Entry:
    return Entry(kind, name, tuple(shape), math.nan, math.nan, problem, order)


__all__ = ["DEFAULT_RTOL", "KINDS", "Entry", "ModelReport"]
