"""Read a rank's profile traces with torch-tb-profiler's own parser: `load_profile`.

The parsing is torch-tb-profiler's (`RunProfileData`: its reader, its event parser, its
per-step breakdown, GPU metrics, operator and kernel tables and recommendations), called
as a library. Nothing here parses a trace; `adapt_trace` only renames what current
torch writes under names torch-tb-profiler 0.4.3 (its last release) does not know:

- `enumerate(DataLoader)#...__next__` spans are `user_annotation` events in current
  torch (they were `cpu_op`); torch-tb-profiler drops every user annotation that is not
  a `ProfilerStep#N` or a collective, so its "DataLoader" share was always 0 and its
  data-loading recommendation never fired. Re-labelled `cpu_op`.
- CUDA runtime and driver calls (`cudaLaunchKernel`, `cuLaunchKernel`) are `cuda_runtime`
  / `cuda_driver` events (they were `runtime`); unknown categories are dropped, so the
  runtime share was 0 and kernels could not be tied to the operators that launched them.
  Re-labelled `runtime`.
- The forward/backward flow events are `fwdbwd` (they were `forward_backward`).
- `gpu_user_annotation` spans (each record_function mirrored on the GPU timeline,
  `ProfilerStep#N` included) would count every step twice; dropped (the host-side span
  and the kernels themselves carry the same information).

docs/profiling.md keeps this list.
"""
from __future__ import annotations

import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

from diagnose.profiling.summary import (
    INSTALL_HINT, PARTS, STATUS_FAILED, STATUS_UNAVAILABLE, GpuUse, KernelRow, OperatorRow, ProfileSummary,
    StepTime,
)

TRACE_GLOB = "*.pt.trace.json*"
"""What `tensorboard_trace_handler` writes (gzipped or not)."""

TOP_ROWS = 10
"""Operators and kernels kept in the summary (the largest by self time)."""

_CATEGORY_ALIASES = {"cuda_runtime": "runtime", "cuda_driver": "runtime", "fwdbwd": "forward_backward"}
_DROPPED_CATEGORIES = {"gpu_user_annotation"}
_DATALOADER = re.compile(r"^enumerate\((DataLoader|DataPipe)\)#")
_HREF = re.compile(r"<a\s+href=\"([^\"]*)\"[^>]*>(.*?)</a>", re.S)
_TAG = re.compile(r"<[^>]+>")


def trace_files(profile_dir: Path) -> list[Path]:
    """The trace files in a `rankK/profile/` folder, oldest first."""
    if not profile_dir.is_dir():
        return []
    return sorted(p for p in profile_dir.glob(TRACE_GLOB) if p.is_file())


def load_profile(profile_dir: Path, relative_to: Path | None = None) -> ProfileSummary | None:
    """The summary of the newest trace in `profile_dir`, or None when it holds none.

    Never raises for a bad trace: the summary's `status` is `failed` with the reason, or
    `unavailable` when torch-tb-profiler is not installed.
    """
    files = trace_files(profile_dir)
    if not files:
        return None
    names = [str(p.relative_to(relative_to)) if relative_to else str(p) for p in files]
    try:
        import torch_tb_profiler
        from torch_tb_profiler.profiler.data import RunProfileData
    except ImportError:
        return ProfileSummary(status=STATUS_UNAVAILABLE, message=INSTALL_HINT, trace_files=names)
    parser = f"torch-tb-profiler {getattr(torch_tb_profiler, '__version__', '?')}"
    worker, span = _worker_and_span(files[-1].name)
    tb_logger = logging.getLogger("pytorch_profiler")
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)  # its per-event warnings are not the user's business
    try:
        with tempfile.TemporaryDirectory(prefix="diagnose-profile-") as cache, warnings.catch_warnings():
            # its kernel table passes pandas a `copy=` keyword that pandas 3 deprecates
            warnings.simplefilter("ignore")
            _, trace_json = RunProfileData._preprocess_file(str(files[-1]), cache)
            adapted = adapt_trace(trace_json)
            data = RunProfileData.from_json(worker, span, trace_json)
        summary = summarize(data)
        adapted += drop_tensor_core_verdict(summary, data.device_props)
    except Exception as exc:  # noqa: BLE001 - a bad trace is a note, not a crash
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return ProfileSummary(status=STATUS_FAILED, message=f"could not parse {names[-1]}: {message}",
                              trace_files=names, parser=parser)
    finally:
        tb_logger.setLevel(level)
    summary.trace_files, summary.parser, summary.adapted = names, parser, adapted
    if len(files) > 1:
        summary.adapted.append(f"{len(files)} traces found; the newest was read")
    return summary


