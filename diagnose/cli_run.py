"""`diagnose run`: train the reference loop (or the user's own script) under the recorder.

    diagnose run                              # the embedded default task, then a report
    diagnose run --inject eval-with-grad      # see what a warning looks like
    diagnose run train.py -- --lr 3e-4        # the user's unchanged script
    diagnose run --nproc-per-node 2 train.py  # under torchrun, one recorder per rank
    diagnose run --nproc-per-node 2           # the reference loop with DDP, 2 processes
    diagnose run --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 4 --out /shared/x train.py
                                              # torchrun's options pass through (cli_torchrun.py)
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path

import click

from diagnose.cli_torchrun import Launch, launch_options, restarted, wait_for_ranks
from diagnose.recorder.recorder import RecorderOptions

_AMP = ("auto", "fp16", "bf16", "off")
_DEVICES = ("auto", "cpu", "cuda")


def _injection_help() -> str:
    try:
        from reference_loop.injections import INJECTIONS
    except Exception:  # noqa: BLE001 - help must render even if the loop is broken
        return "Fault to inject (repeatable); see `diagnose run --list-injections`."
    names = ", ".join(sorted(INJECTIONS))
    return f"Fault to inject into the reference loop (repeatable), named after the rule it shows: {names}."


def default_run_dir(label: str) -> Path:
    """A new timestamped folder under ./runs/ that does not exist yet."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{label}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def check_out_dir(out: Path, overwrite: bool, shared: bool = False) -> None:
    """Refuse an existing non-empty directory unless --overwrite (nothing is lost silently).
    Under torchrun (one `diagnose run` per rank) only this rank's `rankK/` folder counts:
    the other ranks may already be writing theirs. `shared`: the launcher of one node of
    several, whose ranks each check their own folder (the other nodes' may be there)."""
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} exists and is not a directory")
    if shared:
        return
    if _launched_rank() is not None:
        mine = out / f"rank{_launched_rank()}"
        if mine.is_dir() and any(mine.iterdir()) and not overwrite:
            raise click.UsageError(f"--out {out} already holds {mine.name}/; choose a new directory "
                                   "or pass --overwrite")
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise click.UsageError(
            f"--out {out} is not empty; choose a new directory or pass --overwrite")


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("script", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to write (default: a new timestamped folder under runs/). "
                   "An existing non-empty directory is refused unless --overwrite.")
@click.option("--overwrite", is_flag=True, help="Replace what --out already holds.")
@click.option("--task", type=click.Choice(["images", "chars"]), default=None,
              help="Embedded task of the reference loop: images (small CNN, default) or "
                   "chars (character-level transformer).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Number of epochs.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Stop after this many optimizer steps.")
@click.option("--device", type=click.Choice(_DEVICES), default=None,
              help="auto picks CUDA when available, else CPU.")
@click.option("--amp", type=click.Choice(_AMP), default=None,
              help="Mixed precision. auto: bf16 on CUDA where supported, fp16 + GradScaler on "
                   "other CUDA devices, off on CPU.")
@click.option("--seed", type=int, default=None, help="Random seed (runs are deterministic on CPU).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file with any other TrainConfig field (flags above override it).")
@click.option("--inject", "inject", multiple=True, metavar="RULE", help=_injection_help())
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint to resume the reference loop from (it continues exactly).")
@click.option("--grad-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Per-parameter gradient norms every N steps (raise it for huge models).")
@click.option("--param-every", type=click.IntRange(min=1), default=25, show_default=True,
              help="Per-parameter weight norms every N steps.")
@click.option("--no-report", is_flag=True, help="Do not analyse the run at the end.")
@click.option("--profile", "profile", is_flag=True,
              help="Profile a bounded window of steps with torch.profiler into RUN_DIR/rank0/profile/ "
                   "(TensorBoard, Perfetto); the report gains a profile section.")
@click.option("--profile-steps", default=None, metavar="WAIT,WARMUP,ACTIVE",
              help="The window: skip WAIT steps, warm up WARMUP, record ACTIVE (default 5,2,5: steps "
                   "7-11). Implies --profile.")
@click.option("--nproc-per-node", "nproc", type=click.IntRange(min=1), default=None,
              help="Launch SCRIPT, or the reference loop with DDP (gloo on CPU, nccl on CUDA), "
                   "in N processes through torchrun (torch.distributed.run --standalone), each "
                   "recorded into its own rankK/ folder; one report at the end. The torchrun "
                   "options below pass through (--standalone unless they say where the "
                   "rendezvous is).")
