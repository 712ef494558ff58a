"""`python -m diagnose.zerocode [OPTIONS] SCRIPT [ARGS ...]`: record an unchanged script.

The same as `diagnose run SCRIPT -- ARGS` without the report at the end; handy under
torchrun (`torchrun --nproc-per-node 2 -m diagnose.zerocode --out runs/x train.py`),
where each rank writes its own `rankK/` folder. Options come before SCRIPT; everything
after SCRIPT (or after `--`) is the script's. The exit code is the script's; an
interrupted script ends by the same signal it would have died of without diagnose.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from diagnose.profiling.window import ProfileWindow
from diagnose.recorder.recorder import RecorderOptions, RunDirExistsError
from diagnose.zerocode.runner import EXIT_INTERRUPTED, EXIT_TERMINATED, run_script


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diagnose.zerocode",
        description="Run a PyTorch training script unchanged, recording it for "
                    "`diagnose report`.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Run directory (default: a new timestamped folder under runs/).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace a run the directory already holds.")
    parser.add_argument("--grad-every", type=int, default=1,
                        help="Per-parameter gradient norms every N steps.")
    parser.add_argument("--param-every", type=int, default=25,
                        help="Per-parameter weight norms every N steps.")
    parser.add_argument("--profile-steps", default=None, metavar="WAIT,WARMUP,ACTIVE",
                        help="Profile these steps with torch.profiler (docs/profiling.md).")
    parser.add_argument("script", type=Path, help="The training script.")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="The script's arguments.")
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    out = ns.out
    if out is None:
        from diagnose.cli_run import default_run_dir

        out = default_run_dir(ns.script.stem)
    sys.argv[0:1] = ["python", "-m", "diagnose.zerocode"]  # the recorded command line
    try:
        options = RecorderOptions(grad_every=ns.grad_every, param_every=ns.param_every,
                                  profile=ProfileWindow.coerce(ns.profile_steps))
        from diagnose.cli_torchrun import restarted

        # torchrun restarted this rank (--max-restarts): its folder holds the failed attempt
        code = run_script(ns.script, args, out, options=options, overwrite=ns.overwrite or restarted())
    except (RunDirExistsError, FileNotFoundError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    # under torchrun once (rank 0), and not at all when `diagnose run` launched it (it says so)
    if os.environ.get("RANK", "0") == "0" and not os.environ.get("DIAGNOSE_LAUNCHED"):
        print(f"diagnose: run directory {out}", file=sys.stderr)
    return code


def _die_like_python(code: int) -> None:
    """End an interrupted run by the signal, as the bare script would have."""
    signum = {EXIT_INTERRUPTED: signal.SIGINT, EXIT_TERMINATED: signal.SIGTERM}.get(code)
    if signum is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if __name__ == "__main__":
    exit_code = main()
    _die_like_python(exit_code)
    sys.exit(exit_code)
