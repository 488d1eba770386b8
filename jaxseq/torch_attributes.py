"""torch's read-only configuration attributes on jaxseq's modules (``lstm.hidden_size``...).

torch code reads a module's constructor arguments back from the module (``rnn.hidden_size``,
``rnn.num_layers``, ``rnn.bidirectional``, ``cell.input_size``, ``crf.num_tags``...). jaxseq's twins
have the same attributes with the same values and types, as properties derived from the module's
own state (its :class:`jaxseq.layout.Structure`, parameter shapes or private fields), so nothing is
stored twice. They are read-only: a new value would not reshape the parameters (or, for
``batch_first`` / ``dropout``, would silently change what a jitted function traced), so assignment
raises an ``AttributeError`` that says what to do instead.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from jaxseq.layout import Structure


class TorchAttributes:
    """Mixin for an ``nnx.Module``: the names in ``TORCH_ATTRIBUTES`` refuse assignment.

    The subclass defines each name as a ``property``; this mixin only turns an assignment into an
    ``AttributeError`` that names the fix (Python's own would say "property ... has no setter").

    >>> import jaxseq
    >>> from flax import nnx
    >>> lstm = jaxseq.LSTM(3, 4, rngs=nnx.Rngs(0))
    >>> lstm.hidden_size, lstm.num_layers, lstm.bidirectional, lstm.dropout
    (4, 1, False, 0.0)
    >>> lstm.hidden_size = 8
    Traceback (most recent call last):
    ...
    AttributeError: LSTM.hidden_size is read-only (fixed when the module is built): build a new ...
    """

    #: The read-only attribute names (torch's, plus jaxseq's own ``mode`` on cells).
    TORCH_ATTRIBUTES: ClassVar[tuple[str, ...]] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.TORCH_ATTRIBUTES:
            cls = type(self).__name__
            raise AttributeError(
                f"{cls}.{name} is read-only (fixed when the module is built): build a new "
                f"{cls}(..., {name}={value!r}) and copy the parameters over, e.g. "
                "jaxseq.load_torch_state_dict(new, jaxseq.torch_state_dict(old)) when they keep "
                "their shapes")
        super().__setattr__(name, value)


class StructureAttributes(TorchAttributes):
    """Mixin for the cells and layers: torch's attributes that their
    :class:`jaxseq.layout.Structure` (``self.structure``) holds, read-only."""

    structure: Structure
    TORCH_ATTRIBUTES: ClassVar[tuple[str, ...]] = ("mode", "input_size", "hidden_size", "bias")

    @property
    def mode(self) -> str:
        """torch's ``mode``: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``."""
        return self.structure.mode

    @property
    def input_size(self) -> int:
        return self.structure.input_size

    @property
    def hidden_size(self) -> int:
        return self.structure.hidden_size

    @property
    def bias(self) -> bool:
        return self.structure.bias
