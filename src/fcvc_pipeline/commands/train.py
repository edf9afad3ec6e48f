"""``fcvc train``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from fcvc_pipeline.commands.common import common_options, parse_int_list, run_and_exit


@click.command()
@common_options
@click.option("--model", default="fcvc-cf-ia", show_default=True,
              help="fcvc-cf-ia (alias fcvc-final) | fcvc | fcvc-ta | fcvc-ia | fcvc-all | lstm | all (every model, then a score table).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Captions per batch (whole videos are packed).")
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--patience", type=int, default=10, show_default=True, help="Epochs without a better validation CIDEr before stopping.")
@click.option("--checkpoint-every", type=int, default=0, show_default=True, help="Also write last.pt every N steps (0: each epoch).")
@click.option("--d-model", type=int, default=None, help="Width of the model (default 512).")
@click.option("--layers", type=int, default=None, help="Convolutional layers (default 4).")
@click.option("--dropout", type=float, default=None)
@click.option("--conv-mask", type=click.Choice(["paper", "causal"]), default=None,
              help="The caption convolution's window: paper (kernel centred on t, right half masked: t-2..t for "
                   "k = 5) or causal (ConvS2S: t-4..t). Default: the model's (see docs/models.md).")
@click.option("--ema", "ema_decay", type=float, default=0.99, show_default=True,
              help="Validate, keep and caption with an exponential moving average of the weights (decay per step; 0: off).")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True,
              help="Train against (1 - eps) one-hot + eps uniform (the logged nll stays plain).")
@click.option("--select-beams", default="1,3,5", show_default=True,
              help="Beam sizes tried on the validation split after training; the best becomes the run's decoding "
                   "('' to skip: beam 5).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="bf16 autocast for the matrix products (auto: on CUDA only; bf16 also helps CPUs with AMX).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--run", "run_name", default=None, help="Run name under <workdir>/runs (default: the model name).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run exactly where it stopped.")
@click.option("--skip-damaged", is_flag=True,
              help="Check every video's stored features first and train without (listing) the damaged ones, "
                   "instead of stopping on the first one read.")
@click.option("--force", is_flag=True, help="Retrain a run that exists with other settings.")
def train(workdir: Path, json_out: bool, verbose: bool, model: str, epochs: int, max_steps: int | None,
          batch_size: int, lr: float, seed: int, patience: int, checkpoint_every: int, d_model: int | None,
          layers: int | None, dropout: float | None, conv_mask: str | None, ema_decay: float, label_smoothing: float, select_beams: str,
          precision: str, device: str, run_name: str | None, resume: bool, skip_damaged: bool, force: bool):
    """Train a captioner on <workdir>/features.zarr and <workdir>/vocab.

    \b
    Examples:
      fcvc train --model fcvc-cf-ia --epochs 30
      fcvc train --model all                       # every model of the paper's Table 4 + LSTM, then a score table
      torchrun --nproc-per-node 2 -m fcvc_pipeline -- train --run big --device cuda

    Under torchrun, put -- after the module name: torchrun checks the options after the module against
    its own, and --run reads to it as an abbreviation of its --run-path.
    """
    # deferred: torch loads only when the command runs, so --help stays instant
    from fcvc_pipeline.stages.ablation import run_ablation  # noqa: PLC0415
    from fcvc_pipeline.stages.train import ALL_MODELS, TrainConfig, run_train  # noqa: PLC0415

    cfg = TrainConfig(workdir=workdir, model=model, run=run_name, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, lr=lr, seed=seed, patience=patience, checkpoint_every=checkpoint_every,
                      d_model=d_model, layers=layers, dropout=dropout, conv_mask=conv_mask, ema_decay=ema_decay,
                      label_smoothing=label_smoothing, select_beams=parse_int_list(select_beams, "--select-beams"),
                      precision=precision, device=device, resume=resume, skip_damaged=skip_damaged, force=force)
    # under torchrun only rank 0 prints the JSON document
    main_rank = int(os.environ.get("RANK", "0")) == 0
    stage = run_ablation if model == ALL_MODELS else run_train
    run_and_exit(lambda: stage(cfg), json_out=json_out and main_rank, verbose=verbose)
