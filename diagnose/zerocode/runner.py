"""Run a user's script as `python SCRIPT ARGS` would, with the zero-code recorder on.

Same `__main__` (`runpy.run_path(..., run_name="__main__")`), `sys.argv = [script,
*args]`, `sys.path[0]` = the script's folder, working directory unchanged, stdout and
stderr untouched. The exit code is the script's: 0 when it ends, `n` for `sys.exit(n)`
(a non-integer `sys.exit("message")` prints the message and gives 1, as Python does), 1
for an uncaught exception after its traceback is printed by `sys.excepthook` (the
frames of diagnose and runpy left out, so it reads like Python's), 130 for Ctrl-C and
143 for SIGTERM (the script unwinds, so the record is flushed).
"""
from __future__ import annotations

import runpy
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType

from diagnose.recorder.recorder import RecorderOptions
from diagnose.rundir import schema
from diagnose.zerocode.session import Session

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM
_OUR_FILES = (str(Path(__file__).resolve().parent), str(Path(runpy.__file__).resolve()),
              "<frozen runpy>")


def run_script(script: Path, args: list[str], run_dir: Path, *,
               options: RecorderOptions | None = None, overwrite: bool = False) -> int:
    """Run `script` unchanged with the recorder attached; return its exit code.

    Raises:
        RunDirExistsError: `run_dir` already holds a run and `overwrite` is False.
        FileNotFoundError: `script` does not exist.
    """
    script = Path(script)
    if not script.is_file():
        raise FileNotFoundError(f"can't open file {str(script)!r}: no such file")
    path = script.resolve()
    args = [str(a) for a in args]
    config = {"zero_code": {"script": str(path), "args": args}}
    session: Session | None
    try:
        session = Session(run_dir, options=options or RecorderOptions(), overwrite=overwrite,
                          config=config)
    except FileExistsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the training matters more than its record
        print(f"diagnose: could not start the recorder ({type(exc).__name__}: {exc}); "
              "running the script without it", file=sys.stderr)
        session = None
    if session is not None:
        session.rec.event("zerocode", script=str(path), args=args,
                          inferred={"models": "first optimizer step", "phases": "call order",
                                    "epochs": "training DataLoader iterations"})
        session.install()
    saved_argv, saved_path0 = sys.argv[:], (sys.path[0] if sys.path else None)
    sys.argv = [str(script), *args]
    if sys.path:
        sys.path[0] = str(path.parent)
    else:
        sys.path.insert(0, str(path.parent))
    terminated = _SigtermToExit()
    status, error, code = schema.STATUS_FINISHED, None, 0
    try:
        terminated.install()
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc.code)
        if terminated.fired:
            status, error = schema.STATUS_INTERRUPTED, "SIGTERM"
        elif code != 0:
            status, error = schema.STATUS_CRASHED, f"exited with code {code}"
    except KeyboardInterrupt as exc:
        _print_exception(exc)
        code, status, error = EXIT_INTERRUPTED, schema.STATUS_INTERRUPTED, "KeyboardInterrupt"
        _record_exception(session, exc)
    except BaseException as exc:  # noqa: BLE001 - reported like Python, then exit code 1
        _print_exception(exc)
        code, status, error = 1, schema.STATUS_CRASHED, f"{type(exc).__name__}: {exc}"
        _record_exception(session, exc)
    finally:
        terminated.restore()
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0
        _flush_stdio()
        if session is not None:
            try:
                session.close(status, error)
            except Exception as exc:  # noqa: BLE001 - the script's exit code still stands
                print(f"diagnose: could not finish the record ({type(exc).__name__}: {exc})",
                      file=sys.stderr)
    return code


def _exit_code(code: object) -> int:
    """The process exit code Python gives `sys.exit(code)` (printing a non-int code)."""
    if code is None:
        return 0
    if isinstance(code, bool):
        return int(code)
    if isinstance(code, int):
        return code & 0xFF if code >= 0 else code % 256
    print(code, file=sys.stderr)
    return 1


def _print_exception(exc: BaseException) -> None:
    """Print the traceback as Python would for the script, through `sys.excepthook`."""
    tb = _script_frames(exc.__traceback__)
    exc.__traceback__ = tb  # the default hook prints the exception's own traceback
    try:
        sys.excepthook(type(exc), exc, tb)
    except Exception:  # noqa: BLE001 - a broken excepthook: Python falls back to this
        traceback.print_exception(type(exc), exc, tb)


def _script_frames(tb: TracebackType | None) -> TracebackType | None:
    """Drop the leading frames of diagnose and runpy."""
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OUR_FILES):
        tb = tb.tb_next
    return tb


def _record_exception(session: Session | None, exc: BaseException) -> None:
    if session is None or session.rec._closed:
        return
    from diagnose.monitor import record_exception

    try:
        record_exception(session.rec, exc)
    except Exception:  # noqa: BLE001
        pass


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


class _SigtermToExit:
    """SIGTERM unwinds the script like Ctrl-C (SystemExit 143), so the record is flushed.

    Installed only where SIGTERM would kill the process outright (its handler is the
    default) and only in the main thread; a handler the script installs replaces it.
    """

    def __init__(self) -> None:
        self.fired = False
        self._previous = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                self._previous = signal.signal(signal.SIGTERM, self._handle)
                self._installed = True
        except (ValueError, OSError):
            pass

    def _handle(self, signum, frame) -> None:
        self.fired = True
        raise SystemExit(EXIT_TERMINATED)

    def restore(self) -> None:
        if not self._installed:
            return
        try:
            if signal.getsignal(signal.SIGTERM) == self._handle:
                signal.signal(signal.SIGTERM, self._previous)
        except (ValueError, OSError):
            pass
        self._installed = False
