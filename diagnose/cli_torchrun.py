"""torchrun's own options on `diagnose run`, passed through to `torch.distributed.run`.

    diagnose run --nproc-per-node 2 train.py                    # one node: --standalone
    diagnose run --nnodes 2 --node-rank 0 --nproc-per-node 4 \\
        --master-addr node0 --master-port 29500 --out /shared/runs/x train.py
    diagnose run --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint node0:29400 --rdzv-id job7 --out /shared/runs/x train.py

`launch_options` adds the options to the command (spelt as torchrun spells them);
`Launch` holds what was given, checks it (a one-line usage error for what torchrun would
reject or silently ignore) and turns it back into torchrun's arguments. Nothing here
launches anything: cli_run.py does, and it keeps torchrun's defaults for what is not given.
"""
from __future__ import annotations

import functools
import json
import os
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path

import click

_STD = re.compile(r"^[0-3]$|^\d+:[0-3](,\d+:[0-3])*$")  # torchrun's Std.from_str
_RDZV = ("static", "c10d", "etcd", "etcd-v2")  # the handlers torch registers


@dataclass(frozen=True)
class Launch:
    """torchrun options given to `diagnose run` (None: not given, torchrun's default)."""

    nnodes: str | None = None
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_backend: str | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    rdzv_conf: str | None = None
    standalone: bool = False
    max_restarts: int | None = None
    monitor_interval: float | None = None
    start_method: str | None = None
    local_addr: str | None = None
    log_dir: Path | None = None
    redirects: str | None = None
    tee: str | None = None
    local_ranks_filter: str | None = None

    @property
    def given(self) -> list[str]:
        """The options given, as flags (`--nnodes`, ...)."""
        return [_flag(f.name) for f in fields(self) if getattr(self, f.name) not in (None, False)]

    @property
    def nodes(self) -> tuple[int, int]:
        """(min, max) nodes; (1, 1) when --nnodes is not given."""
        if self.nnodes is None:
            return 1, 1
        low, _, high = self.nnodes.partition(":")
        return int(low), int(high or low)

    @property
    def multi_node(self) -> bool:
        return self.nodes[1] > 1

    @property
    def reports(self) -> bool:
        """Whether this node's launcher prints the report: the one with --node-rank 0
        (torchrun's default), which holds rank 0 under the static rendezvous."""
        return not self.multi_node or not self.node_rank

    def check(self) -> None:
        """A click.UsageError for a malformed value or a combination torchrun would reject
        or silently ignore."""
        if self.nnodes is not None:
            if not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", self.nnodes):
                raise click.UsageError(f"--nnodes {self.nnodes!r}: expected N or MIN:MAX (positive integers)")
            low, high = self.nodes
            if low > high:
                raise click.UsageError(f"--nnodes {self.nnodes}: MIN is larger than MAX")
        for flag, value in (("--redirects", self.redirects), ("--tee", self.tee)):
            if value is not None and not _STD.match(value):
                raise click.UsageError(f"{flag} {value!r}: expected 0-3 (none, stdout, stderr, both) "
                                       "or LOCAL_RANK:N,... such as 0:3,1:2")
        if self.local_ranks_filter is not None and not re.fullmatch(r"\d+(,\d+)*", self.local_ranks_filter):
            raise click.UsageError(f"--local-ranks-filter {self.local_ranks_filter!r}: expected local ranks "
                                   "separated by commas, such as 0,1")
        if self.rdzv_conf is not None and not re.fullmatch(r"[^=,]+=[^,]*(,[^=,]+=[^,]*)*", self.rdzv_conf):
            raise click.UsageError(f"--rdzv-conf {self.rdzv_conf!r}: expected KEY=VALUE,KEY=VALUE")
        rendezvous = [flag for flag in self.given if flag not in (
            "--standalone", "--max-restarts", "--monitor-interval", "--start-method", "--local-addr",
            "--log-dir", "--redirects", "--tee", "--local-ranks-filter")]
        if self.standalone and (self.multi_node or rendezvous not in ([], ["--nnodes"])):
            raise click.UsageError(f"--standalone starts its own rendezvous on this machine, for one node; "
                                   f"it cannot go with {', '.join(rendezvous)}")
        low, high = self.nodes
        static = self.rdzv_backend in (None, "static")
        if static and low != high:
            raise click.UsageError(f"--nnodes {self.nnodes}: a range of nodes needs a dynamic rendezvous "
                                   "(--rdzv-backend c10d --rdzv-endpoint HOST:PORT)")
        if not static and (self.master_addr is not None or self.master_port is not None):
            raise click.UsageError(f"--master-addr and --master-port only apply to the static rendezvous; "
                                   f"with --rdzv-backend {self.rdzv_backend} give --rdzv-endpoint HOST:PORT")
        if not static and not self.rdzv_endpoint:
            raise click.UsageError(f"--rdzv-backend {self.rdzv_backend} needs --rdzv-endpoint HOST:PORT")
        if self.node_rank is not None and self.node_rank >= high:
            raise click.UsageError(f"--node-rank {self.node_rank} with {high} node(s): "
                                   f"node ranks go from 0 to {high - 1}")
        if self.multi_node and static and self.master_addr is None and not self.rdzv_endpoint:
            raise click.UsageError(f"--nnodes {self.nnodes} needs --master-addr HOST (the node with "
                                   "--node-rank 0) or --rdzv-backend c10d --rdzv-endpoint HOST:PORT, "
                                   "so that the nodes find each other")
        if self.multi_node and static and self.node_rank is None:
            raise click.UsageError(f"--nnodes {self.nnodes} with the static rendezvous needs --node-rank "
                                   "on every node (0 on the node of --master-addr)")

    def arguments(self) -> list[str]:
        """torchrun's arguments for these options; --standalone when nothing says where the
        rendezvous is (one node, as before these options existed)."""
        args: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value is False or f.name == "standalone":
                continue
            args += [_flag(f.name), str(value)]
        single = not any(flag in self.given for flag in (
            "--node-rank", "--master-addr", "--master-port", "--rdzv-backend", "--rdzv-endpoint",
            "--rdzv-id", "--rdzv-conf")) and not self.multi_node
        return args + (["--standalone"] if self.standalone or single else [])

    def describe(self, nproc: int) -> str:
        """`2 processes` or `2 processes on this node (node rank 1 of 2)`."""
        text = f"{nproc} process{'es' if nproc > 1 else ''}"
        if self.multi_node:
            where = f"node rank {self.node_rank}" if self.node_rank is not None else "a node"
            text += f" on this node ({where} of {self.nnodes})"
        return text


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_OPTIONS = [
    click.option("--nnodes", default=None, metavar="N|MIN:MAX",
                 help="torchrun: number of nodes (a range for an elastic job with --rdzv-backend c10d). "
                      "Start `diagnose run` on every node with the same options and the same --out "
                      "(a shared file system); the launcher with --node-rank 0 prints the report."),
    click.option("--node-rank", type=click.IntRange(min=0), default=None,
                 help="torchrun: this node's rank, 0 to NNODES-1 (static rendezvous)."),
    click.option("--master-addr", default=None, metavar="HOST",
                 help="torchrun: address of the node with --node-rank 0 (static rendezvous)."),
    click.option("--master-port", type=click.IntRange(1, 65535), default=None,
                 help="torchrun: port on --master-addr (static rendezvous; torchrun's default 29500)."),
    click.option("--rdzv-backend", type=click.Choice(_RDZV), default=None,
                 help="torchrun: rendezvous backend (static when not given; c10d for elastic jobs)."),
    click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                 help="torchrun: where the rendezvous is (c10d: one node's address)."),
    click.option("--rdzv-id", default=None, help="torchrun: job id, the same on every node."),
    click.option("--rdzv-conf", default=None, metavar="KEY=VALUE,...",
                 help="torchrun: more rendezvous settings (join_timeout=600, ...)."),
    click.option("--standalone", is_flag=True,
                 help="torchrun: a rendezvous of its own on a free port, for one node (the default "
                      "when no option above is given)."),
    click.option("--max-restarts", type=click.IntRange(min=0), default=None,
                 help="torchrun: restarts of the worker group before failing. A restarted rank "
                      "records afresh into its rankK/ (the failed attempt's record is replaced)."),
    click.option("--monitor-interval", type=click.FloatRange(min=0, min_open=True), default=None,
                 metavar="SECONDS", help="torchrun: how often it checks the workers."),
    click.option("--start-method", type=click.Choice(("spawn", "fork", "forkserver")), default=None,
                 help="torchrun: how it starts the workers."),
    click.option("--local-addr", default=None, metavar="HOST",
                 help="torchrun: this node's address for the rendezvous."),
    click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="torchrun: folder for the workers' logs (with --redirects / --tee)."),
    click.option("--redirects", default=None, metavar="0-3|RANK:N,...",
                 help="torchrun: send the workers' stdout (1), stderr (2) or both (3) to --log-dir."),
    click.option("--tee", default=None, metavar="0-3|RANK:N,...",
                 help="torchrun: as --redirects, and to the console as well."),
    click.option("--local-ranks-filter", default=None, metavar="0,1,...",
                 help="torchrun: show only these local ranks' output on the console."),
]


