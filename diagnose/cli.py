"""The `diagnose` command line: `report`, `rules`, `explain` (and `run`, in cli_run.py).

Exit codes (as ruff's): 0 nothing at or above `--fail-on`; 1 findings at or above it;
2 bad usage, an unreadable run directory or an internal error, told in one line
`Error: ...` on stderr, never a traceback.
"""
from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from diagnose import __version__
from diagnose.report import FORMATS, analyse
from diagnose.rules import UnknownRuleError, catalogue, resolve
from diagnose.rules._base import Severity
from diagnose.rundir.reader import RunDirError

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A one-line error for the user: `Error: ...`, exit code 2."""

    exit_code = 2


def _one_line_errors(command: F) -> F:
    """Turn every failure of `command` into `Error: ...` and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (RunDirError, UnknownRuleError) as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None
        except Exception as exc:  # noqa: BLE001 - a bug in diagnose must still read as one line
            raise CliError(f"internal error ({type(exc).__name__}: {exc}); please report it") from None

    return wrapper  # type: ignore[return-value]


class _LazyGroup(click.Group):
    """A group whose heavy subcommands are imported when called, not at start-up:
    `diagnose run` imports torch, and `diagnose report` must not pay for that."""

    lazy: dict[str, str] = {
        "run": "diagnose.cli_run:run",  # `diagnose run`: written by the recorder's author
        "export": "diagnose.integrations.export:export",  # imports torch (SummaryWriter)
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="diagnose")
def main() -> None:
    """Find out why a PyTorch training run is wrong, slow or wasteful.

    Record a run with `diagnose run` (or `Monitor` in your loop), then analyse it with
    `diagnose report RUN_DIR`.
    """


def _names(values: tuple[str, ...]) -> list[str] | None:
    """Repeated and comma-separated option values as one list (None when not given)."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...", type=click.Path(path_type=Path))
@click.option("--format", "format_name", type=click.Choice(sorted(FORMATS)), default="terminal", show_default=True,
              help="Output format. "
                   + "; ".join(f"{f.name}: {f.help.rstrip('.')}" for f in FORMATS.values()) + ".")
@click.option("--select", multiple=True, metavar="NAMES",
              help="Run only these rules or categories (comma-separated or repeated), e.g. numerics,loop.")
@click.option("--ignore", multiple=True, metavar="NAMES",
              help="Do not run these rules or categories (comma-separated or repeated).")
@click.option("--fail-on", type=click.Choice([s.label for s in Severity]), default="error", show_default=True,
              help="Exit with status 1 when a finding is at or above this severity (for CI).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this file instead of standard output.")
@click.option("--html", "html", is_flag=False, flag_value="", default=None, metavar="FILE",
              help="Also write the HTML report to FILE (without FILE: report.html in the run directory). "
                   "Several RUN_DIRs make one comparison page. Give FILE as --html=FILE or after the RUN_DIRs.")
@click.option("--tag-map", "tag_map", multiple=True, metavar="TAG=FIELD",
              help="TensorBoard logs: read TAG as FIELD (loss, val_loss, lr, lr:N, grad_norm, grad_norm:NAME, "
                   "scale, epoch, ..., ignore; docs/integrations.md). Repeat for several tags.")
@_one_line_errors
def report(run_dirs: tuple[Path, ...], format_name: str, select: tuple[str, ...], ignore: tuple[str, ...],
           fail_on: str, output: Path | None, html: str | None, tag_map: tuple[str, ...]) -> None:
    """Analyse one or more run directories and report what is wrong.

    RUN_DIR is a folder written by `diagnose run` or `Monitor` (or one of its rankN/
    folders), or a TensorBoard log directory (SummaryWriter, Lightning, HF Trainer):
    the rules whose inputs the logs hold run, the notes say which could not.
    Progress goes to standard error, the report to standard output.
    """
    from diagnose.integrations.tb_tags import TagMapError, parse_tag_map

    fmt = FORMATS[format_name]
    select_names, ignore_names = _names(select), _names(ignore)
    resolve(catalogue(), select_names, ignore_names)  # bad names fail before any reading
    try:
        parse_tag_map(tag_map)
    except TagMapError as exc:
        raise click.UsageError(str(exc)) from None
    if html == "" and len(run_dirs) > 1:
        raise click.UsageError("--html needs a FILE with several run directories (--html=compare.html)")
    reports = []
    for run_dir in run_dirs:
        click.echo(f"diagnose: reading {run_dir}", err=True)
        reports.append(analyse(run_dir, select_names, ignore_names, tag_map))
    if output is not None:
        with output.open("w", encoding="utf-8") as stream:
            fmt.write(reports, stream)
        click.echo(f"diagnose: wrote {output}", err=True)
    elif fmt.default_output is not None:
        for one in reports:
            path = fmt.default_output(one.run)
            with path.open("w", encoding="utf-8") as stream:
                fmt.write([one], stream)
            click.echo(f"diagnose: wrote {path}", err=True)
    else:
        fmt.write(reports, sys.stdout)
    if html is not None:
        from diagnose.report.html import write_reports

        click.echo(f"diagnose: wrote {write_reports(reports, Path(html) if html else None)}", err=True)
    threshold = Severity.parse(fail_on)
    if any(f.severity >= threshold for one in reports for f in one.findings):
        raise click.exceptions.Exit(1)


@main.command()
@click.option("--format", "format_name", type=click.Choice(["terminal", "json"]), default="terminal",
              show_default=True, help="A table for people or a JSON list for programs.")
@_one_line_errors
def rules(format_name: str) -> None:
    """List every rule: name, category, severity and what it flags."""
    cat = catalogue()
    for problem in cat.problems:
        click.echo(f"diagnose: {problem}", err=True)
    if format_name == "json":
        listing = [{"name": r.name, "category": r.category, "severity": r.severity.label, "summary": r.summary,
                    "requires": list(r.requires), "scope": r.scope} for r in cat.rules]
        click.echo(json.dumps(listing, indent=2))
        return
    from diagnose.report.terminal import render_rule_list

    render_rule_list(list(cat.rules), sys.stdout)


@main.command()
@click.argument("rule")
@_one_line_errors
def explain(rule: str) -> None:
    """Explain one rule: what it flags, why it matters, how to fix it."""
    spec = catalogue().get(rule)
    click.echo(f"# {spec.name} ({spec.category}, {spec.severity.label})\n\n{spec.doc}")


if __name__ == "__main__":  # python -m diagnose.cli
    main()
