"""``fcvc export``: the Click wrapper around :func:`fcvc_pipeline.stages.export.run_export`."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import common_options, complete_run, run_and_exit


@click.command()
@common_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The captioner file to write (by convention NAME.fcvc).")
@click.option("--run", "run_name", default=None, shell_complete=complete_run, help="Trained run under <workdir>/runs (default: fcvc-cf-ia or the only run).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A checkpoint file instead of a run's best.pt.")
@click.option("--embed-backbones", is_flag=True,
              help="Also put the weights of file, imagenet and hub feature networks into the file (large; "
                   "otherwise a weights file is identified by its sha256 and downloads by their URL).")
@click.option("--force", is_flag=True, help="Overwrite an existing output that is not an fcvc captioner file.")
def export(workdir: Path, json_out: bool, verbose: bool, output: Path, run_name: str | None,
           checkpoint: Path | None, embed_backbones: bool, force: bool):
    """Write a trained model as one self-contained captioner file (safetensors + a JSON header).

    The file holds the model's weights and config, its vocabulary and chosen decoding, the feature
    settings and the identity of every feature network (random networks with their BatchNorm
    statistics), and where it came from (training config, test scores when scored, versions). Load it
    with `Captioner.load(FILE)` (docs/api.md); reading it runs no code.

    \b
    Examples:
      fcvc export -o captioner.fcvc
      fcvc export --run fcvc-ta -o fcvc-ta.fcvc --embed-backbones --json
    """
    from fcvc_pipeline.stages.export import ExportConfig, run_export  # noqa: PLC0415 -- torch loads only when the command runs, so --help stays instant

    cfg = ExportConfig(output=output, workdir=workdir, run=run_name, checkpoint=checkpoint,
                       embed_backbones=embed_backbones, force=force)
    run_and_exit(lambda: run_export(cfg), json_out=json_out, verbose=verbose)
