"""The torch side of :func:`jaxseq.parity.compare_models`: a copy of the user's model in the
compared dtype, ``torch_loss`` on the batch, ``backward()``, and what that gives (the loss, the
named outputs, every parameter's gradient, the gradient of every floating batch leaf, the
buffers after the call)."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Optional

import numpy as np
import torch

from jaxseq.parity.inputs import Batch
from jaxseq.parity.patching import patched

#: ``dtype=`` of :func:`compare_models` -> (torch dtype, numpy dtype).
DTYPES = {"float64": (torch.float64, np.float64), "float32": (torch.float32, np.float32)}


def split_result(result: Any, who: str) -> tuple[Any, dict[str, Any]]:
    """``loss`` or ``(loss, {name: output})`` -> ``(loss, outputs)``."""
    if isinstance(result, (tuple, list)):
        if len(result) != 2 or not isinstance(result[1], Mapping):
            raise TypeError(f"{who} must return a loss or (loss, {{name: output}}), got a "
                            f"{type(result).__name__} of length {len(result)}")
        loss, outputs = result
        bad = [k for k in outputs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{who}: output names must be strings, got {bad!r}")
        return loss, dict(outputs)
    return result, {}


def check_scalar(loss: Any, who: str, floating: bool) -> None:
    """``loss`` must be a 0-d floating array (``floating``: its dtype is floating)."""
    shape = tuple(getattr(loss, "shape", ()))
    if not hasattr(loss, "dtype") or shape != ():
        got = f"shape {shape}" if hasattr(loss, "shape") else f"a {type(loss).__name__}"
        raise ValueError(f"{who} must return a scalar loss (shape ()), got {got}")
    if not floating:
        raise TypeError(f"{who} must return a floating-point loss, got dtype {loss.dtype}")


def _non_leaf_attributes(model: torch.nn.Module) -> dict[int, tuple[str, torch.Tensor]]:
    """``{id: (where, tensor)}`` of the tensors with autograd history that the model's modules
    keep as plain attributes (in lists, tuples and dicts too): ``copy.deepcopy`` refuses them."""
    found: dict[int, tuple[str, torch.Tensor]] = {}

    def visit(value: Any, where: str, depth: int) -> None:
        if isinstance(value, torch.Tensor):
            if not value.is_leaf and id(value) not in found:
                found[id(value)] = (where, value)
        elif depth < 4 and isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{where}[{i}]", depth + 1)
        elif depth < 4 and isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}[{key!r}]", depth + 1)

    for path, module in model.named_modules():
        for name, value in vars(module).items():
            if not name.startswith("_"):
                visit(value, f"{path}.{name}" if path else name, 0)
    return found


def copy_model(model: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """``copy.deepcopy(model)`` and notes: tensors with autograd history kept as attributes (a
    decoder caching its memory between calls), which deepcopy refuses, are copied detached.

    Raises:
      TypeError: the copy still fails (the message names the cause and the fix).
    """
    non_leaf = _non_leaf_attributes(model)
    memo: dict[int, Any] = {key: tensor.detach().clone() for key, (_, tensor) in non_leaf.items()}
    try:
        copied = copy.deepcopy(model, memo)
    except Exception as error:   # deepcopy raises whatever an attribute's __deepcopy__ raises
        raise TypeError(f"compare_models copies the torch model with copy.deepcopy, which failed: "
                        f"{type(error).__name__}: {error}. Remove the attribute that cannot be "
                        "copied from the model (or reset it, e.g. a cached state, before the "
                        "call)") from error
    notes = []
    if non_leaf:
        names = ", ".join(where for where, _ in non_leaf.values())
        notes.append(f"torch attributes with autograd history copied detached (deepcopy refuses "
                     f"them): {names}")
    return copied, notes


def _full_precision() -> AbstractContextManager[None]:
    """TF32 off for the call (it matters on GPUs only), restored afterwards."""
    return patched([(torch.backends.cuda.matmul, "allow_tf32", False),
                    (torch.backends.cudnn, "allow_tf32", False)])


@dataclasses.dataclass
class TorchRun:
    state_dict: dict[str, torch.Tensor]         # the cast weights and buffers before the call
    loss: np.ndarray
    outputs: dict[str, np.ndarray]
    grads: dict[str, tuple[tuple[int, ...], Optional[np.ndarray], bool]]  # (shape, grad, requires)
    input_grads: dict[str, tuple[tuple[int, ...], Optional[np.ndarray]]]  # by leaf name
    buffers: dict[str, np.ndarray]              # after the call
    loss_dtype: str
    notes: list[str]


def run(torch_model: torch.nn.Module, batch: Batch, torch_loss: Callable, dtype: str,
        contexts: Sequence[Callable[[torch.nn.Module], AbstractContextManager[Any]]] = ()) -> TorchRun:
    """``torch_loss`` on a copy of ``torch_model`` cast to ``dtype``, then ``backward()``.

    Every floating batch leaf is a tensor that requires grad; ``torch_loss`` gets a clone of it
    (so it may detach it or write into it, as training code does), and its ``.grad`` afterwards is
    the leaf's gradient (``None``: the loss does not reach it). ``contexts``: context managers
    (given the copy) active during ``torch_loss`` (per-module capture, dropout recording).
    """
    t_dtype = DTYPES[dtype][0]
    model, notes = copy_model(torch_model)
    model = model.to(t_dtype)
    for p in model.parameters():
        p.grad = None
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device = next(iter(state_dict.values())).device if state_dict else torch.device("cpu")
    leaves: dict[str, torch.Tensor] = {}
    given = []
    for leaf in batch.leaves:
        if not isinstance(leaf.value, np.ndarray):
            given.append(leaf.value)
            continue
        tensor = torch.from_numpy(leaf.value).to(device)
        if leaf.floating:
            leaves[leaf.name] = tensor.requires_grad_(True)
            tensor = tensor.clone()
        given.append(tensor)
    with _full_precision(), contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context(model))
        loss, outputs = split_result(torch_loss(model, batch.rebuild(given)), "torch_loss")
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"torch_loss must return a torch.Tensor loss, got "
                            f"{type(loss).__name__}")
        check_scalar(loss, "torch_loss", loss.is_floating_point())
        if not loss.requires_grad:
            raise ValueError("torch_loss returned a loss that does not require grad (computed "
                             "under torch.no_grad(), or from no parameter)")
        loss.backward()
    for name, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"torch_loss: output {name!r} must be a torch.Tensor, got "
                            f"{type(value).__name__}")
    numpy = lambda t: None if t is None else t.detach().cpu().numpy()  # noqa: E731
    return TorchRun(
        state_dict=state_dict,
        loss=loss.detach().cpu().numpy(),
        outputs={k: v.detach().cpu().numpy() for k, v in outputs.items()},
        grads={k: (tuple(p.shape), numpy(p.grad), p.requires_grad)
               for k, p in model.named_parameters()},
        input_grads={k: (tuple(t.shape), numpy(t.grad)) for k, t in leaves.items()},
        buffers={k: b.detach().cpu().numpy() for k, b in model.named_buffers()},
        loss_dtype=str(loss.dtype).replace("torch.", ""), notes=notes)
