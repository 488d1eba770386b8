"""Model-level parity: a user's torch model against their JAX (Flax NNX) port, by torch names.

:func:`compare_models` copies the torch weights into the JAX model, runs a loss on both sides in
one dtype, backpropagates, and compares the loss, named outputs, the gradient of every torch
parameter and of every floating batch leaf, and the buffers after the call; the
:class:`ModelReport` (:mod:`jaxseq.parity.comparison`) prints the table and checks tolerances.
Needs torch (the ``torch`` extra); ``import jaxseq`` does not import this module.

The parts: :mod:`jaxseq.parity.inputs` (the batch), :mod:`jaxseq.parity.torch_side` and
:mod:`jaxseq.parity.jax_side` (the two runs; the second also says when a compilation is reused),
:mod:`jaxseq.parity.comparison` (the report).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, Optional

import jax
import numpy as np
import torch
from flax import nnx

from jaxseq.interop import Rename, _key_mapper
from jaxseq.parity import capture, jax_side, replay, torch_side
from jaxseq.parity.comparison import DEFAULT_RTOL, Entry, ModelReport, compared, missing, severity
from jaxseq.parity.inputs import prepare
from jaxseq.parity.torch_side import DTYPES


def _gradient_entries(t: torch_side.TorchRun, j: jax_side.JaxRun,
                      jax_key: Callable[[str], Optional[str]]) -> list[Entry]:
    entries, matched = [], set()
    for name, (shape, grad, requires_grad) in t.grads.items():
        key = jax_key(name)
        if key is None:
            entries.append(missing("grad", name, shape, "no JAX counterpart (outside prefix, "
                                   "or dropped by rename)"))
        elif key not in j.grads:
            entries.append(missing("grad", name, shape, f"no JAX gradient (JAX key {key!r} is "
                                   "not an nnx.Param)"))
        elif grad is None:
            matched.add(key)
            why = "requires_grad=False" if not requires_grad else "the loss does not reach it"
            entries.append(missing("grad", name, shape, f"torch .grad is None ({why})"))
        else:
            matched.add(key)
            entries.append(compared("grad", name, j.grads[key], grad))
    loaded_from = {jax_key(k): k for k in t.state_dict}
    for key, grad in j.grads.items():
        if key not in matched:
            source = loaded_from.get(key)
            name = source if source is not None else key
            why = (f"loaded from torch key {source!r}, which is not a torch parameter (a buffer, "
                   "or a tied duplicate)" if source is not None else "not loaded from torch")
            entries.append(missing("grad", name, np.shape(grad), f"JAX parameter with no torch "
                                   f"parameter ({why})"))
    return entries


def _input_grad_entries(t: torch_side.TorchRun, j: jax_side.JaxRun) -> list[Entry]:
    """An ``"input_grad"`` entry for every floating leaf torch's loss reaches; a leaf it does not
    reach gets a problem entry only where JAX's loss reaches it."""
    entries, unreached = [], []
    for name, (shape, grad) in t.input_grads.items():
        if grad is not None:
            entries.append(compared("input_grad", name, j.input_grads[name], grad))
        elif np.any(j.input_grads[name] != 0):
            entries.append(missing("input_grad", name, shape, "torch's loss does not reach it "
                                   "(torch .grad is None), JAX's does (a non-zero gradient)"))
        else:
            unreached.append(name)
    if unreached:
        for name, reached in j.reaches(unreached).items():
            if reached:
                entries.append(missing("input_grad", name, t.input_grads[name][0],
                                       "torch's loss does not reach it (torch .grad is None), "
                                       "JAX's does (its gradient is zero here)"))
    return entries


