"""A filter the zero-code mode needs while it records a script.

Warnings and checkpoints are recorded by the recorder itself, as under `Monitor`:
`warnings.showwarning` by diagnose/recorder/warnings_capture.py (every warning the script
shows becomes a `warning` event at the user's line, then is printed exactly as before),
`torch.save` by the recorder's global wrappers (diagnose/recorder/hooks.py, checkpoints.py).

torch warns when `torch.compile(module)` is called while global module hooks exist (the
zero-code mode's). That warning is about diagnose, not the script, so a filter ignores it
while the script runs.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from diagnose.recorder.checkpoints import MAX_KEYS, describe_checkpoint  # noqa: F401 - re-exported
from diagnose.recorder.warnings_capture import MAX_WARNINGS, user_location  # noqa: F401 - re-exported
from diagnose.zerocode.classpatch import ClassPatches

if TYPE_CHECKING:
    from diagnose.zerocode.session import Session

_COMPILE_HOOKS_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


def install(session: "Session", patches: ClassPatches) -> None:
    warnings.filterwarnings("ignore", message=_COMPILE_HOOKS_WARNING, category=UserWarning)
    added = warnings.filters[0]

    def remove_filter() -> None:
        if added in warnings.filters:
            warnings.filters.remove(added)
            warnings._filters_mutated()  # type: ignore[attr-defined]

    patches.add(remove_filter)
