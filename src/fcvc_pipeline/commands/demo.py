"""``fcvc demo``."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import common_options, complete_model, run_and_exit


@click.command()
@common_options
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A sample directory (videos/ + annotations.json); default: the bundled data/sample.")
@click.option("--model", default="fcvc-cf-ia", show_default=True, shell_complete=complete_model,
              help="The model to train: fcvc-cf-ia (the paper's), fcvc, fcvc-ta, fcvc-ia, fcvc-all or lstm.")
@click.option("--epochs", type=int, default=30, show_default=True,
              help="Most training epochs (early stopping ends sooner when validation CIDEr stops improving).")
@click.option("--d-model", type=int, default=256, show_default=True,
              help="Model width (the paper's is 512; 256 trains about twice as fast here).")
@click.option("--frames", type=int, default=15, show_default=True, help="Frames sampled per video.")
@click.option("--frame-size", type=int, default=171, show_default=True,
              help="Frame size for Inception-V3 (the paper's 299 costs 3.5x on a CPU).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
def demo(workdir: Path, json_out: bool, verbose: bool, data: Path | None, model: str, epochs: int, d_model: int,
         frames: int, frame_size: int, device: str):
    """The whole chain on the bundled sample set: extract, vocab, train, score, caption.

    Offline and CPU-friendly: random Inception-V3 with re-estimated BatchNorm at 171x171, no C3D, d = 256.
    A second run reuses every cached artifact. Every option is checked before any work.

    \b
    Examples:
      fcvc demo                                  # about 8 minutes on 2 CPU cores
      fcvc demo --model fcvc-ta --workdir ta-work
      fcvc demo --frame-size 299 --json > demo.json
    """
    from fcvc_pipeline.stages.demo import DemoConfig, run_demo  # noqa: PLC0415 -- torch loads only when the command runs, so --help stays instant

    cfg = DemoConfig(workdir=workdir, data=data, model=model, epochs=epochs, d_model=d_model, frames=frames,
                     frame_size=frame_size, device=device)
    run_and_exit(lambda: run_demo(cfg), json_out=json_out, verbose=verbose)