def compare_models(torch_model: torch.nn.Module, jax_model: nnx.Module, batch: Any, *,
                   torch_loss: Callable, jax_loss: Callable, rename: Optional[Rename] = None,
                   prefix: str = "", dtype: str = "float64", jit: bool = True,
                   dropout: str = "off", modules: bool = False,
                   keep_dtype: Iterable[str] = ()) -> ModelReport:
    """Compare a torch model and its JAX port: loss, named outputs, every parameter's gradient.

    Copies of both models are made (``copy.deepcopy`` / ``nnx.split``-``merge``) and cast to
    ``dtype`` (every floating parameter and buffer / batch statistic); the torch copy's weights
    and buffers are loaded into the JAX copy with :func:`jaxseq.load_torch_state_dict`
    (``prefix`` / ``rename`` as there). Both losses are differentiated (torch ``backward()``, JAX
    ``jax.value_and_grad`` over every ``nnx.Param`` and every floating batch leaf, named by torch
    key with :func:`jaxseq.torch_state_dict`). The models passed in are never modified.

    Args:
      torch_model: a ``torch.nn.Module``, in the mode (``train()`` / ``eval()``) to compare.
        Tensors with autograd history that it keeps as attributes (a decoder caching its memory
        between calls), which ``copy.deepcopy`` refuses, are copied detached (the report's notes
        name them).
      jax_model: its Flax NNX port, in the matching mode (``model.train()`` / ``model.eval()``);
        its submodules named like the torch ones (or mapped with ``rename``). It may be built with
        ``nnx.eval_shape`` (no random initialisation): its abstract variables are filled by the
        load (an RNG stream needs ``nnx.reseed`` first, as for
        :func:`jaxseq.load_torch_state_dict`).
      batch: a pytree of numpy arrays given to both sides: to ``torch_loss`` as torch tensors (on
        the torch model's device), to ``jax_loss`` as JAX arrays; floating arrays are cast to
        ``dtype`` (except under ``keep_dtype``), integer ones kept. Python numbers arrive as
        arrays on the JAX side (traced under ``jit``, as with ``jax.jit``); other leaves pass as
        they are (static under ``jit``). Every floating array is given to ``torch_loss`` as a
        clone of a tensor that requires grad, so ``torch_loss`` may detach it or write into it.
      torch_loss: ``torch_loss(model, batch) -> loss`` or ``(loss, {name: output})``; ``loss`` a
        scalar tensor (compare_models calls ``backward()``).
      jax_loss: ``jax_loss(model, batch)``, the same on the JAX side with the same output names.
      rename: as :func:`jaxseq.load_torch_state_dict`.
      prefix: as :func:`jaxseq.load_torch_state_dict`.
      dtype: ``"float64"`` (default; JAX's x64 mode is switched on for the call and restored) or
        ``"float32"``.
      jit: compile ``jax_loss`` and its gradient (default); ``False`` runs it eagerly (for code
        that reads concrete values). A compilation is reused only for the same model structure,
        input shapes and dtypes and the same code: the port's methods, ``jax_loss`` and the
        functions they reach by global name, closure or as a module's attribute
        (``jaxseq.attention_weights``), recursively; :mod:`jaxseq.parity.jax_side` says exactly
        what is followed and what is not (a function in a dict, on a helper object: after
        changing one, pass ``jit=False``).
      dropout: ``"off"`` (default: compare in ``eval()``, or inject the same masks by hand) or
        ``"replay"``: torch's dropout draws during ``torch_loss`` are recorded and the JAX side's
        draws take them, in the same order (see below and :mod:`jaxseq.parity.replay`).
      modules: also compare the forward output of every submodule call (entries of kind
        ``"module"``; see below and :mod:`jaxseq.parity.capture`).
      keep_dtype: top-level batch keys whose floating arrays are given to both sides in their
        own dtype (e.g. float32 fractions that a model turns into lengths with ``int(p * T)``,
        which a float64 cast can change).

    Returns:
      A :class:`ModelReport`: ``print`` it; ``report.assert_close(rtol=..., atol=...)``.

    What is compared:

    * ``loss`` and every named output (the names must agree; the outputs are compared in full,
      so give torch's in JAX's layout, e.g. ``output.transpose(1, 2)``);
    * the gradient of every torch parameter (``named_parameters()``, tied weights once), by torch
      name. Reported as problems (they fail ``assert_close``): a torch parameter with no JAX
      counterpart or whose ``.grad`` is ``None`` (frozen, or not reached by the loss), and a JAX
      parameter with no torch parameter (loaded from a buffer or from a tied duplicate);
    * the gradient of every floating batch leaf (kind ``"input_grad"``, named by its key path
      in the batch, e.g. ``inputs``, ``targets/mel``) that torch's loss reaches. A leaf torch's
      loss does not reach (a target it detaches) has no entry, unless JAX's loss reaches it: then
      a problem entry (a non-zero JAX gradient, or a gradient that depends on the loss in JAX's
      backward pass, traced once more for that check);
    * every torch buffer that the JAX model also has (:func:`jaxseq.torch_state_dict` of the JAX
      copy), after the call: in training mode BatchNorm's updated running statistics;
    * with ``modules=True``, the output of every call of every submodule, matched by module path
      (torch's dotted name; the JAX module's path, mapped with ``rename`` / ``prefix`` as the
      ``state_dict`` keys), in torch's order of finished calls (a child before its parent), with
      no change to either model's code: torch forward hooks, and on the JAX side the module
      classes' ``__call__`` wrapped while the loss is traced (in the same compilation as the
      gradients). A module called several times gets one entry per call, ``path[i]``; an output
      of several arrays one entry per array, ``path:k``. A ``PackedSequence`` is compared padded;
      torch's channels-first conv / batch-norm / pooling outputs (and same-shape outputs of the
      modules after them) are moved channels last. Calls inside :func:`jaxseq.teacher_forcing`,
      :func:`jaxseq.greedy_decode`, :func:`jaxseq.beam_search` give one entry per step. What
      cannot be matched is listed in the notes with the reason. ``report.first_divergence()``
      names the earliest failing module: where the port starts to differ.

    The report's notes say which inputs were cast (and which kept), which computation dtypes of
    the JAX copy were changed, and which torch attributes were copied detached.

    Dropout: torch's and JAX's random streams never agree. ``dropout="replay"`` makes a model in
    training mode comparable, dropout included: every draw of ``nn.Dropout*`` / ``F.dropout*``,
    the inter-layer dropout of ``nn.LSTM`` / ``GRU`` / ``RNN``, raw ``bernoulli_`` keep draws (AWD-
    LSTM's) and dropout that stays on in ``eval()`` is recorded, and the JAX side's draws
    (``nnx.Dropout`` from its own stream or an ``rngs=`` key, jaxseq's ``LockedDropout``,
    ``EmbeddingDropout``, the layers' ``dropout=`` / ``weight_drop=`` masks, anything drawing
    through ``jax.random.bernoulli``) take those masks in order, one per step inside jaxseq's
    decoding loops; a mismatch in count, shape or rate raises a ``ValueError`` listing both
    sides' draws up to the first difference; alpha dropout and draws inside torch kernels are
    refused. :mod:`jaxseq.parity.replay` lists what is covered and how a loop of your own takes
    part. With ``"off"``: compare in evaluation mode, or inject the same masks on both sides
    (jaxseq's layers take ``dropout_masks=``..., ``torch_ref.dropout`` has the torch twins).

    Computation dtypes: in the JAX copy every module's floating ``dtype`` attribute (Flax layers'
    computation dtype: ``nnx.Embed`` defaults it to its ``param_dtype``, float32) is set to
    ``dtype`` and jaxseq's mixed-precision ``compute_dtype`` is switched off; the report's notes
    list what was changed, and flag a loss that still comes out in another dtype (a module that
    computes in a fixed dtype).

    Raises:
      TypeError: a model of the wrong type, a loss function that is not callable or returns
        something else than documented, a torch tensor in ``batch``, a torch model that cannot
        be copied (naming the cause).
      ValueError: an unknown ``dtype`` or ``dropout``, a replay mismatch or a refused draw, a
        non-scalar loss, output names that differ between the
        sides, a torch loss that does not require grad, ``keep_dtype`` keys not in the batch;
        errors of :func:`jaxseq.load_torch_state_dict` (missing, unknown or mis-shaped keys).

    >>> import numpy as np, torch
    >>> from flax import nnx
    >>> torch_lin = torch.nn.Linear(3, 2)
    >>> batch = {"x": np.ones((4, 3), np.float32)}
    >>> report = compare_models(torch_lin, nnx.Linear(3, 2, rngs=nnx.Rngs(0)), batch,
    ...                         torch_loss=lambda m, b: (m(b["x"]) ** 2).sum(),
    ...                         jax_loss=lambda m, b: (m(b["x"]) ** 2).sum())
    >>> sorted(e.label() for e in report.entries)
    ['grad bias', 'grad weight', 'input_grad x', 'loss loss']
    >>> report.notes
    ('inputs cast to float64: x (was float32)',)
    >>> report.assert_close(rtol=1e-12)
    """
    if not isinstance(torch_model, torch.nn.Module):
        raise TypeError(f"torch_model must be a torch.nn.Module, got {type(torch_model).__name__}")
    if not isinstance(jax_model, nnx.Module):
        raise TypeError(f"jax_model must be an NNX module, got {type(jax_model).__name__}")
    for what, fn in (("torch_loss", torch_loss), ("jax_loss", jax_loss)):
        if not callable(fn):
            raise TypeError(f"{what} must be callable (model, batch) -> loss, got "
                            f"{type(fn).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if dropout not in ("off", "replay"):
        raise ValueError(f"dropout must be 'off' or 'replay', got {dropout!r}")
    np_dtype = DTYPES[dtype][1]
    inputs = prepare(batch, np_dtype, keep_dtype, lambda x: isinstance(x, torch.Tensor))

    observe = modules or dropout == "replay"
    torch_calls = capture.TorchModules(record=modules)
    torch_draws = replay.TorchDraws(torch_calls)
    contexts = [torch_calls] if observe else []
    t = torch_side.run(torch_model, inputs, torch_loss, dtype,
                       contexts=contexts + ([torch_draws] if dropout == "replay" else []))
    jax_calls = capture.JaxCalls(record=modules)
    instruments: list[jax_side.Instrument] = [jax_calls] if observe else []
    if dropout == "replay":
        instruments.append(replay.JaxReplay(torch_draws.draws, torch_draws.keeps, jax_calls))
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with x64, jax.default_matmul_precision("highest"):
        j = jax_side.run(jax_model, inputs, jax_loss, t.state_dict, np_dtype=np_dtype,
                         prefix=prefix, rename=rename, jit=jit,
                         instruments=instruments,
                         split_result=torch_side.split_result, check=torch_side.check_scalar)
        if set(t.outputs) != set(j.outputs):
            raise ValueError("torch_loss and jax_loss return different outputs: only in torch "
                             f"{sorted(set(t.outputs) - set(j.outputs))}, only in JAX "
                             f"{sorted(set(j.outputs) - set(t.outputs))}")
        input_entries = _input_grad_entries(t, j)

    jax_key = _key_mapper(prefix, rename)
    entries = [compared("loss", "loss", j.loss, t.loss)]
    entries += [compared("output", name, j.outputs[name], t.outputs[name]) for name in t.outputs]
    entries += input_entries
    entries += _gradient_entries(t, j, jax_key)
    for name, value in t.buffers.items():
        key = jax_key(name)
        if key is not None and key in j.after and key not in j.grads:
            entries.append(compared("buffer", name, j.after[key], value))
    notes = [f"{who} loss is {got}, not {dtype}: a module computes in another dtype"
             for who, got in (("torch", t.loss_dtype), ("JAX", j.loss_dtype)) if got != dtype]
    if modules:
        module_entries, module_notes = capture.module_entries(
            torch_calls.calls, jax_calls, jax_key, prefix)
        entries += module_entries
        notes += module_notes
    notes += inputs.notes(dtype)
    if j.changed:
        notes.append(f"computation dtype set to {dtype} in the JAX copy: {', '.join(j.changed)}")
    notes += t.notes
    if dropout == "replay":
        notes.append(f"dropout replayed: {len(torch_draws.draws)} mask(s) drawn by torch, taken "
                     "by the JAX side in order")
    return ModelReport(dtype, tuple(sorted(entries, key=severity)), tuple(notes))


__all__ = ["DEFAULT_RTOL", "Entry", "ModelReport", "compare_models"]
