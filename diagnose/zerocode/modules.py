"""Module-side discovery: torch's global forward hooks, and Module.train/zero_grad/compile.

The global hooks (`register_module_forward_pre_hook`, `register_module_forward_hook`) see
every module call in the process. A depth counter keeps only the outermost call (the one
made while no other module's forward runs); everything else costs two counter updates.
Inside `torch.compile`d code the hooks do nothing (`torch.compiler.is_compiling()` is
constant True while dynamo traces them), so compiled graphs neither break nor recompile.

`Module.train` (which `eval()` calls) and `Module.zero_grad` are wrapped on the class;
`Module.compile` (in-place compilation) is noted, because such a module's own forward
then runs inside dynamo where no hook can see it, and so is `torch.compile` applied to a
function (a compiled training step).

Narrowing: a global hook makes every module call in the process take torch's slow path
(~1.2 µs per submodule call on CPU, plus the hook's own Python), which a model with
hundreds of small submodules feels (the 200-tensor MLP of bench/overhead.py: 1.10× with
global hooks). Once the models are known (after an optimizer step, every optimizer's
parameters held by a model the session records, and nothing was compiled), the global
hooks are swapped for a wrapper of `__call__` on the models' own classes (`narrow`), so
the submodules of other classes run torch's fast path. A class attribute, not a hook on
the instance: hooks live in the module's `__dict__` and would travel with
`copy.deepcopy(model)` (an EMA copy) and `torch.save(model)` (see classpatch.py). A new optimizer (a new model in k-fold training, say)
or a `torch.compile` call swaps the global hooks back (`widen`) until the next step
settles it again. Scripts that compile anything stay wide: dynamo guards on hooks, and
swapping them would recompile the user's graphs.

Inside compiled code (`is_compiling()`), every hook and wrapper of the zero-code mode
passes straight through: dynamo traces the script exactly as without diagnose (no graph
break, no recompilation, no warning about diagnose's own code), and the calls made there
are not recorded; the `not_recorded` events say so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.modules.module as module_mod

from diagnose.zerocode.classpatch import ClassPatches

if TYPE_CHECKING:
    from diagnose.zerocode.session import Session

try:
    from torch.compiler import is_compiling
except ImportError:  # torch < 2.3
    try:
        from torch._dynamo import is_compiling
    except ImportError:
        def is_compiling() -> bool:
            return False

_is_compiling = is_compiling


class ForwardWatch:
    """Routes the outermost module calls to the session."""

    def __init__(self, session: "Session") -> None:
        self.session = session
        self.depth = 0
        self.narrowed = False
        self._handles: list = []  # the global hooks, while installed
        self._class_calls = ClassPatches()  # the `__call__` wrappers, while narrowed

    def install(self, patches: ClassPatches) -> None:
        self._install_global()
        patches.add(self._remove)

    def narrow(self, modules: Iterable[torch.nn.Module]) -> bool:
        """Swap the global hooks for `__call__` wrappers on the classes of `modules` (the
        models as the script calls them). Only between forwards; returns whether it did."""
        if self.narrowed or self.depth:
            return False
        classes = list({type(m): None for m in modules})
        if not classes or any(cls is torch.nn.Module or issubclass(cls, torch.jit.ScriptModule)
                              for cls in classes):
            return False
        self._remove()
        for cls in classes:
            self._wrap_call(cls)
        self.narrowed = True
        return True

    def widen(self) -> None:
        """Back to the global hooks (a new model may be called from now on)."""
        if not self.narrowed:
            return
        self._class_calls.undo()
        self._install_global()
        self.narrowed = False

    def _wrap_call(self, cls: type) -> None:
        """`cls.__call__` runs the pre and post hooks around the call (the class's own
        `__call__` if it has one, else the inherited one, looked up at each call)."""
        pre, post = self._pre, self._post

        def make(call):
            def __call__(module, *args, **kwargs):
                pre(module, args)
                try:
                    output = call(module, *args, **kwargs)
                except BaseException:
                    post(module, args, None)
                    raise
                post(module, args, kwargs, output)
                return output
            return __call__

        if not self._class_calls.wrap(cls, "__call__", make):
            if "__call__" in vars(cls):
                return  # already wrapped (by this session, through a base class's root)

            def inherited(module, *args, **kwargs):
                return super(cls, module).__call__(*args, **kwargs)

            def remove_inherited() -> None:
                if vars(cls).get("__call__") is inherited:  # never undo someone else's patch
                    delattr(cls, "__call__")

            cls.__call__ = inherited
            self._class_calls.add(remove_inherited)
            self._class_calls.wrap(cls, "__call__", make)

    def _install_global(self) -> None:
        self._handles = [module_mod.register_module_forward_pre_hook(self._pre),
                         _post_hook(module_mod.register_module_forward_hook, self._post)]

    def _remove(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._class_calls.undo()

    def _pre(self, module, args):
        if _is_compiling():
            return None
        depth = self.depth
        self.depth = depth + 1
        if depth == 0 and self.session.on:
            self.session.top_forward_pre(module, args)
        return None

    def _post(self, module, args, *rest):
        # (kwargs, output), or (output,) when torch calls an always_call hook after forward
        # raised (that path ignores with_kwargs)
        kwargs, output = rest if len(rest) == 2 else (None, rest[-1])
        if _is_compiling():
            return None
        depth = self.depth - 1
        self.depth = depth if depth > 0 else 0
        if depth <= 0 and self.session.on:
            self.session.top_forward_post(module, output, kwargs if not args else None)
        return None


def _post_hook(register, hook):
    """`register(hook)` with the keyword arguments (a model called as `model(**batch)` shows
    its inputs there) and called after an exception too (else the depth would skew)."""
    try:
        return register(hook, with_kwargs=True, always_call=True)
    except TypeError:  # torch without always_call
        return register(hook, with_kwargs=True)


def install(session: "Session", patches: ClassPatches) -> ForwardWatch:
    """Install the global forward hooks and the Module method wrappers."""
    watch = ForwardWatch(session)
    watch.install(patches)
    patches.wrap(torch.nn.Module, "train", _make_train(session))
    patches.wrap(torch.nn.Module, "zero_grad", _make_zero_grad(session))
    patches.wrap(torch.nn.Module, "load_state_dict", _make_load_state_dict(session))
    patches.wrap(torch.nn.Module, "compile", _make_compile(session))
    patches.wrap(torch, "compile", _make_torch_compile(session))
    return watch


def _make_train(session: "Session"):
    def make(original):
        def train(self, mode=True):
            # Module.train recurses through the children: only the outermost call counts.
            if not session.on or session.in_train_call or _is_compiling():
                return original(self, mode)
            session.in_train_call = True
            try:
                session.safe(session.on_module_mode, self, bool(mode))
                return original(self, mode)
            finally:
                session.in_train_call = False
        return train
    return make


def _make_zero_grad(session: "Session"):
    def make(original):
        def zero_grad(self, *args, **kwargs):
            if session.on and not _is_compiling():
                session.safe(session.on_module_zero_grad, self)
            return original(self, *args, **kwargs)
        return zero_grad
    return make


def _make_load_state_dict(session: "Session"):
    def make(original):
        def load_state_dict(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            if session.on and not _is_compiling():
                session.safe(session.on_module_load_state, self)
            return result
        return load_state_dict
    return make


def _make_compile(session: "Session"):
    def make(original):
        def compile(self, *args, **kwargs):  # noqa: A001 - the method's own name
            result = original(self, *args, **kwargs)
            if session.on:
                session.safe(session.on_compile)
                session.safe(session.on_module_compiled, self)
            return result
        return compile
    return make


def _make_torch_compile(session: "Session"):
    def make(original):
        def compile(*args, **kwargs):  # noqa: A001 - torch.compile's own name
            result = original(*args, **kwargs)
            if session.on:
                session.safe(session.on_compile)
            target = args[0] if args else kwargs.get("model")
            # torch.compile(backend=...) used as a decorator comes back with the function;
            # Module.compile() compiles the module's bound _call_impl (noted on its own)
            owner = getattr(target, "__self__", None)
            if session.on and target is not None and not isinstance(target, torch.nn.Module) \
                    and not isinstance(owner, torch.nn.Module):
                session.safe(session.on_function_compiled, target)
            return result
        return compile
    return make
