"""``fcvc info``: the Click wrapper around :func:`fcvc_pipeline.stages.info.run_info`."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import common_options, run_and_exit


@click.command()
@common_options
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True,
              help="A feature store: read every byte and check every checksum (default: check that every chunk "
                   "file is there with the size it was written with).")
def info(workdir: Path, json_out: bool, verbose: bool, path: Path | None, verify: bool):
    """Describe a feature store, a run, a checkpoint or a captioner file.

    PATH defaults to <workdir>/features.zarr; what it is is told from its content. A feature store:
    settings, networks, videos complete/failed/in progress, size, damage (exit 1 when a video is damaged,
    each listed with its file and the reason). A run directory (<workdir>/runs/NAME, or just NAME): what
    `fcvc runs` shows for it, its training config, the decoding chosen, and each checkpoint loaded with
    its digest checked (exit 1 when one is damaged). A checkpoint (best.pt, last.pt): model config,
    vocabulary size, epoch and step, the feature settings fingerprint, the digest check. A captioner
    file (`fcvc export`): what it holds. A damaged, truncated or foreign file is exit 2, naming it.

    \b
    Examples:
      fcvc info
      fcvc info runs/features.zarr --verify --json
      fcvc info fcvc-work/runs/fcvc-cf-ia
      fcvc info fcvc-work/runs/fcvc-cf-ia/last.pt --json
      fcvc info captioner.fcvc
    """
    from fcvc_pipeline.stages.info import run_info  # noqa: PLC0415 -- keeps --help instant

    run_and_exit(lambda: run_info(path, workdir, verify=verify), json_out=json_out, verbose=verbose)