def launch_options(command):
    """Decorator: add torchrun's options to `command`, which receives them as `launch`."""
    names = [f.name for f in fields(Launch)]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        launch = Launch(**{name: kwargs.pop(name) for name in names})
        return command(*args, launch=launch, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def restarted() -> bool:
    """True in a worker that torchrun restarted (--max-restarts): its rank folder holds the
    failed attempt's record, which the new attempt replaces."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def pending_ranks(out: Path) -> list[int]:
    """Ranks of the job (its size read from rank 0's meta.jsonl) without a final status
    record in `out` yet: on a shared file system, the ranks of other nodes still running."""
    world = _meta_value(out / "rank0" / "meta.jsonl", "world_size")
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        return []
    return [rank for rank in range(world)
            if _meta_value(out / f"rank{rank}" / "meta.jsonl", "status") in (None, "running")]


def wait_for_ranks(out: Path, timeout_s: float = 30.0, poll_s: float = 0.5) -> list[int]:
    """Wait up to `timeout_s` for every rank in `out` to write its end; the ranks still
    pending then (a killed rank on another node never writes one)."""
    deadline = time.monotonic() + timeout_s
    pending = pending_ranks(out)
    if pending:
        click.echo(f"diagnose: waiting for rank(s) {', '.join(map(str, pending))} of the other nodes "
                   f"to finish (up to {timeout_s:.0f} s)", err=True)
    while pending and time.monotonic() < deadline:
        time.sleep(poll_s)
        pending = pending_ranks(out)
    return pending


def _meta_value(path: Path, key: str):
    """The last value of `key` in a meta.jsonl (None when absent or unreadable)."""
    value = None
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                if isinstance(record, dict) and key in record:
                    value = record[key]
    except OSError:
        return None
    return value