def adapt_trace(trace_json: dict[str, Any]) -> list[str]:
    """Rename, in place, the event categories current torch writes under names
    torch-tb-profiler does not know (module docstring); one line per kind of change."""
    counts: dict[str, int] = {}
    kept = []
    for event in trace_json.get("traceEvents", []):
        cat = event.get("cat")
        if cat in _DROPPED_CATEGORIES:
            counts[f"{cat} spans dropped"] = counts.get(f"{cat} spans dropped", 0) + 1
            continue
        if cat in _CATEGORY_ALIASES:
            event["cat"] = _CATEGORY_ALIASES[cat]
            key = f"{cat} events read as {event['cat']}"
            counts[key] = counts.get(key, 0) + 1
        elif cat == "user_annotation" and _DATALOADER.match(str(event.get("name", ""))):
            event["cat"] = "cpu_op"
            counts["DataLoader spans read as cpu_op"] = counts.get("DataLoader spans read as cpu_op", 0) + 1
        kept.append(event)
    trace_json["traceEvents"] = kept
    return [f"{n} {what}" for what, n in counts.items()]


def summarize(data: Any) -> ProfileSummary:
    """A `ProfileSummary` from torch-tb-profiler's parsed `RunProfileData`."""
    from torch_tb_profiler.profiler.event_parser import ProfileRole
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    roles = {"kernel": ProfileRole.Kernel, "memcpy": ProfileRole.Memcpy, "memset": ProfileRole.Memset,
             "communication": ProfileRole.Communication, "runtime": ProfileRole.Runtime,
             "data_loading": ProfileRole.DataLoader, "cpu_exec": ProfileRole.CpuOp, "other": ProfileRole.Other}
    assert set(roles) == set(PARTS)
    steps = []
    for name, costs in zip(data.steps_names, data.steps_costs):
        parts = {part: costs.costs[role] / 1000.0 for part, role in roles.items()}
        steps.append(StepTime(step=int(name), total_ms=costs.costs[ProfileRole.Total] / 1000.0, parts_ms=parts))
    mean = {part: data.avg_costs.costs[role] / 1000.0 for part, role in roles.items()}
    mean["total"] = data.avg_costs.costs[ProfileRole.Total] / 1000.0

    metrics = data.gpu_metrics_parser
    gpus = []
    for gpu in sorted(metrics.gpu_ids):
        info = RunGenerator._get_gpu_info(data.device_props, gpu) or {}
        sm = metrics.avg_approximated_sm_efficiency_per_device[gpu]
        occupancy = metrics.avg_occupancy_per_device[gpu]
        gpus.append(GpuUse(device=int(gpu), name=info.get("Name"),
                           utilization=float(metrics.gpu_utilization[gpu] or 0.0),
                           sm_efficiency=None if sm is None else float(sm),
                           occupancy=None if occupancy is None else float(occupancy) / 100.0))

    on_device = bool(data.has_kernel or data.has_memcpy_or_memset)
    ops = sorted(data.op_list_groupby_name or [],
                 key=lambda op: op.self_device_duration if on_device else op.self_host_duration, reverse=True)
    top_ops = [OperatorRow(name=op.name, calls=int(op.calls), host_self_ms=op.self_host_duration / 1000.0,
                           host_total_ms=op.host_duration / 1000.0,
                           device_self_ms=op.self_device_duration / 1000.0 if on_device else None,
                           device_total_ms=op.device_duration / 1000.0 if on_device else None)
               for op in ops[:TOP_ROWS]]
    top_kernels = []
    if data.kernel_stat is not None and len(data.kernel_stat):
        stat = data.kernel_stat.sort_values("sum", ascending=False).head(TOP_ROWS)
        top_kernels = [KernelRow(name=str(name), calls=int(row["count"]), total_ms=float(row["sum"]) / 1000.0,
                                 mean_us=float(row["mean"]), tensor_cores=bool(row["tc_used"]))
                       for name, row in stat.iterrows()]
    return ProfileSummary(steps=steps, mean_ms=mean, gpus=gpus, top_operators=top_ops, top_kernels=top_kernels,
                          recommendations=[plain_text(r) for r in data.recommendations])


