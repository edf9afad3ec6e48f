"""``fcvc runs``: the Click wrapper around :func:`fcvc_pipeline.stages.runs.run_runs`."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import common_options, run_and_exit


@click.command()
@common_options
def runs(workdir: Path, json_out: bool, verbose: bool):
    """List the runs of the work directory: status, epochs, CIDEr, size.

    One line per folder under <workdir>/runs: model, status (done, running, interrupted), epochs
    done/planned, best validation CIDEr and its epoch, test CIDEr once `fcvc score` scored it, the beam
    size chosen on validation, parameters and size on disk. CIDEr is shown x100 like every fcvc table;
    --json gives the raw values.

    A run without a manifest counts as running while its files were written in the last 10 minutes (or
    three of its epochs), else as interrupted. No runs: a message on stderr, exit 0 (--json: "runs": []).
    `fcvc info <workdir>/runs/NAME` shows one run in full.

    \b
    Examples:
      fcvc runs
      FCVC_WORKDIR=work fcvc runs --json
    """
    from fcvc_pipeline.stages.runs import format_runs, run_runs  # noqa: PLC0415 -- keeps --help instant

    def go():
        result = run_runs(workdir)
        if not json_out and result.runs:
            click.echo(format_runs(result.runs))
        return result

    run_and_exit(go, json_out=json_out, verbose=verbose)
