"""Loss-function contracts and recurrent-layer layout, seen on sampled steps.

For the rules `softmax-before-cross-entropy`, `loss-shape-broadcast` and
`rnn-batch-first-mismatch` the recorder watches two kinds of calls:

- the usual loss functions of `torch.nn.functional` (`cross_entropy`, `nll_loss`,
  `mse_loss`, `l1_loss`, `smooth_l1_loss`, `huber_loss`, `binary_cross_entropy`,
  `binary_cross_entropy_with_logits`). They are wrapped in the module, so the `nn.*Loss`
  modules, which call `F.<name>` at call time, are covered too; a script that did
  `from torch.nn.functional import mse_loss` before the recorder started keeps the
  unwrapped function and is not seen;
- the forward of `nn.LSTM`, `nn.GRU` and `nn.RNN` (their class method, so subclasses and
  modules inside any model count).

Only training calls on *sampled* steps are recorded: the first `FIRST_STEPS` optimizer
steps and then every `EVERY`-th, at most `MAX_PER_STEP` of each kind per step. A loss
call counts as training when autograd is on and its prediction requires grad; an RNN
call when autograd is on and the module is in training mode. On the other steps a
wrapper costs one Python call and a comparison.

A `loss_call` event holds the function, the prediction's and target's shapes and dtypes
(read from the tensors' metadata: free, no device sync) and, for `cross_entropy` and
`nll_loss`, three statistics of the prediction computed on the device under `no_grad` on
the detached tensor (its min, max, and the largest |sum over the class dimension - 1|;
no float copy of the whole tensor is made). They travel through the recorder's
`HostCopier` and are written when the copy has landed, usually by the next loss call.
An `rnn_call` event holds the module's class, `batch_first` and input shape, and the
`batch_size` of the training DataLoader that delivered the step's batch (from
`Monitor.loader` or the zero-code mode's DataLoader wrapper), when known. A
`PackedSequence` input carries no layout question (it knows its batch sizes): it is
recorded as `packed: true` without a shape and never judged.

A third kind, for `eval-without-eval-mode`: dropout written as a function call that
ignores `model.eval()`. `F.dropout` (and `dropout1d/2d/3d`) called without its
`training` argument defaults to `training=True`: inside a forward of a watched model in
eval mode it keeps dropping units during evaluation. An `eval_dropout` event (at most one
a step, `MAX_EVAL_DROPOUT` in all) holds the function, `p`, and the model's forward
token. `nn.Dropout` passes `self.training` (four positional arguments), so it is never
recorded; a call that passes `training=True` on purpose (Monte Carlo dropout) is not
either. The check costs a length test per call. Not seen: `F.scaled_dot_product_attention`
called with `dropout_p > 0` in eval mode (a builtin: wrapping it would break TorchScript).
"""
from __future__ import annotations

import types
import warnings
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import torch

from diagnose.recorder import hooks
from diagnose.rundir import schema

if TYPE_CHECKING:
    from diagnose.recorder.recorder import Recorder

LOSS_FUNCTIONS = ("cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
                  "huber_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits")
CLASS_LOSSES = ("cross_entropy", "nll_loss")
"""Losses whose prediction is a score per class (dimension 1, or 0 when unbatched)."""

DROPOUT_FUNCTIONS = ("dropout", "dropout1d", "dropout2d", "dropout3d")
"""`F.<name>(input, p=0.5, training=True, inplace=False)`: training defaults to True."""
MAX_EVAL_DROPOUT = 32

FIRST_STEPS = 5
EVERY = 100
MAX_PER_STEP = 4
_MAX_IN_FLIGHT = 8


def sampled(step: int) -> bool:
    """Whether optimizer step `step` is one whose loss and RNN calls are recorded."""
    return step < FIRST_STEPS or step % EVERY == 0


def _shape(value: Any) -> list[int] | None:
    return list(value.shape) if isinstance(value, torch.Tensor) else None


def _dtype(value: Any) -> str | None:
    return str(value.dtype).replace("torch.", "") if isinstance(value, torch.Tensor) else None


def _arg(args: tuple, kwargs: dict, position: int, name: str) -> Any:
    return args[position] if len(args) > position else kwargs.get(name)


@torch.no_grad()
def class_stats(pred: torch.Tensor) -> torch.Tensor:
    """[min, max, max |sum over the class dim - 1|] of a class-score tensor, on its device
    (float32, 3 values). Reads nothing back; makes no float copy of `pred`."""
    x = pred.detach()
    class_dim = 0 if x.dim() == 1 else 1
    row_err = (x.sum(dim=class_dim, dtype=torch.float32) - 1.0).abs().amax()
    return torch.stack([x.amin().float(), x.amax().float(), row_err])


