"""Class-level wrappers with an exact undo.

The zero-code mode stores nothing on the user's objects: a wrapper or hook kept in an
instance's `__dict__` travels with `copy.deepcopy` (the copy's `eval()` would switch the
*original* model) and breaks pickling (`torch.save(model)`, and a scheduler's
`state_dict()`, which copies its `__dict__`). So it wraps methods on classes
(`torch.optim.Optimizer.zero_grad`, `LRScheduler.step`, ...) and module attributes
(`torch.save`); each wrapper looks the instance up in the session's tables and lets
objects it does not know pass straight through.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from diagnose.recorder.hooks import UndoList

_MARK = "__diagnose_wrapped__"


def is_wrapper(fn: Any) -> bool:
    """Whether `fn` is one of diagnose's wrappers."""
    return bool(getattr(fn, _MARK, False))


class ClassPatches(UndoList):
    """An undo list of attributes replaced on classes and modules."""

    def wrap(self, owner: Any, name: str, make: Callable[[Callable], Callable]) -> bool:
        """Replace `owner.name` (defined on `owner` itself) by `make(original)`.

        Returns False, changing nothing, when `owner` does not define `name` or it is
        already wrapped.
        """
        original = vars(owner).get(name)
        if original is None or is_wrapper(original):
            return False
        wrapper = make(original)
        functools.update_wrapper(wrapper, original)
        setattr(wrapper, _MARK, True)
        setattr(owner, name, wrapper)

        def undo() -> None:
            if vars(owner).get(name) is wrapper:  # never undo someone else's later patch
                setattr(owner, name, original)

        self._undo.append(undo)
        return True

    def wrap_defining(self, cls: type, name: str, make: Callable[[Callable], Callable]) -> bool:
        """Wrap `name` on the class of `cls`'s MRO that defines it (a user subclass that
        overrides a method gets its own wrapper; one already wrapped is left alone)."""
        for klass in cls.__mro__:
            if name in vars(klass):
                return self.wrap(klass, name, make)
        return False
