"""``fcvc info``: the Click wrapper around :func:`fcvc_pipeline.stages.info.run_info`."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import common_options, run_and_exit


@click.command()
@common_options
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True,
              help="Read every byte and check every checksum (default: check that every chunk file is there "
                   "with the size it was written with).")
def info(workdir: Path, json_out: bool, verbose: bool, path: Path | None, verify: bool):
    """Describe a feature store: settings, networks, videos complete/failed/in progress, size, damage.

    PATH defaults to <workdir>/features.zarr. Exit 1 when a video is damaged (each is listed with its
    file and the reason). A PATH that is a file is read as a captioner file (`fcvc export`): what it
    holds, or exit 2 naming it when it is damaged, truncated or not one.

    \b
    Examples:
      fcvc info
      fcvc info runs/features.zarr --verify --json
      fcvc info captioner.fcvc
    """
    from fcvc_pipeline.stages.info import run_info  # noqa: PLC0415 -- keeps --help instant

    run_and_exit(lambda: run_info(path, workdir, verify=verify), json_out=json_out, verbose=verbose)