class ContractWatcher:
    """One recorder's loss and RNN call records (see the module docstring)."""

    def __init__(self, rec: "Recorder") -> None:
        self.rec = rec
        self._inflight: deque = deque()
        self._counts: dict[str, int] = {}
        self._count_step = -1
        self._loader_batch: tuple[int, int] | None = None  # (step, batch_size)
        self._rnn_ids: dict[int, int] = {}
        self._rnn_names: dict[int, str] = {}
        self._off = False
        self._eval_dropout = 0
        self._eval_dropout_step = -1

    def _pending_step(self) -> int:
        """The step a call made now belongs to (the next one once an optimizer step ran)."""
        return self.rec.step + (1 if self.rec._stepped else 0)

    def _take(self, kind: str, step: int) -> bool:
        if step != self._count_step:
            self._count_step, self._counts = step, {}
        count = self._counts.get(kind, 0)
        if count >= MAX_PER_STEP:
            return False
        self._counts[kind] = count + 1
        return True

    # ---- entry points (through Recorder._safe, then guarded) --------------------------
    def guarded(self, method: str, *args: Any) -> None:
        """Run entry point `method`. A fault here switches off this watcher only (one
        `recorder_error` event with `part: "contracts"`, one warning): the other records
        and the training go on."""
        if self._off:
            return
        try:
            getattr(self, method)(*args)
        except Exception as exc:  # noqa: BLE001 - optional records, never the training
            self._off = True
            self._inflight.clear()
            message = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"diagnose: loss/RNN call recording failed and was switched off ({message}); "
                          "the rest of the record goes on", RuntimeWarning, stacklevel=4)
            self.rec.event("recorder_error", part="contracts", message=message)

    def on_batch(self, loader: Any) -> None:
        """A training batch came from `loader` (a DataLoader or its iterator): note its
        configured batch size for this step. Reads no tensor."""
        size = getattr(loader, "batch_size", None)
        if size is None:  # a DataLoader iterator: its batch sampler
            if getattr(loader, "_auto_collation", False):
                size = getattr(getattr(loader, "_index_sampler", None), "batch_size", None)
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            self._loader_batch = (self._pending_step(), size)

    def on_loss(self, name: str, args: tuple, kwargs: dict) -> None:
        """`F.<name>(*args, **kwargs)` returned."""
        if self._inflight:
            self._drain(block=False)
        step = self._pending_step()
        if not sampled(step) or not torch.is_grad_enabled():
            return
        pred = _arg(args, kwargs, 0, "input")
        target = _arg(args, kwargs, 1, "target")
        if not isinstance(pred, torch.Tensor) or not pred.requires_grad:
            return
        if not self._take("loss", step):
            return
        record: dict[str, Any] = {
            "kind": schema.EVENT_LOSS_CALL, "step": step, "t_s": self.rec._now(), "fn": name,
            "input_shape": _shape(pred), "input_dtype": _dtype(pred),
            "target_shape": _shape(target), "target_dtype": _dtype(target),
            # the operation that made the prediction (host-side, no sync): `SigmoidBackward0`
            # before binary_cross_entropy_with_logits is a sigmoid applied twice
            "input_op": type(pred.grad_fn).__name__ if pred.grad_fn is not None else None}
        if name in CLASS_LOSSES and pred.is_floating_point() and pred.dim() >= 1 and pred.numel() > 0:
            record["classes"] = int(pred.shape[0 if pred.dim() == 1 else 1])
            if not _capturing(pred):
                flight = self.rec.copier.pack({"stats": class_stats(pred)}, record)
                self._inflight.append(flight)
                self._drain(block=False)
                return
        self.rec.writer.line(schema.EVENTS_FILE, record)

    def on_eval_dropout(self, name: str, p: Any) -> None:
        """A dropout that ignores the module mode (`name`, rate `p`) is about to run: an
        `eval_dropout` event when that is inside a forward of a watched model in eval mode."""
        rec = self.rec
        token = rec._last_forward
        if rec.forward_depth <= 0 or token is None or not (token[1] or "").startswith(schema.FLAG_EVAL):
            return
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not p > 0:
            return
        step = rec.step  # an evaluation after the optimizer step belongs to that step's calls
        if self._eval_dropout >= MAX_EVAL_DROPOUT or step == self._eval_dropout_step:
            return
        self._eval_dropout += 1
        self._eval_dropout_step = step
        self.rec.writer.line(schema.EVENTS_FILE, {
            "kind": schema.EVENT_EVAL_DROPOUT, "step": step, "t_s": rec._now(), "fn": name, "p": float(p),
            "model": str(token[0]).split(".")[0], "forward_token": f"{token[0]}[{token[1]}]"})

    def on_rnn(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """An `nn.LSTM`/`GRU`/`RNN` forward is about to run."""
        step = self._pending_step()
        if not sampled(step) or not torch.is_grad_enabled() or not module.training:
            return
        if not self._take("rnn", step):
            return
        x = _arg(args, kwargs, 0, "input")
        index = self._rnn_ids.setdefault(id(module), len(self._rnn_ids))
        record: dict[str, Any] = {
            "kind": schema.EVENT_RNN_CALL, "step": step, "t_s": self.rec._now(),
            "module": type(module).__name__, "index": index, "name": self._rnn_name(module),
            "batch_first": bool(getattr(module, "batch_first", False))}
        if isinstance(x, torch.nn.utils.rnn.PackedSequence):
            record["packed"] = True
        else:
            record["input_shape"] = _shape(x)
        if self._loader_batch is not None and self._loader_batch[0] == step:
            record["loader_batch_size"] = self._loader_batch[1]
        self.rec.writer.line(schema.EVENTS_FILE, record)

    def close(self) -> None:
        """Write what is still in flight (waits for the copies)."""
        self.guarded("_drain", True)

    # ---- helpers ------------------------------------------------------------------------
    def _rnn_name(self, module: torch.nn.Module) -> str:
        """The module's qualified name in a watched model ("" until a model holds it)."""
        key = id(module)
        if key not in self._rnn_names:
            for mi, model in enumerate(self.rec.models):
                for qual, sub in model.named_modules():
                    if sub is module:
                        prefix = f"model{mi}." if len(self.rec.models) > 1 else ""
                        self._rnn_names[key] = prefix + (qual or type(model).__name__)
                        break
                if key in self._rnn_names:
                    break
        return self._rnn_names.get(key, "")

    def _drain(self, block: bool) -> None:
        while self._inflight and (block or len(self._inflight) > _MAX_IN_FLIGHT
                                  or self._inflight[0].ready()):
            flight = self._inflight.popleft()
            values = flight.values()
            self.rec.copier.release(flight)
            record = flight.meta
            stats = values.get("stats")
            if stats is not None and len(stats) == 3:
                record["pred_min"], record["pred_max"], record["row_sum_err"] = (float(v) for v in stats)
            self.rec.writer.line(schema.EVENTS_FILE, record)


def _capturing(tensor: torch.Tensor) -> bool:
    """Inside a CUDA graph capture nothing may be queued or copied: skip the statistics."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


# ---- global wrappers (installed by diagnose.recorder.hooks with the others) -------------
def _each_watcher(method: str, *args: Any) -> None:
    for listener in list(hooks._listeners):
        watcher = getattr(listener, "contracts", None)
        if watcher is not None:
            listener._safe(watcher.guarded, method, *args)


def _with_globals(wrapper: Callable, original: Callable) -> Callable:
    """`wrapper` with `original`'s module globals. TorchScript compiles a wrapped function
    from the original's source (`inspect` follows `__wrapped__`) but resolves its names in
    the wrapper's globals: with the original's, `torch.jit.script` of a function calling
    `F.mse_loss` or of a module holding an `nn.LSTM` works while a recorder is active. The
    wrapper itself reaches everything through its closure, never through globals."""
    return types.FunctionType(wrapper.__code__, original.__globals__, wrapper.__name__,
                              wrapper.__defaults__, wrapper.__closure__)


def _wrap_loss(name: str) -> Callable[[Callable], Callable]:
    def make(original: Callable) -> Callable:
        listeners, compiling, each = hooks._listeners, hooks._is_compiling, _each_watcher

        def loss(*args, **kwargs):
            result = original(*args, **kwargs)
            if not compiling() and listeners:
                each("on_loss", name, args, kwargs)
            return result

        return _with_globals(loss, original)

    return make


def _wrap_dropout(name: str) -> Callable[[Callable], Callable]:
    def make(original: Callable) -> Callable:
        listeners, compiling, each = hooks._listeners, hooks._is_compiling, _each_watcher

        def dropout(*args, **kwargs):
            # training not given: it defaults to True, whatever the module's mode
            if len(args) < 3 and "training" not in kwargs and listeners and not compiling():
                each("on_eval_dropout", name, args[1] if len(args) > 1 else kwargs.get("p", 0.5))
            return original(*args, **kwargs)

        return _with_globals(dropout, original)

    return make


def _wrap_rnn_forward(original: Callable) -> Callable:
    listeners, compiling, each = hooks._listeners, hooks._is_compiling, _each_watcher

    def forward(self, *args, **kwargs):
        if not compiling() and listeners:
            each("on_rnn", self, args, kwargs)
        return original(self, *args, **kwargs)

    return _with_globals(forward, original)


def global_targets() -> list[tuple[Any, str, Callable[[Callable], Callable]]]:
    """(owner, attribute, wrapper factory) for `hooks.add_global_listener`."""
    import torch.nn.functional as F

    targets: list[tuple[Any, str, Callable[[Callable], Callable]]] = [
        (F, name, _wrap_loss(name)) for name in LOSS_FUNCTIONS if hasattr(F, name)]
    targets += [(F, name, _wrap_dropout(name)) for name in DROPOUT_FUNCTIONS if hasattr(F, name)]
    for cls in (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN):
        if "forward" in cls.__dict__:  # restored by setattr: only a method of the class itself
            targets.append((cls, "forward", _wrap_rnn_forward))
    return targets