@launch_options
def run(script, script_args, out, overwrite, task, epochs, steps, device, amp, seed,
        config_file, inject, resume, grad_every, param_every, no_report, nproc, profile,
        profile_steps, launch: Launch) -> None:
    """Train under the recorder, then report.

    Without SCRIPT, trains the built-in reference loop on an embedded task (no download).
    With SCRIPT, runs your unchanged training script as `python SCRIPT ARGS` would, with
    the recorder attached (pass the script's own arguments after `--`).
    """
    options = RecorderOptions(grad_every=grad_every, param_every=param_every,
                              profile=_profile_window(profile, profile_steps))
    _check_launch(launch, nproc, out)
    if script is not None:
        loop_only = {"--task": task, "--epochs": epochs, "--steps": steps, "--device": device,
                     "--amp": amp, "--seed": seed, "--config": config_file, "--resume": resume}
        used = [flag for flag, value in loop_only.items() if value is not None] + (
            ["--inject"] if inject else [])
        if used:
            raise click.UsageError(f"{', '.join(used)} only apply to the reference loop, "
                                   "not to a script")
        if not script.exists():
            raise click.UsageError(f"script {script} does not exist")
        out = out or default_run_dir(script.stem)
        check_out_dir(out, overwrite, shared=launch.multi_node)
        if nproc is None:
            code = _run_script(script, list(script_args), out, options, overwrite)
        else:
            code = _run_torchrun(nproc, script, list(script_args), out, options, overwrite, launch)
        _finish(out, no_report, launch)
        sys.exit(code)

    if script_args:
        raise click.UsageError(f"unexpected arguments: {' '.join(script_args)}")
    config = _reference_config(config_file, task=task, epochs=epochs, steps=steps,
                               device=device, amp=amp, seed=seed, inject=list(inject),
                               resume=resume)
    _check_ranks(config, nproc, launch)
    label = getattr(config, "task", "run") + ("-" + "-".join(inject) if inject else "")
    out = out or default_run_dir(label)
    overwrite = overwrite or restarted()  # torchrun restarted this rank: replace its attempt
    check_out_dir(out, overwrite, shared=launch.multi_node)
    if nproc is not None:
        flags = {"--task": task, "--epochs": epochs, "--steps": steps, "--device": device, "--amp": amp,
                 "--seed": seed, "--config": config_file, "--resume": resume,
                 "--grad-every": grad_every, "--param-every": param_every}
        args = [a for flag, value in flags.items() if value is not None for a in (flag, str(value))]
        args += [a for name in inject for a in ("--inject", name)] + (["--overwrite"] if overwrite else [])
        if options.profile is not None:  # every rank profiles the same window
            window = options.profile
            args += ["--profile-steps", f"{window.wait},{window.warmup},{window.active}"]
        code = _torchrun(nproc, ["-m", "diagnose.cli", "run", "--no-report", "--out", str(out), *args], out,
                         f"the reference loop ({config.task}) with DDP", launch)
        _finish(out, no_report, launch)
        sys.exit(code)
    from reference_loop.train import train

    main_rank = _launched_rank() in (None, 0)
    if main_rank:
        click.echo(f"diagnose: training the reference loop ({config.task}) into {out}", err=True)
    try:
        train(config, out, progress=True, overwrite=overwrite,
              recorder_options=options)
    except KeyboardInterrupt:
        click.echo("diagnose: interrupted; the run directory was flushed", err=True)
        _finish(out, no_report)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one line, and the recorded run is kept
        message = str(exc).splitlines()[0] if str(exc) else ""
        click.echo(f"Error: training failed ({type(exc).__name__}: {message}); "
                   f"the run was recorded as crashed in {out}", err=True)
        _finish(out, no_report)
        sys.exit(1)
    if main_rank:  # under torchrun: rank 0 reports, after train() waited for every rank
        _finish(out, no_report)


