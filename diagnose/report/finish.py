"""The report `diagnose run` prints and writes at the end of a run.

Analysis problems never turn a finished training run into a failure: they are reported
in one line and the run directory stays as it is for `diagnose report` later.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


def report_after_run(run_dir: Path) -> Path | None:
    """Print the terminal summary of `run_dir`, write its HTML report, return its path."""
    from diagnose.report import FORMATS, analyse

    try:
        report = analyse(run_dir)
    except Exception as exc:  # noqa: BLE001 - the training already happened; keep it
        click.echo(f"diagnose: could not analyse {run_dir}: {exc}", err=True)
        return None
    FORMATS["terminal"].write([report], sys.stdout)
    try:
        from diagnose.report.html import write_reports

        path = write_reports([report], None)
    except Exception as exc:  # noqa: BLE001
        click.echo(f"diagnose: could not write the HTML report: {exc}", err=True)
        return None
    click.echo(f"diagnose: report {path}", err=True)
    return path
