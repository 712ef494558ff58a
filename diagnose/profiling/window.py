"""Which optimizer steps a profile covers: torch.profiler's wait / warmup / active.

The window is bounded (torch.profiler's `repeat=1`): the profiler skips `wait` steps,
warms up for `warmup` (recording but discarding, so start-up costs stay out of the
trace), records `active` steps, writes the trace once, and is stopped for the rest of
the run, so the steps after the window cost nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_WAIT = 5
"""Steps skipped first: lazy CUDA/cuDNN initialisation, allocator growth and autotuning
happen in the first few steps and would dominate a trace of them."""
DEFAULT_WARMUP = 2
"""Steps recorded and thrown away before the window (torch.profiler warns without any)."""
DEFAULT_ACTIVE = 5
"""Steps in the trace: enough for a per-step mean, small enough to keep a GPU trace of a
GPT-2-sized model to a few MB gzipped."""


@dataclass(frozen=True)
class ProfileWindow:
    """A bounded profiling window, counted in optimizer steps from the start of the run.

    Steps `wait + warmup` to `wait + warmup + active - 1` (numbered from 0, as in
    steps.jsonl) end up in the trace.
    """

    wait: int = DEFAULT_WAIT
    """Steps not profiled at all."""
    warmup: int = DEFAULT_WARMUP
    """Steps profiled and discarded."""
    active: int = DEFAULT_ACTIVE
    """Steps in the trace (at least 1)."""

    def __post_init__(self) -> None:
        if self.wait < 0 or self.warmup < 0 or self.active < 1:
            raise ValueError(f"profile steps must be WAIT>=0, WARMUP>=0, ACTIVE>=1; got "
                             f"{self.wait},{self.warmup},{self.active}")

    @property
    def total(self) -> int:
        """Steps from the start of the run to the end of the window."""
        return self.wait + self.warmup + self.active

    @property
    def first_traced(self) -> int:
        """The first step in the trace."""
        return self.wait + self.warmup

    def to_dict(self) -> dict[str, int]:
        """As stored in meta.jsonl's start record (`options.profile`)."""
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> ProfileWindow:
        """`"5,2,5"` -> ProfileWindow(5, 2, 5); ValueError with a one-line message otherwise."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"profile steps must be three integers WAIT,WARMUP,ACTIVE (e.g. 5,2,5); got {text!r}")
        return cls(*(int(p) for p in parts))

    @classmethod
    def coerce(cls, value: Any) -> ProfileWindow | None:
        """What `Monitor(profile=...)` accepts: None/False (off), True (the default
        window), a ProfileWindow, a `"WAIT,WARMUP,ACTIVE"` string or a 3-tuple."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return cls(*(int(v) for v in value))
        raise ValueError(f"profile must be True, 'WAIT,WARMUP,ACTIVE' or a 3-tuple; got {value!r}")
