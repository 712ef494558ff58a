"""What a profile trace says, as plain records: `ProfileSummary` and its rows.

Built by `load.load_profile` from torch-tb-profiler's parse of the trace; read by rules
(`dataloader-bottleneck`, `low-gpu-utilization`) and by the three report formats. All
times are milliseconds (`_ms`); shares and utilisation are fractions in [0, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PARTS = ("data_loading", "cpu_exec", "kernel", "memcpy", "memset", "communication", "runtime", "other")
"""The per-step time breakdown, in torch-tb-profiler's order of precedence: each instant
of a step is counted once, in the first part that covers it, in the order kernel, memcpy,
memset, communication, runtime (CUDA runtime calls), data loading, CPU exec (operators
on the host), other (Python between operators, waiting)."""

PART_LABELS = {"data_loading": "data loading", "cpu_exec": "CPU exec", "kernel": "GPU kernels",
               "memcpy": "memcpy", "memset": "memset", "communication": "communication",
               "runtime": "CUDA runtime", "other": "other"}

STATUS_OK = "ok"
STATUS_UNAVAILABLE = "unavailable"
"""torch-tb-profiler (the `profile` extra) is not installed: nothing parsed."""
STATUS_FAILED = "failed"
"""The trace could not be parsed; `message` says why."""

INSTALL_HINT = ("install the profile extra to get the profile section: pip install 'diagnose[profile]' "
                "(torch-tb-profiler and tensorboard)")


@dataclass
class StepTime:
    """One profiled step (torch.profiler's `ProfilerStep#N` = the recorder's step N)."""

    step: int
    total_ms: float
    parts_ms: dict[str, float]
    """Time per part of PARTS; the parts add up to `total_ms`."""

    def share(self, part: str) -> float:
        """Fraction of the step spent in `part`."""
        return self.parts_ms.get(part, 0.0) / self.total_ms if self.total_ms > 0 else 0.0


@dataclass
class GpuUse:
    """One GPU over the profiled steps (torch-tb-profiler's GPU metrics)."""

    device: int
    name: str | None
    utilization: float
    """Time at least one kernel ran / time of the profiled steps."""
    sm_efficiency: float | None = None
    """Estimated fraction of SMs busy while kernels ran (needs `blocks per SM` in the trace)."""
    occupancy: float | None = None
    """Mean estimated achieved occupancy of the kernels, a fraction."""


@dataclass
class OperatorRow:
    """An operator (aten op, autograd node, ...) summed over the profiled steps."""

    name: str
    calls: int
    host_self_ms: float
    host_total_ms: float
    device_self_ms: float | None = None
    device_total_ms: float | None = None


@dataclass
class KernelRow:
    """A GPU kernel summed over the profiled steps."""

    name: str
    calls: int
    total_ms: float
    mean_us: float
    tensor_cores: bool | None
    """Whether the kernel uses Tensor Cores; None where torch-tb-profiler cannot tell
    (its kernel-name list predates compute capability 9: docs/profiling.md)."""


@dataclass
class ProfileSummary:
    """One rank's profile.

    Attributes:
        status: `ok`, `unavailable` (torch-tb-profiler not installed) or `failed`.
        message: why, when not ok (one line).
        trace_files: the trace files found, relative to the run directory.
        parser: what parsed them (`torch-tb-profiler 0.4.3`).
        steps: the profiled steps, each with its breakdown.
        mean_ms: the mean breakdown over the steps (`total` and each of PARTS).
        gpus: per GPU that ran kernels; empty on a CPU run.
        top_operators, top_kernels: the largest, by self time (device time on a GPU).
        recommendations: torch-tb-profiler's own advice, as plain text.
        adapted: what had to be adapted for current torch traces (docs/profiling.md).
    """

    status: str = STATUS_OK
    message: str = ""
    trace_files: list[str] = field(default_factory=list)
    parser: str = ""
    steps: list[StepTime] = field(default_factory=list)
    mean_ms: dict[str, float] = field(default_factory=dict)
    gpus: list[GpuUse] = field(default_factory=list)
    top_operators: list[OperatorRow] = field(default_factory=list)
    top_kernels: list[KernelRow] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Parsed, with at least one step."""
        return self.status == STATUS_OK and bool(self.steps)

    @property
    def on_gpu(self) -> bool:
        """Kernels ran on a GPU during the profiled steps."""
        return bool(self.gpus)

    def mean_share(self, part: str) -> float:
        """Mean fraction of a profiled step spent in `part`."""
        total = self.mean_ms.get("total", 0.0)
        return self.mean_ms.get(part, 0.0) / total if total > 0 else 0.0

    def step_range(self) -> tuple[int, int] | None:
        """First and last profiled step."""
        return (self.steps[0].step, self.steps[-1].step) if self.steps else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON report (`profile` of a rank)."""
        data = asdict(self)
        data["mean_share"] = {part: round(self.mean_share(part), 4) for part in PARTS} if self.steps else {}
        return data

    def corroboration(self) -> dict[str, Any]:
        """The numbers a rule quotes as evidence: profiled steps and mean shares."""
        first, last = self.step_range() or (None, None)
        out: dict[str, Any] = {"profiled_steps": [first, last],
                               "profile_step_ms": round(self.mean_ms.get("total", 0.0), 3)}
        out.update({f"profile_{part}_share": round(self.mean_share(part), 3) for part in PARTS
                    if self.mean_ms.get(part, 0.0) > 0})
        return out