def _launched_rank() -> int | None:
    """This process's rank when torchrun started several (None otherwise)."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    return rank if world > 1 else None


def _check_launch(launch: Launch, nproc: int | None, out: Path | None) -> None:
    """Usage errors for torchrun's options: they need --nproc-per-node, must make sense
    together, and several nodes must name their shared run directory."""
    if not launch.given:
        return
    if nproc is None:
        raise click.UsageError(f"{', '.join(launch.given)}: torchrun options; they need --nproc-per-node N")
    launch.check()
    if launch.multi_node and out is None:
        raise click.UsageError(f"--nnodes {launch.nnodes} needs --out: the same run directory on every node "
                               "(a shared file system), where each rank writes its rankK/")


def _check_ranks(config, nproc: int | None, launch: Launch | None = None) -> None:
    """A usage error when an injection needs more processes than the run will have, or
    the processes more GPUs than the machine has (NCCL wants one GPU per rank)."""
    from reference_loop.injections import check_world_size

    nodes = launch.nodes[0] if launch is not None else 1
    world = nproc * nodes if nproc else int(os.environ.get("WORLD_SIZE", "1") or 1)
    try:
        check_world_size(config.inject, world)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if nproc and nproc > 1 and config.device != "cpu":
        import torch

        gpus = torch.cuda.device_count()
        if (config.device == "auto" and 0 < gpus < nproc) or (config.device != "auto" and gpus < nproc):
            raise click.UsageError(f"--nproc-per-node {nproc} on CUDA needs one GPU per process; this machine "
                                   f"has {gpus} (use --device cpu, or --nproc-per-node {max(gpus, 1)})")


def _profile_window(profile: bool, steps: str | None):
    """The profiling window asked for, or None; a malformed one is a usage error."""
    from diagnose.profiling.window import ProfileWindow

    if steps is None:
        return ProfileWindow() if profile else None
    try:
        return ProfileWindow.parse(steps)
    except ValueError as exc:
        raise click.UsageError(f"--profile-steps: {exc}")


def _reference_config(config_file, **flags):
    from reference_loop.config import TrainConfig

    try:
        config = TrainConfig.from_toml(config_file) if config_file else TrainConfig()
        overrides = {k: v for k, v in flags.items() if v not in (None, [], ())}
        if "steps" in overrides:
            overrides["max_steps"] = overrides.pop("steps")
        if "resume" in overrides:
            overrides["resume"] = str(overrides["resume"])
        return config.replace(**overrides) if overrides else config
    except (ValueError, TypeError, OSError) as exc:
        raise click.UsageError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _run_script(script: Path, args: list[str], out: Path, options, overwrite: bool) -> int:
    from diagnose.zerocode import run_script

    return run_script(script, args, out, options=options, overwrite=overwrite)


def _run_torchrun(nproc: int, script: Path, args: list[str], out: Path, options, overwrite: bool,
                  launch: Launch) -> int:
    """Run `python -m diagnose.zerocode` in `nproc` processes under torchrun; its exit code."""
    command = ["-m", "diagnose.zerocode", "--out", str(out),
               "--grad-every", str(options.grad_every), "--param-every", str(options.param_every)]
    if options.profile is not None:
        window = options.profile
        command += ["--profile-steps", f"{window.wait},{window.warmup},{window.active}"]
    command += (["--overwrite"] if overwrite else []) + [str(script), "--", *args]
    return _torchrun(nproc, command, out, str(script), launch)


def _torchrun(nproc: int, program: list[str], out: Path, what: str, launch: Launch) -> int:
    """`python -m torch.distributed.run --nproc-per-node N [OPTIONS] PROGRAM` (OPTIONS:
    `--standalone` unless torchrun's options were given); its exit code."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               *launch.arguments(), *program]
    click.echo(f"diagnose: {what} in {launch.describe(nproc)} through torchrun into {out}", err=True)
    previous = os.environ.get(LAUNCHED_ENV)
    os.environ[LAUNCHED_ENV] = "1"  # the workers leave the closing lines to this launcher
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is None:
            os.environ.pop(LAUNCHED_ENV, None)
        else:
            os.environ[LAUNCHED_ENV] = previous


LAUNCHED_ENV = "DIAGNOSE_LAUNCHED"
"""Set for the processes `diagnose run --nproc-per-node` starts: they do not print where the
run went (the launcher does, once)."""


def _finish(out: Path, no_report: bool, launch: Launch | None = None) -> None:
    """Print where the run went and, unless asked not to, the report on it. Of several
    nodes, the launcher with --node-rank 0 reports, once the other nodes' ranks ended."""
    click.echo(f"diagnose: run directory {out}", err=True)
    if no_report:
        return
    if launch is not None and launch.multi_node:
        if not launch.reports:
            click.echo("diagnose: the launcher with --node-rank 0 reports on every node's ranks", err=True)
            return
        pending = wait_for_ranks(out)
        if pending:
            click.echo(f"diagnose: rank(s) {', '.join(map(str, pending))} have not ended yet; the report "
                       f"reads them as running (`diagnose report {out}` later)", err=True)
    from diagnose.report.finish import report_after_run

    report_after_run(out)