def drop_tensor_core_verdict(summary: ProfileSummary, device_props: Any) -> list[str]:
    """On Hopper and later GPUs (compute capability 9+), torch-tb-profiler cannot tell
    which kernels use Tensor Cores: its list of Tensor Core kernel names (from NVIDIA's
    PyProf) predates cuBLASLt's `nvjet_sm90_*` and cuDNN's `*wgmma*` kernels, so it calls
    an fp16 run's GEMMs "no Tensor Cores" and advises enabling AMP. There the per-kernel
    flag becomes unknown (None) and that advice is dropped; a line says so."""
    majors = [p.get("computeMajor") for p in (device_props or []) if isinstance(p, dict)]
    if not any(isinstance(m, int) and m >= 9 for m in majors):
        return []
    for kernel in summary.top_kernels:
        kernel.tensor_cores = None
    before = len(summary.recommendations)
    summary.recommendations = [r for r in summary.recommendations if "Tensor Cores" not in r]
    dropped = " and its 'enable AMP' advice dropped" if len(summary.recommendations) < before else ""
    return [f"Tensor Core use not assessed on compute capability {max(majors)}.x (torch-tb-profiler does not "
            f"know its kernel names){dropped}"]


def plain_text(html: str) -> str:
    """torch-tb-profiler's recommendation HTML as text: links become `text (url)`."""
    text = _HREF.sub(lambda m: f"{m.group(2)} ({m.group(1)})", html)
    return " ".join(_TAG.sub("", text).split())


def _worker_and_span(name: str) -> tuple[str, str | None]:
    """`rank0.1795515.pt.trace.json.gz` -> ("rank0", "1795515"), as TensorBoard names them."""
    stem = name.split(".pt.trace.json")[0]
    worker, _, span = stem.rpartition(".")
    return (worker, span) if worker and span.isdigit() else (stem, None)


def read_profile(rank_dir: Path, meta: dict[str, Any], notes: list[str]) -> ProfileSummary | None:
    """The reader's entry point: the rank's profile summary, or None when it was not
    profiled. Notes what went wrong: a window asked for but never written (the run
    ended first), a trace that would not parse, the parser not installed."""
    from diagnose.rundir.schema import PROFILE_DIR

    profile_dir = rank_dir / PROFILE_DIR
    summary = load_profile(profile_dir, relative_to=rank_dir.parent)
    label = f"{rank_dir.name}/{PROFILE_DIR}"
    asked = (meta.get("options") or {}).get("profile") if isinstance(meta.get("options"), dict) else None
    if summary is None:
        if isinstance(asked, dict) and all(isinstance(asked.get(k), int) for k in ("wait", "warmup", "active")):
            first = asked["wait"] + asked["warmup"]
            notes.append(f"{label}: profiling was asked for steps {first}-{first + asked['active'] - 1} but no "
                         "trace was written (the run ended before them, or the profiler failed: see events)")
        return None
    if summary.status in (STATUS_UNAVAILABLE, STATUS_FAILED):
        notes.append(f"{label}: {summary.message}")
    return summary
